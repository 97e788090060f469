"""The durable disagreement log (SQLite, WAL): one record per hybrid search, with both ranked candidate lists
and the model version that produced the vector list. It is the only training source for `retrain`, so it
outlives restarts and model swaps, and it never stores evaluation labels."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sqlite3
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from server.engine.sqlite_space import WAL_LIMIT_BYTES, incremental_if_new, reclaim

SCHEMA = """
CREATE TABLE IF NOT EXISTS queries (
    query_id TEXT PRIMARY KEY,
    ts REAL NOT NULL,
    query TEXT NOT NULL,
    collection TEXT NOT NULL,
    model_version TEXT NOT NULL,
    mode TEXT NOT NULL,
    k INTEGER NOT NULL,
    filters TEXT,
    vector TEXT NOT NULL,          -- JSON {"d": [doc_id, ...], "x": [chunk id after "doc_id::", ...],
                                   -- "s": [score, ...]}, best first, to candidate depth (older logs: "c" with
                                   -- whole chunk ids, or [[doc_id, chunk_id, score], ...])
    keyword TEXT NOT NULL,         -- same shape, BM25 scores
    fused TEXT NOT NULL,           -- JSON [doc_id, ...] as returned to the caller
    top INTEGER NOT NULL,
    overlap REAL NOT NULL,
    vector_blind TEXT NOT NULL,    -- JSON [doc_id, ...]
    keyword_blind TEXT NOT NULL,
    source TEXT NOT NULL DEFAULT 'mcp',
    compared INTEGER NOT NULL DEFAULT 1  -- 0: the query had no keyword terms, so no disagreement was measured
);
CREATE INDEX IF NOT EXISTS queries_by_collection ON queries (collection, ts);
CREATE TABLE IF NOT EXISTS feedback (
    query_id TEXT NOT NULL,
    doc_id TEXT NOT NULL,
    relevant INTEGER NOT NULL,
    ts REAL NOT NULL,
    PRIMARY KEY (query_id, doc_id)
);
CREATE TABLE IF NOT EXISTS fetches (
    query_id TEXT NOT NULL,
    doc_id TEXT NOT NULL,
    ts REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS counters (
    name TEXT PRIMARY KEY,
    value INTEGER NOT NULL
);
"""

# counters: how many searches were ever written to this log, pruned and forgotten ones included (the periodic
# retrain counts new searches as the difference of two readings: the rows in the log cannot tell, since past
# log_max_queries the log keeps as many rows whatever was searched).
SEARCHES_LOGGED = "searches_logged"

COLUMNS = (
    "query_id", "ts", "query", "collection", "model_version", "mode", "k", "filters", "vector", "keyword",
    "fused", "top", "overlap", "vector_blind", "keyword_blind", "source", "compared",
)  # fmt: skip

log = logging.getLogger(__name__)

# Records waiting for the writer thread before a search writes them itself. Each holds its search's candidate
# lists (~200 KB for 200 + 200 path-named candidates): 10,000 took 2.3 GB when searches outran the writer.
MAX_PENDING = 500
WRITE_BATCH = 500  # records per transaction: a burst must not grow the WAL in one transaction
READ_PAGE = 500  # records read and decoded at a time (a search's is tens of KB)


@dataclass(frozen=True)
class LoggedQuery:
    query_id: str
    ts: float
    query: str
    collection: str
    model_version: str
    k: int
    vector: list[tuple[str, str, float]]
    keyword: list[tuple[str, str, float]]
    fused: list[str]
    overlap: float
    vector_blind: list[str]
    keyword_blind: list[str]

    @property
    def shown(self) -> set[str]:
        """The documents this search's response named: its results and the blind spots its disagreement summary
        listed (not either side's deeper candidates, which the agent never saw, so a judgement or a read of one
        belongs to some other search)."""
        return set(self.fused) | set(self.vector_blind) | set(self.keyword_blind)


@dataclass(frozen=True)
class QueryHead:
    """A logged search without its candidate lists."""

    query_id: str
    ts: float
    query: str
    collection: str


def normalized_query(text: str) -> str:
    """A query's text as repeats are recognised: lower-cased, whitespace collapsed."""
    return " ".join(text.lower().split())


def new_query_id() -> str:
    return uuid.uuid4().hex


def is_query_id(value: str) -> bool:
    """Whether `value` has the form of a query_id hybrid_search returns (new_query_id: 32 hexadecimal digits)."""
    return len(value) == 32 and all(c in "0123456789abcdef" for c in value)


def not_logged(query_id: str, max_queries: int) -> str:
    """Why a query_id of the right form is not in the log: never returned, or its search left the log since."""
    kept = (
        f"the log keeps the newest {max_queries:,} searches (log_max_queries), and a deleted collection's searches "
        "go with it"
        if max_queries
        else "a deleted collection's searches go with it"
    )
    return (
        f"query_id {query_id!r} is not in the query log: no hybrid_search returned it (vector and keyword "
        f"searches are not logged), or its search has been dropped since: {kept}"
    )


def _yield_to_searches() -> None:
    """Run the calling (writer) thread only when a CPU would otherwise idle (Linux SCHED_IDLE). Back-to-back
    searches otherwise lost 1-1.5 ms each on 2 cores: the writer's ~0.3 ms preempted one of the embedding
    model's threads, and a parallel operator waits for its slowest thread. Elsewhere it is a normal thread."""
    try:
        os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
    except (AttributeError, OSError) as exc:
        log.debug("query log writer keeps normal priority: %s", exc)


def _encode_candidates(items: Sequence[tuple[str, str, float]]) -> str:
    """Parallel lists, which json encodes in C: 0.09 ms for 200 candidates against 0.14 ms with a list per
    candidate, on the writer thread. A chunk id repeats its document's id ("doc::hash::i"): only the part
    after it is stored, which halved a search's record for documents named by a file path."""
    docs, chunks, scores = zip(*items, strict=True) if items else ((), (), ())
    rounded = np.round(np.asarray(scores, dtype=np.float64), 6).tolist()
    if all(c.startswith(d) and c[len(d) : len(d) + 2] == "::" for d, c in zip(docs, chunks, strict=True)):
        return json.dumps({"d": docs, "x": [c[len(d) + 2 :] for d, c in zip(docs, chunks, strict=True)], "s": rounded})
    return json.dumps({"d": docs, "c": chunks, "s": rounded})


def _decode_candidates(raw: str) -> list[tuple[str, str, float]]:
    value = json.loads(raw)
    if isinstance(value, dict):
        docs = value["d"]
        chunks = value["c"] if "c" in value else [f"{d}::{x}" for d, x in zip(docs, value["x"], strict=True)]
        return list(zip(docs, chunks, value["s"], strict=True))
    return [tuple(x) for x in value]  # older logs: one [doc, chunk, score] list per candidate


class QueryLog:
    def __init__(self, path: Path, max_queries: int = 0) -> None:
        """`max_queries`: keep at most this many logged searches, dropping the oldest (0 keeps all)."""
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._conn = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None)
        incremental_if_new(self._conn)  # (deleted rows' pages go back to the disk: server/engine/sqlite_space.py)
        self._conn.execute("PRAGMA journal_mode=WAL")
        # A burst of writes while readers hold the WAL grows it; without a limit it stays that large for good.
        self._conn.execute(f"PRAGMA journal_size_limit={WAL_LIMIT_BYTES}")
        # NORMAL in WAL mode is crash-safe (no corruption); a power cut may lose the last few records.
        self._conn.execute("PRAGMA synchronous=NORMAL")
        self._conn.executescript(SCHEMA)
        # A log written before the counter existed starts it at the searches it holds (a count that only grows
        # from here; those already pruned were never counted anywhere). (Read first: a write at every open would
        # wait for another process's write lock.)
        if self._conn.execute("SELECT 1 FROM counters WHERE name = ?", (SEARCHES_LOGGED,)).fetchone() is None:
            self._conn.execute(
                "INSERT OR IGNORE INTO counters VALUES (?, (SELECT COUNT(*) FROM queries))", (SEARCHES_LOGGED,)
            )
        columns = {row[1] for row in self._conn.execute("PRAGMA table_info(queries)")}
        if "compared" not in columns:  # a log written before the column existed: its rows count as compared
            self._conn.execute("ALTER TABLE queries ADD COLUMN compared INTEGER NOT NULL DEFAULT 1")
        # stats() reads these small columns from the index alone: reaching them in the row means reading past
        # both candidate lists (tens of KB a search), which made stats linear in the log's size in bytes.
        self._conn.execute(
            "CREATE INDEX IF NOT EXISTS queries_stats "
            "ON queries (collection, compared, overlap, vector_blind, keyword_blind)"
        )
        self._lock = threading.Lock()
        self.max_queries = max_queries
        (self._rows,) = self._conn.execute("SELECT COUNT(*) FROM queries").fetchone()
        self._keep_within_limit()
        with self._lock:
            self._reclaim(starting=True)
        # Searches hand their record to a writer thread and return: encoding ~400 candidates and the insert
        # cost ~0.3 ms. That thread runs at idle priority (see _yield_to_searches); whoever cannot wait for it
        # writes the pending records itself: a reader (flush) before reading, so it sees every acknowledged
        # search, and a search when MAX_PENDING records wait. A kill -9 loses only records not yet written.
        self._pending: list[tuple[Any, ...]] = []
        self._in_flight = 0  # batches taken from _pending and not yet committed, by any thread
        self._closed = False
        self._cond = threading.Condition()
        # collection -> when it was deleted: a search of the deleted collection still in flight then must not
        # land in the log afterwards (see forgetting / record's collection_created).
        self._deleted: dict[str, float] = {}
        self._writer = threading.Thread(target=self._write_forever, name="rift-query-log", daemon=True)
        self._writer.start()

    def close(self) -> None:
        self.flush()
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        self._writer.join(timeout=10)
        with self._lock:
            self._conn.close()

    def flush(self) -> None:
        """Make every recorded search readable: write what is pending on this thread, then wait for a batch
        the writer thread is committing."""
        with self._cond:
            batch = self._take()
        if batch:
            self._write(batch)
        with self._cond:
            while self._in_flight:  # _write always decrements it, on whichever thread holds the batch
                self._cond.wait(timeout=1.0)

    def _take(self) -> list[tuple[Any, ...]]:
        """The pending records, now owned by the caller (hold self._cond)."""
        batch, self._pending = self._pending, []
        if batch:
            self._in_flight += 1
        return batch

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[None]:
        """One SQLite transaction (hold self._lock): committed, or rolled back if the body raises."""
        self._conn.execute("BEGIN")
        try:
            yield
            self._conn.execute("COMMIT")
        except BaseException:
            if self._conn.in_transaction:  # (a COMMIT that failed, e.g. on a full disk, has rolled back)
                self._conn.execute("ROLLBACK")
            raise

    def _write(self, batch: list[tuple[Any, ...]]) -> None:
        # The log is a learning signal: a failure here is logged, never raised into a search. The prune runs
        # before the batch counts as written, so a reader after flush() never sees the log over its limit.
        try:
            try:
                rows = [self._row(args) for args in batch]
                for start in range(0, len(rows), WRITE_BATCH):
                    part = rows[start : start + WRITE_BATCH]
                    with self._lock:
                        with self._transaction():
                            self._conn.executemany(
                                f"INSERT INTO queries ({', '.join(COLUMNS)}) "
                                f"VALUES ({', '.join('?' * len(COLUMNS))})",
                                part,
                            )
                            self._conn.execute(
                                "UPDATE counters SET value = value + ? WHERE name = ?", (len(part), SEARCHES_LOGGED)
                            )
                        self._rows += len(part)
            except Exception:
                log.exception("could not write %d query log records", len(batch))
            try:
                self._keep_within_limit()
            except Exception:
                log.exception("could not drop the query log's oldest searches (log_max_queries)")
        finally:
            with self._cond:
                self._in_flight -= 1
                self._cond.notify_all()

    def _keep_within_limit(self) -> None:
        """Drop the oldest searches past `max_queries` (with their fetches), once the log is 2 % over it so
        a write does not delete one row each time. Searches with feedback, an agent's judgements and the best
        training data the log holds, go after the others, as long as they fill at most half the log: past that
        the oldest of them go too, so new searches are never the ones dropped."""
        if not self.max_queries or self._rows <= self.max_queries + self.max_queries // 50:
            return
        with self._lock:
            # (counted again here: a forget_collection may have deleted rows since the check above)
            (self._rows,) = self._conn.execute("SELECT COUNT(*) FROM queries").fetchone()
            excess = self._rows - self.max_queries
            if excess <= 0:
                return
            judged = [
                r[0]
                for r in self._conn.execute(
                    "SELECT query_id FROM queries WHERE query_id IN (SELECT query_id FROM feedback) ORDER BY ts"
                )
            ]
            drop = judged[: max(0, len(judged) - self.max_queries // 2)][:excess]
            drop += [
                r[0]
                for r in self._conn.execute(
                    "SELECT query_id FROM queries WHERE query_id NOT IN (SELECT query_id FROM feedback) "
                    "ORDER BY ts LIMIT ?",
                    (excess - len(drop),),
                )
            ]
            # (judged ones past half the log, then the others: together never fewer than `excess`)
            with self._transaction():
                part = [(i,) for i in drop]
                self._conn.executemany("DELETE FROM fetches WHERE query_id = ?", part)
                self._conn.executemany("DELETE FROM feedback WHERE query_id = ?", part)
                self._conn.executemany("DELETE FROM queries WHERE query_id = ?", part)
            self._rows -= len(drop)
            self._reclaim()
        log.info("query log: dropped the %d oldest searches (log_max_queries %d)", len(drop), self.max_queries)

    def _reclaim(self, starting: bool = False) -> None:
        """Give free pages back to the disk once they are a large part of the log (hold self._lock)."""
        reclaim(self._conn, self.path, "query log", starting)

    def _write_forever(self) -> None:
        _yield_to_searches()
        while True:
            with self._cond:
                while not self._pending and not self._closed:
                    self._cond.wait()
                if not self._pending and self._closed:
                    return
                batch = self._take()
            self._write(batch)

    def record(
        self,
        query_id: str,
        query: str,
        collection: str,
        model_version: str,
        mode: str,
        k: int,
        filters: Any,
        vector: Sequence[tuple[str, str, float]],
        keyword: Sequence[tuple[str, str, float]],
        fused: Sequence[str],
        top: int,
        overlap: float,
        vector_blind: Sequence[str],
        keyword_blind: Sequence[str],
        source: str = "mcp",
        compared: bool = True,
        collection_created: float | None = None,
    ) -> bool:
        """Queue one search's record; False (nothing recorded) when it searched a collection that has since
        been deleted (`collection_created`: when the searched collection was created)."""
        args = (query_id, time.time(), query, collection, model_version, mode, k, filters, vector, keyword)
        args += (fused, top, overlap, vector_blind, keyword_blind, source, compared)
        with self._cond:
            deleted = self._deleted.get(collection)
            if deleted is not None and collection_created is not None and collection_created <= deleted:
                return False
            self._pending.append(args)
            # The writer has fallen behind (a busy CPU starves an idle-priority thread): bounded memory, no
            # lost records, at the cost of this one search writing them.
            batch = self._take() if len(self._pending) >= MAX_PENDING else []
            self._cond.notify_all()
        if batch:
            self._write(batch)
        return True

    @staticmethod
    def _row(args: tuple[Any, ...]) -> tuple[Any, ...]:
        """The SQLite row of one record() call's arguments (encoded here, on the writer thread)."""
        query_id, ts, query, collection, model_version, mode, k, filters, vector, keyword = args[:10]
        fused, top, overlap, vector_blind, keyword_blind, source, compared = args[10:]
        return (
            query_id,
            ts,
            query,
            collection,
            model_version,
            mode,
            k,
            json.dumps(filters) if filters else None,
            _encode_candidates(vector),
            _encode_candidates(keyword),
            json.dumps(list(fused)),
            top,
            overlap,
            json.dumps(list(vector_blind)),
            json.dumps(list(keyword_blind)),
            source,
            int(compared),
        )

    def get(self, query_id: str) -> LoggedQuery | None:
        return next(self.by_ids([query_id]), None)

    def heads(self, collection: str | None = None, since: float = 0.0) -> list[QueryHead]:
        """Every logged search oldest first, without its candidate lists: enough to order, split and deduplicate
        a long log (the lists are tens of KB a search, so 20,000 decoded at once took 2.6 GB)."""
        self.flush()
        where, args = ("WHERE ts >= ?", (since,)) if collection is None else (
            "WHERE collection = ? AND ts >= ?", (collection, since)
        )
        with self._lock:
            rows = self._conn.execute(
                f"SELECT query_id, ts, query, collection FROM queries {where} ORDER BY ts, rowid", args
            ).fetchall()
        return [QueryHead(*r) for r in rows]

    def iter_queries(self, collection: str | None = None, since: float = 0.0) -> Iterator[LoggedQuery]:
        """Oldest first, read a page at a time."""
        yield from self.by_ids([h.query_id for h in self.heads(collection, since)])

    def by_ids(self, ids: Sequence[str]) -> Iterator[LoggedQuery]:
        """The records of `ids` in that order, read and decoded a page at a time (the writer and other readers
        get the connection between pages); ids no longer logged (pruned or forgotten since) are skipped."""
        self.flush()
        for start in range(0, len(ids), READ_PAGE):
            page = list(ids[start : start + READ_PAGE])
            with self._lock:
                rows = self._conn.execute(
                    "SELECT query_id, ts, query, collection, model_version, k, vector, keyword, fused, overlap, "
                    f"vector_blind, keyword_blind FROM queries WHERE query_id IN ({','.join('?' * len(page))})",
                    page,
                ).fetchall()
            found = {r[0]: r for r in rows}
            for query_id in page:
                r = found.get(query_id)
                if r is not None:
                    yield LoggedQuery(
                        r[0],
                        r[1],
                        r[2],
                        r[3],
                        r[4],
                        r[5],
                        _decode_candidates(r[6]),
                        _decode_candidates(r[7]),
                        json.loads(r[8]),
                        r[9],
                        json.loads(r[10]),
                        json.loads(r[11]),
                    )

    def add_feedback(self, query_id: str, doc_id: str, relevant: bool) -> bool | None:
        """Record (or overwrite) one judgement; True when it replaced an earlier one (None: see add_judgements)."""
        replaced = self.add_judgements(query_id, [(doc_id, relevant)])
        return None if replaced is None else replaced[0]

    def add_judgements(self, query_id: str, judgements: Sequence[tuple[str, bool]]) -> list[bool] | None:
        """Record (or overwrite) judgements of one search's documents, all in one transaction; for each,
        whether it replaced an earlier one. None, recording nothing, when the search has left the log since
        the caller looked (pruned, or its collection deleted): its verdicts would stay behind for good."""
        self.flush()
        now = time.time()
        replaced = []
        with self._lock, self._transaction():
            if not self._logged(query_id):
                return None
            for doc_id, relevant in judgements:
                before = self._conn.execute(
                    "SELECT 1 FROM feedback WHERE query_id = ? AND doc_id = ?", (query_id, doc_id)
                ).fetchone()
                self._conn.execute(
                    "INSERT OR REPLACE INTO feedback VALUES (?,?,?,?)",
                    (query_id, doc_id, 1 if relevant else 0, now),
                )
                replaced.append(before is not None)
        return replaced

    @contextlib.contextmanager
    def forgetting(self, collection: str) -> Iterator[None]:
        """Around a collection's deletion: afterwards its logged searches are deleted with their feedback and
        fetches (a deleted collection leaves no query text behind, and its searches can never train a later
        collection of the same name), and so is any search of it that was still running meanwhile, while
        searches of a collection of the same name created after the deletion are kept. If the body raises,
        nothing is forgotten."""
        started = time.time()
        with self._cond:
            earlier = self._deleted.get(collection)
            mine = self._deleted[collection] = max(started, earlier or 0.0)
        try:
            yield
        except BaseException:
            with self._cond:  # (unless a deletion inside it, by another process, marked it since: that one stands)
                if self._deleted.get(collection) == mine:
                    if earlier is None:
                        self._deleted.pop(collection, None)
                    else:
                        self._deleted[collection] = earlier
            raise
        self.forget_collection(collection, before=started)

    def collections(self) -> list[str]:
        """The collections the logged searches name."""
        self.flush()
        with self._lock:
            return [r[0] for r in self._conn.execute("SELECT DISTINCT collection FROM queries ORDER BY collection")]

    def forget_collection(self, collection: str, before: float | None = None) -> int:
        """Delete a collection's logged searches (those recorded before `before`) with their feedback and
        fetches, in one transaction. Returns how many searches went."""
        self.flush()
        where = "collection = ?" + (" AND ts < ?" if before is not None else "")
        args = (collection, before) if before is not None else (collection,)
        ids = f"SELECT query_id FROM queries WHERE {where}"
        with self._lock:
            with self._transaction():
                self._conn.execute(f"DELETE FROM feedback WHERE query_id IN ({ids})", args)
                self._conn.execute(f"DELETE FROM fetches WHERE query_id IN ({ids})", args)
                gone = self._conn.execute(f"DELETE FROM queries WHERE {where}", args).rowcount
            self._rows -= gone
            if gone:
                self._reclaim()
        return int(gone)

    def feedback_map(self, until: float | None = None) -> dict[str, dict[str, bool]]:
        """query_id -> {doc_id: relevant}; with `until`, only verdicts given up to then (a later one is
        `signalled_since` that time)."""
        self.flush()
        where, args = ("WHERE ts <= ?", (until,)) if until is not None else ("", ())
        with self._lock:
            rows = self._conn.execute(f"SELECT query_id, doc_id, relevant FROM feedback {where}", args).fetchall()
        out: dict[str, dict[str, bool]] = {}
        for qid, doc, rel in rows:
            out.setdefault(qid, {})[doc] = bool(rel)
        return out

    def oldest_ts(self) -> float | None:
        """When the oldest search the log keeps was logged (None for an empty log)."""
        self.flush()
        with self._lock:
            (ts,) = self._conn.execute("SELECT MIN(ts) FROM queries").fetchone()
        return None if ts is None else float(ts)

    def count(self, since: float = 0.0) -> int:
        self.flush()
        with self._lock:
            (n,) = self._conn.execute("SELECT COUNT(*) FROM queries WHERE ts >= ?", (since,)).fetchone()
        return int(n)

    def searches_logged(self) -> int:
        """How many searches were ever written to this log (by any process), pruned and forgotten ones too:
        only ever grows, so the difference of two readings is the searches logged in between."""
        self.flush()
        with self._lock:
            row = self._conn.execute("SELECT value FROM counters WHERE name = ?", (SEARCHES_LOGGED,)).fetchone()
        return int(row[0]) if row else 0

    def record_fetch(self, query_id: str, doc_id: str) -> bool:
        """An agent read a whole document after this search: a usage signal for learning. False, recording
        nothing, when the search has left the log since the caller looked."""
        self.flush()
        with self._lock:
            if not self._logged(query_id):
                return False
            self._conn.execute("INSERT INTO fetches VALUES (?,?,?)", (query_id, doc_id, time.time()))
        return True

    def _logged(self, query_id: str) -> bool:
        """Whether the search is (still) in the log (hold self._lock)."""
        return self._conn.execute("SELECT 1 FROM queries WHERE query_id = ?", (query_id,)).fetchone() is not None

    def signalled_since(self, ts: float) -> set[str]:
        """Ids of the searches given feedback, or a fetched result, after `ts`: signals a model trained
        before then did not see, even when the search itself is older."""
        self.flush()
        with self._lock:
            rows = self._conn.execute(
                "SELECT query_id FROM feedback WHERE ts > ? UNION SELECT query_id FROM fetches WHERE ts > ?", (ts, ts)
            ).fetchall()
        return {r[0] for r in rows}

    def fetches(self, query_id: str | None = None, until: float | None = None) -> list[tuple[str, str, float]]:
        """(query_id, doc_id, ts) oldest first, for one search or all; with `until`, only those up to then."""
        self.flush()
        clauses: list[str] = []
        args: list[Any] = []
        if query_id:
            clauses.append("query_id = ?")
            args.append(query_id)
        if until is not None:
            clauses.append("ts <= ?")
            args.append(until)
        where = f"WHERE {' AND '.join(clauses)}" if clauses else ""
        with self._lock:
            rows = self._conn.execute(f"SELECT query_id, doc_id, ts FROM fetches {where} ORDER BY ts", args)
            return [(r[0], r[1], r[2]) for r in rows.fetchall()]

    def stats(self, collection: str | None = None) -> dict[str, Any]:
        self.flush()
        where, args = ("WHERE collection = ?", (collection,)) if collection else ("", ())
        with self._lock:
            # Rates over the searches where both sides searched: a query with no keyword terms has nothing
            # to disagree with, and counting its vector hits as blind spots would inflate them.
            # Not compared: no keyword terms (the vector side answered alone), or neither side found anything.
            n, uncompared, overlap, vb, kb, vb_n, kb_n = self._conn.execute(
                "SELECT COUNT(*), SUM(1 - compared), "
                "AVG(CASE WHEN compared THEN overlap END), "
                "AVG(CASE WHEN compared THEN (CASE WHEN vector_blind != '[]' THEN 1.0 ELSE 0.0 END) END), "
                "AVG(CASE WHEN compared THEN (CASE WHEN keyword_blind != '[]' THEN 1.0 ELSE 0.0 END) END), "
                "AVG(CASE WHEN compared THEN json_array_length(vector_blind) END), "
                "AVG(CASE WHEN compared THEN json_array_length(keyword_blind) END) "
                f"FROM queries INDEXED BY queries_stats {where}",
                args,
            ).fetchone()
            # (only the few uncompared searches' rows are read for their vector list)
            (no_terms,) = self._conn.execute(
                "SELECT COUNT(*) FROM queries "
                f"{where + ' AND' if where else 'WHERE'} NOT compared AND "
                "COALESCE(json_array_length(vector, '$.d'), json_array_length(vector)) > 0",
                args,
            ).fetchone()
            (feedback,) = self._conn.execute(
                "SELECT COUNT(*) FROM feedback f JOIN queries q ON q.query_id = f.query_id "
                f"{where.replace('collection', 'q.collection')}",
                args,
            ).fetchone()
        return {
            "logged_queries": int(n or 0),
            "queries_not_compared": int(uncompared or 0),
            "queries_without_keyword_terms": int(no_terms or 0),
            # means and shares over the compared searches; None before there is one (0.0 would read "never agree")
            "mean_top_overlap": _rounded(overlap, 4),
            "share_with_vector_blind_spots": _rounded(vb, 4),
            "share_with_keyword_blind_spots": _rounded(kb, 4),
            "mean_vector_blind_spots": _rounded(vb_n, 3),
            "mean_keyword_blind_spots": _rounded(kb_n, 3),
            "feedback_labels": int(feedback or 0),
        }


def _rounded(value: float | None, digits: int) -> float | None:
    return None if value is None else round(value, digits)
