"""BM25 keyword retrieval with bm25s over cached, stemmed tokens.

bm25s has no incremental add, and every add changes N and the average length, so every stored BM25 score
changes. Rather than re-index from strings (seconds at 50K chunks), the writer keeps bm25s' own term-major
layout of term frequencies (postings: doc ids ascending within each term, `indptr` per term) over an
append-only vocabulary. An add compacts away deleted rows, splices the new postings in, and recomputes the
score array with numpy using bm25s' default ("lucene") formula in the same float64 -> float32 order, so the
scores are those a fresh `bm25s.BM25().index(tokens)` over the same rows would hold. bm25s still ranks
(`retrieve` with `weight_mask`). Deletes only flip a liveness mask; the next add compacts them (until then N
and the average length still count them, as before).

Every change publishes a new immutable snapshot (arrays and vocabulary dicts are never mutated once
published), so searches read whichever snapshot is current and never wait for a writer.
"""

from __future__ import annotations

import functools
import logging
import re
import time
import unicodedata
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass, field, replace
from itertools import chain
from typing import Any

import bm25s
import numpy as np
import regex
from bm25s.stopwords import STOPWORDS_EN

from server.engine.exact_vectors import VectorRows, top_rows
from server.engine.filters import MetadataColumns, Node, mask

log = logging.getLogger(__name__)
logging.getLogger("bm25s").setLevel(logging.WARNING)  # it logs every index build at DEBUG

_DEFAULTS = bm25s.BM25()  # k1 and b of a fresh bm25s index; the score formula below is its "lucene" method
K1: float = _DEFAULTS.k1
B: float = _DEFAULTS.b
# Drop terms no live row uses once they are this share of a vocabulary of at least _PRUNE_MIN terms.
_PRUNE_SHARE = 0.5
_PRUNE_MIN = 10_000


# Scripts written without spaces between words: Han (with 々 〆 〇 〻), Hiragana, Katakana (with ー, without the
# middle dot ・ and other kana punctuation), and Hangul, which Lucene's CJK analyzer treats alike. A run of them
# is indexed as its characters and its overlapping character bigrams, so any word inside a sentence, one
# character long or more, is a keyword term.
_CJK = (
    "\u1100-\u11ff\u3005-\u3007\u303b\u3041-\u3096\u3099-\u309a\u309d-\u309f\u30a1-\u30fa\u30fc-\u30ff"
    "\u3130-\u318f\u31f0-\u31ff\u3400-\u4dbf\u4e00-\u9fff\ua960-\ua97f\uac00-\ud7af\ud7b0-\ud7ff"
    "\uf900-\ufaff\U00020000-\U0002fa1f\U00030000-\U000323af"
)
_CJK_CHAR = re.compile(f"[{_CJK}]")
_CJK_RUN = re.compile(f"[{_CJK}]+")
# Thai, Lao, Khmer and Myanmar are written without spaces between words too, but in alphabets whose letters
# and vowel or tone marks mean nothing alone: a run becomes its overlapping character bigrams (Lucene segments
# these with ICU's dictionaries; character bigrams need none and find any word of two characters or more
# inside a run). A run of one or two characters stays whole.
_SEA = "\u0e00-\u0eff\u1000-\u109f\u1780-\u17ff\u19e0-\u19ff\ua9e0-\ua9ff\uaa60-\uaa7f"
_SEA_CHAR = re.compile(f"[{_SEA}]")
_SEA_RUN = re.compile(f"[{_SEA}]+")
_SPACELESS_RUN = re.compile(f"[{_CJK}]+|[{_SEA}]+")
# A word: letters, combining marks (Indic vowel signs and viramas, Arabic vowel marks, which Python's \w
# leaves out, splitting such words apart), digits and "_".
_WORD = regex.compile(r"[\p{L}\p{N}_][\p{L}\p{M}\p{N}_]*")  # a stray mark starts no word
# Invisible characters that split a word where none ends: soft hyphens (HTML &shy;), joiners, BOM. A
# zero-width space does end a word (Thai and Khmer use it so).
_INVISIBLE = str.maketrans(
    {"\u00ad": None, "\u200c": None, "\u200d": None, "\u2060": None, "\ufeff": None, "\u200b": " "}
)


