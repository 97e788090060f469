"""Learning jobs and policy: cancellation leaves the serving model untouched, one job at a time, the periodic
policy (off by default) starts the same gated retrain after N new queries and shows in stats, and the CLI
mirrors (`rift retrain --dry-run`, `rift models`)."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from server.cli import main
from server.errors import RiftError
from server.learning.jobs import JobRunner
from server.service import Rift
from tests.support.helpers import docs, make_settings, open_rift
from tests.support.learning import fill_two_collections, queries

pytestmark = pytest.mark.slow


def test_job_runner_runs_one_job_at_a_time_and_cancels() -> None:
    runner = JobRunner()
    release = threading.Event()

    def work(job):
        job.enter("waiting", total=1)
        while not release.wait(0.01):
            job.check()
        return {"status": "succeeded"}

    job = runner.start("retrain", {}, work)
    with pytest.raises(RiftError, match="already running"):
        runner.start("retrain", {}, work)
    runner.cancel(job.id)
    runner.wait(5)
    assert runner.get(job.id).status == "cancelled"
    again = runner.start("rollback", {}, lambda j: {"status": "succeeded"})
    runner.wait(5)
    assert runner.get().id == again.id and again.status == "succeeded"

    # Once switching, a cancel is refused, never accepted and then ignored.
    def switching(job):
        job.enter("switching")
        release.wait(5)
        job.check()
        return {"status": "succeeded"}

    release.clear()
    late = runner.start("retrain", {}, switching)
    while late.phase != "switching":
        time.sleep(0.01)
    with pytest.raises(RiftError, match="can no longer be cancelled"):
        runner.cancel(late.id)
    release.set()
    runner.wait(5)
    assert late.status == "succeeded"

    # Shutdown (stop) cancels a cancellable job, and lets a switching one finish instead of raising.
    release.clear()
    early = runner.start("retrain", {}, work)
    assert runner.stop(5) is early and early.status == "cancelled"
    late = runner.start("retrain", {}, switching)
    while late.phase != "switching":
        time.sleep(0.01)
    threading.Timer(0.3, release.set).start()
    assert runner.stop(0.01, switch_timeout=5) is late and late.status == "succeeded"
    assert runner.stop(5) is None


def test_a_cancelled_job_reads_as_stopping_until_it_has() -> None:
    """A cancel lands at the job's next check: until then the job still runs, says the cancel is pending, and a
    new job's refusal says the old one is stopping rather than just "already running"."""
    runner = JobRunner()
    release = threading.Event()

    def work(job):
        job.enter("training", total=1)
        release.wait(5)  # one long step: the next check comes after it
        job.check()
        return {"status": "succeeded"}

    job = runner.start("retrain", {}, work)
    assert job.snapshot()["cancel_requested"] is False
    snap = runner.cancel(job.id).snapshot()
    assert (snap["status"], snap["phase"], snap["cancel_requested"]) == ("running", "training", True)
    with pytest.raises(RiftError, match=f"job_id {job.id}, phase training\\) was cancelled and is still stopping"):
        runner.start("retrain", {}, work)
    release.set()
    runner.wait(5)
    assert (job.snapshot()["status"], job.snapshot()["cancel_requested"]) == ("cancelled", True)
    runner.start("retrain", {}, lambda j: {"status": "succeeded"})
    runner.wait(5)


def test_progress_says_when_its_total_is_not_known_yet() -> None:
    """A phase whose step count is not known yet reads total null, not "0 of 0", which reads as finished."""
    runner = JobRunner()
    entered, counted, release = threading.Event(), threading.Event(), threading.Event()

    def work(job):
        job.enter("training")
        entered.set()
        counted.wait(5)
        job.progress(1, 150)
        entered.clear()
        entered.set()
        release.wait(5)
        return {"status": "succeeded"}

    job = runner.start("retrain", {}, work)
    assert entered.wait(5)
    assert job.snapshot()["progress"] == {"done": 0, "total": None}
    entered.clear()
    counted.set()
    assert entered.wait(5)
    snap = job.snapshot()
    assert snap["progress"] == {"done": 1, "total": 150}
    assert snap["phases"][-1] | {"seconds": 0} == {"phase": "training", "seconds": 0, "done": 1, "total": 150}
    release.set()
    runner.wait(5)


