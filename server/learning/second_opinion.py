"""A second dense opinion for mining: how well a document's best sentence matches the query.

The serving model scores each candidate by its best-matching sentence (title line and sentences, each embedded
alone) instead of by the chunk embedding the vector side ranks with. It is the same model at a finer grain, so
it needs no labels and no other weights, yet it errs differently: on the usage queries of SciFact and NFCorpus
it ranks about as well as the chunk vectors alone and adds to both in fusion (server/bench/LEARNING.md; the
evaluation splits did not confirm that gain). `rift bench --learn` can use it to keep a positive only when
this view ranks it first too, and to take as negatives the vector side's best documents that this view does
not rank near the top (the dense side's own wrong answers): measured, that made the triples cleaner and the
hybrid gain smaller, so it is not a setting.

Sentence vectors are cached for one mining pass; a candidate set is a few dozen documents per query.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import numpy as np

from server.engine.keyword_index import SENTENCE_BREAK

# A sentence longer than this many characters is cut: the embedder truncates anyway, and a page of text with
# no sentence breaks (a table, code) should not cost more than one unit.
MAX_UNIT_CHARS = 1000
_BLANK = re.compile(r"\s*\n\s*")


def sentence_units(text: str) -> list[str]:
    """The units a document is scored by: its lines split into sentences, empty ones dropped."""
    units: list[str] = []
    for line in _BLANK.split(text.strip()):
        units.extend(s.strip()[:MAX_UNIT_CHARS] for s in SENTENCE_BREAK.split(line) if s.strip())
    return units


class SentenceOpinion:
    """`scores(collection, query, doc_ids)` -> {doc_id: best sentence cosine} for the documents that still
    exist and score a finite number; `text_of(collection, doc_id)` returns a document's text or None when it
    is gone. Pass the model itself, not the bench's disk cache of corpus vectors: sentences do not belong
    there, and this class keeps its own vectors for the pass."""

    def __init__(self, embedder: Any, text_of: Callable[[str, str], str | None]) -> None:
        self._embedder = embedder
        self._text_of = text_of
        self._units: dict[tuple[str, str], np.ndarray | None] = {}
        self.documents_encoded = 0
        self.units_encoded = 0

    def _load(self, collection: str, doc_ids: Iterable[str]) -> None:
        wanted = [d for d in dict.fromkeys(doc_ids) if (collection, d) not in self._units]
        texts: list[str] = []
        owners: list[tuple[str, int]] = []  # (doc id, how many of `texts` are its units), in order
        for doc_id in wanted:
            text = self._text_of(collection, doc_id)
            units = sentence_units(text) if text else []
            if not units:
                self._units[(collection, doc_id)] = None
                continue
            texts.extend(units)
            owners.append((doc_id, len(units)))
        if not texts:
            return
        vectors = np.asarray(self._embedder.encode_documents(texts), dtype=np.float32)
        norms = np.linalg.norm(vectors, axis=1, keepdims=True)
        vectors = vectors / np.where(norms > 0, norms, 1.0)
        self.units_encoded += len(texts)
        start = 0
        for doc_id, count in owners:
            self._units[(collection, doc_id)] = vectors[start : start + count]
            start += count
            self.documents_encoded += 1

    def scores(self, collection: str, query: str, doc_ids: Iterable[str]) -> Mapping[str, float]:
        ids = list(dict.fromkeys(doc_ids))
        self._load(collection, ids)
        q = np.asarray(self._embedder.encode_query(query), dtype=np.float32)
        norm = float(np.linalg.norm(q))
        if not np.isfinite(norm) or norm == 0.0:  # a broken model has no opinion (it must not agree by a tie)
            return {}
        q = q / norm
        out: dict[str, float] = {}
        for doc_id in ids:
            units = self._units.get((collection, doc_id))
            if units is not None:
                best = float(np.max(units @ q))
                if np.isfinite(best):
                    out[doc_id] = best
        return out