# Identifiers: a word holding "_" or a change of case is indexed whole and also as its parts, so "top rows"
# finds `top_rows` and "keyword index" `KeywordIndex`, while "top_rows" still ranks the identifier first (it
# matches the whole word too). A part starts after "_", at a capital after a lower-case letter (digits may
# come between: `base64Encode`), and at the last of a run of capitals (digits may end it) that two lower-case
# letters follow (`parseHTTPResponse` -> parse, http, response; `S3Client` -> s3, client; `RNAs`, `URLs` and
# `IDs` stay whole). Letters and digits are not split apart (`BRCA1`, `utf8`). Queries carry no file type, so
# the rule holds for all text, prose too (its effect on SciFact and NFCorpus: README "Benchmarks").
_PART_BREAK = regex.compile(
    r"_+|(?<=\p{Ll}\p{M}*\p{N}*)(?=\p{Lu})|(?<=\p{Lu}\p{M}*\p{N}*)(?=\p{Lu}\p{M}*\p{Ll}\p{M}*\p{Ll})"
)
_HAS_PARTS = regex.compile(r"_|\p{Ll}\p{M}*\p{N}*\p{Lu}|\p{Lu}\p{M}*\p{N}*\p{Lu}\p{M}*\p{Ll}\p{M}*\p{Ll}")
# Except in import statements, whose identifiers are indexed whole only: an import names what it neither
# defines nor uses, and its parts made every file importing `GateConfig` match "gate config" as well as the
# class does (a module's import block, full of identifiers, is often a chunk of its own). The query
# `GateConfig` still finds the import lines (the whole word). A statement is a line starting with `import` or
# `from <module> import` (Python; the `import` lines of JS/TS, Go and Java), lower-case as those languages
# write it, on to the line holding the closing bracket when the line leaves one open (`from a import (`,
# `import {`, Go's `import (`). Measured on code: README "Keyword tokens".
_IMPORT = re.compile(r"^[ \t]*(?:from[ \t]+[\w.]+[ \t]+)?import\b", re.MULTILINE)
_IMPORT_CLOSERS = {"(": ")", "{": "}"}
MAX_IMPORT_CHARS = 4000  # how far a statement's closing bracket is looked for (bounds the work on odd text)


def _import_spans(text: str) -> list[tuple[int, int]]:
    """(start, end) of each import statement in `text` (see `_IMPORT`)."""
    spans: list[tuple[int, int]] = []
    for match in _IMPORT.finditer(text):
        if spans and match.start() < spans[-1][1]:
            continue  # (a line inside the previous statement's brackets)
        end = _line_end(text, match.end())
        line = text[match.end() : end]
        opened = max(line.rfind("("), line.rfind("{"))
        if opened >= 0 and _IMPORT_CLOSERS[line[opened]] not in line[opened:]:
            closed = text.find(_IMPORT_CLOSERS[line[opened]], end, end + MAX_IMPORT_CHARS)
            if closed >= 0:
                end = _line_end(text, closed)
        spans.append((match.start(), end))
    return spans


def _line_end(text: str, at: int) -> int:
    end = text.find("\n", at)
    return len(text) if end < 0 else end


def _words(text: str) -> list[str]:
    """`text`'s words, lower-cased, CJK runs apart from the letters around them, then the parts of its
    identifiers (see `_PART_BREAK`) outside import statements (`_IMPORT`). A lone letter or digit is a word
    too (bm25s's default pattern drops it), so `R`, `C++`, `-v` or `Python 3` have keyword terms; on SciFact
    and NFCorpus that moved BM25 nDCG@10 by +0.002 each (README "Benchmarks")."""
    text = unicodedata.normalize("NFKC", text.translate(_INVISIBLE))
    text = _SPACELESS_RUN.sub(lambda run: f" {run.group()} ", text)
    # Found before lower-casing, which the parts need; lower-casing changes no character's place in a word or
    # out of it (checked over every code point), so the words are those of the lower-cased text.
    words = _WORD.findall(text)
    splittable = words
    if "import" in text and (spans := _import_spans(text)):  # (their words whole only: see `_IMPORT`)
        starts, ends = [0, *(end for _, end in spans)], [*(start for start, _ in spans), len(text)]
        splittable = _WORD.findall(" ".join(text[a:b] for a, b in zip(starts, ends, strict=True)))
    # Cheap tests first: without "_", a word of lower-case letters, of capitals or of letters in title case has
    # no parts (digits or marks in a word can hide a break from str.istitle, which the regex then looks for).
    words += [
        part
        for word in splittable
        if ("_" in word or not (word.islower() or word.isupper() or (word.istitle() and word.isalpha())))
        and _HAS_PARTS.search(word)
        for part in _PART_BREAK.split(word)
        if part
    ]
    # "İ".lower() is "i" + a combining dot, which would not match a typed "i". No word holds a space.
    return " ".join(words).lower().replace("i\u0307", "i").split()


