"""How a sentence-grain view of the serving model ranks next to rift's two retrievers (no training).

Each document is also scored by its best sentence (title line and sentences embedded one by one; the units of
`server/learning/second_opinion.py`, the miner's second opinion). For every query of `--split` this prints the
nDCG@10 of the vector side (chunk vectors), the keyword side, the sentence view, rift's hybrid, and RRF fusions
with the sentence view added (rift's RRF constant and equal weights), with paired-bootstrap CIs against the
hybrid. The split's labels are read only to score.

    python -m server.bench.sentence_view --data ../shared/beir/scifact --split train

Sentence vectors are cached apart from the corpus's (`.bench_cache/sentences`), so a second run encodes
nothing. It is an analysis, not a feature: the README ("Learning from use", the second opinion) reports what
it showed on the usage splits, and that the evaluation splits did not confirm the fusion's gain.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from server.bench.beir import load_beir
from server.bench.embed_cache import CachingEmbedder
from server.bench.errors import split_analysis
from server.bench.harness import BenchIndex
from server.bench.learning_experiment import _PRODUCT, paired_bootstrap
from server.bench.metrics import ndcg_at_k
from server.engine.fusion import rrf
from server.learning.second_opinion import sentence_units

DEPTH = 200  # documents kept per list, as rift's candidate depth


def _fuse(lists: Sequence[Sequence[str]]) -> list[str]:
    return [d for d, _score in rrf(lists, k=_PRODUCT.rrf_k)]


def sentence_rankings(
    index: BenchIndex, documents: dict[str, str], queries: Sequence[str], cache_dir: Path | None = None
) -> list[list[str]]:
    """Per query, the documents by their best sentence's cosine, best first (the top `DEPTH`). Sentence vectors
    are cached under `cache_dir`/sentences, apart from the corpus chunk vectors other benchmarks reuse."""
    sentence_cache = CachingEmbedder(index.embedder, cache_dir / "sentences") if cache_dir is not None else None
    owners: list[int] = []
    units: list[str] = []
    ids = list(documents)
    for i, doc_id in enumerate(ids):
        mine = sentence_units(documents[doc_id])
        units.extend(mine)
        owners.extend([i] * len(mine))
    encoder = sentence_cache if sentence_cache is not None else index.embedder
    vectors = np.asarray(encoder.encode_documents(units), dtype=np.float32)
    vectors /= np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
    owner = np.asarray(owners)
    starts = np.r_[0, np.flatnonzero(np.diff(owner)) + 1]
    holders = owner[starts]  # documents with at least one unit, in order
    out = []
    for text in queries:
        q = np.asarray(index.embedder.encode_query(text), dtype=np.float32)
        q /= max(float(np.linalg.norm(q)), 1e-12)
        best = np.maximum.reduceat(vectors @ q, starts)
        top = np.argsort(-best, kind="stable")[:DEPTH]
        out.append([ids[holders[j]] for j in top])
    return out


def run(data: Path, split: str, model: str | None, cache_dir: Path | None) -> dict[str, Any]:
    ds = load_beir(Path(data), split)
    qids = sorted(ds.queries)
    lists: dict[str, list[list[str]]] = {"vector": [], "keyword": [], "hybrid": []}
    with BenchIndex(model, cache_dir) as index:
        index.ingest(ds)
        for logged in index.logged_searches([ds.queries[q] for q in qids]):
            lists["vector"].append([d for d, _c, _s in logged.vector])
            lists["keyword"].append([d for d, _c, _s in logged.keyword])
            lists["hybrid"].append(_fuse([lists["vector"][-1], lists["keyword"][-1]]))
        lists["sentence"] = sentence_rankings(index, ds.documents, [ds.queries[q] for q in qids], cache_dir)
    per_view = lists | {
        "hybrid + sentence": [_fuse(v) for v in zip(lists["vector"], lists["keyword"], lists["sentence"], strict=True)],
        "keyword + sentence": [_fuse(v) for v in zip(lists["keyword"], lists["sentence"], strict=True)],
        "vector + sentence": [_fuse(v) for v in zip(lists["vector"], lists["sentence"], strict=True)],
    }
    scores = {
        name: [ndcg_at_k(ranked, ds.qrels[q]) for ranked, q in zip(rankings, qids, strict=True)]
        for name, rankings in per_view.items()
    }
    views: dict[str, Any] = {}
    for name, values in scores.items():
        delta, low, high = paired_bootstrap(scores["hybrid"], values)
        views[name] = {"ndcg@10": round(float(np.mean(values)), 4), "vs_hybrid": [round(delta, 4), round(low, 4), round(high, 4)]}
    return {"dataset": ds.name, "split": split, "queries": len(qids), "rrf_k": _PRODUCT.rrf_k, "views": views}


main = split_analysis(run)


if __name__ == "__main__":
    main()
