"""Fine-tuned weights are deleted only when nothing can load them again: not when the registry that named
them was moved aside, not while a re-index serves from their folder; and a version whose folder is gone is
refused by rollback with the reason, never a failed job."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from server.learning.manager import UNREGISTERED
from tests.support.helpers import make_settings, open_rift
from tests.support.learning import fill_two_collections

pytestmark = pytest.mark.slow


def _run(learning: Any, started: dict[str, Any]) -> str:
    learning.jobs.wait(300)
    status = learning.status(started["job_id"])
    assert status["status"] == "succeeded", status
    return status["result"]["version"]


def test_moving_a_damaged_registry_aside_keeps_every_fine_tunes_weights(
    tmp_path: Path, tiny_model_path: Path
) -> None:
    """The damaged-registry error says the weights stay on disk; start-up used to delete every fine-tune's
    folder as a killed job's leftovers, the serving one included."""
    # (learn_searches "all": it retrains again on the same log.)
    settings = make_settings(
        tmp_path / "data", tiny_model_path, learn_min_triples=2, gate_tolerance=1.0, learn_searches="all"
    )
    rift = open_rift(settings)
    try:
        fill_two_collections(rift)
        first = _run(rift.learning, rift.learning.retrain(epochs=1, batch_size=4))
        second = _run(rift.learning, rift.learning.retrain(epochs=1, batch_size=4))
    finally:
        rift.close()
    models = settings.models_dir
    assert not (models / second / UNREGISTERED).exists()  # registered: the mark is gone
    (models / "registry.json").write_text("{not json")
    with pytest.raises(Exception, match="fine-tuned weights beside it stay on disk"):
        open_rift(settings)
    os.replace(models / "registry.json", tmp_path / "registry.json.bak")
    # Serve the newest fine-tune by naming its folder, as a user who lost the registry would.
    again = open_rift(settings.model_copy(update={"model": str(models / second)}))
    try:
        assert again.search("default", "cat").outcome.hits
    finally:
        again.close()
    assert (models / first / "model.safetensors").is_file() and (models / second / "model.safetensors").is_file()


def test_a_folder_a_reindex_serves_from_is_not_pruned(tmp_path: Path, tiny_model_path: Path) -> None:
    """`rift reindex --model <models>/ft-…` serves a rejected candidate's folder; `rift models --prune` deleted
    it under the serving version, and the next start fell back to the configured model."""
    settings = make_settings(tmp_path / "data", tiny_model_path, learn_min_triples=2, gate_tolerance=1.0)
    rift = open_rift(settings)
    try:
        fill_two_collections(rift)
        learning = rift.learning
        learning.gate_overrides = {"min_stability": 1.01}
        learning.retrain(epochs=1, batch_size=4)
        learning.jobs.wait(300)
        rejected = learning.status()["result"]["version"]
        assert learning.registry.get(rejected).status == "rejected"
        learning.gate_overrides = {}
        served = _run(learning, learning.reindex(str(settings.models_dir / rejected)))
        assert learning.delete_unservable_weights() == {"deleted": [], "freed_bytes": 0}
        assert (settings.models_dir / rejected / "model.safetensors").is_file()
    finally:
        rift.close()
    again = open_rift(settings)
    try:
        assert again.learning.registry.serving().version == served
        assert again.search("default", "cat").outcome.model_version == served
    finally:
        again.close()


def test_rollback_to_a_reindex_whose_folder_was_deleted_is_refused(tmp_path: Path, tiny_model_path: Path) -> None:
    """learn_keep_weights deletes an older fine-tune's folder; a retired re-index that loaded it is noted
    "weights deleted" with it, so rollback refuses it (it used to start a job that failed on the missing
    folder)."""
    settings = make_settings(
        tmp_path / "data", tiny_model_path, learn_min_triples=2, gate_tolerance=1.0, learn_keep_weights=1,
        learn_searches="all",  # (retrains again on the same log)
    )
    rift = open_rift(settings)
    try:
        fill_two_collections(rift)
        learning = rift.learning
        first = _run(learning, learning.retrain(epochs=1, batch_size=4))
        second = _run(learning, learning.retrain(epochs=1, batch_size=4))
        reindexed = _run(learning, learning.reindex(str(settings.models_dir / first)))
        _run(learning, learning.rollback(second))
        _run(learning, learning.retrain(epochs=1, batch_size=4))
        assert not (settings.models_dir / first).exists()  # neither among the newest kept nor serving
        assert "weights deleted" in (learning.registry.get(reindexed).note or "")
        with pytest.raises(Exception, match="weights were deleted"):
            learning.rollback(reindexed)
    finally:
        rift.close()
