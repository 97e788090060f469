"""`rift bench --log-reach`: what can a label-free log of past searches tell about a new query?

No training. The usage split's query TEXTS are replayed as logged searches. For each evaluation query, the
logged queries most like it (cosine of the serving model's query vectors at or above a threshold, nearest
first) are looked up with the answer the log holds for each: the fused top-1 rift returned, or only a
confident one (the miner's positive rule: `MiningConfig` with the product's BM25 margin). Reported per
threshold:

- how many neighbour answers already sit in the evaluation query's own hybrid top 10 and how many lie
  outside it, and how often each kind is truly relevant: a label-free learner can only add the outside ones
  and reorder the inside ones;
- the hybrid nDCG@10 with those answers fused in as a third RRF list (a "query memory": past searches vote
  for what they found), with a paired-bootstrap CI against the plain hybrid.

Evaluation labels are read only to score; usage labels are not read at all.

With the same split for both (`--split train --usage-split train`), its queries are shuffled (seed 0) and cut
80 / 20: the first part is logged, the rest is scored (a held-out query whose text was logged is dropped). That
is where a memory's threshold and weight may honestly be chosen: on the usage split's own labels, as the
miner's settings were, never on the evaluation split's.
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from server.bench.beir import load_beir
from server.bench.harness import COLLECTION, BenchIndex
from server.bench.learning_experiment import _PRODUCT, paired_bootstrap, usage_apart_from
from server.bench.metrics import ndcg_at_k
from server.engine.fusion import rrf
from server.learning.mining import MiningConfig, mined_positive
from server.learning.query_log import LoggedQuery, normalized_query

THRESHOLDS = (0.5, 0.6, 0.7, 0.8)
INTERNAL_HOLDOUT = 0.2  # the scored share of a split that is both usage and evaluation
NEIGHBOURS = 5
MEMORY_WEIGHTS = (0.5, 1.0)
ANSWERS = ("fused top-1", "confident top-1")


class EvalQuery(NamedTuple):
    vector: np.ndarray  # the query's vector
    hits: list[str]  # its hybrid top 10
    vector_side: list[str]  # the hybrid search's candidate lists, to re-fuse with a memory
    keyword_side: list[str]
    labels: Mapping[str, int]


def neighbour_answers(
    sims: np.ndarray, answers: Sequence[str | None], threshold: float, limit: int = NEIGHBOURS
) -> list[str]:
    """The answers of the `limit` most similar logged queries at or above `threshold`, nearest first, each
    document once; a logged query without an answer (None) is passed over."""
    out: list[str] = []
    for i in np.argsort(-sims, kind="stable")[:limit]:
        if sims[i] < threshold:
            break
        doc = answers[i]
        if doc is not None and doc not in out:
            out.append(doc)
    return out


def _confident(logged: Sequence[LoggedQuery]) -> dict[str, str]:
    """query_id -> the miner's positive, under the product's mining settings (BM25-margin rule)."""
    cfg = MiningConfig(positive_min_keyword_margin=_PRODUCT.learn_positive_min_keyword_margin)
    return {q.query_id: doc for q in logged if (doc := mined_positive(q, cfg)) is not None}


def _unit(rows: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(rows, axis=-1, keepdims=True)
    return rows / np.where(norms == 0, 1.0, norms)


def _with_memory(query: EvalQuery, memory: list[str], weight: float, rrf_k: float) -> float:
    """nDCG@10 of the query's hybrid with the memory fused in as a third RRF list."""
    lists = [query.vector_side, query.keyword_side, memory]
    fused = rrf(lists, k=rrf_k, weights=(1.0, 1.0, weight), limit=10)
    return ndcg_at_k([doc for doc, _ in fused], query.labels, 10)


