"""Model swaps under load: searches running concurrently with retrain, swap, rollback and a re-index to a model
of another dimension never fail and never mix one model's query embedding with another model's vectors."""

from __future__ import annotations

import contextlib
import threading
import time
from pathlib import Path

import pytest

from server.learning.manager import UNREGISTERED
from server.service import Rift
from tests.support.helpers import docs, ids, make_settings, open_rift
from tests.support.learning import fill_two_collections, queries
from tests.support.tiny_model import build_tiny_model

pytestmark = pytest.mark.slow


def test_searches_keep_answering_through_retrain_swap_rollback_and_reindex(
    tmp_path: Path, tiny_model_path: Path
) -> None:
    settings = make_settings(tmp_path / "data", tiny_model_path, learn_min_triples=2, gate_tolerance=1.0)
    rift = open_rift(settings)
    try:
        fill_two_collections(rift)
        base = rift.engine().embedder.version
        errors: list[BaseException] = []
        seen: set[str] = set()
        stop = threading.Event()

        def searcher(i: int) -> None:
            n = 0
            while not stop.is_set():
                try:
                    for mode in ("hybrid", "vector"):
                        out = rift.search("default", queries()[(i + n) % 60], 5, mode, source="test")
                        assert out.outcome.hits, "no hits"
                        seen.add(out.outcome.model_version)
                    n += 1
                except BaseException as exc:  # collected: the assertion below reports it
                    errors.append(exc)
                    return

        threads = [threading.Thread(target=searcher, args=(i,)) for i in range(3)]
        for t in threads:
            t.start()
        learning = rift.learning
        started = learning.retrain(batch_size=4)
        learning.jobs.wait(120)
        assert learning.status(started["job_id"])["status"] == "succeeded"
        tuned = learning.registry.serving().version
        # A model of another dimension (16 instead of 32) gets new Chroma collections, never a broken one.
        other = build_tiny_model(tmp_path / "tiny16", hidden=16, seed=3)
        reindexed = learning.reindex(str(other))
        learning.jobs.wait(120)
        assert learning.status(reindexed["job_id"])["status"] == "succeeded", learning.status()
        assert rift.engine().embedder.dimension == 16
        back = learning.rollback(tuned)
        learning.jobs.wait(120)
        assert learning.status(back["job_id"])["status"] == "succeeded"
        time.sleep(0.5)
        stop.set()
        for t in threads:
            t.join(30)
        assert errors == []
        assert base in seen and tuned in seen
        # Every collection moved together; searches in the other collection use the same model.
        assert {r.model_version for r in rift.engine().state.collections()} == {tuned}
        assert rift.search("other", "quantum energy", 2).outcome.model_version == tuned
    finally:
        rift.close()


def test_rejected_candidate_is_kept_but_never_served(tmp_path: Path, tiny_model_path: Path) -> None:
    # An impossible gate (stability must exceed 100%) rejects whatever is trained.
    settings = make_settings(tmp_path / "data", tiny_model_path, learn_min_triples=2)
    rift = open_rift(settings)
    try:
        fill_two_collections(rift)
        learning = rift.learning
        base = learning.registry.serving().version
        learning.gate_overrides = {"min_stability": 1.01}
        started = learning.retrain(batch_size=4)
        learning.jobs.wait(120)
        status = learning.status(started["job_id"])
        assert status["status"] == "rejected", status
        assert "stability" in status["result"]["gate"]["reason"]
        rejected = status["result"]["version"]
        assert learning.registry.get(rejected).status == "rejected"
        assert learning.registry.serving().version == base
        assert rift.search("default", queries()[0]).outcome.model_version == base
        # Its vectors were dropped; the serving collection is untouched.
        engine = rift.engine()
        names = {n for n, _ in engine.vectors.list_collections()}
        assert not any(rejected_hash in n for n in names for rejected_hash in [_hash(rejected)])
        with pytest.raises(Exception, match="rejected"):
            learning.rollback(rejected)
        # Its weights stay for inspection until pruned; the entry stays after.
        folder = Path(learning.registry.location_of(learning.registry.get(rejected)))
        assert folder.is_dir()
        pruned = learning.delete_unservable_weights()
        assert [d["version"] for d in pruned["deleted"]] == [rejected] and pruned["freed_bytes"] > 0
        assert not folder.exists()
        entry = learning.registry.get(rejected)
        assert entry.status == "rejected" and "weights deleted" in entry.note
        assert learning.delete_unservable_weights() == {"deleted": [], "freed_bytes": 0}
        assert rift.search("default", queries()[0]).outcome.model_version == base
    finally:
        rift.close()


def test_only_the_newest_rejected_candidates_keep_their_weights(tmp_path: Path, tiny_model_path: Path) -> None:
    """A server retraining on a policy must not keep ~90 MB per rejection for good (found by helper BT: the
    models folder grew with every rejected candidate, and `rift models --prune` needs the server stopped)."""
    settings = make_settings(tmp_path / "data", tiny_model_path, learn_min_triples=2, learn_keep_rejected=1)
    rift = open_rift(settings)
    try:
        fill_two_collections(rift)
        learning = rift.learning
        learning.gate_overrides = {"min_stability": 1.01}
        folders = []
        for _ in range(2):
            started = learning.retrain(batch_size=4)
            learning.jobs.wait(120)
            status = learning.status(started["job_id"])
            assert status["status"] == "rejected", status
            folders.append(Path(learning.registry.location_of(learning.registry.get(status["result"]["version"]))))
        first, newest = folders
        assert not first.exists() and newest.is_dir()
        assert "weights deleted" in learning.registry.get(first.name).note
        assert [v.status for v in learning.registry.all()].count("rejected") == 2  # the entries stay
    finally:
        rift.close()
    # None kept: the next start deletes the newest too, and a rejection its own candidate's at once.
    rift = open_rift(settings.model_copy(update={"learn_keep_rejected": 0}))
    try:
        assert not newest.exists()
        learning = rift.learning
        learning.gate_overrides = {"min_stability": 1.01}
        started = learning.retrain(batch_size=4)
        learning.jobs.wait(120)
        status = learning.status(started["job_id"])
        assert status["status"] == "rejected", status
        assert not (settings.models_dir / status["result"]["version"]).exists()
    finally:
        rift.close()


