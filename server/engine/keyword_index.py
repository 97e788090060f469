"""BM25 keyword retrieval with bm25s over cached, stemmed tokens.

bm25s has no incremental add, so every change produces a new immutable snapshot: adds rebuild the index from
the cached tokens (no re-tokenising), deletes only flip a liveness mask until the next rebuild compacts them.
Searches read whichever snapshot is current, so they never wait for a writer.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import bm25s
import numpy as np

from server.engine.filters import MetadataColumns, Node, mask

log = logging.getLogger(__name__)
logging.getLogger("bm25s").setLevel(logging.WARNING)  # it logs every index build at DEBUG


class KeywordTokenizer:
    """Lower-cases, drops stopwords and stems (PyStemmer) exactly like bm25s' own tokenizer."""

    def __init__(self, stemmer_language: str | None = "english", stopwords: str | None = "en") -> None:
        self._stemmer = None
        if stemmer_language:
            import Stemmer

            self._stemmer = Stemmer.Stemmer(stemmer_language)
        self._stopwords = stopwords or []

    def tokenize(self, texts: Sequence[str]) -> list[list[str]]:
        if not texts:
            return []
        return bm25s.tokenize(
            list(texts),
            stopwords=self._stopwords,
            stemmer=self._stemmer,
            return_ids=False,
            show_progress=False,
        )


@dataclass(frozen=True)
class KeywordRow:
    chunk_id: str
    doc_id: str
    tokens: tuple[str, ...]
    metadata: Mapping[str, Any]


@dataclass
class KeywordSnapshot:
    rows: list[KeywordRow]
    alive: np.ndarray
    bm25: bm25s.BM25 | None
    row_of: dict[str, int] = field(default_factory=dict)
    columns: MetadataColumns | None = None
    build_seconds: float = 0.0

    @property
    def live_count(self) -> int:
        return int(self.alive.sum())


def build_snapshot(rows: list[KeywordRow]) -> KeywordSnapshot:
    started = time.perf_counter()
    bm25 = None
    if rows:
        bm25 = bm25s.BM25()
        bm25.index([list(r.tokens) for r in rows], show_progress=False)
    return KeywordSnapshot(
        rows=rows,
        alive=np.ones(len(rows), dtype=bool),
        bm25=bm25,
        row_of={r.chunk_id: i for i, r in enumerate(rows)},
        columns=MetadataColumns([r.metadata for r in rows]),
        build_seconds=time.perf_counter() - started,
    )


class KeywordIndex:
    """One collection's keyword side. Writers must be serialised by the caller; readers need no lock."""

    def __init__(self, rows: Iterable[KeywordRow] = ()) -> None:
        self._snap = build_snapshot(list(rows))

    @property
    def snapshot(self) -> KeywordSnapshot:
        return self._snap

    def chunk_ids(self) -> set[str]:
        snap = self._snap
        return {r.chunk_id for r, ok in zip(snap.rows, snap.alive, strict=True) if ok}

    def apply(self, remove: Iterable[str] = (), add: Sequence[KeywordRow] = ()) -> float:
        """Remove then add chunks; returns the seconds spent rebuilding (0 when only masking)."""
        snap = self._snap
        remove = {c for c in remove if c in snap.row_of}
        add_ids = {r.chunk_id for r in add}
        if not add:
            if not remove:
                return 0.0
            alive = snap.alive.copy()
            alive[[snap.row_of[c] for c in remove]] = False
            self._snap = KeywordSnapshot(snap.rows, alive, snap.bm25, snap.row_of, snap.columns)
            return 0.0
        kept = [
            r
            for r, ok in zip(snap.rows, snap.alive, strict=True)
            if ok and r.chunk_id not in remove and r.chunk_id not in add_ids
        ]
        self._snap = build_snapshot(kept + list(add))
        return self._snap.build_seconds

    def search(
        self, query_tokens: Sequence[str], depth: int, filter_node: Node | None = None
    ) -> list[tuple[KeywordRow, float]]:
        """Top `depth` live rows with a positive BM25 score, filtered before ranking."""
        snap = self._snap
        if snap.bm25 is None or not query_tokens:
            return []
        vocab = snap.bm25.vocab_dict
        tokens = [t for t in query_tokens if t in vocab]
        if not tokens:
            return []
        weights = snap.alive
        if filter_node is not None and snap.columns is not None:
            weights = weights & mask(filter_node, snap.columns)
        allowed = int(weights.sum())
        if allowed == 0:
            return []
        k = min(depth, len(snap.rows))
        docs, scores = snap.bm25.retrieve(
            [tokens], k=k, show_progress=False, weight_mask=weights.astype(np.float32), n_threads=0
        )
        out: list[tuple[KeywordRow, float]] = []
        for row, score in zip(docs[0], scores[0], strict=True):
            if score <= 0 or not weights[row]:
                continue
            out.append((snap.rows[int(row)], float(score)))
        return out