def name_parts(text: str) -> list[str]:
    """`text`'s words with each identifier cut into its parts (as `_words` cuts them), lower-cased, in order:
    `writer_id`, `WriterId` and "writer id" all give ["writer", "id"]. For comparing a query with a name."""
    words = _WORD.findall(unicodedata.normalize("NFKC", text.translate(_INVISIBLE)))
    parts = [part for word in words for part in (_PART_BREAK.split(word) if _HAS_PARTS.search(word) else [word])]
    return " ".join(p for p in parts if p).lower().replace("i\u0307", "i").split()


# Where a sentence ends: after . ! ? and whitespace, or right after a CJK full stop (no space follows one).
SENTENCE_BREAK = re.compile(r"(?<=[.!?])\s+|(?<=[。！？])")


def length_in_words(text: str) -> float:
    """About how many words `text` holds: space-separated words, with a CJK run counting one word per two
    characters (Chinese words average about that) and a Thai, Lao, Khmer or Myanmar run one per four (letters
    plus vowel and tone marks: Thai words average 4-5 code points), so texts without spaces are not read as
    one word."""
    cjk = sum(len(run) for run in _CJK_RUN.findall(text))
    sea = sum(max(1.0, len(run) / 4) for run in _SEA_RUN.findall(text))
    return len(_SPACELESS_RUN.sub(" ", text).split()) + cjk / 2 + sea


def _cjk_grams(run: str) -> list[str]:
    """A CJK run's characters, then its overlapping bigrams ("机器学习" -> 机 器 学 习 机器 器学 学习)."""
    return [*run, *(run[i : i + 2] for i in range(len(run) - 1))]


def _sea_grams(run: str) -> list[str]:
    """A Thai, Lao, Khmer or Myanmar run's overlapping bigrams ("ภาษา" -> ภา าษ ษา); a short run stays whole."""
    return [run] if len(run) <= 2 else [run[i : i + 2] for i in range(len(run) - 1)]


def _grams(token: str) -> Sequence[str]:
    if _CJK_CHAR.match(token):
        return _cjk_grams(token)
    if _SEA_CHAR.match(token):
        return _sea_grams(token)
    return (token,)


# rift's own stopword lists, named beside bm25s' ("en", "de", ...). "en_questions": bm25s' English list (Lucene's
# 33 words) plus the question words, auxiliaries and pronouns that an agent's question carries ("how do I ...",
# "what does my ..."), which are no topic. Not bm25s' larger "en_plus" (NLTK's): that also drops the letters the
# tokenizer splits off ("T cells", "vitamin D") and words that carry meaning in a query ("more", "after",
# "against", "few"). Measured in the README ("Benchmarks").
QUESTION_WORDS = frozenset(
    (
        "what", "which", "who", "whom", "whose", "when", "where", "why", "how", "do", "does", "did", "doing", "i",
        "me", "my", "myself", "we", "our", "ours", "ourselves", "you", "your", "yours", "yourself", "yourselves",
        "he", "him", "his", "himself", "she", "her", "hers", "herself", "its", "itself", "them", "theirs",
        "themselves", "can", "could", "would", "should", "shall", "might", "must", "am", "been", "being", "have",
        "has", "having", "had", "were", "from", "about", "than", "so", "any", "some",
    )
)
RIFT_STOPWORDS: dict[str, tuple[str, ...]] = {
    "en_questions": tuple(sorted(set(STOPWORDS_EN) | QUESTION_WORDS)),
}


