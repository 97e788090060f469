"""Would a slower label-free search teach better positives than the hybrid? Pseudo-relevance feedback (no training).

The miner takes its positives from the hybrid's own ranking, and where BM25 is unsure (no confident positive
under the product's margin rule) the hybrid's first document is relevant about 4 times in 10. A retrain could
take its positives from a slower search run only at retrain time, if one were clearly more precise there. The
classic label-free candidate is pseudo-relevance feedback: expand each query with the hybrid's first `m`
documents and search again.

For every query of `--split` (rift's own index and searches; the split's labels read only to score) this prints,
per view: nDCG@10, the share of queries whose first document is relevant, the same over the queries without a
confident positive and over those with one, and a paired-bootstrap CI of the nDCG@10 against the hybrid. Views:

- `vector`, `keyword`, `hybrid`: rift's two sides as its search logged them, and their RRF fusion;
- `vector feedback m`: the query vector plus the mean vector of the hybrid's first `m` documents' chunks
  (weight `DENSE_BETA[m]`), each document scored by its best chunk, fused with the keyword side;
- `keyword feedback m`: the query's terms plus the `EXPANSION_TERMS` terms of the hybrid's first `m` documents
  with the highest tf·idf (RM3-like, half the query's weight in all), BM25 over rift's chunk postings, fused
  with the vector side;
- `both feedback m`: both expanded sides fused.

    python -m server.bench.feedback_teacher --data ../shared/beir/scifact --split train

It is an analysis, not a feature: `server/bench/LEARNING.md` reports what it showed on the usage splits.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from server.bench.beir import BenchError, load_beir
from server.bench.errors import split_analysis
from server.bench.harness import COLLECTION, BenchIndex
from server.bench.learning_experiment import _PRODUCT, paired_bootstrap
from server.bench.metrics import ndcg_at_k
from server.engine.fusion import rrf
from server.engine.keyword_index import KeywordSnapshot
from server.learning.mining import MiningConfig, mined_positive

DEPTH = 200  # documents kept per list, as rift's candidate depth
FEEDBACK_DOCS = (3, 5, 10)
DENSE_BETA = {3: 0.5, 5: 1.0, 10: 1.0}  # weight of the feedback documents' mean vector
EXPANSION_TERMS = 10
EXPANSION_WEIGHT = 0.5  # the added terms' share, relative to the query's own terms


def _fuse(lists: Sequence[Sequence[str]]) -> list[str]:
    return [d for d, _score in rrf(lists, k=_PRODUCT.rrf_k)]


def _best_per_document(scores: np.ndarray, owners: Sequence[str], keep_zero: bool = True) -> list[str]:
    """Documents by their best row's score, best first (the top `DEPTH`); rows scoring 0 are dropped unless
    `keep_zero` (a BM25 list holds only documents sharing a term)."""
    best: dict[str, float] = {}
    for r in np.argsort(-scores, kind="stable"):
        s = float(scores[r])
        if not keep_zero and s <= 0:
            break
        best.setdefault(owners[r], s)
        if len(best) >= DEPTH:
            break
    return list(best)


class FeedbackSearch:
    """Rift's chunk rows (vectors and BM25 postings of one snapshot), searched with expanded queries."""

    def __init__(self, snap: KeywordSnapshot) -> None:
        if snap.bm25 is None or snap.vectors is None:
            raise BenchError(
                "feedback_teacher needs the collection's in-memory BM25 and vector copy, which a corpus of no "
                "chunks, or of more than the setting exact_search_max_chunks, does not have"
            )
        self.owners = [row.doc_id for row in snap.rows]
        self.tokens = [row.tokens for row in snap.rows]
        self.vectors = np.asarray(snap.vectors.view(), dtype=np.float32)
        self.vectors = self.vectors / np.maximum(np.linalg.norm(self.vectors, axis=1, keepdims=True), 1e-12)
        self.bm25 = snap.bm25
        self.mask = snap.alive_weights
        self.rows_of: dict[str, list[int]] = {}
        for r, doc in enumerate(self.owners):
            self.rows_of.setdefault(doc, []).append(r)
        n = len(self.tokens)
        df = Counter(t for tokens in self.tokens for t in set(tokens))
        self.idf = {t: math.log(1 + (n - k + 0.5) / (k + 0.5)) for t, k in df.items()}

    def vector_feedback(self, query: np.ndarray, feedback: Sequence[str], beta: float) -> list[str]:
        doc_means = [self.vectors[self.rows_of[d]].mean(axis=0) for d in feedback if d in self.rows_of]
        q = query / max(float(np.linalg.norm(query)), 1e-12)
        if doc_means:
            q = q + beta * np.mean(doc_means, axis=0)
            q = q / max(float(np.linalg.norm(q)), 1e-12)
        return _best_per_document(self.vectors @ q.astype(np.float32), self.owners)

    def expansion(self, query_tokens: Sequence[str], feedback: Sequence[str]) -> dict[str, float]:
        """Term weights: each query term 1 per occurrence, plus the feedback documents' top tf·idf terms sharing
        `EXPANSION_WEIGHT` × the query's length."""
        weights: dict[str, float] = dict(Counter(query_tokens))
        pooled: Counter[str] = Counter()
        for doc in feedback:
            counts = Counter(t for r in self.rows_of.get(doc, []) for t in self.tokens[r])
            length = sum(counts.values()) or 1
            for term, tf in counts.items():
                pooled[term] += tf / length * self.idf[term]
        top = pooled.most_common(EXPANSION_TERMS)
        total = sum(v for _t, v in top) or 1.0
        for term, value in top:
            weights[term] = weights.get(term, 0.0) + EXPANSION_WEIGHT * len(query_tokens) * value / total
        return weights

    def keyword_feedback(self, query_tokens: Sequence[str], feedback: Sequence[str]) -> list[str]:
        vocab = self.bm25.vocab_dict
        scores = np.zeros(len(self.owners), dtype=np.float32)
        for term, weight in self.expansion(query_tokens, feedback).items():
            if term in vocab:
                scores += weight * self.bm25.get_scores([term], weight_mask=self.mask)
        return _best_per_document(scores, self.owners, keep_zero=False)


