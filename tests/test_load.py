"""A small, bounded version of `python -m server.bench.load`: concurrent hybrid_search sessions over streamable
HTTP (loopback) while documents are added and deleted. Zero errors, and no search that started after a delete
was acknowledged names the deleted document."""

from __future__ import annotations

from pathlib import Path

import pytest

from server.bench.load import LoadConfig, load_markdown, measure_sync, run_load, sync_markdown
from tests.support.processes import chroma_binary


@pytest.mark.slow
def test_concurrent_searches_during_adds_and_deletes(tiny_model_path: Path) -> None:
    result = run_load(
        LoadConfig(model=str(tiny_model_path), docs=80, clients=6, duration_s=6, max_searches=2000)
    )
    print(load_markdown(result))
    assert result.errors == 0, result.error_samples
    assert result.deleted_doc_violations == 0, result.violation_samples
    assert result.searches >= 30 and result.adds >= 3 and result.deletes >= 3
    assert result.search_ms["p50"] <= result.search_ms["p99"] <= result.search_ms["max"]
    assert result.wall_s < 60  # it stops by itself


@pytest.mark.skipif(chroma_binary() is None, reason="the chroma CLI is not installed")
def test_sync_cost_measurement_runs(tiny_model_path: Path) -> None:
    report = measure_sync(str(tiny_model_path), [50, 150], reps=3)
    print(sync_markdown(report))
    assert [row["chunks"] for row in report["sizes"]] == [50, 150]
    for row in report["sizes"]:
        assert row["check_no_change_ms"]["p50"] > 0 and row["sync_after_1_add_ms"]["p50"] > 0
