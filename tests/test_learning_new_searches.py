"""A retrain trains the serving model further on what use added since its own retrain (setting learn_searches
"new"): the searches it did not train on, and older ones given feedback or fetched since. Training it again on
the whole log measured worse (README "Learning from use")."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from server.cli import main
from server.learning.pipeline import Learnt
from tests.support.helpers import make_settings, open_rift
from tests.support.learning import fill_two_collections, queries

pytestmark = pytest.mark.slow


def test_a_retrain_mines_only_what_the_serving_model_did_not_learn(tmp_path: Path, tiny_model_path: Path) -> None:
    settings = make_settings(tmp_path / "data", tiny_model_path, learn_min_triples=2, gate_tolerance=1.0)
    rift = open_rift(settings)
    try:
        fill_two_collections(rift)
        learning = rift.learning
        assert learning.learnt_by_serving() == Learnt()  # the base model learnt nothing of the log
        first, _, _ = learning.mine(dry_run=True)
        assert first.already_learnt == 0 and first.train_queries and first.holdout
        started = learning.retrain(batch_size=4)
        learning.jobs.wait(120)
        assert learning.status(started["job_id"])["status"] == "succeeded"
        assert learning.registry.serving().kind == "fine-tune"
        learnt = learning.learnt_by_serving()
        # Through its training part: the searches it held out for the gate it did not learn.
        assert learnt.searches_through == max(q.ts for q in first.train_queries)
        assert learnt.searches_through < min(q.ts for q in first.holdout) <= learnt.signals_through
        learnt_ids = {q.query_id for q in first.train_queries}

        # Nothing new: the refusal says why, and how to train on the whole log again.
        again, _, _ = learning.mine(dry_run=True)
        assert again.train_queries == [] and again.already_learnt == len(learnt_ids)
        dry = learning.retrain(dry_run=True)
        assert dry["would_train"] is False and "searches='all' trains on them again" in dry["refusal"]
        assert dry["mining"]["already_learnt_queries"] == len(learnt_ids)

        # New searches, the old held-out ones, and an old search judged since are mined; no other old one.
        old = first.train_queries[0]
        [logged] = learning.log.by_ids([old.query_id])
        learning.feedback(old.query_id, logged.fused[0], True)
        new_ids = {rift.search("default", f"{text} again").query_id for text in queries()[:20]}
        later, _, _ = learning.mine(dry_run=True)
        mined = {q.query_id for q in later.train_queries}
        assert mined & learnt_ids == {old.query_id}
        assert mined - {old.query_id} <= new_ids | {q.query_id for q in first.holdout}
        assert mined & new_ids and later.already_learnt == len(learnt_ids) - 1

        # 'all' mines the whole log again, the tool's parameter as the setting.
        whole, _, _ = learning.mine(dry_run=True, searches="all")
        assert learnt_ids <= {q.query_id for q in whole.train_queries} and whole.already_learnt == 0
        assert "already_learnt_queries" not in learning.retrain(dry_run=True, searches="all")["mining"]

        # Back on the base model, every search is new to the model that serves.
        back = learning.rollback()
        learning.jobs.wait(120)
        assert learning.status(back["job_id"])["status"] == "succeeded"
        assert learning.learnt_by_serving() == Learnt()
        assert learning.mine(dry_run=True)[0].already_learnt == 0
    finally:
        rift.close()


def test_a_rejected_candidate_leaves_what_serves_learnt_unchanged(tmp_path: Path, tiny_model_path: Path) -> None:
    settings = make_settings(tmp_path / "data", tiny_model_path, learn_min_triples=2)
    rift = open_rift(settings)
    try:
        fill_two_collections(rift)
        learning = rift.learning
        learning.gate_overrides = {"min_stability": 1.01}  # an impossible gate: whatever is trained is rejected
        started = learning.retrain(batch_size=4)
        learning.jobs.wait(120)
        assert learning.status(started["job_id"])["status"] == "rejected"
        # Its record says what it learnt; the serving base model still learnt nothing, so all is mined again.
        [rejected] = [v for v in learning.registry.all() if v.status == "rejected"]
        assert Learnt.of(rejected.train).searches_through > 0
        assert learning.learnt_by_serving() == Learnt()
        assert learning.mine(dry_run=True)[0].already_learnt == 0
    finally:
        rift.close()


def test_a_retrain_refuses_an_unknown_searches_value(tmp_path: Path, tiny_model_path: Path) -> None:
    rift = open_rift(make_settings(tmp_path / "data", tiny_model_path))
    try:
        with pytest.raises(Exception, match="searches must be 'new' or 'all'"):
            rift.learning.retrain(searches="old")  # type: ignore[arg-type]
    finally:
        rift.close()


def test_cli_retrain_takes_searches(tmp_path: Path, tiny_model_path: Path) -> None:
    settings = make_settings(tmp_path / "data", tiny_model_path, learn_min_triples=2, gate_tolerance=1.0)
    rift = open_rift(settings)
    try:
        fill_two_collections(rift)
        started = rift.learning.retrain(batch_size=4)
        rift.learning.jobs.wait(120)
        assert rift.learning.status(started["job_id"])["status"] == "succeeded"
        learnt = rift.learning.mine(dry_run=True)[0].already_learnt
        assert learnt > 0
    finally:
        rift.close()
    env = {"RIFT_MODEL": str(tiny_model_path), "RIFT_CHUNK_TOKENS": "48", "RIFT_CHUNK_OVERLAP": "8"}
    runner = CliRunner()
    base = ["retrain", "--dry-run", "--json", "--data-dir", str(settings.data_dir)]
    new = runner.invoke(main, base, env=env)
    assert new.exit_code == 0, new.output
    assert json.loads(new.stdout)["mining"]["already_learnt_queries"] == learnt
    said = runner.invoke(main, [a for a in base if a != "--json"], env=env).stdout  # for a reader
    assert f"left out  {learnt:,} searches the serving model already learnt" in said, said
    whole = runner.invoke(main, [*base, "--searches", "all"], env=env)
    assert whole.exit_code == 0, whole.output
    assert "already_learnt_queries" not in json.loads(whole.stdout)["mining"]
    # The setting, as the option's default.
    assert "already_learnt_queries" not in json.loads(
        runner.invoke(main, base, env={**env, "RIFT_LEARN_SEARCHES": "all"}).stdout
    )["mining"]
    bad = runner.invoke(main, [*base, "--searches", "old"], env=env)
    assert bad.exit_code == 2 and "--searches" in bad.output, bad.output
