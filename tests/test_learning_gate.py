"""The gate with a real model (the packaged MiniLM) on a small corpus: a destroyed model (re-initialised
weights) is rejected and kept as a rejected version; a lightly fine-tuned one passes; a labelled evaluation set,
when configured, decides."""

from __future__ import annotations

from pathlib import Path

import pytest

from server.config import DEFAULT_MODEL
from server.learning.gate import (
    Gate,
    GateConfig,
    GateReport,
    LabelledSet,
    asked_once,
    known_item_query,
    time_split,
)
from server.learning.pipeline import build_all, load_embedder
from tests.support.helpers import docs, make_settings, open_rift

pytestmark = pytest.mark.slow

ANIMALS = [
    ("otter", "river", "fish and crabs"),
    ("koala", "eucalyptus forest", "eucalyptus leaves"),
    ("camel", "desert", "dry grasses and thorny plants"),
    ("penguin", "antarctic coast", "krill and squid"),
    ("panda", "bamboo forest", "bamboo shoots"),
    ("owl", "woodland", "mice and voles"),
    ("shark", "open ocean", "seals and fish"),
    ("bee", "meadow", "nectar and pollen"),
    ("wolf", "taiga", "deer and elk"),
    ("frog", "pond", "insects and worms"),
    ("eagle", "mountain cliffs", "rabbits and fish"),
    ("bat", "cave", "moths and fruit"),
]


def corpus() -> list[tuple[str, str]]:
    out = []
    for i, (animal, home, food) in enumerate(ANIMALS):
        out.append((f"{animal}-diet", f"The {animal} feeds mostly on {food}. Diet notes for the {animal}."))
        out.append((f"{animal}-home", f"The {animal} lives in the {home}. Habitat notes for the {animal}."))
        out.append(
            (f"misc-{i}", f"Unrelated memo {i}: the quarterly budget meeting moved to room {100 + i}.")
        )
    return out


def queries() -> list[str]:
    out = []
    for animal, _home, _food in ANIMALS:
        out += [f"what does the {animal} eat", f"where does the {animal} live", f"{animal} habitat and food"]
    return out


@pytest.fixture
def rift(tmp_path: Path):
    settings = make_settings(tmp_path / "data", Path(DEFAULT_MODEL), learn_min_triples=2)
    settings = settings.model_copy(update={"model": DEFAULT_MODEL})
    app = open_rift(settings)
    app.add_documents("default", docs(*corpus()))
    for text in queries():
        app.search("default", text)
    yield app
    app.close()


def _destroyed(tmp_path: Path, settings) -> object:
    import torch
    from sentence_transformers import SentenceTransformer

    from server.engine.models import resolve_model

    torch.manual_seed(0)
    model = SentenceTransformer(resolve_model(DEFAULT_MODEL).location, device="cpu")
    for module in model.modules():
        if hasattr(module, "reset_parameters"):
            module.reset_parameters()
    model.save(str(tmp_path / "destroyed"), create_model_card=False)
    return load_embedder(str(tmp_path / "destroyed"), "destroyed", settings)


def test_gate_rejects_a_destroyed_model_and_accepts_a_light_fine_tune(rift, tmp_path: Path) -> None:
    engine = rift.engine()
    learning = rift.learning
    _train, holdout = time_split(list(rift.log.iter_queries()), GateConfig())
    assert holdout and holdout[-1].query == queries()[-1]  # the most recent queries are held out

    destroyed = _destroyed(tmp_path, rift.settings)
    build_all(engine, destroyed)
    report = Gate(engine).score(engine.embedder, destroyed, holdout)
    assert not report.accepted, report.as_dict()
    # A re-initialised BERT still matches shared words (mean pooling of identical token vectors), so the drop
    # shows first in agreement with the keyword side's confident hits and in stability.
    assert (
        min(report.delta.values()) < -GateConfig().tolerance or report.stability < GateConfig().min_stability
    )

    # Through the retrain job: the same gate runs; a real fine-tune on these triples is not destroyed.
    started = learning.retrain(batch_size=8)
    learning.jobs.wait(300)
    status = learning.status(started["job_id"])
    assert status["status"] == "succeeded", status["result"].get("gate")
    gate = status["result"]["gate"]
    assert gate["basis"] == "label-free" and gate["stability@10"] >= 0.5


