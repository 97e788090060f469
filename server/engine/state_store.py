"""rift's own SQLite state: the collection catalog, every chunk's text, stemmed tokens and metadata (the keyword
side's durable form), and a small write-ahead journal that makes multi-chunk writes to Chroma recoverable.

Chroma's stored chunks remain the source of truth: on start-up `Engine` reconciles this table against them.
"""

from __future__ import annotations

import bisect
import hashlib
import json
import logging
import math
import os
import sqlite3
import threading
import time
from collections import Counter
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from server.engine.sqlite_space import WAL_LIMIT_BYTES, incremental_if_new, reclaim

log = logging.getLogger(__name__)

SCHEMA = """
CREATE TABLE IF NOT EXISTS collections (
    name TEXT PRIMARY KEY,
    chroma_name TEXT NOT NULL,
    model_version TEXT NOT NULL,
    created_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS chunks (
    collection TEXT NOT NULL,
    chunk_id TEXT NOT NULL,
    doc_id TEXT NOT NULL,
    doc_hash TEXT NOT NULL,
    chunk_index INTEGER NOT NULL,
    text TEXT NOT NULL,
    tokens TEXT NOT NULL,
    metadata TEXT NOT NULL,
    PRIMARY KEY (collection, chunk_id)
);
CREATE INDEX IF NOT EXISTS chunks_by_doc ON chunks (collection, doc_id);
CREATE INDEX IF NOT EXISTS chunks_by_text_start ON chunks (collection, substr(text, 1, 64));
CREATE TABLE IF NOT EXISTS documents (
    collection TEXT NOT NULL,
    doc_id TEXT NOT NULL,
    doc_hash TEXT NOT NULL,
    text TEXT NOT NULL,
    metadata TEXT NOT NULL,
    updated_at REAL NOT NULL,
    PRIMARY KEY (collection, doc_id)
);
-- A document written again (a metadata change, a file touched, a re-chunk, an edit) gets new chunk ids; the
-- query log names the ones a search saw. Each gone chunk id -> the same document's chunk that holds its passage
-- now (or again: see chunk_tombstones), so mining still trains on the passage that was ranked (see
-- `_note_successors`, `successors`).
CREATE TABLE IF NOT EXISTS chunk_successors (
    collection TEXT NOT NULL,
    old_id TEXT NOT NULL,
    new_id TEXT NOT NULL,
    at REAL NOT NULL,
    PRIMARY KEY (collection, old_id)
);
CREATE INDEX IF NOT EXISTS chunk_successors_by_new ON chunk_successors (collection, new_id);
-- A gone chunk id whose passage no write kept (its document deleted, or the passage rewritten away), and the
-- ids that mapped to it: its document (the one it was renamed to since, if so) and a hash of its text
-- (never the text: a deleted document's text leaves), so that when that document holds exactly that text
-- again (a git branch switched and back, a file deleted and restored) the returning chunk becomes their
-- successor (`_note_successors`). `at`: when it went.
CREATE TABLE IF NOT EXISTS chunk_tombstones (
    collection TEXT NOT NULL,
    doc_id TEXT NOT NULL,
    text_hash TEXT NOT NULL,
    old_id TEXT NOT NULL,
    at REAL NOT NULL,
    PRIMARY KEY (collection, old_id)
);
CREATE INDEX IF NOT EXISTS chunk_tombstones_by_text ON chunk_tombstones (collection, doc_id, text_hash);
CREATE TABLE IF NOT EXISTS settings (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS journal (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    chroma_name TEXT NOT NULL,
    phase TEXT NOT NULL,          -- 'write-new' | 'delete-old'
    new_ids TEXT NOT NULL,
    old_ids TEXT NOT NULL,
    created_at REAL NOT NULL
);
"""


_DROP = "dropping:"  # settings key prefix: a deleted collection's Chroma collection still to drop
# Settings key prefix: a collection whose move to a Chroma server has begun and not finished (see Engine.open).
MOVING_TO_SERVER = "moving_to_server:"
# Settings key prefix: a collection made by a write (not asked for) that nothing has been committed into yet; a
# kill before that write's commit leaves it, and the next start drops the collection if it holds nothing (see
# Engine._drop_unfinished_creates). Any commit into the collection, or its deletion, clears it.
CREATED_BY_WRITE = "created_by_write:"


@dataclass(frozen=True)
class CollectionRecord:
    name: str
    chroma_name: str
    model_version: str
    created_at: float


@dataclass(frozen=True)
class ChunkRow:
    chunk_id: str
    doc_id: str
    doc_hash: str
    chunk_index: int
    text: str
    tokens: tuple[str, ...]
    metadata: dict[str, Any]


@dataclass(frozen=True)
class DocumentEntry:
    doc_id: str
    metadata: dict[str, Any]
    size: int  # the text's UTF-8 bytes
    updated_at: float


def _after_prefix(prefix: str) -> str | None:
    """The least string above every string that starts with `prefix` (SQLite orders text by UTF-8 bytes, which
    is code point order), or None when there is none ("" or only U+10FFFF)."""
    head = prefix.rstrip("\U0010ffff")
    if not head:
        return None
    nxt = ord(head[-1]) + 1
    if 0xD800 <= nxt <= 0xDFFF:  # surrogates are not stored text
        nxt = 0xE000
    return head[:-1] + chr(nxt)


def _id_range(prefix: str) -> tuple[str, list[str]]:
    """The SQL (to AND onto a WHERE) and arguments that keep the ids starting with `prefix`: a range of the
    primary key, so a page reads only its rows."""
    if not prefix:
        return "", []
    end = _after_prefix(prefix)
    if end is None:
        return "AND doc_id >= ?", [prefix]
    return "AND doc_id >= ? AND doc_id < ?", [prefix, end]


# How many of their words (Jaccard) an edited chunk must share with the old one to stay its passage for the
# query log's searches (a word or two changed in a 256-token chunk keeps ~0.95; a rewrite keeps almost none).
EDITED_SIMILARITY = 0.8

# A file renamed and edited in one sync is told by its words (`StateStore._edited_renames`): only documents of
# about the same length are compared (a small edit keeps it within this ratio), and no more pairs of them than
# this (past it, an edited rename is not looked for: a sync that renames and edits thousands of files; a million
# pairs of 300-word texts took 1.3 s here).
RENAME_LENGTH_RATIO = 0.8
MAX_RENAME_PAIRS = 2_000_000
# Nor past this many words compared in all (`_similar_pairs`): the length window spans the shortest pruned
# document to the longest, so a sync pruning texts of every length reads most of what it wrote, and 1,000 pruned
# x 2,000 written Zipf texts of 50-5,000 words compared 2.6e8 words in 110 s, the state's lock held.
MAX_RENAME_WORK = 20_000_000
# A folder holding more like-sized files than this beside an edited rename's two is not read for near copies
# of them (`StateStore._without_near_copies`): an edited rename there is taken for a generated folder's, and
# not linked.
MAX_RENAME_SIBLINGS = 5_000

# The settings key holding when this state began to record chunk successors: a search logged before a
# document's last write before then may name a chunk id whose successor was never recorded.
SUCCESSORS_SINCE = "chunk_successors_since"


