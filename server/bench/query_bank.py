"""Does the query log make the vector side less prone to hubs? Querybank normalisation, measured (no training).

A dense model has "hubs": chunks near many queries, which crowd its top ranks whatever is asked. Querybank
normalisation (QB-Norm, Bogolin et al. 2022; the inverted softmax of Smith et al. 2017) uses a bank of past
queries, here the usage split's query texts replayed as a log would hold them, to discount such chunks:

    score(q, c) = beta * cos(q, c) - logsumexp over bank queries b of beta * cos(b, c)

"dynamic" applies it only to queries whose nearest chunk is some bank query's nearest chunk (a hub candidate),
and leaves the others as they were. A document scores as its best chunk. Each setting's vector ranking (top
`DEPTH`) is fused with the keyword side as rift fuses (RRF, its constant, equal weights); nDCG@10 is printed
with paired-bootstrap CIs against the same fusion of the plain vector ranking. Labels are read only to score.

    python -m server.bench.query_bank --data ../shared/beir/scifact --split train --usage-split train
    python -m server.bench.query_bank --data ../shared/beir/scifact --split test --usage-split train

With one split for both, it is shuffled and cut 80 / 20 as `--log-reach` cuts it (the bank is the first part,
the rest is scored): that is where a setting may honestly be chosen. An analysis, not a feature: the README
("Learning from use", "Open:") reports that it lowered the hybrid at every setting on both usage splits.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import click
import numpy as np

from server.bench.beir import load_beir
from server.bench.errors import beir_analysis
from server.bench.harness import COLLECTION, BenchIndex
from server.bench.learning_experiment import _PRODUCT, paired_bootstrap
from server.bench.log_reach import usage_and_scored
from server.bench.metrics import ndcg_at_k
from server.engine.fusion import rrf

DEPTH = 200  # documents kept in the vector ranking, as rift's candidate depth
BETAS = (5.0, 10.0, 20.0, 30.0, 50.0)


def _unit(rows: np.ndarray) -> np.ndarray:
    rows = np.asarray(rows, dtype=np.float64)
    return rows / np.maximum(np.linalg.norm(rows, axis=-1, keepdims=True), 1e-12)


def bank_penalty(bank_scores: np.ndarray, beta: float) -> np.ndarray:
    """Per chunk, logsumexp over the bank's queries of beta * cosine (`bank_scores`: bank x chunks)."""
    scaled = beta * bank_scores
    top = scaled.max(axis=0)
    return top + np.log(np.exp(scaled - top).sum(axis=0))


def normalized(scores: np.ndarray, penalty: np.ndarray, beta: float, hubs: set[int] | None = None) -> np.ndarray:
    """One query's chunk scores after querybank normalisation; with `hubs` (the bank's nearest chunks), only
    when the query's own nearest chunk is one of them (dynamic), else unchanged."""
    if hubs is not None and int(np.argmax(scores)) not in hubs:
        return scores
    return beta * scores - penalty


def document_ranking(scores: np.ndarray, owners: Sequence[str], depth: int = DEPTH) -> list[str]:
    """Documents by their best chunk's score, best first (ties in chunk order), the first `depth`."""
    out: list[str] = []
    seen: set[str] = set()
    for j in np.argsort(-scores, kind="stable"):
        doc = owners[j]
        if doc not in seen:
            seen.add(doc)
            out.append(doc)
            if len(out) == depth:
                break
    return out


def run(data: Path, split: str, usage_split: str, model: str | None, cache_dir: Path | None) -> dict[str, Any]:
    evaluation_ds = load_beir(Path(data), split)
    internal = usage_split == split
    usage_ds = evaluation_ds if internal else load_beir(Path(data), usage_split)
    bank_ids, eval_ids = usage_and_scored(usage_ds.queries, evaluation_ds.queries, internal)
    if not internal:
        eval_ids = sorted(eval_ids)  # (the order the README's bootstrap CIs were drawn in)
    with BenchIndex(model, cache_dir) as index:
        index.ingest(evaluation_ds)
        engine = index.engine
        record = engine.state.collection(COLLECTION)
        if record is None:
            raise RuntimeError("the benchmark collection was not created")
        chunk_ids = engine.vectors.all_ids(record.chroma_name)
        matrix = engine.vectors.embeddings_matrix(record.chroma_name, chunk_ids)
        if matrix is None:
            raise RuntimeError("chunk vectors could not be read back")
        owner = {c: meta["_rift_doc"] for c, _text, meta in engine.vectors.get(record.chroma_name, chunk_ids)}
        owners = [owner[c] for c in chunk_ids]
        embedder = index.embedder
        bank = _unit(np.stack([embedder.encode_query(usage_ds.queries[q]) for q in bank_ids]))
        queries = _unit(np.stack([embedder.encode_query(evaluation_ds.queries[q]) for q in eval_ids]))
        keyword = []
        for qid in eval_ids:  # not logged: the bank is the usage texts, the scored queries stay out of any log
            res = engine.search(COLLECTION, evaluation_ds.queries[qid], 10, "keyword")
            keyword.append(list(dict.fromkeys(c.doc_id for c in res.keyword)))
    chunks = _unit(matrix)
    bank_scores = bank @ chunks.T
    query_scores = queries @ chunks.T
    hubs = set(np.argmax(bank_scores, axis=1).tolist())
    labels = [evaluation_ds.qrels.get(q, {}) for q in eval_ids]

    def scored(rankings: Sequence[list[str]]) -> tuple[list[float], list[float]]:
        vector = [ndcg_at_k(r, lab, 10) for r, lab in zip(rankings, labels, strict=True)]
        hybrid = [
            ndcg_at_k([d for d, _ in rrf([r, kw], k=_PRODUCT.rrf_k, limit=10)], lab, 10)
            for r, kw, lab in zip(rankings, keyword, labels, strict=True)
        ]
        return vector, hybrid

    base_vector, base_hybrid = scored([document_ranking(s, owners) for s in query_scores])
    rows = []
    for beta in BETAS:
        penalty = bank_penalty(bank_scores, beta)
        for dynamic in (False, True):
            rankings = [
                document_ranking(normalized(s, penalty, beta, hubs if dynamic else None), owners) for s in query_scores
            ]
            vector, hybrid = scored(rankings)
            rows.append(
                {
                    "beta": beta,
                    "dynamic": dynamic,
                    "vector": [round(x, 4) for x in paired_bootstrap(base_vector, vector)],
                    "hybrid": [round(x, 4) for x in paired_bootstrap(base_hybrid, hybrid)],
                }
            )
    return {
        "dataset": evaluation_ds.name,
        "split": split,
        "usage_split": usage_split,
        "bank_queries": len(bank_ids),
        "queries": len(eval_ids),
        "rrf_k": _PRODUCT.rrf_k,
        "vector": round(float(np.mean(base_vector)), 4),
        "hybrid": round(float(np.mean(base_hybrid)), 4),
        "rows": rows,  # each: mean delta against the plain fusion, then its 95 % CI
    }


@click.command()
@beir_analysis()
@click.option("--split", required=True, help="Whose queries to score (the same as --usage-split: 20 % of it).")
@click.option("--usage-split", required=True, help="Whose query texts form the bank (never its labels).")
def main(data: Path, split: str, usage_split: str, model: str | None, cache_dir: Path) -> None:
    click.echo(json.dumps(run(data, split, usage_split, model, cache_dir)))


if __name__ == "__main__":
    main()
