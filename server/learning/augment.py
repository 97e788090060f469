"""Training-text transforms applied between mining and training.

`mask_shared_terms`: remove from a triple's documents every word that shares a stem with its query. Mined
positives are documents BM25 already ranks first, so the raw pair teaches the dense model to match on shared
words, which is what BM25 does and what the hybrid already has. With the shared words gone from both documents
(positive and negative alike, so "lacks the query's words" is no shortcut), the pair can only be matched on
what the words do not say: the vocabulary mismatch where BM25 fails and the hybrid leans on the dense side.
Measured (server/bench/LEARNING.md): on SciFact it cost the dense side its gain and left the hybrid where
it was, so it is an experiment variant (`rift bench --learn --set mining_mask_query_terms=1`), not a setting.

`drop_shared_query_words`: the milder, query-side counterpart. Each row is kept, and a copy is added whose
query lacks some of the words it shares with the positive (each with probability `rate`, at least one word
left). The pair is unchanged, so the copy is still right, but its query holds fewer of the words BM25 found
the positive by: the regime where BM25 fails and the hybrid leans on the dense side
(`rift bench --learn --set mining_drop_query_words=0.5`; an experiment, not a setting). Measured on SciFact
(server/bench/LEARNING.md): half the default's dense gain and a smaller hybrid one (+0.0008 against
+0.0052, seed 0), trading the gain where BM25 half answers for less loss where it fails.
"""

from __future__ import annotations

import random
import re
from collections.abc import Sequence

from server.engine.keyword_index import KeywordTokenizer, _words

_WORD = re.compile(r"\w+", re.UNICODE)


class TermMasker:
    """Query terms exactly as the keyword index sees them (its tokenizer: stopwords dropped, stemmed)."""

    def __init__(self, stemmer_language: str | None = "english", stopwords: str | None = "en") -> None:
        self._tokenizer = KeywordTokenizer(stemmer_language, stopwords)

    def query_stems(self, query: str) -> frozenset[str]:
        return frozenset(self._tokenizer.tokenize([query])[0])

    def mask(self, text: str, stems: frozenset[str]) -> str:
        if not stems:
            return text
        stem = self._tokenizer.stem
        # A word goes when any of its keyword words does: the index matches the query "keyword index" against
        # `KeywordIndex` by its parts, so masking must take it too (found by helper BQ).
        kept = _WORD.sub(lambda m: "" if any(stem(w) in stems for w in _words(m.group(0))) else m.group(0), text)
        return re.sub(r"[ \t]{2,}", " ", kept).strip()


def mask_shared_terms(
    rows: Sequence[tuple[str, str, str]],
    rate: float = 1.0,
    masker: TermMasker | None = None,
    seed: int = 0,
) -> list[tuple[str, str, str]]:
    """(query, positive, negative) rows with the query's words removed from both documents: each of the
    query's stems is masked with probability `rate` (all its occurrences in both documents together). A row
    whose documents would be left with no words keeps its original texts."""
    if rate <= 0:
        return list(rows)
    masker = masker or TermMasker()
    rng = random.Random(seed)
    out: list[tuple[str, str, str]] = []
    for query, pos, neg in rows:
        stems = frozenset(s for s in sorted(masker.query_stems(query)) if rng.random() < rate)
        new_pos, new_neg = masker.mask(pos, stems), masker.mask(neg, stems)
        if _WORD.search(new_pos) and _WORD.search(new_neg):
            out.append((query, new_pos, new_neg))
        else:
            out.append((query, pos, neg))
    return out


def drop_shared_query_words(
    rows: Sequence[tuple[str, str, str]],
    rate: float,
    masker: TermMasker | None = None,
    seed: int = 0,
) -> list[tuple[str, str, str]]:
    """`rows`, each followed by a copy whose query lacks each word it shares with the positive (by the keyword
    index's stems) with probability `rate`; a copy that would drop no word, or every word, is not added."""
    if rate <= 0:
        return list(rows)
    masker = masker or TermMasker()
    stem = masker._tokenizer.stem
    rng = random.Random(seed)
    out: list[tuple[str, str, str]] = []
    for query, pos, neg in rows:
        out.append((query, pos, neg))
        shared = masker.query_stems(query) & masker.query_stems(pos)
        words = list(_WORD.finditer(query))
        drop = [
            m for m in words if any(stem(w) in shared for w in _words(m.group(0))) and rng.random() < rate
        ]
        if not drop or len(drop) == len(words):
            continue
        pieces, at = [], 0
        for m in drop:
            pieces.append(query[at : m.start()])
            at = m.end()
        kept = "".join(pieces) + query[at:]
        out.append((re.sub(r"\s{2,}", " ", kept).strip(), pos, neg))
    return out