def stopword_list(name: str | None) -> str | list[str]:
    """What bm25s' tokenizer takes for the setting `stopwords`: rift's own list by that name, else the name (one
    of bm25s' lists); no name, no stopwords."""
    if not name:
        return []
    return list(RIFT_STOPWORDS[name]) if name in RIFT_STOPWORDS else name


class KeywordTokenizer:
    """Words and identifiers' parts (see `_words`) without stopwords, stemmed by PyStemmer through bm25s' own
    tokenizer; CJK runs then become their characters and bigrams, Thai, Lao, Khmer and Myanmar runs their
    bigrams. The stopword list applies to whole words and parts alike, before a run is split."""

    def __init__(self, stemmer_language: str | None = "english", stopwords: str | None = "en") -> None:
        # Stored tokens depend on all of this: the engine re-tokenizes stored chunks when it changes.
        self.signature = (
            f"nfkc words1+marks+parts-imports cjk-grams sea-bigrams stemmer={stemmer_language} "
            f"stopwords={stopwords}"
        )
        self._stemmer = None
        if stemmer_language:
            import Stemmer

            self._stemmer = Stemmer.Stemmer(stemmer_language)
        self._stopwords = stopword_list(stopwords)

    def stem(self, word: str) -> str:
        """One word as the index stores it (lower-cased, stemmed); stopwords are not filtered here."""
        word = unicodedata.normalize("NFKC", word).lower()
        return self._stemmer.stemWord(word) if self._stemmer is not None else word

    def tokenize(self, texts: Sequence[str]) -> list[list[str]]:
        if not texts:
            return []
        # Words hold no whitespace, so bm25s' split on it gives them back whole for its stopwords and stemmer
        # (no stemmer changes CJK text).
        tokenized = bm25s.tokenize(
            [" ".join(_words(t)) for t in texts],
            lower=False,
            token_pattern=r"\S+",
            stopwords=self._stopwords,
            stemmer=self._stemmer,
            return_ids=False,
            show_progress=False,
        )
        return [[gram for token in tokens for gram in _grams(token)] for tokens in tokenized]


@dataclass(frozen=True)
class KeywordRow:
    chunk_id: str
    doc_id: str
    tokens: tuple[str, ...]
    metadata: Mapping[str, Any]
    # The chunk's text, held only while the collection fits the exact-search copy: a search then hydrates its
    # hits from memory instead of SQLite (0.24 -> 0.05 ms a search; README "Benchmarks").
    text: str | None = None


