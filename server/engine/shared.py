"""Several rift processes on one Chroma server (``vector_backend = "http"``).

Each process keeps its own data dir (keyword state, query log, lock) and shares the Chroma collections. A
process learns about the others' writes through a small Chroma collection, ``rift-heads``: every writer keeps
one record per Chroma collection it wrote (id ``<writer>/<chroma name>``) and replaces its token after each
write has fully landed in Chroma. Writers only touch their own records, so concurrent writers never clobber
each other (Chroma's collection metadata would: ``modify`` replaces it whole, with no compare-and-set).

Before a search (at most every ``chroma_sync_ms``) and before every write, a process reads the heads (one
small request). When another writer's token changed, it repairs its keyword side from Chroma for that
collection (`reconcile_with_chroma`: list ids, fetch the chunks it lacks) and applies the delta to the live
keyword index. Reading the heads before listing ids makes this safe: a token changes only after the write it
announces is in Chroma, and a write not yet announced will change a token later.

Concurrent writes of one document id from two processes resolve last-writer-wins on the chunks' `_rift_ts`:
a writer removes every older version of its documents from Chroma, and readers show the newest whole version.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from server.engine.keyword_index import KeywordRow
from server.engine.reconcile import reconcile_with_chroma
from server.errors import RiftError

if TYPE_CHECKING:
    from server.engine.engine import Engine

log = logging.getLogger(__name__)

HEADS = "rift-heads"


@dataclass(frozen=True)
class Head:
    token: str
    writer: str
    collection: str
    chroma: str
    model: str


def writer_id(data_dir: Path) -> str:
    """A stable id for the process that owns `data_dir` (one writer per data dir: the dir is locked)."""
    path = data_dir / "writer-id"
    try:
        value = path.read_text().strip()
        if value:
            return value
    except OSError:
        pass
    value = uuid.uuid4().hex[:16]
    data_dir.mkdir(parents=True, exist_ok=True)
    path.write_text(value)
    return value


class SharedSync:
    def __init__(self, engine: Engine, writer: str, interval_ms: int) -> None:
        self.engine = engine
        self.writer = writer
        self.interval = interval_ms / 1000.0
        self._heads = engine.vectors.client.get_or_create_collection(HEADS, embedding_function=None)
        self._seen: dict[str, Head] = {}
        self._checked = float("-inf")
        self._moved: dict[str, str] = {}  # collection -> model another process switched it to
        self._stats_lock = threading.Lock()
        self.stats: dict[str, float] = {"checks": 0, "check_ms": 0.0, "syncs": 0, "sync_ms": 0.0}

    # --- the heads collection ------------------------------------------------------------------------------

    def read(self) -> dict[str, Head]:
        page = self._heads.get(include=["metadatas"])
        out = {}
        for head_id, meta in zip(page["ids"], page["metadatas"], strict=True):
            meta = meta or {}
            out[head_id] = Head(
                str(meta.get("token", "")),
                str(meta.get("writer", "")),
                str(meta.get("collection", "")),
                str(meta.get("chroma", "")),
                str(meta.get("model", "")),
            )
        return out

    def publish(self, collection: str, chroma: str, model: str) -> None:
        """Announce a finished write (caller holds the engine's write lock)."""
        head = Head(uuid.uuid4().hex, self.writer, collection, chroma, model)
        head_id = f"{self.writer}/{chroma}"
        meta: dict[str, Any] = {**head.__dict__, "ts": time.time()}
        self._heads.upsert(ids=[head_id], embeddings=[[1.0]], metadatas=[meta])
        self._seen[head_id] = head

    def retire(self, chroma: str) -> None:
        """A dropped Chroma collection: remove every writer's head for it, which the others notice."""
        self._heads.delete(where={"chroma": chroma})
        self._seen = {k: h for k, h in self._seen.items() if h.chroma != chroma}

    def prime(self) -> None:
        """After start-up's full repair: take the current heads as seen."""
        self._seen = self.read()
        self._checked = time.monotonic()

    # --- keeping up with the other writers -----------------------------------------------------------------

    def _changed(self, heads: dict[str, Head]) -> set[str]:
        names = set()
        for head_id in heads.keys() | self._seen.keys():
            now, before = heads.get(head_id), self._seen.get(head_id)
            if now != before:
                names.add((now or before).chroma)  # type: ignore[union-attr]
        return names

    def before_search(self, collection: str) -> None:
        self.sync()
        if collection in self._moved:
            raise RiftError(
                f"collection {collection!r} was switched to model {self._moved[collection]!r} by another rift "
                f"process sharing this Chroma server; restart this process to serve that model"
            )

    def sync(self, force: bool = False) -> bool:
        """Catch up with other processes' writes; returns whether anything was repaired. Without `force`, at
        most once per `interval`."""
        started = time.perf_counter()
        if not force and self.interval and time.monotonic() - self._checked < self.interval:
            return False
        heads = self.read()
        self._checked = time.monotonic()
        self._count("checks", "check_ms", started)
        if not self._changed(heads):
            return False
        engine = self.engine
        with engine._write_lock:
            started = time.perf_counter()
            heads = self.read()  # again, under the lock: our own writes may have moved on meanwhile
            changed = self._changed(heads)
            if changed:
                self._apply(changed, heads)
            self._seen = heads
            self._count("syncs", "sync_ms", started)
        return bool(changed)

    def _count(self, n_key: str, ms_key: str, started: float) -> None:
        with self._stats_lock:
            self.stats[n_key] += 1
            self.stats[ms_key] += (time.perf_counter() - started) * 1000

    def _apply(self, changed: set[str], heads: dict[str, Head]) -> None:
        engine = self.engine
        records = {r.chroma_name: r for r in engine.state.collections()}
        existing = {name for name, _ in engine.vectors.list_collections()}
        for chroma in sorted(changed):
            engine.vectors.forget(chroma)  # it may have been dropped and re-created under a new id
            record = records.get(chroma)
            if record is None:
                continue
            if chroma not in existing:
                newer = [h for h in heads.values() if h.collection == record.name and h.chroma in existing]
                if newer:
                    self._moved[record.name] = newer[0].model
                    log.warning("collection %r moved to model %r elsewhere", record.name, newer[0].model)
                else:
                    log.warning("collection %r was deleted by another rift process", record.name)
                    engine.state.delete_collection(record.name)
                    engine._keyword.pop(record.name, None)
                continue
            self._moved.pop(record.name, None)
            self.refresh(record.name, chroma)
        unknown = {h.collection for h in heads.values() if h.chroma in changed and h.chroma not in records}
        if not unknown:
            return
        for name in engine._adopt_chroma_collections():  # collections another process created
            record = engine.state.collection(name)
            if record is not None:
                self.refresh(name, record.chroma_name)
        for name in unknown:
            current = engine.state.collection(name)
            if current is not None and current.chroma_name not in existing:
                newer = [h for h in heads.values() if h.collection == name and h.chroma in existing]
                if newer:
                    self._moved[name] = newer[0].model

    def refresh(self, collection: str, chroma: str) -> None:
        """Repair one collection's state from Chroma and apply the change to its live keyword index."""
        engine = self.engine
        delta = reconcile_with_chroma(
            engine.vectors, engine.state, engine.tokenizer, collection, chroma, logging.DEBUG
        )
        index = engine._keyword.get(collection)
        if index is None:
            engine._load_keyword(collection)
        elif not delta.empty:
            index.apply(
                remove=delta.removed,
                add=[KeywordRow(r.chunk_id, r.doc_id, r.tokens, r.metadata) for r in delta.added],
            )

    # --- last writer wins for one document id ---------------------------------------------------------------

    def older_versions(self, chroma: str, doc_ids: Sequence[str], before: float, keep: set[str]) -> set[str]:
        """Chunk ids in Chroma of `doc_ids` written before `before` (other processes' versions included)."""
        out: set[str] = set()
        for start in range(0, len(doc_ids), 500):
            part = list(doc_ids[start : start + 500])
            for chunk_id, meta in self.engine.vectors.where_ids(chroma, {"_rift_doc": {"$in": part}}):
                ts = meta.get("_rift_ts", 0.0) if meta else 0.0
                if chunk_id not in keep and isinstance(ts, int | float) and ts <= before:
                    out.add(chunk_id)
        return out