def _hash(version: str) -> str:
    import hashlib

    return hashlib.sha256(version.encode()).hexdigest()[:10]


def test_deleted_collection_stays_deleted_after_a_swap_and_a_restart(
    tmp_path: Path, tiny_model_path: Path
) -> None:
    # A swap keeps the previous version's vectors for rollback; deleting the collection must drop those too, or
    # the next start would adopt them back as an orphan, deleted documents and all.
    settings = make_settings(tmp_path / "data", tiny_model_path)
    rift = open_rift(settings)
    try:
        rift.add_documents("secret", docs(("doc1", "the cat sat on the mat"), ("doc2", "dogs bark at night")))
        _reindexed(rift, tmp_path)
        engine = rift.engine()
        assert sum("secret" in n for n, _ in engine.vectors.list_collections()) == 2  # serving + kept
        engine.delete_collection("secret")
        assert not [n for n, _ in engine.vectors.list_collections() if "secret" in n]
    finally:
        rift.close()
    reopened = open_rift(settings)
    try:
        assert "secret" not in reopened.engine().collection_names()
        assert not reopened.repair_report.get("adopted_from_chroma")
    finally:
        reopened.close()


def test_a_model_that_fails_to_load_does_not_retire_the_serving_version(
    tmp_path: Path, tiny_model_path: Path
) -> None:
    settings, rift = _with_one_document(tmp_path, tiny_model_path)
    try:
        reindexed = _reindexed(rift, tmp_path)
        assert rift.learning.registry.serving().version == reindexed
    finally:
        rift.close()
    with pytest.raises(Exception, match="no-such-model"):
        open_rift(settings.model_copy(update={"model": str(tmp_path / "no-such-model")}))
    again = open_rift(settings)
    try:
        assert again.learning.registry.serving().version == reindexed
        assert str(tmp_path / "no-such-model") not in {v.version for v in again.learning.registry.all()}
        assert again.search("default", "cat").outcome.model_version == reindexed
    finally:
        again.close()


def test_a_collection_created_after_the_build_is_switched_whole_and_gated(
    tmp_path: Path, tiny_model_path: Path
) -> None:
    """Created while the gate ran (after the candidate's vectors were built): the switch embeds all of it,
    and the gate's ranking of it is skipped, not a failure (a read no longer makes a missing collection)."""
    from server.errors import NotFoundError
    from server.learning.pipeline import build_all, load_embedder, switch_all

    settings = make_settings(tmp_path / "data", tiny_model_path)
    rift = open_rift(settings)
    try:
        rift.add_documents("c1", docs(("a", "a cat on the mat")))
        engine = rift.engine()
        candidate = load_embedder(str(build_tiny_model(tmp_path / "t2", seed=3)), "cand", settings)
        assert build_all(engine, candidate) == ["c1"]
        rift.add_documents("c2", docs(("b", "a dog in the house")))
        with pytest.raises(NotFoundError, match="no vectors of model 'cand'"):
            engine.vector_ranking("c2", candidate, "dog", 5)
        switch_all(engine, candidate, keep_old=True)
        assert {r.name: r.model_version for r in engine.state.collections()} == {"c1": "cand", "c2": "cand"}
        assert ids(rift.search("c2", "a dog in the house", mode="vector").outcome.hits) == ["b"]
    finally:
        rift.close()


def test_collections_deleted_or_created_during_a_build_and_a_failed_switch(
    tmp_path: Path, tiny_model_path: Path, monkeypatch
) -> None:
    from server.learning.pipeline import build_all, load_embedder, switch_all

    settings = make_settings(tmp_path / "data", tiny_model_path)
    rift = open_rift(settings)
    try:
        fill_two_collections(rift)
        engine = rift.engine()
        base = engine.embedder.version
        candidate = load_embedder(
            str(build_tiny_model(tmp_path / "t16", hidden=16, seed=3)), "cand", settings
        )
        real_upsert = engine.vectors.upsert

        def upsert_during_changes(name, *args, **kwargs):
            if name.startswith("rift-other-") and "other" in engine.collection_names():
                engine.delete_collection("other")  # deleted while its vectors are embedded
                rift.add_documents("late", docs(("l1", "a collection made meanwhile")))
            return real_upsert(name, *args, **kwargs)

        monkeypatch.setattr(engine.vectors, "upsert", upsert_during_changes)
        built = build_all(engine, candidate)
        monkeypatch.setattr(engine.vectors, "upsert", real_upsert)
        assert sorted(built) == ["default", "late"]  # "other" skipped, "late" built too
        assert not [n for n, _ in engine.vectors.list_collections() if n.startswith("rift-other-")]

        real_switch = engine.switch_vectors

        def fails_on_late(name, embedder, keep_old=False):
            if name == "late" and embedder is candidate:
                raise RuntimeError("disk full")
            return real_switch(name, embedder, keep_old=keep_old)

        monkeypatch.setattr(engine, "switch_vectors", fails_on_late)
        with pytest.raises(RuntimeError, match="disk full"):
            switch_all(engine, candidate)
        # Nothing half-switched: every collection and new ones still use the serving model.
        assert {r.model_version for r in engine.state.collections()} == {base}
        assert engine.embedder.version == base
        assert rift.search("default", queries()[0]).outcome.model_version == base
    finally:
        rift.close()