@pytest.mark.parametrize("ending", ["succeeded", "rejected", "failed", "cancelled"])
def test_an_ended_job_reports_no_progress_and_its_phases_keep_their_counts(ending: str) -> None:
    """An ended job's phase is its final status, which counts nothing: its progress reads null, not the last
    phase's counters ("cancelled, 3 of 600" read as work still partial); each phase that counted keeps how far
    it got in `phases`, so where a cancelled or failed job stopped still shows."""
    runner = JobRunner()
    cancel_now = threading.Event()

    def work(job):
        job.enter("training", total=600)
        job.progress(600, 600)
        job.enter("switching")
        job.enter("gating", total=40)
        job.progress(3, 40)
        if ending == "cancelled":
            cancel_now.set()
            while True:
                job.check()
                time.sleep(0.01)
        if ending == "failed":
            raise RiftError("the disk is full")
        return {"status": ending}

    job = runner.start("retrain", {}, work)
    if ending == "cancelled":
        assert cancel_now.wait(5)
        runner.cancel(job.id)
    runner.wait(5)
    snap = job.snapshot()
    assert (snap["status"], snap["phase"]) == (ending, ending)
    assert snap["progress"] == {"done": None, "total": None}
    assert [{k: v for k, v in p.items() if k != "seconds"} for p in snap["phases"]] == [
        {"phase": "training", "done": 600, "total": 600},
        {"phase": "switching"},
        {"phase": "gating", "done": 3, "total": 40},
    ]


def test_cancelled_retrain_changes_nothing(tmp_path: Path, tiny_model_path: Path) -> None:
    settings = make_settings(tmp_path / "data", tiny_model_path, learn_min_triples=2, gate_tolerance=1.0)
    rift = open_rift(settings)
    try:
        fill_two_collections(rift)
        learning = rift.learning
        base = learning.registry.serving().version
        started = learning.retrain(batch_size=2, epochs=20)
        learning.cancel(started["job_id"])
        learning.jobs.wait(120)
        assert learning.status(started["job_id"])["status"] == "cancelled"
        assert learning.registry.serving().version == base
        assert rift.search("default", "cat dog").outcome.model_version == base
        assert [p.name for p in settings.models_dir.iterdir() if p.is_dir()] == []
    finally:
        rift.close()


