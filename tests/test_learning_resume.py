"""A retrain outlives its process: a shutdown mid-training checkpoints, the next server start continues from
that step (and ends where an uninterrupted training ends), a shutdown while gating gates the saved weights
again; a plan that cannot continue (another model serves now, or the setting is off) is dropped with a note,
and a one-off CLI command leaves it for the next server."""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import pytest

from server.learning import resume
from server.learning.resume import ResumePlan
from server.learning.training import TrainConfig, latest_checkpoint, train_model
from server.service import Rift
from tests.support.helpers import make_settings, open_rift
from tests.support.learning import fill_two_collections

pytestmark = pytest.mark.slow


def _serve(settings) -> Rift:
    """Open as `rift serve` does (in the background, so interrupted jobs continue), and wait for it."""
    rift = Rift(settings).start(background=True)
    rift.engine(timeout=120)
    return rift


def _wait_for(condition, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def _training(rift: Rift, epochs: int = 2, at_step: int = 1):
    """Start a retrain and wait until its training passed `at_step`; the job."""
    started = rift.learning.retrain(batch_size=2, epochs=epochs)
    job = rift.learning.jobs.get(started["job_id"])
    _wait_for(lambda: job.phase == "training" and job.done >= at_step)
    return job


def _stopped_while_training(settings, at_step: int) -> tuple[ResumePlan, str]:
    """Start a retrain, shut the server down once training passed `at_step`; the plan and the base version."""
    rift = open_rift(settings)
    try:
        fill_two_collections(rift)
        base = rift.learning.registry.serving().version
        job = _training(rift, at_step=at_step)
    finally:
        rift.close()  # a shutdown: the job stops and keeps what it did
    [plan] = resume.pending(settings.models_dir)
    assert plan.job_id == job.id  # the id `retrain` returned, for the job that continues it
    return plan, base


def test_a_retrain_stopped_by_shutdown_continues_at_the_next_start(tmp_path: Path, tiny_model_path: Path) -> None:
    settings = make_settings(tmp_path / "data", tiny_model_path, learn_min_triples=2, gate_tolerance=1.0)
    plan, base = _stopped_while_training(settings, at_step=2)
    checkpoint = latest_checkpoint(resume.checkpoint_dir(settings.models_dir, plan.version))
    assert checkpoint is not None
    step = int(checkpoint.rsplit("-", 1)[-1])
    assert step >= 2
    kept = json.loads(resume.plan_path(settings.models_dir, plan.version).read_text())
    assert kept["parent"] == base and kept["rows"] and kept["holdout"]

    # A one-off command (the CLI opens in the foreground) leaves the plan for the next server, and says so.
    cli = open_rift(settings)
    try:
        assert cli.learning.jobs.running is None
        assert cli.stats()["learning"]["interrupted_retrain"] == {
            "version": plan.version,
            "triples": len(plan.rows),
            "continues_from": f"training step {step}",
            "continues_at_next_server_start": True,
        }
        assert cli.learning.delete_unservable_weights()["deleted"] == []
    finally:
        cli.close()
    assert resume.plan_path(settings.models_dir, plan.version).exists()

    rift = _serve(settings)
    try:
        job = rift.learning.jobs.get()
        assert job.id == plan.job_id  # a client polling the id it was given still finds its job
        rift.learning.jobs.wait(180)
        status = rift.learning.status(plan.job_id)
        assert status["status"] == "succeeded", status
        assert status["params"]["resumed"] is True
        assert status["result"]["train"]["resumed_at_step"] == step
        assert status["result"]["version"] == plan.version
        assert rift.learning.registry.serving().version == plan.version
        assert rift.search("default", "cat dog").outcome.model_version == plan.version
        assert resume.pending(settings.models_dir) == []
        assert not resume.checkpoint_dir(settings.models_dir, plan.version).exists()
        assert rift.stats()["learning"]["interrupted_retrain"] is None
    finally:
        rift.close()

    # Continuing from the checkpoint ends where one uninterrupted training on the same rows ends.
    import torch
    from sentence_transformers import SentenceTransformer

    reference = train_model(
        plan.base_location,
        [tuple(row) for row in kept["rows"]],
        tmp_path / "reference",
        TrainConfig(**kept["config"]),
        plan.query_prompt,
        plan.document_prompt,
    )
    resumed = SentenceTransformer(str(settings.models_dir / plan.version), device="cpu").state_dict()
    uninterrupted = SentenceTransformer(str(reference.path), device="cpu").state_dict()
    assert resumed.keys() == uninterrupted.keys()
    for name, weight in uninterrupted.items():
        assert torch.allclose(resumed[name], weight, atol=1e-6), name


def test_a_continued_retrain_gates_on_held_out_verdicts_as_they_read_now(
    tmp_path: Path, tiny_model_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The gate searches afresh and ranks today's documents: as for a retrain that did not stop, a held-out
    verdict on a document deleted since the shutdown must not count (it scored 0 for both models, yet counted
    towards the feedback queries that let labels decide)."""
    from server.learning.gate import Gate

    settings = make_settings(tmp_path / "data", tiny_model_path, learn_min_triples=2, gate_tolerance=1.0)
    plan, _base = _stopped_while_training(settings, at_step=1)
    cli = open_rift(settings)  # (a one-off command: the plan waits for the next server)
    try:
        held = next(q for q in cli.log.by_ids(plan.holdout) if len(q.fused) >= 2)
        uses = {d: sum(d in docs for docs in plan.row_docs) for d in held.fused[1:]}
        kept, gone = held.fused[0], min(uses, key=uses.__getitem__)  # (the fewest training rows leave with it)
        cli.learning.judge(held.query_id, [(kept, True), (gone, True)])
        assert cli.delete_documents(held.collection, [gone])[0] == [gone]
    finally:
        cli.close()

    seen: list[dict[str, dict[str, bool]]] = []
    real = Gate.score

    def recording(self, serving, candidate, holdout, feedback=None, *args, **kwargs):  # type: ignore[no-untyped-def]
        seen.append(dict(feedback or {}))
        return real(self, serving, candidate, holdout, feedback, *args, **kwargs)

    monkeypatch.setattr(Gate, "score", recording)
    rift = _serve(settings)
    try:
        rift.learning.jobs.wait(180)
        assert rift.learning.status(plan.job_id)["params"]["resumed"] is True
    finally:
        rift.close()
    assert seen and seen[0][held.query_id] == {kept: True}


def test_a_plan_that_cannot_continue_is_dropped_with_a_note(tmp_path: Path, tiny_model_path: Path) -> None:
    settings = make_settings(tmp_path / "data", tiny_model_path, learn_min_triples=2, gate_tolerance=1.0)
    plan, base = _stopped_while_training(settings, at_step=1)
    saved = settings.models_dir / "saved-plan"
    shutil.copy(resume.plan_path(settings.models_dir, plan.version), saved)

    # The setting off: the next server drops it and its checkpoints, and serves on.
    off = settings.model_copy(update={"learn_resume_interrupted": False})
    rift = _serve(off)
    try:
        assert rift.learning.jobs.running is None
        assert resume.pending(settings.models_dir) == []
        assert not resume.checkpoint_dir(settings.models_dir, plan.version).exists()
        assert rift.learning.registry.serving().version == base
        dropped = rift.learning.registry.get(plan.version)  # a note says what became of it
        assert dropped.status == "failed" and dropped.note.endswith("continued: learn_resume_interrupted is off")
    finally:
        rift.close()

    # Another model serves now: the plan (trained from the old one) is dropped, never trained on.
    shutil.copy(saved, resume.plan_path(settings.models_dir, plan.version))
    stale = json.loads(saved.read_text())
    stale["parent"] = "some-other-version"
    resume.plan_path(settings.models_dir, plan.version).write_text(json.dumps(stale))
    rift = _serve(settings)
    try:
        assert rift.learning.jobs.running is None
        assert resume.pending(settings.models_dir) == []
        note = rift.learning.registry.get(plan.version).note
        assert "no longer serves" in note, note
    finally:
        rift.close()

    # Stopped after its gate had rejected it (a kill before the plan was removed): the next start gated the
    # rejected candidate again, and could have served it. It stays rejected.
    from server.learning.registry import Registry

    shutil.copy(saved, resume.plan_path(settings.models_dir, plan.version))
    Registry(settings.models_dir).update(plan.version, status="rejected", note="gate")
    rift = _serve(settings)
    try:
        assert rift.learning.jobs.running is None
        assert resume.pending(settings.models_dir) == []
        assert rift.learning.registry.get(plan.version).status == "rejected"
        assert rift.learning.registry.serving().version == base
    finally:
        rift.close()


def test_an_interrupted_retrain_without_room_to_continue_waits_for_a_start_with_room(
    tmp_path: Path, tiny_model_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Refused by the room a retrain needs, a resumed job failed and its plan and checkpoints were deleted,
    with no note anywhere. They stay for the next start."""
    from server.engine import engine as engine_module

    settings = make_settings(tmp_path / "data", tiny_model_path, learn_min_triples=2, gate_tolerance=1.0)
    plan, base = _stopped_while_training(settings, at_step=1)
    checkpoints = resume.checkpoint_dir(settings.models_dir, plan.version)
    assert checkpoints.exists()
    weights = sum(f.stat().st_size for f in tiny_model_path.rglob("*.safetensors"))
    free = settings.min_free_disk_mb * 1024 * 1024 + weights
    monkeypatch.setattr(
        engine_module.shutil, "disk_usage", lambda _: shutil._ntuple_diskusage(10**12, 10**12 - free, free)
    )
    rift = _serve(settings)
    try:
        assert rift.learning.jobs.running is None
        assert [p.version for p in resume.pending(settings.models_dir)] == [plan.version]
        assert checkpoints.exists()
    finally:
        rift.close()
    monkeypatch.undo()
    rift = _serve(settings)
    try:
        rift.learning.jobs.wait(180)
        assert rift.learning.status()["status"] == "succeeded"
        assert resume.pending(settings.models_dir) == []
    finally:
        rift.close()


def test_a_shutdown_while_encoding_gates_the_saved_weights_at_the_next_start(
    tmp_path: Path, tiny_model_path: Path, monkeypatch
) -> None:
    import server.learning.manager as manager

    built = manager.build_all

    def slow_build(engine, embedder, progress=None, collections=None):  # a corpus that takes a while
        done = built(engine, embedder, progress, collections)
        if progress is not None and embedder.version.startswith("ft-"):
            for _ in range(3000):
                progress(0, 1)  # raises once the shutdown cancels the job
                time.sleep(0.01)
        return done

    settings = make_settings(tmp_path / "data", tiny_model_path, learn_min_triples=2, gate_tolerance=1.0)
    rift = open_rift(settings)
    try:
        fill_two_collections(rift)
        base = rift.learning.registry.serving().version
        monkeypatch.setattr(manager, "build_all", slow_build)
        started = rift.learning.retrain(batch_size=2, epochs=1)
        job = rift.learning.jobs.get(started["job_id"])
        _wait_for(lambda: job.phase == "encoding")
    finally:
        rift.close()
    monkeypatch.setattr(manager, "build_all", built)
    [plan] = resume.pending(settings.models_dir)
    assert plan.trained and (settings.models_dir / plan.version).is_dir()
    assert not resume.checkpoint_dir(settings.models_dir, plan.version).exists()  # training is done
    # A kill -9 instead of the shutdown leaves the note the job set while it ran: the next start (a command's
    # too) said "the server stopped during the job", a candidate over, while stats said it continues (found by
    # helper BI); now both say it continues.
    from server.learning.registry import Registry

    noted = Registry(settings.models_dir).get(plan.version).note
    Registry(settings.models_dir).update(plan.version, note="candidate being evaluated")
    cli = open_rift(settings)
    try:
        assert cli.learning.registry.get(plan.version).note == (
            "interrupted: continues at the next server start (rift serve)"
        )
    finally:
        cli.close()
    Registry(settings.models_dir).update(plan.version, note=noted)
    cli = open_rift(settings)
    try:  # `rift models --prune` keeps the weights the next server gates
        entry = cli.learning.registry.get(plan.version)
        assert entry.status == "failed" and entry.note.startswith("interrupted by a shutdown")
        assert cli.learning.delete_unservable_weights()["deleted"] == []
        assert cli.stats()["learning"]["interrupted_retrain"]["continues_from"] == "the gate (weights trained)"
    finally:
        cli.close()

    rift = _serve(settings)
    try:
        assert rift.learning.registry.serving().version == base
        rift.learning.jobs.wait(180)
        status = rift.learning.status()
        assert status["status"] == "succeeded", status
        assert [p["phase"] for p in status["phases"]][:2] == ["encoding", "gating"]  # not trained again
        assert status["result"]["train"]["triples"] == len(plan.rows)
        assert rift.learning.registry.serving().version == plan.version
        assert resume.pending(settings.models_dir) == []
    finally:
        rift.close()


def test_only_a_shutdown_keeps_progress_a_cli_interrupt_cancels() -> None:
    import threading

    from server.learning.jobs import JobRunner

    runner = JobRunner()
    release = threading.Event()

    def work(job):
        job.enter("training", total=1)
        while not release.wait(0.01):
            job.check()
        return {"status": "succeeded"}

    shutdown = runner.start("retrain", {}, work)
    assert runner.stop(5) is shutdown and shutdown.status == "cancelled" and shutdown.shutting_down
    interrupted = runner.start("retrain", {}, work)
    assert runner.stop(5, resumable=False) is interrupted and not interrupted.shutting_down


def test_a_shutdown_right_after_start_keeps_the_plan(tmp_path: Path, tiny_model_path: Path) -> None:
    """The continued job may be stopped again before it trained a step: what it continues from stays (on a
    slow or busy CPU it may also get a step further, and keeps that)."""
    settings = make_settings(tmp_path / "data", tiny_model_path, learn_min_triples=2, gate_tolerance=1.0)
    plan, _ = _stopped_while_training(settings, at_step=1)

    def step() -> int:
        latest = latest_checkpoint(resume.checkpoint_dir(settings.models_dir, plan.version))
        assert latest is not None
        return int(Path(latest).name.rsplit("-", 1)[1])

    before = step()
    Rift(settings).start(background=True).close()  # stopped while it loads
    assert [p.version for p in resume.pending(settings.models_dir)] == [plan.version]
    assert step() >= before


def test_a_plan_a_later_retrain_supersedes_gets_a_note(tmp_path: Path, tiny_model_path: Path) -> None:
    """A retrain started by a one-off command drops the plan an earlier shutdown left, and says so in the
    registry (the plan used to vanish without a word, and a version stopped after training kept a note that
    its gate would run at the next start)."""
    settings = make_settings(tmp_path / "data", tiny_model_path, learn_min_triples=2, gate_tolerance=1.0)
    plan, _ = _stopped_while_training(settings, at_step=1)
    assert (settings.models_dir / plan.version).is_dir()  # marked as not registered yet
    cli = open_rift(settings)
    try:
        started = cli.learning.retrain(batch_size=4, epochs=1)
        cli.learning.jobs.wait(180)
        assert cli.learning.status(started["job_id"])["status"] == "succeeded"
        dropped = cli.learning.registry.get(plan.version)
        assert dropped.status == "failed"
        assert dropped.note.endswith("not continued: a later retrain was started after it"), dropped.note
        assert not (settings.models_dir / plan.version).exists()  # nothing registered was in it
        assert resume.pending(settings.models_dir) == []
    finally:
        cli.close()


def test_a_retrain_that_fails_says_why_in_the_registry(
    tmp_path: Path, tiny_model_path: Path, monkeypatch
) -> None:
    from server.learning.gate import Gate

    def broken(*args, **kwargs):
        raise RuntimeError("synthetic gate failure")

    settings = make_settings(tmp_path / "data", tiny_model_path, learn_min_triples=2, gate_tolerance=1.0)
    rift = open_rift(settings)
    try:
        fill_two_collections(rift)
        monkeypatch.setattr(Gate, "score", broken)
        started = rift.learning.retrain(batch_size=4, epochs=1)
        rift.learning.jobs.wait(180)
        assert rift.learning.status(started["job_id"])["status"] == "failed"
        [entry] = [v for v in rift.learning.registry.all() if v.kind == "fine-tune"]
        assert entry.status == "failed"
        assert entry.note == "failed (RuntimeError: synthetic gate failure)"  # it said "interrupted"
    finally:
        rift.close()


def _fill_with_notes(rift: Rift) -> None:
    """Two searched collections; every text of the second ("notes") holds the word "zyzzyva"."""
    from tests.support.helpers import docs
    from tests.support.learning import corpus, queries

    fill_two_collections(rift)
    rift.add_documents("notes", docs(*[(d["id"], f"{d['text']} zyzzyva") for d in corpus()]))
    for text in queries():
        rift.search("notes", f"{text} zyzzyva")


def _texts_on_disk(folder: Path) -> str:
    return "".join(f.read_text() for f in folder.rglob("*") if f.suffix in (".json", ".md", ".txt"))


def test_a_deleted_collections_texts_leave_an_interrupted_retrain(tmp_path: Path, tiny_model_path: Path) -> None:
    """A collection deleted while a retrain waits to continue: its queries and chunks stayed on disk in the
    plan (and its checkpoints' model card quoted training rows), though the query log forgets them."""
    settings = make_settings(tmp_path / "data", tiny_model_path, learn_min_triples=2, gate_tolerance=1.0)
    rift = open_rift(settings)
    try:
        _fill_with_notes(rift)
        _training(rift)
    finally:
        rift.close()
    [plan] = resume.pending(settings.models_dir)
    assert set(plan.row_collections) == {"default", "notes"}
    checkpoints = resume.checkpoint_dir(settings.models_dir, plan.version)
    assert latest_checkpoint(checkpoints) is not None
    # No model card, which quoted training rows: no row of either collection is on disk beside the weights.
    assert not list(checkpoints.rglob("README.md"))
    on_disk = _texts_on_disk(checkpoints)
    assert not any(text in on_disk for row in plan.rows for text in row)

    cli = open_rift(settings)  # deleted by a one-off command, while no server runs
    try:
        cli.delete_collection("notes")
        left = cli.stats()["learning"]["interrupted_retrain"]
        assert left["continues_from"] == "the start of training"  # its checkpoints learnt from the deleted rows
    finally:
        cli.close()
    assert "zyzzyva" not in resume.plan_path(settings.models_dir, plan.version).read_text()
    assert not checkpoints.exists()  # never used again: gone at once, not at the next start
    [kept] = resume.pending(settings.models_dir)
    assert set(kept.row_collections) == {"default"} and len(kept.rows) == left["triples"] > 0

    rift = _serve(settings)
    try:
        rift.learning.jobs.wait(180)
        status = rift.learning.status()
        assert status["status"] == "succeeded", status
        assert "resumed_at_step" not in status["result"]["train"]
        assert status["result"]["train"]["triples"] <= len(kept.rows)
    finally:
        rift.close()


def test_deleting_a_collection_a_retrain_is_training_on_cancels_it(tmp_path: Path, tiny_model_path: Path) -> None:
    settings = make_settings(tmp_path / "data", tiny_model_path, learn_min_triples=2, gate_tolerance=1.0)
    rift = _serve(settings)
    try:
        _fill_with_notes(rift)
        job = _training(rift, epochs=3)
        rift.delete_collection("notes")
        rift.learning.jobs.wait(180)
        status = rift.learning.status(job.id)
        assert status["status"] == "cancelled"
        assert status["error"].startswith("cancelled: collection 'notes' was deleted, and ")
        assert resume.pending(settings.models_dir) == []
        assert not list(settings.models_dir.glob(".*.trainer"))  # its checkpoints went with it
        # Deleting a collection it did not train on leaves a retrain alone.
        started = rift.learning.retrain(batch_size=2, epochs=1)
        job = rift.learning.jobs.get(started["job_id"])
        rift.delete_collection("other")
        rift.learning.jobs.wait(180)
        assert rift.learning.status(job.id)["status"] == "succeeded"
    finally:
        rift.close()


def test_a_plan_that_does_not_name_its_rows_collections_forgets_them_all() -> None:
    """Plans written before rows named their collection: which rows a deleted collection gave is unknown."""
    plan = ResumePlan("v", None, "m", "", "", {}, [["q", "p", "n"]], "s", {}, [], {})
    assert plan.rows_of("any") == 1
    assert plan.drop_rows_of({"any"}) == 1 and plan.rows == [] and plan.restart
    named = ResumePlan("v", None, "m", "", "", {}, [["q", "p", "n"], ["r", "p", "n"]], "s", {}, [], {},
                       row_collections=["a", "b"])
    assert named.drop_rows_of({"b"}) == 1 and named.rows == [["q", "p", "n"]] and named.row_collections == ["a"]
    assert named.drop_rows_of({"b"}) == 0


def test_an_edited_plan_keeps_its_place_among_plans(tmp_path: Path) -> None:
    """Plans are ordered by their time, and the newest continues: removing a deleted collection's rows from
    an older plan made it the newest."""
    import os

    older = ResumePlan("v1", None, "m", "", "", {}, [["q", "p", "n"]], "s", {}, [], {}, row_collections=["a"])
    newer = ResumePlan("v2", None, "m", "", "", {}, [["q", "p", "n"]], "s", {}, [], {}, row_collections=["b"])
    resume.save(tmp_path, older)
    os.utime(resume.plan_path(tmp_path, "v1"), (1_000_000, 1_000_000))
    resume.save(tmp_path, newer)
    older.drop_rows_of({"a"})
    resume.save(tmp_path, older, keep_mtime=True)
    assert [p.version for p in resume.pending(tmp_path)] == ["v1", "v2"]
    assert resume.pending(tmp_path)[0].rows == []


def test_a_plan_from_before_job_ids_were_kept_still_loads(tmp_path: Path) -> None:
    """Plans written by older versions have no job_id: they load, and their continued job gets a new one."""
    from dataclasses import asdict

    plan = ResumePlan("v", None, "m", "", "", {}, [["q", "p", "n"]], "s", {}, [], {}, job_id="abc")
    old = {k: v for k, v in asdict(plan).items() if k != "job_id"}
    resume.plan_path(tmp_path, "v").write_text(json.dumps(old))
    [loaded] = resume.pending(tmp_path)
    assert loaded.job_id is None and loaded.rows == plan.rows
    resume.save(tmp_path, plan)
    assert resume.pending(tmp_path)[0].job_id == "abc"


def test_a_continued_job_keeps_its_id_and_an_unknown_id_says_why() -> None:
    from server.errors import NotFoundError
    from server.learning.jobs import JobRunner

    runner = JobRunner()
    with pytest.raises(NotFoundError, match="no learning job has run since the server started") as none:
        runner.get("e2dcbc399205")
    assert "unknown job_id 'e2dcbc399205'" in str(none.value)
    job = runner.start("retrain", {"resumed": True}, lambda job: {"status": "succeeded"}, job_id="e2dcbc399205")
    runner.wait(5)
    assert job.id == "e2dcbc399205" and runner.get("e2dcbc399205") is job
    with pytest.raises(NotFoundError) as gone:
        runner.get("0123456789ab")
    said = str(gone.value)
    assert "the latest job is e2dcbc399205 (retrain, succeeded)" in said
    assert "not kept across server restarts" in said and "continues under its own job_id" in said
    fresh = runner.start("retrain", {}, lambda job: {"status": "succeeded"})
    assert len(fresh.id) == 12 and fresh.id != job.id


# --- documents deleted or rewritten: their texts leave the plans too -----------------------------------------


def _doc_in_rows(plan: ResumePlan, collection: str = "default") -> tuple[str, str]:
    """A document of `collection` some row's texts came from, and its text (each test corpus text is one chunk)."""
    from tests.support.learning import corpus

    texts = {d["id"]: d["text"] for d in corpus()}
    doc_id = next(docs[0] for c, docs in zip(plan.row_collections, plan.row_docs, strict=True) if c == collection)
    assert any(texts[doc_id] in row for row in plan.rows)
    return doc_id, texts[doc_id]


def test_a_document_deleted_by_another_process_leaves_an_interrupted_retrain(
    tmp_path: Path, tiny_model_path: Path, monkeypatch
) -> None:
    """The audit's case: a retrain stopped by a shutdown, one of its documents deleted by `rift delete` while no
    server ran; its text stayed in the plan on disk, and the next start trained on it."""
    from click.testing import CliRunner

    from server.cli import main
    from server.learning import manager

    settings = make_settings(tmp_path / "data", tiny_model_path, learn_min_triples=2, gate_tolerance=1.0)
    plan, _ = _stopped_while_training(settings, at_step=1)
    assert len(plan.row_docs) == len(plan.rows) and all(len(d) == 2 for d in plan.row_docs)
    doc_id, text = _doc_in_rows(plan)
    path = resume.plan_path(settings.models_dir, plan.version)
    assert text in path.read_text()
    checkpoints = resume.checkpoint_dir(settings.models_dir, plan.version)
    assert latest_checkpoint(checkpoints) is not None

    for name, value in {"RIFT_CONFIG": "/dev/null", "RIFT_MODEL": str(tiny_model_path), "RIFT_CHUNK_TOKENS": "48",
                        "RIFT_CHUNK_OVERLAP": "8"}.items():
        monkeypatch.setenv(name, value)
    deleted = CliRunner().invoke(main, ["delete", doc_id, "--json", "--data-dir", str(settings.data_dir)])
    assert deleted.exit_code == 0, deleted.output
    assert json.loads(deleted.output)["deleted"] == [doc_id]
    assert text not in path.read_text()  # gone from the disk at once, not at the next start
    assert not checkpoints.exists()  # they learnt from its rows: never continued from
    [kept] = resume.pending(settings.models_dir)
    assert kept.restart and 0 < len(kept.rows) < len(plan.rows)
    assert not any(doc_id in docs for docs in kept.row_docs)

    trained_on: list[list[tuple[str, str, str]]] = []
    real = manager.train_model

    def recording(base, rows, *args, **kwargs):
        trained_on.append(list(rows))
        return real(base, rows, *args, **kwargs)

    monkeypatch.setattr(manager, "train_model", recording)
    rift = _serve(settings)
    try:
        rift.learning.jobs.wait(180)
        status = rift.learning.status()
        assert status["status"] == "succeeded", status
        assert "resumed_at_step" not in status["result"]["train"]  # trained again from its start
    finally:
        rift.close()
    [rows] = trained_on
    assert rows == [tuple(r) for r in kept.rows]
    assert not any(text in part for row in rows for part in row)


def test_a_document_deleted_while_a_retrain_trains_leaves_its_plan_but_not_the_job(
    tmp_path: Path, tiny_model_path: Path, monkeypatch
) -> None:
    """delete_documents (by filter, through MCP) during training: the running job is not cancelled (a routine
    sync's prune would end hour-long retrains), its plan on disk forgets the document's rows at once, and a
    shutdown then leaves a plan that trains again from its start without them."""
    import anyio
    from mcp import Client

    from server.app import SERVING, create_server
    from server.learning.jobs import Job
    from tests.support.helpers import docs
    from tests.support.learning import corpus, queries

    real_progress = Job.progress

    def slow(job: Job, done: int, total: int) -> None:  # a training step takes long enough to act during it
        real_progress(job, done, total)
        if job.phase == "training":
            time.sleep(0.1)

    monkeypatch.setattr(Job, "progress", slow)
    settings = make_settings(tmp_path / "data", tiny_model_path, learn_min_triples=2, gate_tolerance=1.0)

    async def scenario() -> tuple[str, str]:
        async with Client(create_server(settings), raise_exceptions=False) as client:
            rift = SERVING[-1]
            rift.engine(timeout=120)
            rift.add_documents("default", docs(*[(d["id"], d["text"], {"n": i}) for i, d in enumerate(corpus())]))
            for text in queries():
                rift.search("default", text)
            job = _training(rift, epochs=3)
            _, plan = rift.learning._live
            doc_id, text = _doc_in_rows(plan)
            path = resume.plan_path(settings.models_dir, plan.version)
            assert text in path.read_text()
            n = next(i for i, d in enumerate(corpus()) if d["id"] == doc_id)
            result = await client.call_tool("delete_documents", {"filters": {"n": n}, "collection": "default"})
            assert not result.is_error and result.structured_content["deleted"] == [doc_id]
            assert text not in path.read_text()
            assert job.status == "running" and job.phase == "training"
            assert rift.learning.status(job.id)["status"] == "running"
        return doc_id, text  # (leaving the session shut the server down mid-training)

    doc_id, text = anyio.run(scenario)
    [kept] = resume.pending(settings.models_dir)
    assert kept.restart and kept.rows and not any(doc_id in d for d in kept.row_docs)
    assert text not in resume.plan_path(settings.models_dir, kept.version).read_text()
    cli = open_rift(settings)
    try:
        assert cli.stats()["learning"]["interrupted_retrain"]["continues_from"] == "the start of training"
    finally:
        cli.close()


def _hand_made_plan(models_dir: Path, rows: list[tuple[str, str, str, str, str]], collection: str,
                    version: str = "ft-20250101-000000-abcdef") -> ResumePlan:
    """A pending plan, as a shutdown mid-training leaves it: rows (query, positive, negative, their documents),
    and a checkpoint folder."""
    plan = ResumePlan(
        version, None, "m", "", "", {}, [[q, p, n] for q, p, n, _, _ in rows], "fused", {}, [], {},
        row_collections=[collection] * len(rows), row_docs=[[pd, nd] for *_, pd, nd in rows],
    )
    resume.save(models_dir, plan)
    (resume.checkpoint_dir(models_dir, version) / "checkpoint-3").mkdir(parents=True)
    return plan


def test_a_pruned_or_edited_file_leaves_an_interrupted_retrain(tmp_path: Path, tiny_model_path: Path) -> None:
    """A folder sync's prune deletes documents through the engine, not the service's delete; an edited file
    synced again replaces its text. Both leave a waiting retrain's plan; an unchanged file does not."""
    from server.ingest.security import PathPolicy
    from server.ingest.sync import sync_paths

    folder = tmp_path / "notes"
    folder.mkdir()
    texts = {
        "secret.txt": "the vault password is hunter2 and the door code",
        "edited.txt": "the old draft of the harbour plan",
        "kept.txt": "the river floods every spring near the bridge",
        "other.txt": "an unrelated note about coffee and tea",
    }
    for name, text in texts.items():
        (folder / name).write_text(text)
    settings = make_settings(tmp_path / "data", tiny_model_path)
    rift = open_rift(settings)  # a one-off command: no retrain runs in it
    try:
        engine = rift.engine()
        sync_paths(engine, "files", [str(folder)], PathPolicy.unrestricted())
        doc = {name: str(folder / name) for name in texts}
        plan = _hand_made_plan(
            settings.models_dir,
            [
                ("vault", texts["secret.txt"], texts["other.txt"], doc["secret.txt"], doc["other.txt"]),
                ("harbour", texts["edited.txt"], texts["other.txt"], doc["edited.txt"], doc["other.txt"]),
                ("river", texts["kept.txt"], texts["other.txt"], doc["kept.txt"], doc["other.txt"]),
            ],
            "files",
        )
        path = resume.plan_path(settings.models_dir, plan.version)
        os.utime(folder / "other.txt", (time.time() + 5, time.time() + 5))  # newer, the same text: rows stay
        sync_paths(engine, "files", [str(folder)], PathPolicy.unrestricted())
        assert resume.pending(settings.models_dir)[0].rows == plan.rows
        (folder / "secret.txt").unlink()
        (folder / "edited.txt").write_text("the new draft of the harbour plan")
        report = sync_paths(engine, "files", [str(folder)], PathPolicy.unrestricted(), prune=True)
        assert {(f.path, f.status) for f in report.files} >= {(doc["secret.txt"], "removed"), (doc["edited.txt"], "updated")}
        on_disk = path.read_text()
        assert "hunter2" not in on_disk and "old draft" not in on_disk
        [kept] = resume.pending(settings.models_dir)
        assert kept.rows == [["river", texts["kept.txt"], texts["other.txt"]]]
        assert kept.restart and not resume.checkpoint_dir(settings.models_dir, plan.version).exists()
    finally:
        rift.close()


def test_a_replaced_documents_old_text_leaves_a_plan_and_an_emptied_plan_is_dropped(
    tmp_path: Path, tiny_model_path: Path
) -> None:
    """add_documents over an existing id with other text replaces what a plan quotes; new metadata alone does
    not. A plan left with no row is dropped, with a note; a plan from before rows named their documents loses
    every row of the collection."""
    from dataclasses import asdict

    from tests.support.helpers import docs

    settings = make_settings(tmp_path / "data", tiny_model_path)
    rift = open_rift(settings)
    try:
        rift.add_documents("default", docs(("a", "alpha text about hunter2"), ("b", "beta text about boats")))
        rift.add_documents("other", docs(("c", "gamma text"), ("d", "delta text")))
        plan = _hand_made_plan(settings.models_dir, [("alpha", "alpha text about hunter2", "beta text about boats",
                                                      "a", "b")], "default")
        legacy = ResumePlan("ft-20240101-000000-abcdef", None, "m", "", "", {}, [["gamma", "gamma text", "delta text"]],
                            "fused", {}, [], {}, row_collections=["other"])
        resume.plan_path(settings.models_dir, legacy.version).write_text(
            json.dumps({k: v for k, v in asdict(legacy).items() if k != "row_docs"})
        )
        rift.add_documents("default", docs(("a", "alpha text about hunter2", {"tag": "x"})))  # metadata only
        rift.add_documents("other", docs(("d", "delta text", {"tag": "x"})))
        assert {p.version: p.rows for p in resume.pending(settings.models_dir)} == {
            plan.version: plan.rows, legacy.version: legacy.rows
        }
        rift.add_documents("default", docs(("a", "alpha text, the password changed")))
        assert not resume.plan_path(settings.models_dir, plan.version).exists()
        assert not resume.checkpoint_dir(settings.models_dir, plan.version).exists()
        entry = rift.learning.registry.get(plan.version)
        assert entry is not None and entry.status == "failed"
        assert "documents of collection 'default', since deleted or rewritten" in entry.note
        rift.add_documents("other", docs(("c", "gamma text, rewritten")))  # a plan that does not say: all of it
        assert resume.pending(settings.models_dir) == []
    finally:
        rift.close()


def test_rows_leave_by_document_and_a_plan_that_does_not_name_them_by_collection() -> None:
    rows = [["q", "p", "n"], ["r", "p2", "n2"], ["s", "p3", "n3"]]
    plan = ResumePlan("v", None, "m", "", "", {}, [list(r) for r in rows], "s", {}, [], {},
                      row_collections=["a", "a", "b"], row_docs=[["x", "y"], ["z", "x"], ["x", "w"]])
    assert plan.documents_of() == {"a": {"x", "y", "z"}, "b": {"x", "w"}}
    assert plan.drop_rows_of_documents("a", {"y"}) == 1 and plan.restart
    assert plan.rows == rows[1:] and plan.row_collections == ["a", "b"] and plan.row_docs == [["z", "x"], ["x", "w"]]
    assert plan.drop_rows_of_documents("a", {"w"}) == 0  # (w is a document of b)
    assert plan.drop_rows_of({"a"}) == 1 and plan.row_docs == [["x", "w"]]  # (kept in step with the rows)
    older = ResumePlan("v", None, "m", "", "", {}, [list(r) for r in rows], "s", {}, [], {},
                       row_collections=["a", "a", "b"])
    assert older.documents_of() == {}
    assert older.drop_rows_of_documents("a", {"anything"}) == 2 and older.rows == [rows[2]]
    oldest = ResumePlan("v", None, "m", "", "", {}, [list(r) for r in rows], "s", {}, [], {})
    assert oldest.drop_rows_of_documents("b", {"x"}) == 3 and oldest.rows == []
    trained = ResumePlan("v", None, "m", "", "", {}, [list(r) for r in rows], "s", {}, [], {}, trained=True,
                         row_collections=["a", "a", "b"], row_docs=[["x", "y"], ["z", "x"], ["x", "w"]])
    assert trained.drop_rows_of_documents("a", {"x"}) == 2 and not trained.restart  # (its weights learnt them)


def test_a_document_rewritten_while_a_retrain_mines_leaves_its_plan(tmp_path: Path, tiny_model_path: Path) -> None:
    """Mining reads documents' texts before the job's plan exists, so a rewrite meanwhile (a sync, an agent)
    had no plan to scrub, and the job-start check drops only documents that are gone: the old text was trained
    on and stayed in the plan on disk."""
    from tests.support.helpers import docs
    from tests.support.learning import corpus

    settings = make_settings(tmp_path / "data", tiny_model_path, learn_min_triples=2, gate_tolerance=1.0)
    texts = {d["id"]: d["text"] for d in corpus()}
    rift = open_rift(settings)
    try:
        fill_two_collections(rift)
        real_mine = rift.learning.mine
        rewritten: list[str] = []

        def mine_then_rewrite(*args, **kwargs):
            out = real_mine(*args, **kwargs)
            if not rewritten:  # (the job's own mining, not a dry run's)
                doc_id = next(t.positive_doc for t in out[2] if t.collection == "default")
                rift.add_documents("default", docs((doc_id, "rewritten: the old words are gone")))
                rewritten.append(doc_id)
            return out

        rift.learning.mine = mine_then_rewrite
        job = _training(rift)
        _, plan = rift.learning._live
        old = texts[rewritten[0]]
        assert not any(old in part for row in plan.rows for part in row)
        assert not any(rewritten[0] in d for d in plan.row_docs) and plan.rows
        assert old not in resume.plan_path(settings.models_dir, plan.version).read_text()
        assert job.status == "running"
    finally:
        rift.close()
    assert rift.learning._mining_gone is None


def test_stats_says_when_the_next_start_drops_a_plan_instead_of_continuing_it(
    tmp_path: Path, tiny_model_path: Path
) -> None:
    """stats announced "continues from the gate" for a plan whose candidate already served (a kill after the
    switch, before the plan was removed), and for one whose starting model no longer serves; the next start
    drops both without a job."""
    settings = make_settings(tmp_path / "data", tiny_model_path)
    rift = open_rift(settings)
    try:
        base = rift.learning.registry.serving().version
        plan = _hand_made_plan(settings.models_dir, [("q", "p", "n", "a", "b")], "default")  # (parent None)
        said = rift.stats()["learning"]["interrupted_retrain"]
        assert said == {
            "version": plan.version,
            "triples": 1,
            "dropped_at_next_server_start": "the model it started from (None) no longer serves",
        }
        plan.parent = base
        resume.save(settings.models_dir, plan)
        assert rift.stats()["learning"]["interrupted_retrain"]["continues_at_next_server_start"] is True
        entry = rift.learning._candidate_entry(plan, {}, "switched in")
        entry.status = "serving"  # (as the registry says once the switch was saved)
        rift.learning.registry.add(entry)
        assert rift.stats()["learning"]["interrupted_retrain"] is None
    finally:
        rift.close()