def run(data: Path, split: str, model: str | None, cache_dir: Path | None) -> dict[str, Any]:
    ds = load_beir(Path(data), split)
    qids = sorted(ds.queries)
    views: dict[str, list[list[str]]] = {"vector": [], "keyword": [], "hybrid": []}
    confident: list[bool] = []
    miner = MiningConfig(positive_min_keyword_margin=_PRODUCT.learn_positive_min_keyword_margin)
    with BenchIndex(model, cache_dir) as index:
        index.ingest(ds)
        searched = index.logged_searches([ds.queries[q] for q in qids])
        search = FeedbackSearch(index.engine.keyword_snapshot(COLLECTION))
        for qid, logged in zip(qids, searched, strict=True):
            vector = [d for d, _c, _s in logged.vector]
            keyword = [d for d, _c, _s in logged.keyword]
            hybrid = _fuse([vector, keyword])
            confident.append(mined_positive(logged, miner) is not None)
            query = np.asarray(index.embedder.encode_query(ds.queries[qid]), dtype=np.float32)
            tokens = index.engine.tokenizer.tokenize([ds.queries[qid]])[0]
            for name, ranking in (("vector", vector), ("keyword", keyword), ("hybrid", hybrid)):
                views[name].append(ranking)
            for m in FEEDBACK_DOCS:
                dense = search.vector_feedback(query, hybrid[:m], DENSE_BETA[m])
                lexical = search.keyword_feedback(tokens, hybrid[:m])
                for name, ranking in (
                    (f"vector feedback {m}", _fuse([dense, keyword])),
                    (f"keyword feedback {m}", _fuse([vector, lexical])),
                    (f"both feedback {m}", _fuse([dense, lexical])),
                ):
                    views.setdefault(name, []).append(ranking)
    sure = np.asarray(confident, dtype=bool)
    out: dict[str, Any] = {}
    scores = {
        name: [ndcg_at_k(r, ds.qrels[q]) for r, q in zip(rankings, qids, strict=True)]
        for name, rankings in views.items()
    }
    for name, rankings in views.items():
        ndcg = scores[name]
        first = np.asarray([bool(r) and ds.qrels[q].get(r[0], 0) > 0 for r, q in zip(rankings, qids, strict=True)])
        delta, low, high = paired_bootstrap(scores["hybrid"], ndcg)
        out[name] = {
            "ndcg@10": round(float(np.mean(ndcg)), 4),
            "vs_hybrid": [round(delta, 4), round(low, 4), round(high, 4)],
            "first_relevant": round(float(first.mean()), 3),
            "first_relevant_unconfident": round(float(first[~sure].mean()), 3) if (~sure).any() else None,
            "first_relevant_confident": round(float(first[sure].mean()), 3) if sure.any() else None,
        }
    return {
        "dataset": ds.name,
        "split": split,
        "queries": len(qids),
        "confident_queries": int(sure.sum()),
        "rrf_k": _PRODUCT.rrf_k,
        "views": out,
    }


main = split_analysis(run)


if __name__ == "__main__":
    main()