def _text_hash(text: str) -> str:
    """What a tombstone keeps of a gone chunk's text: enough to know it again, not the text."""
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:32]


def _renamed_or_moved(was: str, now: str) -> bool:
    """Whether path `now` is `was` renamed in its folder or moved under its own name."""
    return os.path.dirname(was) == os.path.dirname(now) or os.path.basename(was) == os.path.basename(now)


class _TooCostly(Exception):
    """`_similar_pairs` compared more words than it was allowed."""


def _similar_pairs(
    old: Mapping[str, set[str]], new: Mapping[str, set[str]], threshold: float, max_work: int | None = None
) -> Iterator[tuple[str, str]]:
    """The (old, new) pairs of word sets whose Jaccard similarity is at least `threshold`, without comparing
    every pair (a prefix filter, Bayardo et al. 2007): with the words of every set in one order, rarest first,
    two sets that alike share a word among each one's first `len - ceil(threshold * len) + 1`, so only the
    sets sharing such a word with an old one are compared with it, and only when neither is under `threshold`
    times the other's size (no pair that alike is). Raises `_TooCostly` past `max_work` words compared."""
    work = 0
    df = Counter(w for words in (*old.values(), *new.values()) for w in words)

    def prefix(words: set[str]) -> list[str]:
        ordered = sorted(words, key=lambda w: (df[w], w))
        return ordered[: len(words) - math.ceil(threshold * len(words)) + 1]

    index: dict[str, list[str]] = {}
    for doc_id, words in new.items():
        for w in prefix(words):
            index.setdefault(w, []).append(doc_id)
    for was, words in old.items():
        if not words:
            continue
        for now in dict.fromkeys(d for w in prefix(words) for d in index.get(w, ())):
            other = new[now]
            if min(len(words), len(other)) < threshold * max(len(words), len(other)):
                continue
            work += min(len(words), len(other))
            if max_work is not None and work > max_work:
                raise _TooCostly
            shared = len(words & other)
            if shared / (len(words) + len(other) - shared) >= threshold:  # (as `_Heirs.edited` reckons)
                yield was, now


def _span(meta: Mapping[str, Any]) -> tuple[int, int] | None:
    start, end = meta.get("_rift_start"), meta.get("_rift_end")
    return (start, end) if isinstance(start, int) and isinstance(end, int) else None


class _Heirs:
    """A document's new chunks (`rows`, in order), indexed once for `_note_successors`: by text, and by span
    (sorted starts, and the longest span) so that finding an old chunk's heir reads the few new chunks near it
    rather than all of them (a document of 20,000 chunks re-chunked took minutes: quadratic)."""

    def __init__(self, rows: Sequence[ChunkRow]) -> None:
        self.by_text: dict[str, ChunkRow] = {}  # (the first with that text)
        self.by_text_at: dict[tuple[str, int], ChunkRow] = {}  # (a text a document repeats: one lookup)
        for r in rows:
            self.by_text.setdefault(r.text, r)
            self.by_text_at.setdefault((r.text, r.chunk_index), r)
        self.by_index = {r.chunk_index: r for r in rows}
        spans = [(span, n, r) for n, r in enumerate(rows) if (span := _span(r.metadata)) is not None]
        spans.sort(key=lambda x: (x[0][0], x[1]))
        self.spans = spans
        self.starts = [span[0] for span, _n, _r in spans]
        self.longest = max((e - s for (s, e), _n, _r in spans), default=0)

    def same_text(self, text: str, index: int) -> ChunkRow | None:
        """The new chunk with `text`, at `index` if one is there (a text the document repeats)."""
        return self.by_text_at.get((text, index)) or self.by_text.get(text)

    def edited(
        self, text: str, index: int, meta: Mapping[str, Any], old_texts: Collection[str] = ()
    ) -> ChunkRow | None:
        """The new chunk that is `text` (an old chunk's, at `index`) after a small edit: of the chunk at the same
        position and the one covering most of its old span, the one sharing most words with it, if at least
        EDITED_SIMILARITY of their words (Jaccard). A typo fixed is the same passage; a rewrite is not. A new
        chunk whose text one of the document's old chunks had (`old_texts`) is that passage, moved (a section
        deleted before it): never this one, however alike (a templated API reference's entries)."""
        words = set(text.split())
        best, score = None, EDITED_SIMILARITY
        for r in (self.by_index.get(index), self.most_overlapping(meta)):
            if r is not None and r.text not in old_texts and (other := set(r.text.split())):
                similarity = len(words & other) / len(words | other)
                if similarity >= score:
                    best, score = r, similarity
        return best

    def most_overlapping(self, meta: Mapping[str, Any]) -> ChunkRow | None:
        """The new chunk whose span of the document's text overlaps most with the span `meta` (an old chunk's
        metadata) records, the first in order on a tie; None when none does, or spans are not recorded."""
        span = _span(meta)
        if span is None:
            return None
        start, end = span
        # Only chunks starting before `end` and after `start - longest` can overlap [start, end).
        lo = bisect.bisect_right(self.starts, start - self.longest)
        hi = bisect.bisect_left(self.starts, end)
        best: tuple[int, int, ChunkRow] | None = None  # (-shared, order, row)
        for (s, e), n, r in self.spans[lo:hi]:
            shared = min(end, e) - max(start, s)
            if shared > 0 and (best is None or (-shared, n) < best[:2]):
                best = (-shared, n, r)
        return best[2] if best is not None else None


@dataclass(frozen=True)
class Rename:
    """Where a removed document's text went in the same write: `doc_id`, whole (`edited` False) or after a
    small edit (`StateStore._renamed`)."""

    doc_id: str
    edited: bool = False


@dataclass(frozen=True)
class JournalEntry:
    id: int
    chroma_name: str
    phase: str
    new_ids: list[str]
    old_ids: list[str]
    created_at: float = 0.0


