"""The bench metrics against values worked out by hand with trec_eval's definitions."""

from __future__ import annotations

import math

import pytest

from server.bench.metrics import evaluate, mrr_at_k, ndcg_at_k, recall_at_k, trec_order

QREL = {"a": 2, "b": 1, "c": 1, "z": 0}  # graded; "z" is judged non-relevant


def test_ndcg_uses_raw_grades_log2_discount_and_ideal_from_all_qrels() -> None:
    ranked = ["x", "a", "c", "y", "z"]
    # DCG  = 2/log2(3) + 1/log2(4)                  (a at rank 2, c at rank 3)
    # IDCG = 2/log2(2) + 1/log2(3) + 1/log2(4)      (a, b, c: b counts although it was never retrieved)
    dcg = 2 / math.log2(3) + 1 / math.log2(4)
    idcg = 2 + 1 / math.log2(3) + 1 / math.log2(4)
    assert ndcg_at_k(ranked, QREL, 10) == pytest.approx(dcg / idcg)
    assert ndcg_at_k(ranked, QREL, 10) == pytest.approx(0.562727, abs=1e-6)


def test_ndcg_cuts_both_the_run_and_the_ideal_at_k() -> None:
    assert ndcg_at_k(["b", "a"], QREL, 1) == pytest.approx(1 / 2)  # DCG@1 = 1, IDCG@1 = 2
    assert ndcg_at_k(["a", "b", "c"], QREL, 10) == pytest.approx(1.0)
    assert ndcg_at_k(["x"], QREL, 10) == 0.0


def test_recall_and_mrr() -> None:
    ranked = [f"n{i}" for i in range(10)] + ["c"] + [f"m{i}" for i in range(100)] + ["a"]
    assert recall_at_k(ranked, QREL, 100) == pytest.approx(1 / 3)  # c at 11 counts, a at 112 does not
    assert mrr_at_k(ranked, QREL, 10) == 0.0  # first relevant at rank 11
    assert mrr_at_k(["x", "y", "b"], QREL, 10) == pytest.approx(1 / 3)
    assert mrr_at_k(["z", "b"], QREL, 10) == pytest.approx(1 / 2)  # grade 0 is not relevant


def test_trec_order_breaks_ties_by_descending_doc_id() -> None:
    assert trec_order({"a": 1.0, "c": 0.5, "b": 1.0}) == ["b", "a", "c"]


def test_duplicate_documents_are_rejected() -> None:
    with pytest.raises(ValueError):
        ndcg_at_k(["a", "a"], QREL)


def test_evaluate_averages_judged_queries_and_skips_those_without_relevant_docs() -> None:
    qrels = {"q1": {"a": 1}, "q2": {"b": 1}, "q3": {"c": 0}}
    means, per_query = evaluate(qrels, {"q1": ["a"], "q3": ["c"]})  # q2 not answered: scores 0
    assert set(per_query) == {"q1", "q2"}
    assert means["ndcg@10"] == pytest.approx(0.5)
    assert means["recall@100"] == pytest.approx(0.5)
    assert means["mrr@10"] == pytest.approx(0.5)
