"""A retrain outlives its process: a shutdown mid-training checkpoints, the next server start continues from
that step (and ends where an uninterrupted training ends), a shutdown while gating gates the saved weights
again; a plan that cannot continue (another model serves now, or the setting is off) is dropped with a note,
and a one-off CLI command leaves it for the next server."""

from __future__ import annotations

import json
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
    cli = open_rift(settings)
    try:  # `rift models --prune` keeps the weights the next server gates
        assert cli.learning.registry.get(plan.version).status == "failed"
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