def test_a_job_the_process_did_not_finish_is_cleaned_up_at_start(
    tmp_path: Path, tiny_model_path: Path
) -> None:
    import time as clock

    from server.engine.engine import chroma_name_for
    from server.learning.registry import ModelVersion

    settings, rift = _with_one_document(tmp_path, tiny_model_path)
    try:
        # What a kill -9 during encoding leaves: the candidate's entry, half its vectors, a trainer folder.
        rift.learning.registry.add(
            ModelVersion(
                "ft-x",
                "fine-tune",
                "ft-x",
                str(tiny_model_path),
                "failed",
                clock.time(),
                note="candidate being evaluated",
            )
        )
        rift.learning.registry.add(
            ModelVersion(
                "rx-y",
                "reindex",
                "/m",
                str(tiny_model_path),
                "failed",
                clock.time(),
                note="re-index with /m: in progress",
            )
        )
        rift.engine().vectors.ensure(chroma_name_for("default", "ft-x"), 32, {"rift:model_version": "ft-x"})
        (settings.models_dir / ".ft-x.trainer").mkdir()
        # Weights saved by a job killed before it registered them (still marked); weights a registry that was
        # moved aside named (no mark), which stay; and a registered candidate's, which stay.
        for version in ("ft-20261203-071500-abc123", "ft-20261203-071500-def456", "ft-x"):
            (settings.models_dir / version).mkdir()
            (settings.models_dir / version / "model.safetensors").write_bytes(b"w")
        (settings.models_dir / "ft-20261203-071500-abc123" / UNREGISTERED).touch()
    finally:
        rift.close()
    again = open_rift(settings)
    try:
        entry = again.learning.registry.get("ft-x")
        assert entry.status == "failed" and entry.note.startswith("interrupted")
        assert (
            again.learning.registry.get("rx-y").note
            == "re-index with /m: interrupted: the server stopped during the job"
        )
        assert chroma_name_for("default", "ft-x") not in {
            n for n, _ in again.engine().vectors.list_collections()
        }
        assert not (settings.models_dir / ".ft-x.trainer").exists()
        assert not (settings.models_dir / "ft-20261203-071500-abc123").exists()
        assert (settings.models_dir / "ft-20261203-071500-def456" / "model.safetensors").exists()
        assert (settings.models_dir / "ft-x" / "model.safetensors").exists()
        assert again.search("default", "cat").outcome.hits
    finally:
        again.close()


def _reindexed(rift, tmp_path: Path) -> str:
    """Re-index `rift` to a second tiny model (another dimension); returns the version now serving."""
    started = rift.learning.reindex(str(build_tiny_model(tmp_path / "tiny16", hidden=16, seed=3)))
    rift.learning.jobs.wait(120)
    status = rift.learning.status(started["job_id"])
    assert status["status"] == "succeeded", status
    return status["result"]["version"]


def _with_one_document(tmp_path: Path, tiny_model_path: Path):
    settings = make_settings(tmp_path / "data", tiny_model_path)
    rift = open_rift(settings)
    rift.add_documents("default", docs(("doc1", "the cat sat on the mat")))
    return settings, rift


def test_merge_base_moves_the_candidate_back_to_the_serving_model(
    tmp_path: Path, tiny_model_path: Path
) -> None:
    """learn_merge_base (WiSE-FT) starts from the serving weights: a full share gives them back unchanged."""
    import torch
    from sentence_transformers import SentenceTransformer

    settings = make_settings(tmp_path / "data", tiny_model_path, learn_min_triples=2)
    rift = open_rift(settings)
    try:
        fill_two_collections(rift)
        learning = rift.learning
        with pytest.raises(Exception, match="merge_base must be between 0.0 and 1.0"):
            learning.retrain(batch_size=4, merge_base=1.5)
        learning.gate_overrides = {"min_stability": 1.01}  # keep it out of serving; only its weights matter
        started = learning.retrain(batch_size=4, learning_rate=1e-3, merge_base=1.0)
        learning.jobs.wait(120)
        status = learning.status(started["job_id"])
        assert status["params"]["merge_base"] == 1.0, status["params"]
        folder = learning.registry.location_of(learning.registry.get(status["result"]["version"]))
        base = SentenceTransformer(str(tiny_model_path), device="cpu").state_dict()
        merged = SentenceTransformer(folder, device="cpu").state_dict()
        assert all(torch.allclose(base[name], merged[name], atol=1e-6) for name in base)
    finally:
        rift.close()


def test_a_swap_after_a_delete_keeps_exact_vector_search(tmp_path: Path, tiny_model_path: Path) -> None:
    # A delete only masks the keyword index's rows; the new model's vectors never had them. The in-memory
    # copy must be filled from the live rows, or the collection falls back to HNSW until restart.
    settings = make_settings(tmp_path / "data", tiny_model_path)
    rift = open_rift(settings)
    try:
        rift.add_documents(
            "default",
            docs(("doc1", "the cat sat on the mat"), ("doc2", "dogs bark at night"), ("doc3", "owls")),
        )
        engine = rift.engine()
        assert engine.exact_search_active("default")
        rift.delete_documents("default", ["doc2"])
        _reindexed(rift, tmp_path)
        assert engine.exact_search_active("default")
        hits = rift.search("default", "dogs bark at night", k=5, mode="vector").outcome.hits
        assert {h.doc_id for h in hits} == {"doc1", "doc3"}
    finally:
        rift.close()


def test_a_collection_deleted_while_the_gate_runs_is_left_out_of_it(
    tmp_path: Path, tiny_model_path: Path, monkeypatch
) -> None:
    import server.learning.gate as gate

    settings = make_settings(tmp_path / "data", tiny_model_path, learn_min_triples=2, gate_tolerance=1.0)
    rift = open_rift(settings)
    try:
        fill_two_collections(rift)
        for text in ("quantum physics", "coffee tea", "energy note", "milk sugar"):
            rift.search("other", text)  # the latest searches, so the gate's hold-out reads 'other'
        keyword, deleted = gate.Gate._keyword, []

        def delete_midway(self, collection: str, query: str) -> list[str]:
            if not deleted:  # a user's delete_collection arriving while the gate scores
                deleted.append(rift.delete_collection("other"))
            return keyword(self, collection, query)

        monkeypatch.setattr(gate.Gate, "_keyword", delete_midway)
        started = rift.learning.retrain(batch_size=4)
        rift.learning.jobs.wait(120)
        status = rift.learning.status(started["job_id"])
        assert deleted and status["status"] == "succeeded", status
        assert rift.engine().collection_names() == ["default"]
    finally:
        rift.close()