def test_labelled_set_decides_when_configured(rift, tmp_path: Path) -> None:
    engine = rift.engine()
    destroyed = _destroyed(tmp_path, rift.settings)
    build_all(engine, destroyed)
    labelled = LabelledSet(
        "default",
        {f"q{i}": f"what does the {a} eat" for i, (a, _, _) in enumerate(ANIMALS)},
        {f"q{i}": {f"{a}-diet": 1} for i, (a, _, _) in enumerate(ANIMALS)},
    )
    # Lenient label-free tolerances: only the labels can reject it now.
    report = Gate(engine, GateConfig(tolerance=1.0, guard_tolerance=1.0, min_stability=0.0)).score(
        engine.embedder, destroyed, [], labelled=labelled
    )
    assert report.basis == "labelled" and not report.accepted
    assert report.serving["labelled_ndcg@10"] > report.candidate["labelled_ndcg@10"]
    ticks: list[tuple[int, int]] = []
    same = Gate(engine).score(
        engine.embedder, engine.embedder, [], labelled=labelled, progress=lambda d, t: ticks.append((d, t))
    )
    assert same.accepted and same.delta["labelled_ndcg@10"] == 0
    # Progress counts every scored query: known items and labelled ones (no held-out queries here).
    assert ticks and ticks[-1][0] == ticks[-1][1] > len(labelled.queries) and len({t for _, t in ticks}) == 1


def test_a_repeated_query_is_held_out_with_every_earlier_asking() -> None:
    from server.learning.query_log import LoggedQuery

    def asked(i: int, text: str) -> LoggedQuery:
        return LoggedQuery(str(i), float(i), text, "c", "m", 10, [], [], [], 0.0, [], [])

    texts = [f"question {i}" for i in range(10)]
    log = [asked(i, t) for i, t in enumerate(texts)] + [
        asked(10 + i, t.upper()) for i, t in enumerate(texts[:3])
    ]
    train, holdout = time_split(log, GateConfig(holdout_fraction=0.2, min_holdout=1))
    held = {q.query.lower() for q in holdout}
    assert held and not held & {q.query.lower() for q in train}  # the gate never scores a trained-on text
    assert len(train) + len(holdout) < len(log)
    # One model serves every collection: the same text asked in another collection is held out too.
    elsewhere = [asked(i, t) for i, t in enumerate(texts)]
    elsewhere += [LoggedQuery(str(10 + i), 10.0 + i, t, "other", "m", 10, [], [], [], 0.0, [], []) for i, t in
                  enumerate(texts[:3])]  # fmt: skip
    train, holdout = time_split(elsewhere, GateConfig(holdout_fraction=0.3, min_holdout=1))  # (3 of 10 texts)
    assert {(q.collection, q.query) for q in holdout} == {("other", t) for t in texts[:3]}
    assert not {q.query for q in train} & set(texts[:3])  # (they were asked in "c" first)


def test_a_question_asked_again_and_again_is_one_held_out_query() -> None:
    """An agent that asked one question five times in a row must not shrink the gate's sample to that text, nor
    make it weigh five times, nor let it alone reach the 5 queries with feedback that let feedback decide."""
    from server.learning.query_log import LoggedQuery

    def asked(i: int, text: str, collection: str = "c") -> LoggedQuery:
        return LoggedQuery(str(i), float(i), text, collection, "m", 10, [], [], [], 0.0, [], [])

    log = [asked(i, f"question {i}") for i in range(20)] + [asked(20 + i, "Same  question") for i in range(5)]
    train, holdout = time_split(log, GateConfig(holdout_fraction=0.2, min_holdout=1))
    # 21 different texts: 4 held out, the repeated one and the three asked just before it.
    assert {q.query for q in holdout} == {"question 17", "question 18", "question 19", "Same  question"}
    assert len(holdout) == 8 and [q.query_id for q in train] == [str(i) for i in range(17)]
    # Each text once, as last asked, with the verdicts of all its askings (a later verdict replaces an earlier).
    feedback = {"20": {"d1": True, "d2": True}, "22": {"d3": True}, "24": {"d2": False}, "19": {"d9": True}}
    once = asked_once(holdout, feedback)
    assert [(q.query_id, labels) for q, labels in once] == [
        ("17", {}), ("18", {}), ("19", {"d9": True}), ("24", {"d1": True, "d2": False, "d3": True})
    ]
    # The same text in another collection is another query there (each collection scores its own documents).
    twice = asked_once([asked(1, "same"), asked(2, "SAME", "other")], {})
    assert [q.query_id for q, _ in twice] == ["1", "2"]
    # Fewer different texts than twice the minimum: half of them are held out, never all.
    few = [asked(i, f"q {i % 2}") for i in range(10)]
    train, holdout = time_split(few, GateConfig(holdout_fraction=0.2, min_holdout=3))
    assert {q.query for q in holdout} == {"q 1"} and {q.query for q in train} == {"q 0"}