@dataclass(frozen=True)
class Postings:
    """Term frequencies of a snapshot's rows in bm25s' term-major (CSC) layout. Never mutated: a writer makes
    new arrays, and a new `vocab` dict whenever it adds a term."""

    vocab: dict[str, int]  # term -> column; may hold terms no row uses any more (df 0)
    indptr: np.ndarray  # int64 [terms + 1]: postings of term t are [indptr[t], indptr[t + 1])
    docs: np.ndarray  # int32 [postings]: row of each posting, ascending within a term
    tfs: np.ndarray  # float32 [postings]: occurrences of the term in that row
    doc_len: np.ndarray  # int64 [rows]: tokens per row, duplicates included

    def __post_init__(self) -> None:
        for array in (self.indptr, self.docs, self.tfs, self.doc_len):
            array.flags.writeable = False  # shared by snapshots that readers may still hold

    @classmethod
    def empty(cls) -> Postings:
        return cls(
            {},
            np.zeros(1, np.int64),
            np.zeros(0, np.int32),
            np.zeros(0, np.float32),
            np.zeros(0, np.int64),
        )

    def compact(self, keep: np.ndarray) -> Postings:
        """Only the rows where `keep` is true, renumbered in order; prunes the vocabulary when mostly unused."""
        kept_postings = keep[self.docs]
        row_map = np.cumsum(keep, dtype=np.int64) - 1
        docs = row_map[self.docs[kept_postings]].astype(np.int32)
        tfs = self.tfs[kept_postings]
        before = np.zeros(len(kept_postings) + 1, np.int64)  # kept postings before each position
        np.cumsum(kept_postings, out=before[1:])
        indptr = before[self.indptr]
        vocab = self.vocab
        used = np.diff(indptr) > 0
        unused = len(vocab) - int(used.sum())
        if len(vocab) >= _PRUNE_MIN and unused >= _PRUNE_SHARE * len(vocab):
            column = np.cumsum(used) - 1
            vocab = {t: int(column[i]) for t, i in vocab.items() if used[i]}
            indptr = np.concatenate([indptr[:1], indptr[1:][used]])
        return Postings(vocab, indptr, docs, tfs, self.doc_len[keep])

    def append(self, token_rows: Sequence[Sequence[str]]) -> Postings:
        """These rows added after the existing ones (their tokens become new columns where unseen)."""
        if not token_rows:
            return self
        first = len(self.doc_len)
        lengths = np.fromiter(map(len, token_rows), np.int64, len(token_rows))
        doc_len = np.concatenate([self.doc_len, lengths])
        flat = list(chain.from_iterable(token_rows))
        vocab = self.vocab
        unseen = [t for t in dict.fromkeys(flat) if t not in vocab]
        if unseen:
            vocab = dict(vocab)  # the published dict stays as it was for readers of older snapshots
            vocab.update(zip(unseen, range(len(vocab), len(vocab) + len(unseen)), strict=True))
        n_terms = len(vocab)
        if not flat:
            grown = n_terms - (len(self.indptr) - 1)
            indptr = np.concatenate([self.indptr, np.full(grown, self.indptr[-1])])
            return Postings(vocab, indptr, self.docs, self.tfs, doc_len)
        # (term, row) pairs with their counts, sorted by term then row: the new postings in CSC order.
        n_rows = len(token_rows)
        # 32-bit keys sort several times faster than 64-bit ones.
        key_type = np.uint32 if n_terms * n_rows < 2**32 else np.int64
        terms = np.fromiter(map(vocab.__getitem__, flat), key_type, len(flat))
        rows = np.repeat(np.arange(n_rows, dtype=key_type), lengths)
        terms *= key_type(n_rows)
        terms += rows
        keys, counts = np.unique(terms, return_counts=True)
        new_terms = (keys // key_type(n_rows)).astype(np.int64)
        new_docs = (keys % key_type(n_rows)).astype(np.int32) + np.int32(first)
        new_tfs = counts.astype(np.float32)

        old = np.concatenate([self.indptr, np.full(n_terms + 1 - len(self.indptr), self.indptr[-1])])
        if len(self.docs) == 0:
            docs, tfs = new_docs, new_tfs
        else:
            # New rows come after every old row, so each new posting goes at the end of its term's run.
            at = old[new_terms + 1] + np.arange(len(new_terms))
            is_old = np.ones(len(self.docs) + len(new_terms), bool)
            is_old[at] = False
            docs = np.empty(len(is_old), np.int32)
            docs[at] = new_docs
            docs[is_old] = self.docs
            tfs = np.empty(len(is_old), np.float32)
            tfs[at] = new_tfs
            tfs[is_old] = self.tfs
        added = np.zeros(n_terms + 1, np.int64)
        np.cumsum(np.bincount(new_terms, minlength=n_terms), out=added[1:])
        return Postings(vocab, old + added, docs, tfs, doc_len)

    def bm25(self) -> bm25s.BM25 | None:
        """A bm25s retriever holding the scores bm25s' default method would compute for these rows."""
        n_docs = len(self.doc_len)
        if n_docs == 0:
            return None
        df = np.diff(self.indptr)
        data = np.zeros(0, np.float32)
        if len(self.docs):
            # Same operations, order and dtypes as bm25s.scoring (_build_idf_array, _score_tfc_lucene and
            # `idf * tfc` stored as float32), vectorised over all postings.
            avg_len = self.doc_len.mean()
            idf = np.log(1 + (n_docs - df + 0.5) / (df + 0.5)).astype(np.float32)
            norm = K1 * ((1 - B) + B * self.doc_len / avg_len)
            tf = self.tfs.astype(np.float64)
            denominator = norm[self.docs]
            denominator += tf
            np.divide(tf, denominator, out=tf)
            tf *= np.repeat(idf, df)
            data = tf.astype(np.float32)
            data.flags.writeable = False
        retriever = bm25s.BM25(k1=K1, b=B, method="lucene")
        retriever.scores = {"data": data, "indices": self.docs, "indptr": self.indptr, "num_docs": n_docs}
        retriever.vocab_dict = self.vocab
        retriever.nonoccurrence_array = None
        retriever.unique_token_ids_set = None
        return retriever


@dataclass
class KeywordSnapshot:
    """One collection's rows as searches see them. Besides BM25 it can carry the rows' vectors of one model
    version (`vectors`, same row order) for exact vector search; None when the copy is off or out of date."""

    rows: list[KeywordRow]
    alive: np.ndarray
    bm25: bm25s.BM25 | None
    row_of: dict[str, int] = field(default_factory=dict)
    columns: MetadataColumns | None = None
    build_seconds: float = 0.0
    postings: Postings = field(default_factory=Postings.empty)
    vectors: VectorRows | None = None
    vectors_version: str | None = None
    # Derived from `alive`, which is replaced, never mutated: computed once rather than on every search.
    live_count: int = field(init=False)
    all_alive: bool = field(init=False)
    alive_weights: np.ndarray = field(init=False, repr=False)  # float32 mask that bm25s takes

    def __post_init__(self) -> None:
        self.live_count = int(self.alive.sum())
        self.all_alive = self.live_count == len(self.alive)
        self.alive_weights = self.alive.astype(np.float32)

    @functools.cached_property
    def live_documents(self) -> int:
        """Distinct documents among the live rows; counted once per snapshot, when a search finds fewer
        documents than it wants in its first reads (a collection of a few long documents)."""
        return len({r.doc_id for r, ok in zip(self.rows, self.alive, strict=True) if ok})


def build_snapshot(
    rows: list[KeywordRow], postings: Postings | None = None, row_of: dict[str, int] | None = None
) -> KeywordSnapshot:
    """Snapshot over `rows`; `postings` (and `row_of`) must already describe them, else they are rebuilt."""
    started = time.perf_counter()
    if postings is None:
        postings = Postings.empty().append([r.tokens for r in rows])
    return KeywordSnapshot(
        rows=rows,
        alive=np.ones(len(rows), dtype=bool),
        bm25=postings.bm25(),
        row_of={r.chunk_id: i for i, r in enumerate(rows)} if row_of is None else row_of,
        columns=MetadataColumns([r.metadata for r in rows]),
        build_seconds=time.perf_counter() - started,
        postings=postings,
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

    def apply(
        self,
        remove: Iterable[str] = (),
        add: Sequence[KeywordRow] = (),
        add_vectors: np.ndarray | None = None,
    ) -> float:
        """Remove then add chunks; returns the seconds spent rebuilding (0 when only masking). `add_vectors`
        (one per added row) extends the snapshot's vector copy; without them the copy is dropped."""
        snap = self._snap
        remove = {c for c in remove if c in snap.row_of}
        if not add:
            if not remove:
                return 0.0
            alive = snap.alive.copy()
            alive[[snap.row_of[c] for c in remove]] = False
            self._snap = replace(snap, alive=alive, build_seconds=0.0)
            return 0.0
        started = time.perf_counter()
        add = list(add)
        drop = [snap.row_of[c] for c in remove | {r.chunk_id for r in add} if c in snap.row_of]
        keep = snap.alive.copy()
        keep[drop] = False
        if len(snap.row_of) != len(snap.rows):
            # A chunk id indexed twice (one add repeated it): drop every copy, as a rebuild would.
            ids = {snap.rows[i].chunk_id for i in drop}
            keep &= np.fromiter((r.chunk_id not in ids for r in snap.rows), bool, len(snap.rows))
        postings, rows, row_of = snap.postings, snap.rows, None
        if keep.all():
            row_of = dict(snap.row_of)  # rows keep their numbers: extend the map instead of rebuilding it
            row_of.update((r.chunk_id, i) for i, r in enumerate(add, len(rows)))
        else:
            postings = postings.compact(keep)
            rows = [r for r, ok in zip(rows, keep, strict=True) if ok]
        fresh = build_snapshot(rows + add, postings.append([r.tokens for r in add]), row_of)
        if snap.vectors is not None and add_vectors is not None and len(add_vectors) == len(add):
            kept = snap.vectors if keep.all() else snap.vectors.kept(keep)
            fresh.vectors, fresh.vectors_version = kept.appended(add_vectors), snap.vectors_version
        fresh.build_seconds = time.perf_counter() - started
        self._snap = fresh  # one reference swap: readers see the old snapshot or the new one
        return fresh.build_seconds

    def compact(self) -> float:
        """Drop deleted rows now, so N, the average length and document frequencies count live rows only
        (an add does this anyway); returns the seconds spent (0 when nothing was deleted)."""
        snap = self._snap
        if snap.alive.all():
            return 0.0
        started = time.perf_counter()
        rows = [r for r, ok in zip(snap.rows, snap.alive, strict=True) if ok]
        fresh = build_snapshot(rows, snap.postings.compact(snap.alive))
        if snap.vectors is not None:
            fresh.vectors, fresh.vectors_version = snap.vectors.kept(snap.alive), snap.vectors_version
        fresh.build_seconds = time.perf_counter() - started
        self._snap = fresh
        return fresh.build_seconds

    def set_vectors(self, vectors: VectorRows | None, version: str | None) -> None:
        """Attach (or drop, with None) the vector copy of model `version`, one row per snapshot row."""
        snap = self._snap
        if vectors is not None and vectors.n != len(snap.rows):
            raise ValueError(f"{vectors.n} vectors for {len(snap.rows)} rows")
        self._snap = replace(snap, vectors=vectors, vectors_version=version if vectors is not None else None)

    def search(
        self,
        query_tokens: Sequence[str],
        depth: int,
        filter_node: Node | None = None,
        snap: KeywordSnapshot | None = None,
    ) -> list[tuple[KeywordRow, float]]:
        """Top `depth` live rows with a positive BM25 score, filtered before ranking. `snap`: the snapshot a
        search already read, so both of its sides rank the same state of the collection."""
        snap = snap or self._snap
        if snap.bm25 is None or not query_tokens:
            return []
        vocab = snap.bm25.vocab_dict
        tokens = [t for t in query_tokens if t in vocab]
        if not tokens:
            return []
        weights = snap.alive_weights
        if filter_node is not None and snap.columns is not None:
            passing = snap.alive & mask(filter_node, snap.columns)
            if not passing.any():
                return []
            weights = passing.astype(np.float32)
        elif not snap.live_count:
            return []
        scores = snap.bm25.get_scores(tokens, weight_mask=weights)
        # Rank only the rows that score: most rows of a corpus share none of the query's terms, and
        # selecting among their tied zeros was bm25s' slowest step (0.5 of 0.75 ms a query at 10K chunks).
        # Ties rank in row order, at the cut too.
        scoring = np.flatnonzero(scores > 0)
        if len(scoring) > depth:
            values = scores[scoring]
            cut = -np.partition(-values, depth - 1)[depth - 1]  # the depth-th best score
            above = scoring[values > cut]
            scoring = np.concatenate([above, scoring[values == cut][: depth - len(above)]])
        scoring = scoring[np.argsort(-scores[scoring], kind="stable")]
        return [(snap.rows[r], s) for r, s in zip(scoring.tolist(), scores[scoring].tolist(), strict=True)]

    def vector_search(
        self,
        query: np.ndarray,
        depth: int,
        filter_node: Node | None,
        version: str,
        pool: Executor | None = None,
        snap: KeywordSnapshot | None = None,
    ) -> list[tuple[KeywordRow, float]] | None:
        """Exact cosine top `depth` over live, filter-passing rows; None when no copy of `version` is held."""
        snap = snap or self._snap
        if snap.vectors is None or snap.vectors_version != version:
            return None
        allowed = None if snap.all_alive else snap.alive  # None: every row
        if filter_node is not None and snap.columns is not None:
            allowed = snap.alive & mask(filter_node, snap.columns)
        return [(snap.rows[r], s) for r, s in top_rows(snap.vectors.view(), query, allowed, depth, pool)]