def test_reindex_to_a_model_that_cannot_load_says_why_and_changes_nothing(
    tmp_path: Path, tiny_model_path: Path
):
    _, rift = _with_one_document(tmp_path, tiny_model_path)
    try:
        before = rift.learning.registry.serving().version
        started = rift.learning.reindex(str(tmp_path / "no-such-model"))
        rift.learning.jobs.wait(60)
        status = rift.learning.status(started["job_id"])
        assert status["status"] == "failed"
        assert f"no folder at {tmp_path / 'no-such-model'}" in status["error"], status
        assert rift.learning.registry.serving().version == before
        assert [h.doc_id for h in rift.search("default", "cat").outcome.hits] == ["doc1"]
    finally:
        rift.close()


def test_a_fine_tune_serves_with_the_query_prompt_it_was_trained_with(
    tmp_path: Path, tiny_model_path: Path, monkeypatch
) -> None:
    """A bge model's query instruction comes from rift's table of known models, keyed by the base's name; its
    fine-tune lives in a folder the table does not know, and must keep the prompt (saved with the weights, or
    for a fine-tune saved without it, taken from the lineage's base model)."""
    import json

    import server.engine.models as models

    prompt = "Represent this sentence for searching relevant passages: "
    monkeypatch.setitem(models.KNOWN_QUERY_PROMPTS, str(tiny_model_path).lower(), prompt)
    settings = make_settings(tmp_path / "data", tiny_model_path, learn_min_triples=2, gate_tolerance=1.0)
    rift = open_rift(settings)
    try:
        fill_two_collections(rift)
        assert rift.engine().embedder.query_prompt == prompt
        started = rift.learning.retrain(batch_size=4, epochs=1)
        rift.learning.jobs.wait(180)
        status = rift.learning.status(started["job_id"])
        assert status["status"] == "succeeded", status
        version = status["result"]["version"]
        assert rift.engine().embedder.version == version and rift.engine().embedder.query_prompt == prompt
    finally:
        rift.close()
    saved = json.loads((settings.models_dir / version / "config_sentence_transformers.json").read_text())
    assert saved["prompts"]["query"] == prompt

    # A fine-tune saved without its prompt (by an earlier version) still serves with the base's.
    saved["prompts"] = {}
    (settings.models_dir / version / "config_sentence_transformers.json").write_text(json.dumps(saved))
    rift = open_rift(settings)
    try:
        assert rift.engine().embedder.version == version and rift.engine().embedder.query_prompt == prompt
    finally:
        rift.close()


def test_dropping_a_version_skips_a_collection_deleted_meanwhile() -> None:
    """A delete_collection between listing the collections and dropping one's vectors must not fail the job
    (after the gate, that failure turned an accepted retrain into a failed one while it already served)."""
    from server.errors import NotFoundError
    from server.learning.pipeline import drop_built

    dropped = []

    class Engine:
        def collection_names(self):
            return ["a", "gone", "b"]

        def drop_vectors(self, name, version):
            if name == "gone":
                raise NotFoundError("unknown collection 'gone'")
            dropped.append((name, version))

    drop_built(Engine(), "ft-1")
    assert dropped == [("a", "ft-1"), ("b", "ft-1")]


def test_a_reindex_to_a_model_with_a_shorter_limit_rechunks_for_it(
    tmp_path: Path, tiny_model_path: Path
) -> None:
    """Chunks are cut to fit the serving model; after a switch to one that reads fewer tokens, stored documents
    are split again for it (the swap itself keeps answering with the old chunks)."""
    import json
    import shutil

    short = tmp_path / "short-model"
    shutil.copytree(tiny_model_path, short)
    config = json.loads((short / "sentence_bert_config.json").read_text())
    config["max_seq_length"] = 24
    (short / "sentence_bert_config.json").write_text(json.dumps(config))
    _, rift = _with_one_document(tmp_path, tiny_model_path)
    try:
        text = " ".join(f"word{i} about the river and the sea" for i in range(30))
        rift.add_documents("default", docs(("long", text)))
        before = len(rift.engine().state.document_chunks("default", "long"))
        started = rift.learning.reindex(str(short))
        rift.learning.jobs.wait(120)
        status = rift.learning.status(started["job_id"])
        assert status["status"] == "succeeded"
        # Its own phase after the switch (cancellable, unlike switching): a stop there resumes at the next start.
        assert [p["phase"] for p in status["phases"]][-2:] == ["switching", "re-chunking"]
        engine = rift.engine()
        chunks = engine.state.document_chunks("default", "long")
        limit = engine.embedder.max_chunk_tokens(engine.settings.chunk_tokens)
        assert limit < 24 and len(chunks) > before
        assert all(
            len(engine.embedder.tokenizer(c.text, add_special_tokens=False)["input_ids"]) <= limit
            for c in chunks
        )
        assert engine.get_document("default", "long")[0] == text
        assert [h.doc_id for h in rift.search("default", "cat").outcome.hits][:1] == ["doc1"]
    finally:
        rift.close()


def test_a_reindexed_model_keeps_its_own_prompt_and_read_commands_refuse_a_missing_version(
    tmp_path: Path, tiny_model_path: Path, monkeypatch
) -> None:
    """Only fine-tunes inherit a prompt from the model they were trained from; and a one-off command whose
    serving version cannot load says so instead of re-embedding the store with the configured model."""
    import shutil

    import server.engine.models as models
    from server.errors import RiftError
    from server.service import Rift

    monkeypatch.setitem(models.KNOWN_QUERY_PROMPTS, str(tiny_model_path).lower(), "Represent this: ")
    settings, rift = _with_one_document(tmp_path, tiny_model_path)
    other = tmp_path / "other-model"
    shutil.copytree(build_tiny_model(tmp_path / "tiny16", hidden=16, seed=3), other)
    try:
        assert rift.engine().embedder.query_prompt == "Represent this: "
        started = rift.learning.reindex(str(other))
        rift.learning.jobs.wait(120)
        version = rift.learning.status(started["job_id"])["result"]["version"]
        assert rift.engine().embedder.query_prompt == ""
    finally:
        rift.close()
    rift = open_rift(settings)
    try:
        assert rift.engine().embedder.version == version and rift.engine().embedder.query_prompt == ""
    finally:
        rift.close()
    shutil.rmtree(other)
    with pytest.raises(RiftError, match=f"the serving version '{version}' cannot load: no folder at"):
        Rift(settings).start(background=False, reembed=False)
    assert Rift(settings).start(background=False).close() is None  # a server falls back and re-embeds