def test_known_item_query_prefers_titles() -> None:
    assert known_item_query("body text here and more", {"title": "A Study of Otters"}) == "A Study of Otters"
    assert known_item_query("Otters eat fish daily. More text.", {}) == "Otters eat fish daily."
    assert known_item_query("tiny", {}) is None
    # Text without spaces (Chinese, Japanese) still makes a query: its first sentence, ended by 。
    assert (
        known_item_query("我们研究机器学习的基础理论。第二句话很长。", {}) == "我们研究机器学习的基础理论。"
    )
    assert known_item_query("猫。", {}) is None


def _report(**delta: float) -> GateReport:
    return GateReport(
        accepted=False, reason="", basis="label-free", holdout_queries=50, delta=delta, stability=0.8
    )


def test_where_labels_decide_the_proxies_only_guard_against_collapse() -> None:
    """A model trained on real labels lost 0.035 of keyword agreement while gaining 0.022 nDCG@10: without
    labels the gate must refuse it (a proxy cannot tell it from damage); with labels showing the gain it serves,
    unless a proxy collapses."""
    gate = Gate(None, GateConfig())
    better = {"keyword_recall@10": -0.035, "known_item_mrr@10": -0.001}
    alone = _report(**better)
    gate._decide(alone, alone.delta, 0)
    assert not alone.accepted and alone.basis == "label-free" and "keyword_recall@10 fell" in alone.reason
    labelled = _report(**better, **{"labelled_ndcg@10": 0.022})
    gate._decide(labelled, labelled.delta, 0)
    assert labelled.accepted and labelled.basis == "labelled"
    judged = _report(**better, **{"feedback_ndcg@10": 0.05})
    gate._decide(judged, judged.delta, fb_queries=GateConfig().min_feedback_queries)
    assert judged.accepted and judged.basis == "feedback"
    too_few = _report(**better, **{"feedback_ndcg@10": 0.05})
    gate._decide(too_few, too_few.delta, fb_queries=1)  # too little feedback to decide: the proxies do
    assert not too_few.accepted and too_few.basis == "label-free"
    collapsed = _report(**{"keyword_recall@10": -0.4, "labelled_ndcg@10": 0.01})
    gate._decide(collapsed, collapsed.delta, 0)
    assert not collapsed.accepted and collapsed.basis == "labelled" and "tolerance 0.1" in collapsed.reason
    worse = _report(**{"keyword_recall@10": 0.0, "labelled_ndcg@10": -0.01})
    gate._decide(worse, worse.delta, 0)
    assert not worse.accepted and "labelled hybrid nDCG@10 fell" in worse.reason
    # Too little feedback to decide on is still enough to veto: a feedback nDCG that falls at all rejects.
    judged_worse = _report(**{"keyword_recall@10": 0.0, "feedback_ndcg@10": -0.025})
    gate._decide(judged_worse, judged_worse.delta, fb_queries=4)
    assert not judged_worse.accepted and "feedback nDCG@10 fell by 0.0250 on the 4 held-out" in judged_worse.reason
    # ... with a labelled set too: a labelled gain does not outvote the agent's own verdicts falling.
    both = _report(**{"labelled_ndcg@10": 0.001, "feedback_ndcg@10": -0.3})
    gate._decide(both, both.delta, fb_queries=10)
    assert not both.accepted and both.basis == "labelled" and "feedback nDCG@10 fell by 0.3000" in both.reason
    unstable = GateReport(
        accepted=False, reason="", basis="label-free", holdout_queries=50, delta={"labelled_ndcg@10": 0.1}, stability=0.2
    )
    gate._decide(unstable, unstable.delta, 0)
    assert not unstable.accepted and unstable.basis == "labelled" and "stability@10" in unstable.reason
    # Nothing scored: a store of short documents has no known items (it said "no documents" of one that had some).
    empty = _report()
    gate._decide(empty, empty.delta, 0)
    assert not empty.accepted and empty.reason.startswith("nothing to score: no held-out queries, and no document")


def test_feedback_is_scored_on_the_documents_the_agent_judged() -> None:
    """The agent judged the serving model's results. A candidate that brings up documents it never saw must
    not lose for them (condensed lists); one that puts a rejected document above a confirmed one must."""
    from server.learning.gate import feedback_ndcg

    labels = {"good": True, "bad": False}
    serving = ["bad", "good", "x"]
    surfaces_new = ["new1", "new2", "good", "new3", "bad"]
    assert feedback_ndcg(surfaces_new, labels) == 1.0
    assert feedback_ndcg(serving, labels) < 1.0
    assert feedback_ndcg(["x", "bad"], labels) == 0.0  # the confirmed document is not found at all
