"""Retrieval quality per mode: every query of the split through `Rift.search` (the hybrid_search path), the
returned documents ranked as the caller sees them, scored with trec_eval's definitions."""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from server.bench.beir import BeirDataset
from server.bench.harness import BenchIndex
from server.bench.metrics import evaluate

log = logging.getLogger(__name__)

MODES = ("keyword", "vector", "hybrid")
RANK_K = 100  # Recall@100 needs the top 100 documents; the tool's maximum k


@dataclass(frozen=True)
class FusionConfig:
    depth: int | None = None  # None = the engine's settings
    rrf_k: float | None = None
    weights: tuple[float, float] | None = None  # (vector, keyword)

    def knobs(self) -> dict[str, Any]:
        return {
            k: v for k, v in (("depth", self.depth), ("rrf_k", self.rrf_k), ("weights", self.weights)) if v
        }

    def label(self, settings: Any) -> dict[str, Any]:
        w = self.weights or (settings.vector_weight, settings.keyword_weight)
        return {
            "depth": self.depth or settings.candidate_depth,
            "rrf_k": self.rrf_k or settings.rrf_k,
            "weights": [w[0], w[1]],
        }


def run_mode(
    index: BenchIndex, dataset: BeirDataset, mode: str, config: FusionConfig, limit: int | None = None
) -> dict[str, Any]:
    run: dict[str, list[str]] = {}
    query_ids = list(dataset.queries)[:limit] if limit else list(dataset.queries)
    started = time.perf_counter()
    for qid in query_ids:
        outcome = index.search(dataset.queries[qid], mode, RANK_K, **config.knobs()).outcome
        run[qid] = [h.doc_id for h in outcome.hits]
    seconds = time.perf_counter() - started
    means, _ = evaluate({q: dataset.qrels[q] for q in query_ids}, run)
    return {
        "mode": mode,
        **config.label(index.settings),
        "queries": len(query_ids),
        **{name: round(value, 4) for name, value in means.items()},
        "seconds": round(seconds, 2),
    }


def run_quality(
    index: BenchIndex,
    dataset: BeirDataset,
    modes: Sequence[str] = MODES,
    configs: Sequence[FusionConfig] = (FusionConfig(),),
    limit: int | None = None,
) -> list[dict[str, Any]]:
    """One row per (mode, config). Keyword and vector rankings do not depend on rrf_k or weights, so they run
    once per distinct depth; hybrid runs for every config."""
    rows: list[dict[str, Any]] = []
    for mode in modes:
        seen_depths: set[int | None] = set()
        for config in configs:
            if mode != "hybrid":
                if config.depth in seen_depths:
                    continue
                seen_depths.add(config.depth)
                config = FusionConfig(depth=config.depth)
            row = run_mode(index, dataset, mode, config, limit)
            log.info("quality %s", row)
            rows.append(row)
    return rows