def test_periodic_policy_is_off_by_default_and_retrains_after_n_queries(
    tmp_path: Path, tiny_model_path: Path
) -> None:
    rift = open_rift(make_settings(tmp_path / "off", tiny_model_path))
    try:
        assert rift.stats()["learning"]["policy"]["enabled"] is False
        assert rift.learning.policy.check() == "off"
    finally:
        rift.close()

    settings = make_settings(
        tmp_path / "on", tiny_model_path, learn_min_triples=2, gate_tolerance=1.0, learn_auto_after_queries=30
    )
    rift = open_rift(settings)
    try:
        policy = rift.learning.policy
        assert not policy.running  # a one-off command (foreground start) never retrains on its own
        assert policy.describe()["last_retrain"] is None  # a new data dir has never retrained
        assert policy.check().startswith("not due: 0 new queries")
        fill_two_collections(rift)  # 60 searches
        outcome = policy.check()
        assert outcome.startswith("started retrain job"), outcome
        rift.learning.jobs.wait(120)
        status = rift.learning.status()
        assert status["params"]["source"] == "policy" and status["status"] == "succeeded", status
        shown = rift.stats()["learning"]["policy"]
        assert (
            shown["enabled"] and shown["after_queries"] == 30 and shown["new_queries_since_last_retrain"] == 0
        )
        assert policy.check().startswith("not due")  # the counter restarted with the retrain
        # The last action outlives later "not due" checks.
        assert shown["last_action"]["outcome"].startswith("started retrain job")
        retrained_at = policy.last_retrain
        assert retrained_at is not None and shown["last_retrain"] == retrained_at
        # A due retrain skipped for too few triples restarts the count but is no retrain.
        policy.settings = policy.settings.model_copy(update={"learn_min_triples": 10**6})
        rift.learning.settings = policy.settings
        for text in queries()[:30]:
            rift.search("other", text + " again")
        assert policy.check().startswith("skipped")
        assert policy.last_retrain == retrained_at and policy.window_start > retrained_at
        assert policy.check().startswith("not due: 0 new queries")
        assert policy.describe()["last_action"]["outcome"].startswith("skipped")
        # An attempt that fails for another reason (a bug, the disk) waits for the next window too: it was tried
        # again at every check, each reading the whole log.
        for text in queries()[:30]:
            rift.search("other", text + " once more")
        real = rift.learning.retrain
        rift.learning.retrain = lambda **kwargs: (_ for _ in ()).throw(OSError(5, "Input/output error"))  # type: ignore[method-assign]
        try:
            assert policy.check().startswith("failed to start (30 new queries")
            assert policy.check().startswith("not due: 0 new queries")
        finally:
            rift.learning.retrain = real  # type: ignore[method-assign]
    finally:
        rift.close()


def test_the_periodic_policy_counts_searches_the_log_no_longer_keeps(tmp_path: Path, tiny_model_path: Path) -> None:
    """learn_auto_after_queries counts searches logged since the last retrain (or skip), not the rows still in
    the log: past log_max_queries the log keeps as many rows however many were searched, so a count of them
    stuck at the limit and a larger learn_auto_after_queries never came due (found by helper AZ). A policy file
    from before the count starts from the searches still logged since its window began."""
    settings = make_settings(
        tmp_path / "data", tiny_model_path, log_max_queries=10, learn_auto_after_queries=25, learn_min_triples=10**6
    )
    rift = open_rift(settings)
    try:
        rift.add_documents("default", docs(("a", "quantum physics energy note"), ("b", "coffee tea sugar milk")))
        policy = rift.learning.policy
        for text in queries()[:24]:
            rift.search("default", text)
        assert rift.log.count() <= 10 and rift.log.searches_logged() == 24
        assert policy.check() == "not due: 24 new queries since the last retrain or skip"
        assert rift.stats()["learning"]["policy"]["new_queries_since_last_retrain"] == 24
        rift.search("default", "coffee energy")
        assert policy.check().startswith("skipped (25 new queries >= 25)")  # (too few triples: a new window)
        assert policy.describe()["new_queries_since_last_retrain"] == 0
        for text in queries()[:3]:
            rift.search("default", text + " again")
    finally:
        rift.close()
    # A policy file written before the count: its window's searches still logged are the new ones.
    path = settings.models_dir / "policy.json"
    state = json.loads(path.read_text())
    assert state["window_searches"] == 25
    path.write_text(json.dumps({"last_retrain": None, "window_start": state["window_start"]}))
    rift = open_rift(settings)
    try:
        assert rift.learning.policy.check() == "not due: 3 new queries since the last retrain or skip"
        rift.search("default", "coffee energy once more")
        assert rift.learning.policy.check() == "not due: 4 new queries since the last retrain or skip"
    finally:
        rift.close()


def test_the_periodic_policy_runs_in_a_server_only(tmp_path: Path, tiny_model_path: Path) -> None:
    settings = make_settings(tmp_path / "data", tiny_model_path, learn_auto_after_queries=30)
    server = Rift(settings).start(background=True)  # as `rift serve` opens it
    try:
        server.engine(timeout=120)
        assert server.learning.policy.running
    finally:
        server.close()
    assert not server.learning.policy.running


