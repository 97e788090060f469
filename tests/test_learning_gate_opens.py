"""The gate reads what the agent opened: documents fetched with `get_document(query_id=...)` from held-out
searches score both models (opened nDCG@10) and, with enough of them and no verdicts or labelled set, decide."""

from __future__ import annotations

from pathlib import Path

import pytest

from server.ingest.manage import get_document
from server.learning.gate import Gate, GateConfig, GateReport, opened_ndcg
from tests.support.helpers import docs, make_settings, open_rift
from tests.support.learning import corpus, queries


def _report(**delta: float) -> GateReport:
    return GateReport(accepted=False, reason="", basis="label-free", holdout_queries=50, delta=delta, stability=0.8)


def test_opened_ndcg_counts_what_the_agent_read_on_the_whole_ranking() -> None:
    assert opened_ndcg(["a", "b", "c"], {"a"}) == 1.0
    assert 0 < opened_ndcg(["x", "a"], {"a"}) < 1.0
    # An open says nothing of the hits passed over: a new document above the read one costs the candidate.
    assert opened_ndcg(["new", "a"], {"a"}) < opened_ndcg(["a", "new"], {"a"})
    assert opened_ndcg([f"x{i}" for i in range(10)] + ["a"], {"a"}) == 0.0  # beyond the top 10


def test_opens_decide_only_where_neither_verdicts_nor_labels_do() -> None:
    """A model that ranks what the agent read higher while it agrees less with BM25 (the read-past model of
    server/bench/LEARNING.md lost 0.017 of keyword agreement) serves on enough opens; too few cannot decide."""
    gate = Gate(None, GateConfig())
    enough = GateConfig().min_opened_queries
    complementary = {"keyword_recall@10": -0.017, "known_item_mrr@10": 0.001, "opened_ndcg@10": 0.02}
    decided = _report(**complementary)
    gate._decide(decided, decided.delta, 0, enough)
    assert decided.accepted and decided.basis == "opened" and decided.reason.startswith("opened nDCG@10 +0.0200")
    few = _report(**complementary)
    gate._decide(few, few.delta, 0, enough - 1)
    assert not few.accepted and few.basis == "label-free" and "keyword_recall@10 fell" in few.reason
    # Falling opens reject: as the deciding basis, and as a veto when too few to decide on.
    for n in (enough, 1):
        worse = _report(**{"keyword_recall@10": 0.0, "opened_ndcg@10": -0.01})
        gate._decide(worse, worse.delta, 0, n)
        assert not worse.accepted and "opened nDCG@10 fell by 0.0100" in worse.reason
    # Opens never outvote the agent's verdicts or a labelled set: they are the weaker evidence.
    judged = _report(**{"feedback_ndcg@10": 0.01, "opened_ndcg@10": -0.05})
    gate._decide(judged, judged.delta, GateConfig().min_feedback_queries, enough)
    assert judged.accepted and judged.basis == "feedback"
    labelled = _report(**{"labelled_ndcg@10": 0.01, "opened_ndcg@10": -0.05})
    gate._decide(labelled, labelled.delta, 0, enough)
    assert labelled.accepted and labelled.basis == "labelled"
    # Without labels of any kind, opens too few to decide do not make up for label-free signals that fell.
    balance = _report(**{"keyword_recall@10": -0.006, "known_item_mrr@10": -0.006, "opened_ndcg@10": 0.5})
    gate._decide(balance, balance.delta, 0, 2)
    assert not balance.accepted and balance.reason == "label-free signals fell on balance"


def test_rift_models_says_which_basis_decided() -> None:
    from server.learning.cli import version_line

    gate = {"accepted": True, "basis": "opened", "reason": "opened nDCG@10 +0.0200; label-free signals held"}
    row = version_line(
        {"version": "ft-1", "kind": "fine-tune", "status": "serving", "created_at": 0.0, "triples": 1380, "gate": gate}
    )
    assert row[1:3] == ["fine-tune", "serving"] and row[4] == "1,380"
    assert row[5] == "accepted (opened): opened nDCG@10 +0.0200; label-free signals held"
    base = version_line({"version": "m", "kind": "base", "status": "retired", "created_at": 0.0, "note": None})
    assert base[3:] == ["-", "-", ""]


@pytest.mark.slow
def test_a_retrain_gates_on_what_the_agent_opened_from_held_out_searches(
    tmp_path: Path, tiny_model_path: Path
) -> None:
    settings = make_settings(tmp_path / "data", tiny_model_path, learn_min_triples=2, gate_tolerance=1.0)
    rift = open_rift(settings)
    try:
        rift.add_documents("default", docs(*[(d["id"], d["text"]) for d in corpus()]))
        texts = [*queries(), *(f"{d['text'].split()[0]} note {i}" for i, d in enumerate(corpus()[:10]))]
        found = [rift.search("default", text) for text in texts]
        # 70 texts: the latest 14 are held out. The agent reads the first hit of each of them, and of one
        # search it trains on (that open is a positive for mining, not a gate signal).
        held, trained = found[-14:], found[0]
        for out in [trained, *held]:
            get_document(rift, "default", out.outcome.hits[0].doc_id, query_id=out.query_id, max_chars=1)
        # It read one and judged it beside the point: the verdict overrules the open. It asked another again
        # and judged the document it had opened from the first asking: one query, and the verdict decides.
        rift.learning.feedback(held[0].query_id, held[0].outcome.hits[0].doc_id, False)
        again = rift.search("default", texts[-1])
        rift.learning.feedback(again.query_id, held[-1].outcome.hits[0].doc_id, False)
        # One it read is deleted since (unless another held-out search opened it too): it cannot be scored.
        gone = held[1].outcome.hits[0].doc_id
        rift.delete_documents("default", [gone])
        scored = {out.query_id for out in held[1:-1] if out.outcome.hits[0].doc_id != gone}

        dry = rift.learning.retrain(dry_run=True)
        assert dry["mining"]["holdout_queries"] == 14
        assert dry["mining"]["holdout_with_opens"] == len(scored) and dry["mining"]["holdout_with_feedback"] == 0

        started = rift.learning.retrain(batch_size=4, epochs=1)
        rift.learning.jobs.wait(120)
        done = rift.learning.status(started["job_id"])
        assert done["status"] == "succeeded", done
        gate = done["result"]["gate"]
        assert gate["opened_queries"] == len(scored) and gate["feedback_queries"] == 0
        assert {"opened_ndcg@10", "keyword_recall@10"} <= set(gate["serving"]) & set(gate["candidate"])
        assert gate["serving"]["opened_ndcg@10"] > 0.5  # the serving model showed them: it ranks them high
        # Ten held-out searches with an open are enough: what the agent read decides, not the proxies.
        assert len(scored) >= GateConfig().min_opened_queries and gate["basis"] == "opened", gate
        assert gate["reason"].startswith("opened nDCG@10")
    finally:
        rift.close()