def test_a_switch_cut_short_before_registering_says_so_to_read_commands(
    tmp_path: Path, tiny_model_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A reindex stopped after switching the collections but before the registry named its version serving
    (a kill there): a read-only command says what happened instead of "weights are missing", and a server
    start re-embeds with the serving version."""
    from server.errors import RiftError
    from server.learning import manager
    from server.learning.registry import Registry
    from server.service import Rift

    settings, rift = _with_one_document(tmp_path, tiny_model_path)
    real = Registry.update

    def killed(self: Registry, version: str, **changes: object) -> object:
        if changes.get("status") == "serving":
            raise RuntimeError("killed")  # stands for the kill: nothing after the switch runs
        return real(self, version, **changes)

    try:
        monkeypatch.setattr(Registry, "update", killed)
        # A kill: no switching back either (what a failure to write the registry gets).
        monkeypatch.setattr(manager, "_switched_back_on_failure", lambda *_: contextlib.nullcontext())
        started = rift.learning.reindex(str(build_tiny_model(tmp_path / "tiny16", hidden=16, seed=3)))
        rift.learning.jobs.wait(120)
        version = started["version"]
        assert rift.engine().state.collection("default").model_version == version
    finally:
        monkeypatch.undo()
        rift.close()
    with pytest.raises(
        RiftError, match=f"left on version '{version}' by a reindex that stopped before it finished"
    ):
        Rift(settings).start(background=False, reembed=False)
    again = open_rift(settings)
    try:
        assert again.repair_report["reembedded"] == ["default"]
        assert [
            h.doc_id for h in again.search("default", "the cat sat on the mat", mode="vector").outcome.hits
        ] == ["doc1"]
    finally:
        again.close()


def test_a_rollback_killed_after_its_switch_is_named_as_such(
    tmp_path: Path, tiny_model_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A rollback stopped after switching the collections to a retired version but before the registry named
    it serving: commands said the retired version's weights were missing, though they are there (found by
    helper BI)."""
    from server.errors import RiftError
    from server.learning import manager
    from server.learning.registry import Registry
    from server.service import Rift

    settings, rift = _with_one_document(tmp_path, tiny_model_path)
    try:
        started = rift.learning.reindex(str(build_tiny_model(tmp_path / "tiny16", hidden=16, seed=3)))
        rift.learning.jobs.wait(120)
        assert rift.learning.status(started["job_id"])["status"] == "succeeded"

        def killed(self: Registry, version: str) -> None:
            raise RuntimeError("killed")  # stands for the kill: nothing after the switch runs

        monkeypatch.setattr(Registry, "set_serving", killed)
        monkeypatch.setattr(manager, "_switched_back_on_failure", lambda *_, **__: contextlib.nullcontext())
        back = rift.learning.rollback()
        rift.learning.jobs.wait(120)
        assert rift.engine().state.collection("default").model_version == str(tiny_model_path)
    finally:
        monkeypatch.undo()
        rift.close()
    with pytest.raises(RiftError) as refused:
        Rift(settings).start(background=False, reembed=False)
    message = str(refused.value)
    assert f"left on version '{tiny_model_path}' by a rollback that stopped before it finished" in message
    assert f"the serving version is still '{started['version']}'" in message and "missing" not in message
    assert back["job_id"]


def test_a_registry_that_cannot_be_written_after_the_switch_switches_back(
    tmp_path: Path, tiny_model_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The registry's write after a switch failing (a full disk): the job said "failed" while the new model
    served, the registry in memory named it serving and the one on disk did not, so the next start went back
    and re-embedded everything. Now the switch is undone, and memory and disk agree."""
    import errno
    import shutil

    from server.engine import engine as engine_module
    from server.learning.registry import Registry

    settings, rift = _with_one_document(tmp_path, tiny_model_path)
    real_save, real_usage = Registry._save, engine_module.shutil.disk_usage
    disk_full = threading.Event()

    def full(self: Registry) -> None:
        if any(v.status == "serving" and v.version.startswith("rx-") for v in self._versions.values()):
            disk_full.set()  # from here on the disk reads full too (below min_free_disk_mb)
            raise OSError(errno.ENOSPC, "No space left on device")
        real_save(self)

    def usage(path: object) -> object:
        return shutil._ntuple_diskusage(10**12, 10**12, 0) if disk_full.is_set() else real_usage(path)

    try:
        monkeypatch.setattr(Registry, "_save", full)
        monkeypatch.setattr(engine_module.shutil, "disk_usage", usage)
        started = rift.learning.reindex(str(build_tiny_model(tmp_path / "tiny16", hidden=16, seed=3)))
        rift.learning.jobs.wait(120)
        status = rift.learning.status(started["job_id"])
        assert status["status"] == "failed" and "disk holding rift's data" in status["error"], status
        engine = rift.engine()
        assert engine.state.collection("default").model_version == str(tiny_model_path)
        assert engine.embedder.version == str(tiny_model_path)
        assert rift.learning.registry.serving().version == str(tiny_model_path)
        from server.engine.engine import chroma_name_for

        names = [n for n, _ in engine.vectors.list_collections()]
        assert chroma_name_for("default", str(tiny_model_path)) in names
        assert chroma_name_for("default", started["version"]) not in names  # the candidate's vectors went
        hits = rift.search("default", "the cat sat on the mat", mode="vector").outcome.hits
        assert [h.doc_id for h in hits] == ["doc1"]
        # Noted as such, not left "in progress" (which the next start read as a server that stopped).
        note = rift.learning.registry.get(started["version"]).note
        assert note.endswith("failed: its switch was undone (OSError: [Errno 28] No space left on device)"), note
    finally:
        monkeypatch.undo()
        rift.close()
    again = open_rift(settings)
    try:
        assert not again.repair_report.get("reembedded")
        assert again.learning.registry.serving().version == str(tiny_model_path)
        assert again.learning.registry.get(started["version"]).note == note
    finally:
        again.close()


def test_a_rollback_whose_registry_write_fails_keeps_the_vectors_it_rolled_back_to(
    tmp_path: Path, tiny_model_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Undoing a rollback must not drop the retired version's kept vectors (learn_keep_versions): the next
    rollback would re-embed every collection."""
    import errno

    from server.engine.engine import chroma_name_for
    from server.learning.registry import Registry

    settings, rift = _with_one_document(tmp_path, tiny_model_path)
    try:
        started = rift.learning.reindex(str(build_tiny_model(tmp_path / "tiny16", hidden=16, seed=3)))
        rift.learning.jobs.wait(120)
        assert rift.learning.status(started["job_id"])["status"] == "succeeded"
        engine, base = rift.engine(), str(tiny_model_path)
        kept = chroma_name_for("default", base)
        assert kept in [n for n, _ in engine.vectors.list_collections()]
        real_save = Registry._save

        def full(self: Registry) -> None:
            if self._versions[base].status == "serving":
                raise OSError(errno.ENOSPC, "No space left on device")
            real_save(self)

        monkeypatch.setattr(Registry, "_save", full)
        back = rift.learning.rollback()
        rift.learning.jobs.wait(120)
        assert rift.learning.status(back["job_id"])["status"] == "failed"
        assert engine.embedder.version == started["version"] == rift.learning.registry.serving().version
        assert kept in [n for n, _ in engine.vectors.list_collections()]
        monkeypatch.undo()
        back = rift.learning.rollback()
        rift.learning.jobs.wait(120)
        assert rift.learning.status(back["job_id"])["status"] == "succeeded"
        assert engine.embedder.version == base
    finally:
        monkeypatch.undo()
        rift.close()


def test_a_registry_write_that_fails_changes_nothing(tmp_path: Path) -> None:
    import errno

    from server.learning.registry import ModelVersion, Registry

    registry = Registry(tmp_path / "models")
    registry.serve_base("base-model")
    registry.add(ModelVersion("ft-1", "fine-tune", "ft-1", "base-model", "retired", created_at=1.0))

    def full() -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    registry._save = full  # type: ignore[method-assign]
    for change in (
        lambda: registry.set_serving("ft-1"),
        lambda: registry.update("ft-1", status="serving", note="x"),
        lambda: registry.add(ModelVersion("ft-2", "fine-tune", "ft-2", "base-model", "serving", created_at=2.0)),
    ):
        with pytest.raises(OSError):
            change()
        assert registry.serving().version == "base-model"
        assert sorted((v.version, v.status, v.note) for v in registry.all()) == [
            ("base-model", "serving", None),
            ("ft-1", "retired", None),
        ]
    assert Registry(tmp_path / "models").serving().version == "base-model"


def test_a_retrain_on_a_nearly_full_disk_is_refused_before_it_trains(
    tmp_path: Path, tiny_model_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Room for the floor but not for the candidate's weights and checkpoints: the retrain used to train and
    write them anyway, and fail only once it came to encoding (the periodic policy again every window)."""
    import shutil

    from server.engine import engine as engine_module
    from server.errors import RiftError

    settings = make_settings(tmp_path / "data", tiny_model_path, learn_min_triples=2)
    rift = open_rift(settings)
    try:
        fill_two_collections(rift)
        weights = sum(f.stat().st_size for f in tiny_model_path.rglob("*.safetensors"))
        free = settings.min_free_disk_mb * 1024 * 1024 + weights  # the floor and one copy: not four
        usage = shutil._ntuple_diskusage(10**12, 10**12 - free, free)
        monkeypatch.setattr(engine_module.shutil, "disk_usage", lambda _: usage)
        with pytest.raises(RiftError, match=r"less than min_free_disk_mb \(64\), and a retrain needs about 1 MB"):
            rift.learning.retrain(batch_size=4)
        assert not list(settings.models_dir.glob("ft-*"))
        assert rift.learning.jobs.running is None
        rift.add_documents("default", docs(("small", "a small write still fits")))  # above the floor
        # A model named by hub id has no folder to measure (it was the floor alone): its loaded size counts.
        with pytest.raises(RiftError, match=r"a retrain needs about 1 MB"):
            rift.learning._check_room_to_train(rift.engine(), "BAAI/bge-small-en-v1.5")
    finally:
        monkeypatch.undo()
        rift.close()


def test_cli_reindex_with_a_model_that_cannot_load_says_why(tmp_path: Path, tiny_model_path: Path, monkeypatch) -> None:
    from click.testing import CliRunner

    from server.cli import main

    settings, rift = _with_one_document(tmp_path, tiny_model_path)
    rift.close()
    monkeypatch.setenv("RIFT_MODEL", str(tiny_model_path))
    monkeypatch.setenv("RIFT_CONFIG", "/dev/null")
    missing = tmp_path / "no-such-model"
    res = CliRunner().invoke(main, ["reindex", "--model", str(missing), "--data-dir", str(settings.data_dir)])
    assert res.exit_code == 1
    # The reason on stderr, in one line (stdout has the job's JSON): not only "reindex: failed 0/0".
    assert "reindex failed: " in res.stderr and str(missing) in res.stderr.splitlines()[-1], res.stderr


def test_only_the_newest_retired_fine_tunes_keep_their_weights(tmp_path: Path, tiny_model_path: Path) -> None:
    """Every accepted retrain left its weight folder (~90 MB for MiniLM) on disk for good: past
    learn_keep_weights retired fine-tunes the oldest is deleted at the swap, noted in the registry, and rollback
    refuses it by name and skips it when choosing the version to return to."""
    settings = make_settings(
        tmp_path / "data", tiny_model_path, learn_min_triples=2, gate_tolerance=1.0, learn_keep_weights=1,
        learn_keep_versions=1, learn_searches="all",  # (retrains again on the same log)
    )
    rift = open_rift(settings)
    try:
        fill_two_collections(rift)
        learning = rift.learning
        tuned = []
        for _ in range(3):
            started = learning.retrain(batch_size=4, epochs=1)
            learning.jobs.wait(120)
            assert learning.status(started["job_id"])["status"] == "succeeded", learning.status()
            tuned.append(learning.registry.serving().version)
        first, second, third = (learning.registry.get(v) for v in tuned)
        assert (first.status, second.status, third.status) == ("retired", "retired", "serving")
        assert not Path(learning.registry.location_of(first)).exists() and "weights deleted" in first.note
        assert Path(learning.registry.location_of(second)).is_dir()
        with pytest.raises(Exception, match="weights were deleted.*learn_keep_weights"):
            learning.rollback(first.version)
        back = learning.rollback()
        assert back["version"] == second.version
        learning.jobs.wait(120)
        assert learning.status(back["job_id"])["status"] == "succeeded"
        assert rift.search("default", queries()[0]).outcome.model_version == second.version
    finally:
        rift.close()


def test_setting_model_to_the_reindexed_model_serves_its_vectors_without_re_embedding(
    tmp_path: Path, tiny_model_path: Path
) -> None:
    """After `rift reindex --model X`, setting `model = X` (the obvious next step) re-embedded the whole store
    as a new version of the same weights, and read-only commands refused the store meanwhile. The reindexed
    version (and a fine-tune trained from it) now serves under that setting as it is."""
    settings, rift = _with_one_document(tmp_path, tiny_model_path)
    try:
        reindexed = _reindexed(rift, tmp_path)
    finally:
        rift.close()
    moved = make_settings(tmp_path / "data", tmp_path / "tiny16" / "model" / ".." / "model")  # another spelling
    readonly = Rift(moved).start(background=False, reembed=False)  # as `rift stats` opens the store
    try:
        assert readonly.engine().embedder.version == reindexed
    finally:
        readonly.close()
    again = open_rift(moved)
    try:
        assert again.engine().embedder.version == reindexed
        assert {r.model_version for r in again.engine().state.collections()} == {reindexed}
        assert again.learning.registry.serving().version == reindexed
        assert ids(again.search("default", "cat on the mat", 1).outcome.hits) == ["doc1"]
        # Rollback agrees with start-up: the first model's version is of another lineage now, which a restart
        # with this setting would not serve.
        with pytest.raises(Exception, match="nothing to roll back to"):
            again.learning.rollback()
        with pytest.raises(Exception, match="configured with .*tiny16.*set model to"):
            again.learning.rollback(str(tiny_model_path))
        # A second reindex from there: `model` may keep naming the first reindexed model.
        chained = again.learning.reindex(str(build_tiny_model(tmp_path / "tiny16b", hidden=16, seed=5)))
        again.learning.jobs.wait(120)
        assert again.learning.status(chained["job_id"])["status"] == "succeeded"
        second = again.learning.registry.serving().version
    finally:
        again.close()
    last = open_rift(moved)
    try:
        assert last.engine().embedder.version == second
        assert {r.model_version for r in last.engine().state.collections()} == {second}
    finally:
        last.close()


def test_a_fine_tune_keeps_serving_after_the_data_dir_and_model_folder_move(
    tmp_path: Path,
) -> None:
    """The data dir and the base model's folder moved together, `model` set to the folder's new path (same
    bytes): read-only commands refused, naming the old path, and `rift add` re-embedded every collection with
    the base model and retired the fine-tune, which rollback then refused. The same weights are the same
    model: the fine-tune keeps serving its vectors, and a rollback to the base loads it from its new
    folder."""
    import shutil

    knobs = {"learn_min_triples": 2, "gate_tolerance": 1.0}
    old = build_tiny_model(tmp_path / "old")
    rift = open_rift(make_settings(tmp_path / "old" / "data", old, **knobs))
    try:
        fill_two_collections(rift)
        started = rift.learning.retrain(batch_size=4, epochs=1)
        rift.learning.jobs.wait(120)
        assert rift.learning.status(started["job_id"])["status"] == "succeeded"
        tuned = rift.learning.registry.serving().version
    finally:
        rift.close()
    shutil.move(tmp_path / "old", tmp_path / "new")
    folder = tmp_path / "new" / old.name
    readonly = Rift(make_settings(tmp_path / "new" / "data", folder, **knobs)).start(
        background=False, reembed=False
    )  # as `rift search` opens the store
    try:
        assert readonly.engine().embedder.version == tuned
    finally:
        readonly.close()
    rift = open_rift(make_settings(tmp_path / "new" / "data", folder, **knobs))
    try:
        assert rift.repair_report["reembedded"] == []
        assert rift.engine().embedder.version == tuned
        assert {r.model_version for r in rift.engine().state.collections()} == {tuned}
        assert rift.search("default", queries()[0]).outcome.hits
        back = rift.learning.rollback()  # to the base model, which loads from its new folder
        assert back["version"] == str(old)
        rift.learning.jobs.wait(120)
        assert rift.learning.status(back["job_id"])["status"] == "succeeded", rift.learning.status()
        assert rift.engine().embedder.spec.location == str(folder)
    finally:
        rift.close()
    rift = open_rift(make_settings(tmp_path / "new" / "data", folder, **knobs))
    try:
        assert rift.repair_report["reembedded"] == []
        assert rift.engine().embedder.version == str(old)
        rift.learning.rollback(tuned)  # and forward again: still one lineage
        rift.learning.jobs.wait(120)
        assert rift.learning.registry.serving().version == tuned
    finally:
        rift.close()


def test_a_base_model_folder_moved_twice_or_back_still_rolls_back(tmp_path: Path) -> None:
    """The base version's location follows its folder on every move, not only the first: moved again (B to C)
    or back to its first path while a fine-tune serves, a rollback to the base loaded the folder of the
    first move, which is gone."""
    import shutil

    knobs = {"learn_min_triples": 2, "gate_tolerance": 1.0}
    first = build_tiny_model(tmp_path / "A")
    rift = open_rift(make_settings(tmp_path / "A" / "data", first, **knobs))
    try:
        fill_two_collections(rift)
        rift.learning.retrain(batch_size=4, epochs=1)
        rift.learning.jobs.wait(120)
        tuned = rift.learning.registry.serving().version
    finally:
        rift.close()
    for where in ("B", "C", "A"):  # moved, moved again, moved back
        shutil.move(next(p for p in tmp_path.iterdir() if p.name in "ABC"), tmp_path / where)
        folder = tmp_path / where / first.name
        rift = open_rift(make_settings(tmp_path / where / "data", folder, **knobs))
        try:
            assert rift.repair_report["reembedded"] == []
            assert rift.engine().embedder.version == tuned
            assert rift.learning.registry.get(str(first)).location == str(folder)
        finally:
            rift.close()
    rift = open_rift(make_settings(tmp_path / "A" / "data", first, **knobs))
    try:
        back = rift.learning.rollback()
        rift.learning.jobs.wait(120)
        assert rift.learning.status(back["job_id"])["status"] == "succeeded", rift.learning.status()
        assert rift.engine().embedder.spec.location == str(first)
    finally:
        rift.close()


def test_a_reindex_to_the_packaged_model_survives_a_new_venv(
    tmp_path: Path, tiny_model_path: Path, monkeypatch
) -> None:
    """`rift reindex --model all-MiniLM-L6-v2` recorded the packaged folder's path inside the venv: once the
    venv was made again (another Python: another site-packages), the version could not load, read-only commands
    refused and `rift serve` re-embedded every collection with the base model."""
    import shutil

    from server.engine import models

    packaged = build_tiny_model(tmp_path / "venv1", hidden=16, seed=3)
    monkeypatch.setattr(models, "packaged_model_path", lambda: packaged)
    settings, rift = _with_one_document(tmp_path, tiny_model_path)
    try:
        started = rift.learning.reindex("all-MiniLM-L6-v2")
        rift.learning.jobs.wait(120)
        assert rift.learning.status(started["job_id"])["status"] == "succeeded"
        version = rift.learning.registry.serving().version
    finally:
        rift.close()
    shutil.move(tmp_path / "venv1", tmp_path / "venv2")  # the venv made again
    packaged = tmp_path / "venv2" / packaged.name
    Rift(settings).start(background=False, reembed=False).close()  # as `rift search` opens the store
    rift = open_rift(settings)
    try:
        assert rift.repair_report["reembedded"] == []
        assert rift.engine().embedder.version == version
        assert rift.engine().embedder.spec.location == str(packaged)
    finally:
        rift.close()


def test_a_moved_reindexed_model_folder_keeps_serving_its_version(
    tmp_path: Path, tiny_model_path: Path
) -> None:
    """`model` set to a re-indexed model's folder serves its version; once that folder moved and `model` names
    its new path (same weights), it still does, without re-embedding."""
    import shutil

    settings, rift = _with_one_document(tmp_path, tiny_model_path)
    try:
        reindexed = _reindexed(rift, tmp_path)
    finally:
        rift.close()
    open_rift(make_settings(tmp_path / "data", tmp_path / "tiny16" / "model")).close()  # records its weights
    shutil.move(tmp_path / "tiny16", tmp_path / "elsewhere")
    rift = open_rift(make_settings(tmp_path / "data", tmp_path / "elsewhere" / "model"))
    try:
        assert rift.repair_report["reembedded"] == []
        assert rift.engine().embedder.version == reindexed
        assert ids(rift.search("default", "cat on the mat", 1).outcome.hits) == ["doc1"]
    finally:
        rift.close()


def test_a_fine_tune_folder_the_configured_model_names_keeps_its_weights(
    tmp_path: Path, tiny_model_path: Path
) -> None:
    """The README tells other processes to set `model` to a fine-tune's folder; set so here, a base version of
    that path serves while the fine-tune's own entry is retired, and pruning past learn_keep_weights deleted
    the very weights being served."""
    knobs = {"learn_min_triples": 2, "gate_tolerance": 1.0, "learn_keep_weights": 1, "learn_keep_versions": 1}
    knobs["learn_searches"] = "all"  # (retrains again on the same log)
    rift = open_rift(make_settings(tmp_path / "data", tiny_model_path, **knobs))
    try:
        fill_two_collections(rift)
        started = rift.learning.retrain(batch_size=4, epochs=1)
        rift.learning.jobs.wait(120)
        assert rift.learning.status(started["job_id"])["status"] == "succeeded"
        first = rift.learning.registry.serving()
        folder = Path(rift.learning.registry.location_of(first))
    finally:
        rift.close()
    rift = open_rift(make_settings(tmp_path / "data", folder, **knobs))
    try:
        assert rift.learning.registry.get(first.version).status == "retired"
        for _ in range(2):
            started = rift.learning.retrain(batch_size=4, epochs=1)
            rift.learning.jobs.wait(120)
            assert rift.learning.status(started["job_id"])["status"] == "succeeded"
        assert folder.is_dir() and "weights deleted" not in (rift.learning.registry.get(first.version).note or "")
    finally:
        rift.close()
    again = open_rift(make_settings(tmp_path / "data", folder, **knobs))  # the configured model still loads
    again.close()


def test_a_model_change_killed_while_re_embedding_is_no_rollback(
    tmp_path: Path, tiny_model_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`rift serve` with a new model retires the old one before it re-embeds: killed then, the collections are on
    a retired version with its weights, which is what a killed rollback leaves too; but no rollback ran, and
    running one would go back to the model the user left (found by helper BP)."""
    from server.engine.engine import Engine
    from server.errors import RiftError
    from server.service import Rift

    settings, rift = _with_one_document(tmp_path, tiny_model_path)
    rift.close()
    other = make_settings(tmp_path / "data", build_tiny_model(tmp_path / "tiny16", hidden=16, seed=3))

    def killed(self: Engine, *args: object, **kwargs: object) -> None:
        raise RuntimeError("killed")  # stands for a kill during the start-up's re-embedding

    monkeypatch.setattr(Engine, "open", killed)
    with pytest.raises(RiftError, match="killed"):
        Rift(other).start(background=False)
    monkeypatch.undo()
    with pytest.raises(RiftError) as refused:
        Rift(other).start(background=False, reembed=False)
    message = str(refused.value)
    assert "rollback" not in message and f"configured with model {other.model!r}" in message