def test_cli_retrain_dry_run_and_models(tmp_path: Path, tiny_model_path: Path) -> None:
    settings = make_settings(tmp_path / "data", tiny_model_path)
    rift = open_rift(settings)
    try:
        fill_two_collections(rift)
    finally:
        rift.close()
    env = {"RIFT_MODEL": str(tiny_model_path), "RIFT_CHUNK_TOKENS": "48", "RIFT_CHUNK_OVERLAP": "8"}
    runner = CliRunner()
    dry = runner.invoke(main, ["retrain", "--dry-run", "--json", "--data-dir", str(settings.data_dir)], env=env)
    assert dry.exit_code == 0, dry.output
    out = json.loads(dry.stdout)
    assert out["status"] == "dry_run" and out["mining"]["triples"] > 0
    # For a reader: whether it would train, the counts, and the examples, one a line.
    text = runner.invoke(main, ["retrain", "--dry-run", "--data-dir", str(settings.data_dir)], env=env)
    assert text.exit_code == 0, text.output
    lines = text.stdout.splitlines()
    assert lines[0] == "would train: yes"
    assert lines[1].startswith(f"mined     {out['mining']['triples']:,} triples (fused ")
    example = out["mining"]["examples"][0]
    assert f"examples  {example['query']!r}: {example['positive_doc']} over {example['negative_doc']} (fused)" in lines
    # The miner's BM25-margin setting reaches `retrain`: an impossible margin keeps no fused positive.
    strict = runner.invoke(
        main,
        ["retrain", "--dry-run", "--json", "--data-dir", str(settings.data_dir)],
        env={**env, "RIFT_LEARN_POSITIVE_MIN_KEYWORD_MARGIN": "100"},
    )
    assert strict.exit_code == 0, strict.output
    mining = json.loads(strict.stdout)["mining"]
    assert mining["triples"] < out["mining"]["triples"]
    assert mining["skipped"]["positive_small_keyword_margin"] > 0
    models = runner.invoke(main, ["models", "--json", "--data-dir", str(settings.data_dir)], env=env)
    assert models.exit_code == 0, models.output
    assert [v["status"] for v in json.loads(models.stdout)["versions"]] == ["serving"]
    # For a reader, a table: a header and a line per version (the base model, serving, trained on nothing).
    table = runner.invoke(main, ["models", "--data-dir", str(settings.data_dir)], env=env)
    assert table.exit_code == 0, table.output
    header, line = table.stdout.splitlines()
    assert header.split() == ["VERSION", "KIND", "STATUS", "CREATED", "TRIPLES", "GATE"]
    assert line.split()[1:3] == ["base", "serving"] and line.split()[5] == "-"
    pruned = runner.invoke(main, ["models", "--prune", "--json", "--data-dir", str(settings.data_dir)], env=env)
    assert pruned.exit_code == 0, pruned.output
    assert json.loads(pruned.stdout) == {"deleted": [], "freed_bytes": 0}
    pruned = runner.invoke(main, ["models", "--prune", "--data-dir", str(settings.data_dir)], env=env)
    assert pruned.stdout == "no rejected or failed fine-tune holds weights: nothing to delete\n"
    bad = runner.invoke(main, ["rollback", "--data-dir", str(settings.data_dir)], env=env)
    assert bad.exit_code != 0 and "nothing to roll back to" in bad.output


