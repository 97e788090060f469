"""Ranking metrics computed the way trec_eval / pytrec_eval compute them (and so BEIR's published numbers).

- nDCG@k (`ndcg_cut_k`): gain = the raw qrel grade of each retrieved document with grade > 0, discount
  log2(rank + 1) with ranks from 1; the ideal DCG sorts *all* judged documents of the query with grade > 0
  by grade, whether retrieved or not, and cuts at k.
- Recall@k (`recall_k`): relevant documents (grade >= 1) in the top k / all relevant documents of the query.
- MRR@k (BEIR's MRR@k, trec_eval `recip_rank` cut at k): 1 / rank of the first relevant document in the
  top k, else 0.
Documents are ranked, not chunks: a run lists each document once. Queries without a relevant document are
skipped (the loader leaves them out), and means are over the evaluated queries.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence


def trec_order(scores: Mapping[str, float]) -> list[str]:
    """trec_eval's ranking of a scored run: score descending, ties broken by document id descending."""
    return [doc for doc, _ in sorted(scores.items(), key=lambda kv: (kv[1], kv[0]), reverse=True)]


def _check(ranked: Sequence[str]) -> None:
    if len(set(ranked)) != len(ranked):
        raise ValueError("a ranking must list each document once")


def dcg(gains: Sequence[float]) -> float:
    return sum(g / math.log2(i + 2) for i, g in enumerate(gains) if g > 0)


def ndcg_at_k(ranked: Sequence[str], qrel: Mapping[str, int], k: int = 10) -> float:
    _check(ranked)
    ideal = dcg(sorted((g for g in qrel.values() if g > 0), reverse=True)[:k])
    if ideal == 0:
        return 0.0
    return dcg([max(qrel.get(doc, 0), 0) for doc in ranked[:k]]) / ideal


def recall_at_k(ranked: Sequence[str], qrel: Mapping[str, int], k: int = 100) -> float:
    _check(ranked)
    relevant = {doc for doc, g in qrel.items() if g >= 1}
    if not relevant:
        return 0.0
    return len(relevant.intersection(ranked[:k])) / len(relevant)


def mrr_at_k(ranked: Sequence[str], qrel: Mapping[str, int], k: int = 10) -> float:
    _check(ranked)
    for rank, doc in enumerate(ranked[:k], start=1):
        if qrel.get(doc, 0) >= 1:
            return 1.0 / rank
    return 0.0


METRICS = {
    "ndcg@10": lambda r, q: ndcg_at_k(r, q, 10),
    "recall@100": lambda r, q: recall_at_k(r, q, 100),
    "mrr@10": lambda r, q: mrr_at_k(r, q, 10),
}


def evaluate(
    qrels: Mapping[str, Mapping[str, int]], run: Mapping[str, Sequence[str]]
) -> tuple[dict[str, float], dict[str, dict[str, float]]]:
    """Mean and per-query metrics over the judged queries that have a relevant document.
    A judged query missing from `run` counts as an empty ranking (scores 0), as in trec_eval with -c."""
    per_query: dict[str, dict[str, float]] = {}
    for qid, qrel in qrels.items():
        if not any(g > 0 for g in qrel.values()):
            continue
        ranked = list(run.get(qid, ()))
        per_query[qid] = {name: fn(ranked, qrel) for name, fn in METRICS.items()}
    n = len(per_query)
    means = {name: (sum(q[name] for q in per_query.values()) / n if n else 0.0) for name in METRICS}
    return means, per_query