class StateStore:
    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._conn = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None)
        self._conn.create_function("rift_text_hash", 1, _text_hash, deterministic=True)
        incremental_if_new(self._conn)  # (deleted rows' pages go back to the disk: server/engine/sqlite_space.py)
        self._conn.execute("PRAGMA journal_mode=WAL")
        self._conn.execute("PRAGMA synchronous=FULL")  # an acknowledged write survives power loss
        self._conn.execute(f"PRAGMA journal_size_limit={WAL_LIMIT_BYTES}")
        tables = {r[0] for r in self._conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        self._conn.executescript(SCHEMA)
        # Successors are recorded from a new state's first write, and were by a version that made the table
        # (its exact-text successors: a rewrite ended the chain, and must not train on the new text); only a
        # state from before the table holds documents written unrecorded. (Not the creation time: a clock set
        # back after it would make documents written since read as unrecorded.)
        since = time.time() if "documents" in tables and "chunk_successors" not in tables else 0.0
        self._conn.execute("INSERT OR IGNORE INTO settings VALUES (?, ?)", (SUCCESSORS_SINCE, repr(since)))
        self._lock = threading.RLock()
        self._closed = False
        self._records: dict[str, CollectionRecord] = {}  # collection rows, read-through (see collection())
        with self._lock:
            self._reclaim(starting=True)

    def close(self) -> None:
        with self._lock:
            self._closed = True
            self._conn.close()

    @property
    def closed(self) -> bool:
        """Whether `close` was called: every later use fails (sqlite3's 'Cannot operate on a closed database')."""
        return self._closed

    def _reclaim(self, starting: bool = False) -> None:
        """Give free pages back to the disk once they are a large part of the file (hold self._lock)."""
        reclaim(self._conn, self.path, "rift's state", starting)

    @contextmanager
    def _transaction(self) -> Iterator[None]:
        with self._lock:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                yield
            except BaseException:
                self._conn.execute("ROLLBACK")
                self._records.clear()  # a rolled-back change may have been cached
                raise
            self._conn.execute("COMMIT")

    def _rows(self, sql: str, args: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        with self._lock:
            return self._conn.execute(sql, args).fetchall()

    # --- settings the stored data depends on ---------------------------------------------------------------

    def setting(self, key: str) -> str | None:
        rows = self._rows("SELECT value FROM settings WHERE key = ?", (key,))
        return rows[0][0] if rows else None

    def has_setting_prefix(self, prefix: str) -> bool:
        """Whether any setting's key starts with `prefix`."""
        rows = self._rows("SELECT 1 FROM settings WHERE substr(key, 1, ?) = ? LIMIT 1", (len(prefix), prefix))
        return bool(rows)

    def put_setting(self, key: str, value: str) -> None:
        with self._lock:
            self._conn.execute("INSERT OR REPLACE INTO settings VALUES (?, ?)", (key, value))

    def setting_keys(self, prefix: str) -> list[str]:
        """What follows `prefix` in the keys of the settings whose key starts with it."""
        rows = self._rows("SELECT key FROM settings WHERE substr(key, 1, ?) = ? ORDER BY key", (len(prefix), prefix))
        return [key[len(prefix) :] for (key,) in rows]

    def delete_setting(self, key: str, prefix: bool = False) -> None:
        """Delete setting `key`, or with `prefix` every setting whose key starts with it."""
        with self._lock:
            if prefix:
                self._conn.execute("DELETE FROM settings WHERE substr(key, 1, ?) = ?", (len(key), key))
            else:
                self._conn.execute("DELETE FROM settings WHERE key = ?", (key,))

    def retokenize(self, tokenize: Callable[[list[str]], list[list[str]]], batch: int = 2000) -> int:
        """Re-derive every chunk's keyword tokens from its stored text, in one transaction (the keyword
        tokenizer changed: another stemmer or stopword list). Returns how many chunks were re-tokenized."""
        done = 0
        with self._transaction():
            rows = self._conn.execute("SELECT rowid, text FROM chunks").fetchall()
            for start in range(0, len(rows), batch):
                part = rows[start : start + batch]
                tokens = tokenize([text for _rowid, text in part])
                self._conn.executemany(
                    "UPDATE chunks SET tokens = ? WHERE rowid = ?",
                    [(" ".join(t), rowid) for (rowid, _text), t in zip(part, tokens, strict=True)],
                )
                done += len(part)
        with self._lock:
            self._reclaim()
        return done

    # --- collections ---------------------------------------------------------------------------------------

    def collections(self) -> list[CollectionRecord]:
        return [CollectionRecord(*r) for r in self._rows("SELECT * FROM collections ORDER BY name")]

    def collection(self, name: str) -> CollectionRecord | None:
        # Every search reads its collection's record; a SQLite round trip cost ~0.2 ms of a 9 ms search. Only
        # this process writes the table (the data dir is locked), and every write goes through the methods
        # below, which keep this cache in step.
        record = self._records.get(name)
        if record is None:
            with self._lock:  # read and cache as one step, so a concurrent put cannot be overwritten
                rows = self._conn.execute("SELECT * FROM collections WHERE name = ?", (name,)).fetchall()
                if not rows:
                    return None
                record = self._records[name] = CollectionRecord(*rows[0])
        return record

    def put_collection(self, name: str, chroma_name: str, model_version: str) -> CollectionRecord:
        with self._lock:
            self._conn.execute(
                "INSERT INTO collections VALUES (?, ?, ?, ?) ON CONFLICT(name) DO UPDATE SET "
                "chroma_name = excluded.chroma_name, model_version = excluded.model_version",
                (name, chroma_name, model_version, time.time()),
            )
            self._records.pop(name, None)
        record = self.collection(name)
        assert record is not None
        return record

    def delete_collection(self, name: str, drop_chroma: Mapping[str, str | None] | None = None) -> None:
        """Forget collection `name` (and its move to a Chroma server, if one is under way); in the same
        transaction, note its Chroma collections `drop_chroma` (name -> Chroma's id for it) as to be dropped
        (see `pending_drops`) and drop their unfinished writes' journal entries."""
        with self._transaction():
            self._conn.execute(
                "DELETE FROM settings WHERE key IN (?, ?)", (f"{MOVING_TO_SERVER}{name}", f"{CREATED_BY_WRITE}{name}")
            )
            self._conn.execute("DELETE FROM documents WHERE collection = ?", (name,))
            self._conn.execute("DELETE FROM chunks WHERE collection = ?", (name,))
            self._conn.execute("DELETE FROM chunk_successors WHERE collection = ?", (name,))
            self._conn.execute("DELETE FROM chunk_tombstones WHERE collection = ?", (name,))
            self._conn.execute("DELETE FROM collections WHERE name = ?", (name,))
            for chroma, chroma_id in (drop_chroma or {}).items():
                value = json.dumps({"collection": name, "id": chroma_id})
                self._conn.execute(
                    "INSERT OR REPLACE INTO settings VALUES (?, ?)", (f"{_DROP}{chroma}", value)
                )
                self._conn.execute("DELETE FROM journal WHERE chroma_name = ?", (chroma,))
            self._records.pop(name, None)
        with self._lock:
            self._reclaim()

    def pending_drops(self) -> dict[str, str | None]:
        """Chroma collections of deleted collections not yet dropped (a crash, or Chroma failed to drop one):
        name -> the id Chroma gave it (None if unknown), so one made since under the name is told apart."""
        out: dict[str, str | None] = {}
        for key, value in self._rows("SELECT key, value FROM settings WHERE key LIKE ?", (f"{_DROP}%",)):
            try:
                chroma_id = json.loads(value).get("id")
            except (ValueError, AttributeError):
                chroma_id = None
            out[key[len(_DROP) :]] = chroma_id if isinstance(chroma_id, str) else None
        return out

    def drop_done(self, chroma: str) -> None:
        with self._lock:
            self._conn.execute("DELETE FROM settings WHERE key = ?", (f"{_DROP}{chroma}",))

    # --- chunks --------------------------------------------------------------------------------------------

    def doc_hashes(self, collection: str, doc_ids: Sequence[str]) -> dict[str, str]:
        out: dict[str, str] = {}
        for start in range(0, len(doc_ids), 500):
            part = list(doc_ids[start : start + 500])
            marks = ",".join("?" * len(part))
            for doc_id, doc_hash in self._rows(
                f"SELECT doc_id, doc_hash FROM documents WHERE collection = ? AND doc_id IN ({marks})",
                [collection, *part],
            ):
                out[doc_id] = doc_hash
        return out

    def chunk_ids_of_docs(self, collection: str, doc_ids: Sequence[str]) -> list[str]:
        return self._chunk_ids_where(collection, "doc_id", doc_ids)

    def _chunk_ids_where(
        self, collection: str, column: str, values: Sequence[str], batch: int = 500
    ) -> list[str]:
        """Chunk ids of `collection` whose `column` (doc_id or chunk_id) is among `values`, in batches."""
        out: list[str] = []
        for start in range(0, len(values), batch):
            part = list(values[start : start + batch])
            marks = ",".join("?" * len(part))
            out.extend(
                r[0]
                for r in self._rows(
                    f"SELECT chunk_id FROM chunks WHERE collection = ? AND {column} IN ({marks})",
                    [collection, *part],
                )
            )
        return out

    def chunk_ids_by_text(self, collection: str, texts: Sequence[str], batch: int = 500) -> dict[str, str]:
        """text -> the id of one stored chunk of `collection` with exactly that text, for those of `texts` that
        have one. Looked up by an index on the texts' first 64 characters, then compared whole."""
        wanted = set(texts)
        starts = sorted({t[:64] for t in wanted})
        out: dict[str, str] = {}
        for first in range(0, len(starts), batch):
            part = starts[first : first + batch]
            marks = ",".join("?" * len(part))
            for chunk_id, text in self._rows(
                f"SELECT chunk_id, text FROM chunks WHERE collection = ? AND substr(text, 1, 64) IN ({marks})",
                [collection, *part],
            ):
                if text in wanted:
                    out.setdefault(text, chunk_id)
        return out

    def chunk_ids(self, collection: str) -> set[str]:
        return {r[0] for r in self._rows("SELECT chunk_id FROM chunks WHERE collection = ?", (collection,))}

    def chunk_keys(self, collection: str, doc_ids: Sequence[str] | None = None) -> dict[str, tuple[str, str]]:
        """chunk_id -> (doc_id, doc_hash), of every chunk or of `doc_ids`' chunks: what a repair against Chroma
        needs, without texts or tokens."""
        sql = "SELECT chunk_id, doc_id, doc_hash FROM chunks WHERE collection = ?"
        if doc_ids is None:
            return {r[0]: (r[1], r[2]) for r in self._rows(sql, (collection,))}
        out: dict[str, tuple[str, str]] = {}
        for start in range(0, len(doc_ids), 500):
            part = list(doc_ids[start : start + 500])
            marks = ",".join("?" * len(part))
            for r in self._rows(f"{sql} AND doc_id IN ({marks})", [collection, *part]):
                out[r[0]] = (r[1], r[2])
        return out

    def iter_chunks(self, collection: str) -> Iterator[ChunkRow]:
        with self._lock:
            rows = self._conn.execute(
                "SELECT chunk_id, doc_id, doc_hash, chunk_index, text, tokens, metadata FROM chunks "
                "WHERE collection = ? ORDER BY rowid",
                (collection,),
            ).fetchall()
        for r in rows:
            yield ChunkRow(r[0], r[1], r[2], r[3], r[4], tuple(r[5].split()), json.loads(r[6]))

    def chunks_by_id(self, collection: str, chunk_ids: Sequence[str]) -> dict[str, ChunkRow]:
        if not chunk_ids:
            return {}
        marks = ",".join("?" * len(chunk_ids))
        rows = self._rows(
            "SELECT chunk_id, doc_id, doc_hash, chunk_index, text, '', metadata FROM chunks "
            f"WHERE collection = ? AND chunk_id IN ({marks})",
            [collection, *chunk_ids],
        )
        return {r[0]: ChunkRow(r[0], r[1], r[2], r[3], r[4], (), json.loads(r[6])) for r in rows}

    def live_chunk_ids(self, collection: str, chunk_ids: Sequence[str]) -> set[str]:
        """Those of `chunk_ids` that are live chunks of `collection`."""
        return set(self._chunk_ids_where(collection, "chunk_id", chunk_ids))

    def document_chunks(self, collection: str, doc_id: str, limit: int = -1) -> list[ChunkRow]:
        """A document's chunks in order; the first `limit` of them (-1: all)."""
        rows = self._rows(
            "SELECT chunk_id, doc_id, doc_hash, chunk_index, text, '', metadata FROM chunks "
            "WHERE collection = ? AND doc_id = ? ORDER BY chunk_index LIMIT ?",
            (collection, doc_id, limit),
        )
        return [ChunkRow(r[0], r[1], r[2], r[3], r[4], (), json.loads(r[6])) for r in rows]

    def has_chunks(self) -> bool:
        """Whether any collection holds a chunk."""
        return bool(self._rows("SELECT 1 FROM chunks LIMIT 1"))

    def counts(self, collection: str) -> tuple[int, int]:
        ((docs,),) = self._rows("SELECT COUNT(*) FROM documents WHERE collection = ?", (collection,))
        ((chunks,),) = self._rows("SELECT COUNT(*) FROM chunks WHERE collection = ?", (collection,))
        return int(docs), int(chunks)

    def document(self, collection: str, doc_id: str) -> tuple[str, str, dict[str, Any], float] | None:
        rows = self._rows(
            "SELECT doc_hash, text, metadata, updated_at FROM documents WHERE collection = ? AND doc_id = ?",
            (collection, doc_id),
        )
        return (rows[0][0], rows[0][1], json.loads(rows[0][2]), rows[0][3]) if rows else None

    def list_documents(
        self, collection: str, limit: int, offset: int, after: str | None = None, prefix: str = ""
    ) -> list[tuple[str, dict[str, Any]]]:
        """(doc_id, metadata) by id: `limit` (-1 = all) from `offset`, of the ids that sort after `after` (and
        start with `prefix`)."""
        where, args = _id_range(prefix)
        rows = self._rows(
            f"SELECT doc_id, metadata FROM documents WHERE collection = ? AND doc_id > ? {where} "
            "ORDER BY doc_id LIMIT ? OFFSET ?",
            (collection, after or "", *args, limit, offset),
        )
        return [(r[0], json.loads(r[1])) for r in rows]

    def documents_of_types(self, collection: str, file_types: list[str], limit: int) -> list[str]:
        """Up to `limit` ids (by id) of the collection's documents whose `file_type` is one of `file_types`."""
        if not file_types:
            return []
        marks = ",".join("?" * len(file_types))
        rows = self._rows(
            "SELECT doc_id FROM documents WHERE collection = ? AND json_extract(metadata, '$.file_type') "
            f"IN ({marks}) ORDER BY doc_id LIMIT ?",
            (collection, *file_types, limit),
        )
        return [r[0] for r in rows]

    def document_count(self, collection: str, up_to: str | None = None, prefix: str = "") -> int:
        """The collection's documents (those whose id starts with `prefix`), or those whose id sorts at or
        before `up_to`."""
        where, ranged = _id_range(prefix)
        sql, args = f"SELECT COUNT(*) FROM documents WHERE collection = ? {where}", [collection, *ranged]
        if up_to is not None:
            sql += " AND doc_id <= ?"
            args.append(up_to)
        ((count,),) = self._rows(sql, args)
        return int(count)

    def document_page(self, collection: str, after: str, limit: int) -> list[DocumentEntry]:
        """Up to `limit` documents whose id sorts after `after` ("" = from the first), by id, without their
        text: paging by the last id seen reads only the page, from the primary key."""
        rows = self._rows(
            "SELECT doc_id, metadata, length(CAST(text AS BLOB)), updated_at FROM documents "
            "WHERE collection = ? AND doc_id > ? ORDER BY doc_id LIMIT ?",
            (collection, after, limit),
        )
        return [DocumentEntry(r[0], json.loads(r[1]), int(r[2]), float(r[3])) for r in rows]

    def doc_ids(self, collection: str) -> list[str]:
        return [r[0] for r in self._rows("SELECT doc_id FROM documents WHERE collection = ? ORDER BY doc_id", (collection,))]

    def doc_ids_starting(self, collection: str, prefix: str, limit: int) -> tuple[list[str], int]:
        """Up to `limit` ids (by id) that start with `prefix`, and how many ids do."""
        ranged, bounds = _id_range(prefix)
        where = f"WHERE collection = ? {ranged}"
        args: list[Any] = [collection, *bounds]
        page = self._rows(f"SELECT doc_id FROM documents {where} ORDER BY doc_id LIMIT ?", [*args, limit])
        ids = [r[0] for r in page]
        ((total,),) = self._rows(f"SELECT COUNT(*) FROM documents {where}", args)
        return ids, int(total)

    def orphan_documents(self, collection: str) -> list[str]:
        """Documents whose chunks are all gone (after a repair from Chroma)."""
        return [
            r[0]
            for r in self._rows(
                "SELECT doc_id FROM documents d WHERE collection = ? AND NOT EXISTS "
                "(SELECT 1 FROM chunks c WHERE c.collection = d.collection AND c.doc_id = d.doc_id)",
                (collection,),
            )
        ]

    def apply(
        self,
        collection: str,
        remove_ids: Sequence[str],
        add_rows: Sequence[ChunkRow],
        journal_id: int | None = None,
        remove_docs: Sequence[str] = (),
        put_docs: Sequence[tuple[str, str, str, dict[str, Any]]] = (),
        rename_targets: Collection[str] = (),
    ) -> None:
        """Remove and add chunks and whole documents (doc_id, hash, text, metadata) in one transaction, and
        move the journal entry to 'delete-old' in the same transaction. Held under the lock to the end: a close
        between the commit and the reclaim after it made a committed write raise (helper DA), which its caller
        then took for one that failed. `rename_targets`: documents that one of `remove_docs` may have been
        renamed to (those a file sync stored before pruning: see `_renamed`)."""
        with self._lock:
            self._apply_rows(
                collection, remove_ids, add_rows, journal_id, remove_docs, put_docs, rename_targets
            )
            if remove_ids or remove_docs:  # (a delete; a rewrite's new rows mostly fill what it frees)
                self._reclaim_after_commit()

    def _apply_rows(
        self,
        collection: str,
        remove_ids: Sequence[str],
        add_rows: Sequence[ChunkRow],
        journal_id: int | None,
        remove_docs: Sequence[str],
        put_docs: Sequence[tuple[str, str, str, dict[str, Any]]],
        rename_targets: Collection[str] = (),
    ) -> None:
        with self._transaction():
            now = time.time()
            renamed = self._renamed(collection, remove_docs, rename_targets, put_docs)
            self._note_successors(collection, remove_ids, add_rows, put_docs, now, renamed)
            self._conn.executemany(
                "DELETE FROM documents WHERE collection = ? AND doc_id = ?",
                [(collection, d) for d in remove_docs],
            )
            self._conn.executemany(
                "INSERT OR REPLACE INTO documents VALUES (?, ?, ?, ?, ?, ?)",
                [(collection, d, h, t, json.dumps(m, ensure_ascii=False), now) for d, h, t, m in put_docs],
            )
            self._conn.executemany(
                "DELETE FROM chunks WHERE collection = ? AND chunk_id = ?",
                [(collection, c) for c in remove_ids],
            )
            self._conn.executemany(
                "INSERT OR REPLACE INTO chunks VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                [
                    (
                        collection,
                        r.chunk_id,
                        r.doc_id,
                        r.doc_hash,
                        r.chunk_index,
                        r.text,
                        " ".join(r.tokens),
                        json.dumps(r.metadata, ensure_ascii=False),
                    )
                    for r in add_rows
                ],
            )
            if journal_id is not None:
                self._conn.execute("UPDATE journal SET phase = 'delete-old' WHERE id = ?", (journal_id,))
            # Committed into: a collection the write made is the user's now, whatever happens next.
            self._conn.execute("DELETE FROM settings WHERE key = ?", (f"{CREATED_BY_WRITE}{collection}",))

    def _reclaim_after_commit(self) -> None:
        """Committed: giving pages back is optional and must not make the write read as failed (its caller would
        undo the Chroma half of a committed write)."""
        try:
            self._reclaim()
        except Exception as exc:
            log.warning("giving free pages of rift's state back to the disk failed: %s", exc)

    def _note_successors(
        self,
        collection: str,
        remove_ids: Sequence[str],
        add_rows: Sequence[ChunkRow],
        put_docs: Sequence[tuple[str, str, str, dict[str, Any]]],
        now: float,
        renamed: Mapping[str, Rename] | None = None,
    ) -> None:
        """Inside `apply`'s transaction, before the stored documents and `remove_ids` change: each removed chunk
        whose document gets, among `add_rows`, a chunk with the same text (the same position first, for a text
        a document repeats) maps to it; failing that, when the document's text is kept (a re-chunk), to the new
        chunk that covers most of its span, and when it changed, to the new chunk that is the old one after a
        small edit (`_Heirs.edited`). A chunk of a document `renamed` (removed doc id -> the stored document
        now holding its text, whole or after a small edit) maps the same way to that document's chunks. What
        mapped to a removed chunk maps on; the others end their chains: a passage rewritten is no longer the one
        a search saw. An ended chain leaves tombstones (its ids, its document, its last text's hash), and a chunk
        of `add_rows` whose document held exactly its text when the chain ended (the passage back: a branch
        switched back, a file restored) takes it up again."""
        added = {r.chunk_id for r in add_rows}
        gone = [c for c in dict.fromkeys(remove_ids) if c not in added]
        if gone:
            self._note_heirs(collection, gone, added, add_rows, put_docs, now, renamed or {})
        if renamed:
            self._pass_on_tombstones(collection, renamed, add_rows)
        if added and self._has_successors(collection):
            # A chunk id live again is no gone id: metadata set back (the same hash; the chain's update may
            # have pointed its own row at itself), or a file renamed away and back, or copied back, its mtime
            # kept (a new document, nothing gone: its old chunks still went on in the renamed file's). (Looked
            # up 500 at a time, then deleted: a delete per added chunk cost a fifth of a large write.)
            self._conn.executemany(
                "DELETE FROM chunk_successors WHERE collection = ? AND old_id = ?",
                [(collection, c) for c in self.successors(collection, sorted(added))],
            )
        if add_rows:
            self._revive(collection, add_rows)

    def _pass_on_tombstones(
        self, collection: str, renamed: Mapping[str, Rename], add_rows: Sequence[ChunkRow]
    ) -> None:
        """The tombstones of a `renamed` document (the passages an edit rewrote before or in the rename, this
        write's included) become the document's it became: the passage restored in the renamed file takes its
        searches up again, as in a file edited in place (they stayed under the old path, where only a file
        written there again could revive them), and `tombstone_docs` tells where its document went. Those
        the renamed document holds already (back in the same sync) come back now (`add_rows` come back
        after this anyway)."""
        self._conn.executemany(
            "UPDATE chunk_tombstones SET doc_id = ? WHERE collection = ? AND doc_id = ?",
            [(rename.doc_id, collection, old) for old, rename in renamed.items()],
        )
        written = {r.doc_id for r in add_rows}
        stored = [
            r
            for rename in renamed.values()
            if rename.doc_id not in written
            for r in self.document_chunks(collection, rename.doc_id)
        ]
        if stored:
            self._revive(collection, stored)

    def tombstone_docs(self, collection: str, chunk_ids: Sequence[str]) -> dict[str, str]:
        """Gone chunk ids of `chunk_ids` whose passage no write kept -> the document they were last in (the
        one a renamed document became: `_pass_on_tombstones`); others are left out."""
        return self._by_old_ids("SELECT old_id, doc_id FROM chunk_tombstones", collection, chunk_ids)

    def _by_old_ids(self, select: str, collection: str, chunk_ids: Sequence[str]) -> dict[str, str]:
        """old_id -> the second column of `select` (a table keyed by collection and old_id) for `chunk_ids`,
        looked up 500 at a time."""
        out: dict[str, str] = {}
        ids = list(dict.fromkeys(chunk_ids))
        for start in range(0, len(ids), 500):
            part = ids[start : start + 500]
            sql = f"{select} WHERE collection = ? AND old_id IN ({','.join('?' * len(part))})"
            out.update(self._rows(sql, [collection, *part]))
        return out

    def _has_successors(self, collection: str) -> bool:
        """Whether the collection maps any gone chunk id (a first ingest maps none: nothing to look up)."""
        sql = "SELECT 1 FROM chunk_successors WHERE collection = ? LIMIT 1"
        return self._conn.execute(sql, (collection,)).fetchone() is not None

    def _note_heirs(
        self,
        collection: str,
        gone: Sequence[str],
        added: Collection[str],
        add_rows: Sequence[ChunkRow],
        put_docs: Sequence[tuple[str, str, str, dict[str, Any]]],
        now: float,
        renamed: Mapping[str, Rename],
    ) -> None:
        """`_note_successors` for the removed chunks `gone`."""
        by_doc: dict[str, list[ChunkRow]] = {}
        for r in add_rows:
            by_doc.setdefault(r.doc_id, []).append(r)
        new_rows: dict[str, _Heirs] = {}  # (indexed on first use: most removals are deletes)
        texts = {d: t for d, _h, t, _m in put_docs}
        moves: list[tuple[str, str]] = []
        ended = [c for c in gone if c.rsplit("::", 2)[0] not in by_doc]
        candidates = [c for c in gone if c.rsplit("::", 2)[0] in by_doc]
        kept_text: dict[str, bool] = {}
        old_texts: dict[str, set[str]] = {}  # a document's chunk texts before the write
        for start in range(0, len(candidates), 500):
            part = candidates[start : start + 500]
            found = {
                r[0]: (r[1], r[2], r[3], r[4])
                for r in self._conn.execute(
                    "SELECT chunk_id, doc_id, chunk_index, text, metadata FROM chunks "
                    f"WHERE collection = ? AND chunk_id IN ({','.join('?' * len(part))})",
                    [collection, *part],
                )
            }
            for old in part:
                if old not in found or found[old][0] not in by_doc:
                    ended.append(old)
                    continue
                doc_id, index, text, meta = found[old]
                if doc_id not in new_rows:
                    new_rows[doc_id] = _Heirs(by_doc[doc_id])
                heirs = new_rows[doc_id]
                heir = heirs.same_text(text, index)
                if heir is None and doc_id in texts:
                    if doc_id not in kept_text:
                        stored = self._conn.execute(
                            "SELECT text FROM documents WHERE collection = ? AND doc_id = ?", (collection, doc_id)
                        ).fetchone()
                        kept_text[doc_id] = stored is not None and stored[0] == texts[doc_id]
                    meta = json.loads(meta)
                    if kept_text[doc_id]:
                        heir = heirs.most_overlapping(meta)
                    else:
                        if doc_id not in old_texts:
                            old_texts[doc_id] = {
                                t
                                for c, t in self._conn.execute(
                                    "SELECT chunk_id, text FROM chunks WHERE collection = ? AND doc_id = ?",
                                    (collection, doc_id),
                                )
                                if c not in added
                            }
                        heir = heirs.edited(text, index, meta, old_texts[doc_id])
                if heir is None:
                    ended.append(old)
                else:
                    moves.append((old, heir.chunk_id))
        if renamed:
            ended = self._follow_renames(collection, ended, renamed, by_doc, moves)
        # An ended chain's ids (the chunk, and those that mapped to it, each with when it went) become
        # tombstones of its document and text (read before the chunks leave the table).
        ends = [(collection, c) for c in ended]
        self._conn.executemany(
            "INSERT OR REPLACE INTO chunk_tombstones SELECT s.collection, c.doc_id, rift_text_hash(c.text), "
            "s.old_id, s.at FROM chunk_successors s JOIN chunks c ON c.collection = s.collection "
            "AND c.chunk_id = s.new_id WHERE s.collection = ? AND s.new_id = ?",
            ends,
        )
        self._conn.executemany(
            "INSERT OR REPLACE INTO chunk_tombstones SELECT collection, doc_id, rift_text_hash(text), "
            "chunk_id, ? FROM chunks WHERE collection = ? AND chunk_id = ?",
            [(now, collection, c) for c in ended],
        )
        self._conn.executemany("DELETE FROM chunk_successors WHERE collection = ? AND new_id = ?", ends)
        self._conn.executemany(
            "UPDATE chunk_successors SET new_id = ? WHERE collection = ? AND new_id = ?",
            [(new, collection, old) for old, new in moves],
        )
        self._conn.executemany(
            "INSERT OR REPLACE INTO chunk_successors VALUES (?, ?, ?, ?)",
            [(collection, old, new, now) for old, new in moves],
        )

    def _renamed(
        self,
        collection: str,
        remove_docs: Sequence[str],
        targets: Collection[str],
        put_docs: Sequence[tuple[str, str, str, dict[str, Any]]],
    ) -> dict[str, Rename]:
        """Removed document -> the one of `targets` (stored, or written by this apply) that holds its text: a file
        renamed or moved, which a sync stores under its new path before it prunes the old one. Whole text first;
        then, for the documents no whole text pairs, a small edit (`_edited_renames`: a file renamed and edited
        before one sync). Only pairs that text makes one to one: two removed documents, or two targets, with one
        text (copies of one file) link none, and a shared passage (a licence header) is no reason at all."""
        texts = {d: t for d, _h, t, _m in put_docs}
        removed = [d for d in dict.fromkeys(remove_docs) if d not in texts]
        gone = set(removed)
        targets = [d for d in dict.fromkeys(targets) if d not in gone]
        if not removed or not targets:
            return {}
        new = self._text_hashes(collection, [d for d in targets if d not in texts])
        for d in targets:
            if d in texts:
                new[d] = _text_hash(texts[d])
        if not new:
            return {}
        old = self._text_hashes(collection, removed)
        olds: dict[str, list[str]] = {}
        news: dict[str, list[str]] = {}
        for d, h in old.items():
            olds.setdefault(h, []).append(d)
        for d, h in new.items():
            news.setdefault(h, []).append(d)
        pairs = {
            was[0]: Rename(now[0])
            for h, was in olds.items()
            if len(was) == 1 and len(now := news.get(h, [])) == 1
        }
        # (A text on both sides is a rename or copies: either way, not an edit of another document.)
        unmatched_old = [ws[0] for h, ws in olds.items() if len(ws) == 1 and h not in news]
        unmatched_new = [ns[0] for h, ns in news.items() if len(ns) == 1 and h not in olds]
        if unmatched_old and unmatched_new:
            edited = self._edited_renames(collection, unmatched_old, unmatched_new, texts)
            pairs.update((was, Rename(now, edited=True)) for was, now in edited.items())
        return pairs

    def _edited_renames(
        self, collection: str, removed: Sequence[str], targets: Sequence[str], texts: Mapping[str, str]
    ) -> dict[str, str]:
        """Removed document -> the target whose text is its text after a small edit: at least EDITED_SIMILARITY
        of their words in common (Jaccard, as for an edited chunk), and one to one: neither has another such
        partner among these (two edited copies of one file, or a template's instances, link none)."""
        lengths = self._text_lengths(collection, removed)
        if not lengths:
            return {}
        lo, hi = min(lengths.values()) * RENAME_LENGTH_RATIO, max(lengths.values()) / RENAME_LENGTH_RATIO
        sizes = self._text_lengths(collection, [d for d in targets if d not in texts])
        sizes.update((d, len(texts[d])) for d in targets if d in texts)
        candidates = [d for d, n in sizes.items() if lo <= n <= hi]
        if not candidates or len(candidates) * len(lengths) > MAX_RENAME_PAIRS:
            return {}
        old_words = {d: set(t.split()) for d, t in self._texts(collection, list(lengths)).items()}
        stored = self._texts(collection, [d for d in candidates if d not in texts])
        new_words = {d: set(texts[d].split() if d in texts else stored[d].split()) for d in candidates}
        partners: dict[str, list[str]] = {}
        claimed: dict[str, list[str]] = {}
        try:
            for was, now in _similar_pairs(old_words, new_words, EDITED_SIMILARITY, MAX_RENAME_WORK):
                # (Each pair's own lengths: the window above spans every pruned document's, so without this
                # whether a pair links would hang on what else the sync pruned; helper DT.)
                if min(lengths[was], sizes[now]) >= RENAME_LENGTH_RATIO * max(lengths[was], sizes[now]):
                    partners.setdefault(was, []).append(now)
                    claimed.setdefault(now, []).append(was)
        except _TooCostly:
            counts = (len(lengths), len(candidates))
            log.info("%d pruned x %d written documents: too many words to look for edited renames", *counts)
            return {}
        # A file renamed in its folder, or moved with its name: one renamed and moved at once, and edited too,
        # is not told apart from two files of a kind in two folders (a library's `signal/wavelets.py` pruned and
        # `sparse/spfuncs.py` written shared 83 % of their words; helper DQ).
        pairs = {
            was: nows[0]
            for was, nows in partners.items()
            if len(nows) == 1 and len(claimed[nows[0]]) == 1 and _renamed_or_moved(was, nows[0])
        }
        if not pairs:
            return {}
        words = {**{was: old_words[was] for was in pairs}, **{now: new_words[now] for now in pairs.values()}}
        return self._without_near_copies(collection, pairs, words, lo, hi)

    def _without_near_copies(
        self, collection: str, pairs: Mapping[str, str], words: Mapping[str, set[str]], lo: float, hi: float
    ) -> dict[str, str]:
        """`pairs` (removed document -> target) less those where either has a near copy (EDITED_SIMILARITY of
        its words) among the other stored documents of its folder or the other's: a template's instances (a
        generated API reference, a folder of stubs or daily notes) are alike whatever each is about, so one
        deleted and another written in one sync is no rename, though no other file of the sync is as alike
        (helper DQ: `deploy.md` dropped and `update.md` added beside `export.md` handed `toolkit deploy`'s
        searches to `toolkit update`)."""
        folders: dict[str, dict[str, None]] = {}  # folder -> the removed documents of pairs in it
        for was, now in pairs.items():
            for doc_id in (was, now):
                head = os.path.dirname(doc_id)
                if head and head != doc_id:
                    folders.setdefault(os.path.join(head, ""), {})[was] = None
        alike: set[str] = set()  # removed documents whose pair has a near copy
        for folder, wases in folders.items():
            ranged, bounds = _id_range(folder)
            most = MAX_RENAME_SIBLINGS + 2 * len(wases)  # (the pairs' own documents are read too)
            siblings = self._conn.execute(
                f"SELECT doc_id, text FROM documents WHERE collection = ? {ranged} "
                "AND instr(substr(doc_id, ?), ?) = 0 AND length(text) BETWEEN ? AND ? LIMIT ?",
                [collection, *bounds, len(folder) + 1, os.sep, lo, hi, most + 1],
            ).fetchall()
            if len(siblings) > most:
                alike.update(wases)
                continue
            mine = {d: words[d] for was in wases for d in (was, pairs[was])}
            others = {d: set(t.split()) for d, t in siblings}
            by_doc = {d: was for was in wases for d in (was, pairs[was])}
            try:
                for doc_id, sibling in _similar_pairs(mine, others, EDITED_SIMILARITY, MAX_RENAME_WORK):
                    if sibling not in (by_doc[doc_id], pairs[by_doc[doc_id]]):
                        alike.add(by_doc[doc_id])
            except _TooCostly:
                alike.update(wases)
        return {was: now for was, now in pairs.items() if was not in alike}

    def _text_lengths(self, collection: str, doc_ids: Sequence[str]) -> dict[str, int]:
        """doc id -> the length in characters of its stored text, for those of `doc_ids` stored."""
        return dict(self._by_doc_ids("SELECT doc_id, length(text) FROM documents", collection, doc_ids))

    def _texts(self, collection: str, doc_ids: Sequence[str]) -> dict[str, str]:
        """doc id -> its stored text, for those of `doc_ids` stored."""
        return dict(self._by_doc_ids("SELECT doc_id, text FROM documents", collection, doc_ids))

    def _by_doc_ids(self, select: str, collection: str, doc_ids: Sequence[str]) -> list[tuple[Any, ...]]:
        """The rows of `select` (FROM documents) for those of `doc_ids` stored, looked up 500 at a time."""
        out: list[tuple[Any, ...]] = []
        for start in range(0, len(doc_ids), 500):
            part = list(doc_ids[start : start + 500])
            out.extend(
                self._conn.execute(
                    f"{select} WHERE collection = ? AND doc_id IN ({','.join('?' * len(part))})",
                    [collection, *part],
                ).fetchall()
            )
        return out

    def _text_hashes(self, collection: str, doc_ids: Sequence[str]) -> dict[str, str]:
        """doc id -> `_text_hash` of its stored text, for those of `doc_ids` stored (inside a transaction)."""
        select = "SELECT doc_id, rift_text_hash(text) FROM documents"
        return dict(self._by_doc_ids(select, collection, doc_ids))

    def _follow_renames(
        self,
        collection: str,
        ended: Sequence[str],
        renamed: Mapping[str, Rename],
        by_doc: Mapping[str, Sequence[ChunkRow]],
        moves: list[tuple[str, str]],
    ) -> list[str]:
        """Of the chains `ended` would end, those of a `renamed` document go on in the document it became:
        each chunk to the new document's chunk with its text (at its position first), else, the whole text
        being the same, to the one covering most of its span (cut otherwise: another file type's splitter),
        or, the text edited, to the chunk that is it after a small edit (`_Heirs.edited`; a passage the edit
        rewrote ends there, as in a file edited in place). Those are added to `moves`; the rest are returned."""
        rest = set(ended)
        for old_doc, rename in renamed.items():
            rows = by_doc.get(rename.doc_id)
            if rows is None:
                rows = self.document_chunks(collection, rename.doc_id)
            if not rows:
                continue
            heirs = _Heirs(rows)
            old_rows = self._conn.execute(
                "SELECT chunk_id, chunk_index, text, metadata FROM chunks WHERE collection = ? AND doc_id = ?",
                (collection, old_doc),
            ).fetchall()
            # (Edited: a new chunk with the text of another of the old document's chunks is that one, moved.)
            old_texts = {text for _c, _i, text, _m in old_rows} if rename.edited else set()
            for chunk_id, index, text, meta_json in old_rows:
                if chunk_id not in rest:
                    continue
                heir = heirs.same_text(text, index)
                if heir is None:
                    meta = json.loads(meta_json)
                    if rename.edited:
                        heir = heirs.edited(text, index, meta, old_texts)
                    else:
                        heir = heirs.most_overlapping(meta)
                if heir is not None:
                    moves.append((chunk_id, heir.chunk_id))
                    rest.discard(chunk_id)
        return [c for c in ended if c in rest]

    def _revive(self, collection: str, add_rows: Sequence[ChunkRow]) -> None:
        """Inside `apply`'s transaction, after `_note_heirs`: each tombstone of a document that `add_rows`
        give a chunk with exactly its text (the one at its old position first, for a text the document
        repeats) becomes that chunk's predecessor, as when it went, and leaves; a tombstoned id live again
        just leaves. Linear in `add_rows` (one index lookup each), and only when the collection has
        tombstones at all (a first ingest has none)."""
        sql = "SELECT 1 FROM chunk_tombstones WHERE collection = ? LIMIT 1"
        if not self._conn.execute(sql, (collection,)).fetchone():
            return
        self._conn.executemany(
            "DELETE FROM chunk_tombstones WHERE collection = ? AND old_id = ?",
            [(collection, r.chunk_id) for r in add_rows],
        )
        # (doc_id, text hash) -> its first added chunk, and its added chunks by position: a text a document
        # repeats thousands of times (a table's rule, a log's line) is one lookup per tombstone, not a scan.
        returning: dict[tuple[str, str], tuple[ChunkRow, dict[str, ChunkRow]]] = {}
        for r in add_rows:
            _first, at_index = returning.setdefault((r.doc_id, _text_hash(r.text)), (r, {}))
            at_index.setdefault(str(r.chunk_index), r)
        keys = list(returning)
        revived: list[tuple[str, str, str, float]] = []
        for start in range(0, len(keys), 400):
            part = keys[start : start + 400]
            # (VALUES first, so each pair is one lookup of the index; `(doc_id, text_hash) IN (VALUES ...)`
            # reads every tombstone of the collection.)
            pairs = ",".join(["(?, ?)"] * len(part))
            for old, doc_id, text_hash, at in self._conn.execute(
                f"SELECT t.old_id, t.doc_id, t.text_hash, t.at FROM (VALUES {pairs}) "
                "AS v CROSS JOIN chunk_tombstones AS t WHERE t.collection = ? AND t.doc_id = v.column1 "
                "AND t.text_hash = v.column2",
                [*(v for key in part for v in key), collection],
            ):
                first, at_index = returning[(doc_id, text_hash)]
                heir = at_index.get(old.rsplit("::", 1)[-1], first)
                revived.append((collection, old, heir.chunk_id, at))
        self._conn.executemany("INSERT OR REPLACE INTO chunk_successors VALUES (?, ?, ?, ?)", revived)
        self._conn.executemany(
            "DELETE FROM chunk_tombstones WHERE collection = ? AND old_id = ?",
            [(collection, old) for _c, old, _new, _at in revived],
        )

    def successors(self, collection: str, chunk_ids: Sequence[str]) -> dict[str, str]:
        """Gone chunk ids of `chunk_ids` -> the chunk that holds their passage now (see `_note_successors`); ids
        with none (their passage rewritten or deleted and not back, or never recorded) are left out."""
        return self._by_old_ids("SELECT old_id, new_id FROM chunk_successors", collection, chunk_ids)

    def successors_since(self) -> float:
        """Since when this state records chunk successors: 0.0 for a state that always did, else the first start
        of a version that does (an upgrade from before the chunk_successors table)."""
        value = self.setting(SUCCESSORS_SINCE)
        return float(value) if value else 0.0

    def prune_successors(self, before: float) -> int:
        """Forget the chunk ids that went before `before` (no logged search older than that is kept, so none
        can name them), renamed or tombstoned. Returns how many were dropped."""
        with self._transaction():
            gone = self._conn.execute("DELETE FROM chunk_successors WHERE at < ?", (before,)).rowcount
            gone += self._conn.execute("DELETE FROM chunk_tombstones WHERE at < ?", (before,)).rowcount
        if gone:
            with self._lock:
                self._reclaim()
        return int(gone)

    # --- journal -------------------------------------------------------------------------------------------

    def journal_begin(self, chroma_name: str, new_ids: Sequence[str], old_ids: Sequence[str]) -> int:
        with self._lock:
            cur = self._conn.execute(
                "INSERT INTO journal (chroma_name, phase, new_ids, old_ids, created_at) VALUES (?, ?, ?, ?, ?)",
                (chroma_name, "write-new", json.dumps(list(new_ids)), json.dumps(list(old_ids)), time.time()),
            )
            return int(cur.lastrowid)

    def journal_phase(self, entry_id: int, phase: str) -> None:
        with self._lock:
            self._conn.execute("UPDATE journal SET phase = ? WHERE id = ?", (phase, entry_id))

    def journal_clear(self, entry_id: int) -> None:
        with self._lock:
            self._conn.execute("DELETE FROM journal WHERE id = ?", (entry_id,))

    def journal_pending(self) -> list[JournalEntry]:
        return [
            JournalEntry(r[0], r[1], r[2], json.loads(r[3]), json.loads(r[4]), r[5])
            for r in self._rows(
                "SELECT id, chroma_name, phase, new_ids, old_ids, created_at FROM journal ORDER BY id"
            )
        ]