@pytest.mark.parametrize("source", ["fused", "vector"])
def test_mining_takes_its_negatives_from_the_configured_source(
    tmp_path: Path, tiny_model_path: Path, source: str
) -> None:
    # "fused" (the default) pairs a positive with the documents fusion ranked right after it; "vector" with
    # vector blind spots, which the keyword side does not rank in its top 30.
    overrides = {} if source == "fused" else {"learn_negative_source": source}
    settings = make_settings(
        tmp_path / "data", tiny_model_path, learn_positive_min_keyword_margin=0, **overrides
    )
    assert settings.learn_negative_source == source
    rift = open_rift(settings)
    try:
        fill_two_collections(rift)
        logged = {q.query: q for q in rift.learning.log.iter_queries()}
        mined, _rows, triples = rift.learning.mine()
        assert triples and mined.report.strategy == "fused"
        guarded = 0  # negatives the vector source's false-negative guard would have refused
        for t in triples:
            q = logged[t.query]
            keyword_top = [d for d, _, _ in q.keyword[:30]]
            guarded += t.negative_doc in keyword_top
            if source == "fused":
                after = q.fused[q.fused.index(t.positive_doc) + 1 :]
                assert t.negative_doc in after[: settings.learn_negatives_per_query]
            else:
                assert t.negative_doc in [d for d, _, _ in q.vector[:5]]
        assert (guarded > 0) == (source == "fused")
    finally:
        rift.close()


def test_a_wrong_gate_eval_data_fails_before_any_training(tmp_path: Path, tiny_model_path: Path) -> None:
    settings = make_settings(
        tmp_path / "data", tiny_model_path, learn_min_triples=2, gate_eval_data=tmp_path / "no-beir"
    )
    rift = open_rift(settings)
    try:
        fill_two_collections(rift)
        with pytest.raises(RiftError, match="gate_eval_data .*no-beir.* cannot be read"):
            rift.learning.retrain(batch_size=4)
        assert rift.learning.jobs.running is None
        assert [v.kind for v in rift.learning.registry.all()] == ["base"]
        # A dry run mines without the labels, and says the real call would be refused, with its words.
        dry = rift.learning.retrain(dry_run=True)
        assert dry["status"] == "dry_run" and dry["mining"]["triples"] >= 2
        assert dry["would_train"] is False and "no-beir" in dry["refusal"] and "cannot be read" in dry["refusal"]
    finally:
        rift.close()


def test_searched_evaluation_queries_are_never_trained_on(tmp_path: Path, tiny_model_path: Path) -> None:
    """gate_eval_data's query texts, once searched (by an agent, a user), were mined like any other search: the
    candidate trained on them, and the labelled gate then scored it on the very texts it learned."""
    from server.learning.query_log import normalized_query
    from tests.support.learning import corpus

    beir = tmp_path / "beir"
    (beir / "qrels").mkdir(parents=True)
    (beir / "corpus.jsonl").write_text("\n".join(json.dumps({"_id": d["id"], "text": d["text"]}) for d in corpus()))
    evaluation = {f"q{i}": queries()[i] for i in range(0, 40, 2)}
    (beir / "queries.jsonl").write_text("\n".join(json.dumps({"_id": k, "text": v}) for k, v in evaluation.items()))
    (beir / "qrels" / "test.tsv").write_text(
        "query-id\tcorpus-id\tscore\n" + "\n".join(f"q{i}\td{i % 30}\t1" for i in range(0, 40, 2))
    )
    settings = make_settings(
        tmp_path / "data", tiny_model_path, gate_eval_data=beir, gate_eval_split="test", gate_eval_collection="default"
    )
    rift = open_rift(settings)
    try:
        fill_two_collections(rift)  # searches all of queries(), the evaluation texts among them
        texts = {normalized_query(t) for t in evaluation.values()}
        mined, rows, triples = rift.learning.mine()
        assert rows and not texts & {normalized_query(row[0]) for row in rows}
        assert not texts & {normalized_query(q.query) for q in mined.train_queries}
        assert mined.evaluation_left_out > 0
        dry = rift.learning.retrain(dry_run=True)["mining"]
        assert dry["evaluation_queries_left_out"] == mined.evaluation_left_out
    finally:
        rift.close()


