"""The model registry: which version a rollback may return to."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from server.errors import RiftError
from server.learning.registry import ModelVersion, Registry


def _fine_tune(registry: Registry, version: str, base: str) -> None:
    weights = registry.dir / version
    weights.mkdir(parents=True)
    registry.add(ModelVersion(version, "fine-tune", str(weights), base, "retired", time.time(), parent=base))


def test_rollback_stays_within_the_configured_models_lineage(tmp_path: Path) -> None:
    registry = Registry(tmp_path / "models")
    registry.serve_base("model-a")
    _fine_tune(registry, "ft-a", "model-a")
    registry.serve_base("model-b")  # the user switched the setting `model` and restarted
    _fine_tune(registry, "ft-b", "model-b")
    assert registry.rollback_target("ft-b").version == "ft-b"
    # Start-up serves only the configured model's lineage, so a rollback across lineages would be undone by
    # the next restart: it is refused, saying what to do instead.
    with pytest.raises(RiftError, match="descends from model 'model-a'.*set model to 'model-a'"):
        registry.rollback_target("ft-a")
    assert registry.rollback_target(None).version == "ft-b"