def reach_rows(
    usage_vectors: np.ndarray,
    usage_answers: Mapping[str, Sequence[str | None]],
    evaluation: Sequence[EvalQuery],
    rrf_k: float,
    seed: int = 0,
) -> list[dict[str, Any]]:
    """One row per (answer kind, threshold): the logged answers `usage_answers[kind]` (one per row of
    `usage_vectors`, None where the log holds none) as seen from each evaluation query."""
    usage = _unit(usage_vectors)
    sims_all = [usage @ _unit(e.vector) for e in evaluation]
    base = [ndcg_at_k(e.hits, e.labels, 10) for e in evaluation]
    rows = []
    for kind, answers in usage_answers.items():
        for threshold in THRESHOLDS:
            inside = inside_rel = outside = outside_rel = helped = 0
            memories = []
            for sims, e in zip(sims_all, evaluation, strict=True):
                memory = neighbour_answers(sims, answers, threshold)
                memories.append(memory)
                new_relevant = False
                for doc in memory:
                    relevant = e.labels.get(doc, 0) > 0
                    if doc in e.hits:
                        inside, inside_rel = inside + 1, inside_rel + relevant
                    else:
                        outside, outside_rel = outside + 1, outside_rel + relevant
                        new_relevant |= relevant
                helped += new_relevant
            row: dict[str, Any] = {
                "answer": kind,
                "threshold": threshold,
                "queries_with_a_neighbour": sum(1 for m in memories if m),
                "inside_top10": inside,
                "inside_relevant": inside_rel,
                "outside_top10": outside,
                "outside_relevant": outside_rel,
                "queries_gaining_a_relevant_document": helped,
                "memory": [],
            }
            for weight in MEMORY_WEIGHTS:
                fused = [_with_memory(e, m, weight, rrf_k) for e, m in zip(evaluation, memories, strict=True)]
                delta, lo, hi = paired_bootstrap(base, fused, seed=seed)
                row["memory"].append(
                    {
                        "weight": weight,
                        "hybrid": round(float(np.mean(fused)), 4),
                        "delta": round(delta, 4),
                        "ci95": [round(lo, 4), round(hi, 4)],
                    }
                )
            rows.append(row)
    return rows


def internal_split(queries: Mapping[str, str], seed: int = 0) -> tuple[list[str], list[str]]:
    """(logged ids, scored ids) of one split's queries: shuffled, the last `INTERNAL_HOLDOUT` scored; a scored
    query whose text was logged is dropped, so no query finds itself in the log."""
    ids = sorted(queries)
    random.Random(seed).shuffle(ids)
    cut = round(len(ids) * (1 - INTERNAL_HOLDOUT))
    logged = ids[:cut]
    texts = {normalized_query(queries[q]) for q in logged}
    return logged, [q for q in ids[cut:] if normalized_query(queries[q]) not in texts]


def usage_and_scored(
    usage: Mapping[str, str], evaluation: Mapping[str, str], internal: bool
) -> tuple[list[str], list[str]]:
    """(usage query ids, scored query ids): one split's `internal_split`, or the usage queries apart from the
    evaluation texts and every evaluation query."""
    if internal:
        return internal_split(usage)
    return usage_apart_from(usage, evaluation)[0], list(evaluation)


def run_log_reach(
    data: Path, eval_split: str, usage_split: str, model: str | None, cache_dir: Path
) -> dict[str, Any]:
    evaluation_ds = load_beir(Path(data), eval_split)
    usage_ds = load_beir(Path(data), usage_split)
    internal = eval_split == usage_split
    usage_ids, eval_ids = usage_and_scored(usage_ds.queries, evaluation_ds.queries, internal)
    with BenchIndex(model, cache_dir) as index:
        index.ingest(evaluation_ds)
        for qid in usage_ids:
            index.rift.search(COLLECTION, usage_ds.queries[qid], 10, "hybrid", source="usage")
        index.rift.log.flush()
        by_text = {q.query: q for q in index.rift.log.iter_queries(COLLECTION)}
        usage_logged = [by_text[usage_ds.queries[qid]] for qid in usage_ids]
        confident = _confident(usage_logged)
        answers = {
            ANSWERS[0]: [q.fused[0] if q.fused else None for q in usage_logged],
            ANSWERS[1]: [confident.get(q.query_id) for q in usage_logged],
        }
        embedder = index.embedder
        usage_vectors = np.stack([embedder.encode_query(q.query) for q in usage_logged])
        evaluation = []
        for qid in eval_ids:
            text = evaluation_ds.queries[qid]
            res = index.engine.search(COLLECTION, text, 10, "hybrid")  # not logged: evaluation stays out
            evaluation.append(
                EvalQuery(
                    embedder.encode_query(text),
                    [h.doc_id for h in res.hits],
                    [c.doc_id for c in res.vector],
                    [c.doc_id for c in res.keyword],
                    evaluation_ds.qrels[qid],
                )
            )
        rrf_k = index.settings.rrf_k
    base = float(np.mean([ndcg_at_k(e.hits, e.labels, 10) for e in evaluation]))
    return {
        "dataset": evaluation_ds.name,
        "split": f"{eval_split} (internal {INTERNAL_HOLDOUT:.0%})" if internal else eval_split,
        "usage_split": usage_split,
        "usage_queries": len(usage_logged),
        "confident_answers": len(confident),
        "queries": len(evaluation),
        "hybrid": round(base, 4),
        "neighbours": NEIGHBOURS,
        "rows": reach_rows(usage_vectors, answers, evaluation, rrf_k),
    }