def test_cli_retrain_says_when_the_gate_kept_the_serving_model(
    tmp_path: Path, tiny_model_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A rejected candidate is no failure, but no new model either: `rift retrain` exits 3 and says why, so a
    script's `rift retrain && …` does not read it as a new model."""
    import functools

    from server.learning import manager
    from server.learning.cli import REJECTED_EXIT

    settings = make_settings(tmp_path / "data", tiny_model_path)
    rift = open_rift(settings)
    try:
        fill_two_collections(rift)
    finally:
        rift.close()
    # An impossible gate (stability must exceed 100%) rejects whatever is trained.
    monkeypatch.setattr(manager, "GateConfig", functools.partial(manager.GateConfig, min_stability=1.01))
    env = {
        "RIFT_MODEL": str(tiny_model_path),
        "RIFT_CHUNK_TOKENS": "48",
        "RIFT_CHUNK_OVERLAP": "8",
        "RIFT_LEARN_MIN_TRIPLES": "2",
    }
    result = CliRunner().invoke(
        main, ["retrain", "--batch-size", "4", "--json", "--data-dir", str(settings.data_dir)], env=env
    )
    assert result.exit_code == REJECTED_EXIT == 3, result.output
    final = json.loads(result.stdout)
    assert final["status"] == "rejected"
    # Ended, it reports no progress (the gate's "44/44" read as a phase still going); the gate's count stays
    # with its phase.
    assert [line for line in result.stderr.splitlines() if line.startswith("retrain: ")][-1] == "retrain: rejected"
    assert final["progress"] == {"done": None, "total": None}
    gating = final["phases"][-1]
    assert gating["phase"] == "gating" and gating["done"] == gating["total"] > 0
    assert "the gate rejected the candidate (" in result.stderr and "serving model is unchanged" in result.stderr
    # For a reader: the outcome, then what was mined and trained and what the gate measured.
    text = CliRunner().invoke(main, ["retrain", "--batch-size", "4", "--data-dir", str(settings.data_dir)], env=env)
    assert text.exit_code == REJECTED_EXIT, text.output
    head, *rest = text.stdout.splitlines()
    assert head.startswith("retrain ") and head.endswith(" is kept as rejected, the serving model is unchanged")
    labels = [line.split()[0] for line in rest if not line.startswith(" ")]
    assert [label for label in labels if label != "skipped"] == ["mined", "trained", "gate", "phases"], rest
    gate = next(line for line in rest if line.startswith("gate "))
    assert gate.startswith("gate      rejected (label-free, ") and "stability" in gate


def test_retrain_returns_at_once_while_a_long_log_is_still_mined(
    tmp_path: Path, tiny_model_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Mining reads the whole log (seconds at 20,000 searches): the call waits for it only briefly, then returns
    a job id, and the job's status has the counts, or the refusal, once mining ends."""
    from server.learning.manager import LearningManager

    rift = open_rift(make_settings(tmp_path / "data", tiny_model_path, learn_min_triples=10**6))
    try:
        fill_two_collections(rift)
        learning = rift.learning
        release = threading.Event()
        mine = LearningManager.mine

        def slow_mine(self, *args, **kwargs):
            release.wait(30)
            return mine(self, *args, **kwargs)

        monkeypatch.setattr(LearningManager, "mine", slow_mine)
        t0 = time.perf_counter()
        started = learning.retrain(wait_for_mining=0.2)
        assert time.perf_counter() - t0 < 5
        assert started["status"] == "running" and started["mining"] is None
        snap = learning.status(started["job_id"])
        assert snap["phase"] == "mining" and snap["status"] == "running"
        with pytest.raises(RiftError, match="already running"):
            learning.retrain(wait_for_mining=0.2)
        release.set()
        learning.jobs.wait(30)
        snap = learning.status(started["job_id"])
        assert snap["status"] == "failed" and "min_triples is 1000000" in snap["error"]
        assert snap["result"]["mining"]["triples"] > 0  # the counts the refusal was based on
        assert [p["phase"] for p in snap["phases"]] == ["mining"]
        assert [v.kind for v in learning.registry.all()] == ["base"]
    finally:
        rift.close()


def test_a_refusal_within_the_wait_comes_back_with_the_call_and_leaves_no_job(
    tmp_path: Path, tiny_model_path: Path
) -> None:
    rift = open_rift(make_settings(tmp_path / "data", tiny_model_path, learn_min_triples=2, gate_tolerance=1.0))
    try:
        fill_two_collections(rift)
        learning = rift.learning
        with pytest.raises(RiftError, match=r"only \d+ training triples .* min_triples is 1000000"):
            learning.retrain(min_triples=10**6)
        assert learning.jobs.running is None
        with pytest.raises(RiftError, match="no learning job has run .*list_models shows every model version"):
            learning.status()
        started = learning.retrain(batch_size=4, epochs=1)  # counts and examples come back with the call
        assert started["mining"]["triples"] >= 2 and started["mining"]["examples"]
        learning.jobs.wait(120)
        with pytest.raises(RiftError, match="only"):
            learning.retrain(min_triples=10**6)
        snap = learning.status()  # the job before the refused call is still the latest
        assert snap["job_id"] == started["job_id"] and snap["status"] == "succeeded", snap
        assert [p["phase"] for p in snap["phases"]][:2] == ["mining", "training"]
    finally:
        rift.close()


def test_a_retrain_cancelled_while_mining_ends_cancelled(
    tmp_path: Path, tiny_model_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Mining checks for a cancel as it reads the log: a cancel (or a shutdown) need not wait for a long log,
    and the job reads "cancelled", never the refusal it would have met after mining."""
    from server.learning import mining

    rift = open_rift(make_settings(tmp_path / "data", tiny_model_path, learn_min_triples=10**6))
    try:
        fill_two_collections(rift)
        learning = rift.learning
        release, reading = threading.Event(), threading.Event()
        mine, finished = mining.mine, []

        def slow_mine(*args, **kwargs):
            progress = kwargs["progress"]

            def paused(done: int, total: int) -> None:
                reading.set()
                release.wait(30)
                progress(done, total)

            report = mine(*args, **{**kwargs, "progress": paused})
            finished.append(report)  # (not reached: the cancel stops mining where it reads on)
            return report

        monkeypatch.setattr("server.learning.pipeline.mine", slow_mine)
        started = learning.retrain(wait_for_mining=0.2)
        assert started["mining"] is None and reading.wait(10)
        learning.cancel(started["job_id"])
        release.set()
        assert learning.jobs.get(started["job_id"]).finished.wait(30)
        snap = learning.status(started["job_id"])
        assert snap["status"] == "cancelled" and snap["error"] is None, snap
        assert finished == []
    finally:
        rift.close()


@pytest.mark.parametrize("cause", ["log_off", "margin", "deleted"])
def test_a_refusal_says_what_would_help(tmp_path: Path, tiny_model_path: Path, cause: str) -> None:
    """"Search more" cannot help while the log is off, nor much while a filter leaves most searches out; and
    triples whose documents were deleted since are named as such."""
    extra = {
        "log_off": {"log_queries": False},
        "margin": {"learn_positive_min_keyword_margin": 100},
        "deleted": {"learn_positive_min_keyword_margin": 0, "learn_min_triples": 1000},
    }[cause]
    rift = open_rift(make_settings(tmp_path / "data", tiny_model_path, **{"learn_min_triples": 10, **extra}))
    try:
        fill_two_collections(rift)
        if cause == "deleted":
            rift.delete_documents("default", [f"d{i}" for i in range(25)])
        with pytest.raises(RiftError) as refused:
            rift.learning.retrain()
        message = str(refused.value)
        if cause == "log_off":
            assert "from 0 logged queries" in message
            assert "query log is off (setting log_queries, RIFT_LOG_QUERIES)" in message
            assert "Search more" not in message
        elif cause == "margin":
            assert "searches had no clear best document (setting learn_positive_min_keyword_margin, 100" in message
        else:
            assert "triples named documents deleted since their searches" in message
    finally:
        rift.close()
