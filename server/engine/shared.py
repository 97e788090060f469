"""Several rift processes on one Chroma server (``vector_backend = "http"``).

Each process keeps its own data dir (keyword state, query log, lock) and shares the Chroma collections. The
processes tell each other about writes through two small Chroma collections:

- ``rift-heads``: one record per (writer, Chroma collection), id ``<writer>/<chroma name>``, holding the
  writer's latest sequence number for it. Writers only touch their own records, so concurrent writers never
  clobber each other (Chroma's collection metadata would: ``modify`` replaces it whole, with no compare-and-set).
- ``rift-changes``: one record per write, ``(writer, epoch, seq, chroma)`` and the document ids it touched.
- ``rift-deleted``: one record per Chroma collection a rift process deleted, written before the drop and
  removed when the name is made again. It tells "deleted by rift" (forgotten here too) from "lost by the
  server" (a new server, or one whose data was lost): those collections are embedded again from rift's own
  stored text instead of being forgotten, documents and all.

A write lands in Chroma, then its change record, then its head. Before a search (at most every
``chroma_sync_ms``) and before every write, a process reads the heads (one small request). For each head that
moved, it fetches the change records in between and repairs only those documents from Chroma
(`reconcile_with_chroma` with ``doc_ids``), applying the delta to the live keyword index: the cost follows the
size of the change, not of the collection. A gap (a writer restarted, records pruned, a head never seen)
falls back to a full repair of that collection. Reading heads before changes and changes before chunks makes
this safe: everything a head announces is already in Chroma.

Concurrent writes of one document id from two processes resolve last-writer-wins on the chunks' `_rift_ts`:
a writer removes every older version of its documents from Chroma, and readers show the newest whole version.
"""

from __future__ import annotations

import json
import logging
import threading
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from server.engine.keyword_index import KeywordRow
from server.engine.models import weights_identity
from server.engine.reconcile import reconcile_with_chroma
from server.errors import RiftError

if TYPE_CHECKING:
    from server.engine.engine import Engine

log = logging.getLogger(__name__)

HEADS = "rift-heads"
CHANGES = "rift-changes"
DELETED = "rift-deleted"
KEEP_CHANGES = 2000  # change records each writer keeps; a reader further behind repairs in full
PRUNE_EVERY = 200


@dataclass(frozen=True)
class Head:
    writer: str
    epoch: str
    seq: int
    collection: str
    chroma: str
    model: str
    # Not compared: a head "moves" when its sequence does (Chroma stores ts as float32-ish, not bit-exact).
    weights: str = field(default="", compare=False)  # the vectors' weights (model_identity; "" if older)
    ts: float = field(default=0.0, compare=False)


def model_identity(embedder: Any) -> str:
    """The weights an embedder runs (`models.weights_identity` of its location)."""
    location = str(getattr(getattr(embedder, "spec", None), "location", "") or "")
    return weights_identity(location) if location else ""


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
        self.epoch = uuid.uuid4().hex[:8]  # this process's run: a restart restarts `seq`
        self.interval = interval_ms / 1000.0
        self._handles: dict[str, Any] = {}
        # Sequence numbers run per Chroma collection, so a reader following one collection sees every number
        # in its change records (one writer's writes to another collection are not a gap there).
        self._seqs: dict[str, int] = {}
        self._announced = 0
        self._seen: dict[str, Head] = {}
        self._checked = float("-inf")
        self._moved: dict[str, str] = {}  # collection -> model another process switched it to (sticky)
        # Collections whose vectors the server lost (no rift process deleted them): kept, refused until a
        # restart embeds them again (start-up does so at once), or until another process has put them back.
        self._lost: set[str] = set()
        # Chroma name -> collection, for vectors this process switched a collection away from: a process still
        # on the old model may write there until it sees the switch, and those writes are caught up here.
        self._left: dict[str, tuple[str, float]] = {}  # ... -> (collection, when it switched)
        # chroma -> (collection, model, doc ids or None for all) of writes whose announcement failed
        self._owed: dict[str, tuple[str, str, list[str] | None]] = {}
        self._stats_lock = threading.Lock()
        self.stats: dict[str, float] = {
            "checks": 0,
            "check_ms": 0.0,
            "syncs": 0,
            "sync_ms": 0.0,
            "full_repairs": 0,
        }

    # --- the bookkeeping collections -------------------------------------------------------------------------

    def _coll(self, name: str) -> Any:
        handle = self._handles.get(name)
        if handle is None:
            handle = self.engine.vectors.client.get_or_create_collection(name, embedding_function=None)
            self._handles[name] = handle
        return handle

    def _call(self, name: str, op: str, **kwargs: Any) -> Any:
        """`op` on bookkeeping collection `name`; a handle the server no longer knows (its data was wiped, or
        it was replaced) is looked up again, the collection made again if need be, and the call retried."""
        import chromadb.errors

        try:
            return getattr(self._coll(name), op)(**kwargs)
        except (chromadb.errors.NotFoundError, ValueError):
            self._handles.pop(name, None)
            return getattr(self._coll(name), op)(**kwargs)

    # --- writing: announce what this process wrote ----------------------------------------------------------

    def read(self) -> dict[str, Head]:
        page = self._call(HEADS, "get", include=["metadatas"])
        out = {}
        for head_id, meta in zip(page["ids"], page["metadatas"], strict=True):
            meta = meta or {}
            out[head_id] = Head(
                str(meta.get("writer", "")),
                str(meta.get("epoch", "")),
                int(meta.get("seq", 0) or 0),
                str(meta.get("collection", "")),
                str(meta.get("chroma", "")),
                str(meta.get("model", "")),
                str(meta.get("weights", "")),
                float(meta.get("ts", 0.0) or 0.0),
            )
        return out

    def publish(self, collection: str, chroma: str, model: str, doc_ids: Sequence[str] | None = None) -> None:
        """Announce a write that has fully landed in Chroma (the caller holds the engine's write lock). Without
        `doc_ids` (a new or switched collection) readers repair the whole collection. The write is committed
        whatever happens here: an announcement that fails is owed, and paid at the next sync or write."""
        try:
            self._announce(collection, chroma, model, doc_ids)
        except Exception as exc:
            log.warning(
                "telling other rift processes about a write failed (%s); retrying at the next sync", exc
            )
            owed = self._owed.get(chroma)
            docs = None
            if doc_ids is not None and (owed is None or owed[2] is not None):
                docs = sorted({*doc_ids, *(owed[2] if owed else ())})
            self._owed[chroma] = (collection, model, docs)

    def _pay_owed(self) -> None:
        """Announce writes whose announcement failed (the caller holds the engine's write lock); one for vectors
        a collection no longer uses is dropped, since it would read as a switch back."""
        for chroma, (collection, model, docs) in list(self._owed.items()):
            del self._owed[chroma]
            record = self.engine.state.collection(collection)
            if record is not None and record.chroma_name == chroma:
                self.publish(collection, chroma, model, docs)

    def _announce(self, collection: str, chroma: str, model: str, doc_ids: Sequence[str] | None) -> None:
        seq = self._seqs.get(chroma, 0) + 1
        self._seqs[chroma] = seq
        self._announced += 1
        now = time.time()
        change = {"writer": self.writer, "epoch": self.epoch, "seq": seq, "chroma": chroma, "ts": now}
        if doc_ids is not None:
            self._call(
                CHANGES,
                "upsert",
                ids=[f"{self.writer}:{self.epoch}:{chroma}:{seq}"],
                embeddings=[[1.0]],
                metadatas=[change],
                documents=[json.dumps(list(doc_ids), ensure_ascii=False)],
            )
        if doc_ids is None:  # a collection made (again) or switched to: no longer a deleted one
            self._call(DELETED, "delete", ids=[chroma])
        head = Head(self.writer, self.epoch, seq, collection, chroma, model, self._weights(model), now)
        head_id = f"{self.writer}/{chroma}"
        self._call(HEADS, "upsert", ids=[head_id], embeddings=[[1.0]], metadatas=[head.__dict__])
        self._seen = {**self._seen, head_id: head}  # copy on write: searches compare against it unlocked
        if self._announced % PRUNE_EVERY == 0:
            self._prune()

    def _prune(self) -> None:
        try:
            for chroma, seq in self._seqs.items():
                if seq > KEEP_CHANGES:
                    self._call(
                        CHANGES,
                        "delete",
                        where={
                            "$and": [
                                {"writer": self.writer},
                                {"chroma": chroma},
                                {"seq": {"$lt": seq - KEEP_CHANGES}},
                            ]
                        },
                    )
            self._call(
                CHANGES, "delete", where={"$and": [{"writer": self.writer}, {"epoch": {"$ne": self.epoch}}]}
            )
        except Exception:  # housekeeping only
            log.debug("pruning change records failed", exc_info=True)

    def deleting(self, chromas: Sequence[str]) -> None:
        """Before this process drops Chroma collections `chromas` (a deleted collection's vectors): note them as
        deleted by rift, so no process takes their absence for a server that lost them. A failure raises
        before anything is dropped."""
        now = time.time()
        self._call(
            DELETED,
            "upsert",
            ids=list(chromas),
            embeddings=[[1.0]] * len(chromas),
            metadatas=[{"writer": self.writer, "ts": now} for _ in chromas],
        )

    def _deleted_by_rift(self, chroma: str) -> bool:
        return bool(self._call(DELETED, "get", ids=[chroma], include=[])["ids"])

    def retire(self, chroma: str) -> None:
        """A dropped Chroma collection: remove every writer's head and changes for it; the others notice."""
        self._call(HEADS, "delete", where={"chroma": chroma})
        self._call(CHANGES, "delete", where={"chroma": chroma})
        self._seen = {k: h for k, h in self._seen.items() if h.chroma != chroma}

    def gone_while_down(self) -> list[str]:
        """At start-up, before the repair: collections whose vectors left the server while this process was
        down. One another process deleted is dropped here too rather than re-created empty; one switched to
        another model (the old vectors dropped) is refused, as a switch seen while running is; one the server
        lost is noted (`lost`), and start-up embeds it again from the stored text. Returns the deleted ones."""
        engine = self.engine
        existing = {name for name, _ in engine.vectors.list_collections()}
        heads = self.read()
        deleted = []
        for record in engine.state.collections():
            if (
                self.rejoin(record, heads, existing)
                or record.chroma_name in existing
                or record.name in self._moved
            ):
                continue
            if self._vectors_gone(record, heads, existing) == "deleted":
                deleted.append(record.name)
        return deleted

    def _weights(self, model: str) -> str:
        """Which weights model version `model` runs here, told to the other processes so that one restarted
        on the same model can tell it is the same under another version name (or another folder)."""
        engine = self.engine
        embedder = engine._embedders.get(model) or (
            engine.embedder if engine.embedder.version == model else None
        )
        return model_identity(embedder)

    def _serves_here(self, head: Head) -> bool:
        """Whether `head`'s vectors are this process's serving model's: the same version name, or the same
        weights loaded by another name (another process's fine-tune `ft-…`, configured here by its folder)."""
        embedder = self.engine.embedder
        return head.model == embedder.version or bool(
            head.weights and head.weights == model_identity(embedder)
        )

    def rejoin(self, record: Any, heads: dict[str, Head], existing: set[str]) -> bool:
        """At start-up: whether another process switched `record`'s collection to other vectors (a retrain,
        rollback or reindex there; the newest announcement names the vectors in use). When this process was
        started on that model, it serves those vectors (its keyword state is then repaired from them) and this
        returns True. Otherwise the collection is refused here until restarted on that model, also when its
        old vectors were kept: serving them would split the collection in two. `heads` and `existing` (the
        Chroma collections on the server) are read once by the caller for every collection."""
        mine = [h for h in heads.values() if h.collection == record.name and h.writer == self.writer]
        newest = max(
            (
                h
                for h in heads.values()
                if h.collection == record.name and h.chroma in existing and h.writer != self.writer
            ),
            key=lambda h: h.ts,
            default=None,
        )
        # This process's own later announcement (or its own switch, whose announcement may have failed before
        # a crash: its state is the authority on it) outranks an older one from elsewhere.
        if newest is None or newest.chroma == record.chroma_name or any(h.ts >= newest.ts for h in mine):
            return False
        if not self._serves_here(newest):
            self._moved[record.name] = newest.model
            log.warning("collection %r was switched to model %r elsewhere", record.name, newest.model)
            return False
        log.info(
            "collection %r: serving the vectors another rift process switched it to (%s), the model this one "
            "was started on",
            record.name,
            newest.model,
        )
        self.engine.state.put_collection(record.name, newest.chroma, self.engine.embedder.version)
        self._moved.pop(record.name, None)
        return True

    def _vectors_gone(self, record: Any, heads: dict[str, Head], existing: set[str]) -> str:
        """`record`'s vectors left the server: another process switched it to other vectors that exist (it is
        refused here until restart, or served at start-up when this process runs that model) or deleted it
        (dropped here too). Returns "moved" or "deleted"."""
        newer = [h for h in heads.values() if h.collection == record.name and h.chroma in existing]
        if newer:
            self._moved[record.name] = newer[0].model
            log.warning("collection %r was switched to model %r elsewhere", record.name, newer[0].model)
            return "moved"
        if not self._deleted_by_rift(record.chroma_name):
            if record.name not in self._lost:
                log.warning(
                    "the Chroma server no longer has collection %r's vectors (%s) and no rift process deleted "
                    "them (a new server, or one whose data was lost); its %d documents are kept, and a start "
                    "that repairs (`rift serve`, `rift add`) embeds them again from rift's stored text",
                    record.name,
                    record.chroma_name,
                    self.engine.state.counts(record.name)[0],
                )
            self._lost.add(record.name)
            return "lost"
        log.warning("collection %r was deleted by another rift process", record.name)
        self.engine.state.delete_collection(record.name)
        self.engine._keyword.pop(record.name, None)
        return "deleted"

    def lost(self, collection: str) -> bool:
        """Whether the server lost `collection`'s vectors (see `_vectors_gone`)."""
        return collection in self._lost

    def restored(self, collection: str) -> None:
        """`collection`'s vectors are on the server again (embedded anew here, or found there)."""
        self._lost.discard(collection)

    def may_serve(self, record: Any) -> bool:
        """Whether start-up may repair and serve `record` here. Not when another process switched it, nor
        when its vectors are another model's that another process announced: re-embedding them with this
        process's model would take them from under that process (which switches collections between models
        without downtime only through `rift reindex` / retrain in one process)."""
        if record.name in self._moved:
            return False
        if record.model_version == self.engine.embedder.version:
            return True
        others = [
            h for h in self.read().values() if h.chroma == record.chroma_name and h.writer != self.writer
        ]
        if others:
            self._moved[record.name] = record.model_version
            log.warning(
                "collection %r is served with model %r by another rift process; this one serves %r: restart "
                "it with that model to serve the collection",
                record.name,
                record.model_version,
                self.engine.embedder.version,
            )
            return False
        return True

    def prime(self) -> None:
        """After start-up's full repair: take the current heads as seen."""
        self._seen = self.read()
        self._checked = time.monotonic()

    # --- reading: follow the other writers ------------------------------------------------------------------

    def _changed(self, heads: dict[str, Head]) -> dict[str, list[tuple[Head | None, Head | None]]]:
        """Chroma name -> (seen, now) for each head that moved."""
        out: dict[str, list[tuple[Head | None, Head | None]]] = {}
        for head_id in heads.keys() | self._seen.keys():
            now, before = heads.get(head_id), self._seen.get(head_id)
            if now != before:
                out.setdefault((now or before).chroma, []).append((before, now))  # type: ignore[union-attr]
        return out

    def before_search(self, collection: str) -> None:
        self.sync()
        self.check_served_here(collection)

    def check_served_here(self, collection: str) -> None:
        """Refuse to search or write a collection another process switched to another model: this one can
        neither query those vectors nor write chunks the other would see."""
        if collection in self._moved:
            raise RiftError(
                f"collection {collection!r} was switched to model {self._moved[collection]!r} by another rift "
                f"process sharing this Chroma server; restart this process to serve that model"
            )
        if collection in self._lost:
            raise RiftError(
                f"the Chroma server no longer has collection {collection!r}'s vectors (its data was lost or "
                "replaced) and no rift process deleted them; rift keeps the documents: restart it to embed them "
                "again from their stored text"
            )

    def sync(self, force: bool = False) -> bool:
        """Catch up with other processes' writes; returns whether anything moved. Without `force`, at most
        once per `interval`."""
        started = time.perf_counter()
        if not force and self.interval and time.monotonic() - self._checked < self.interval:
            return False
        if self._owed:
            with self.engine._write_lock:
                self._pay_owed()
        heads = self.read()
        self._checked = time.monotonic()
        self._count("checks", "check_ms", started)
        if not self._changed(heads):
            return False
        with self.engine._write_lock:
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

    def _touched(self, chroma: str, moves: list[tuple[Head | None, Head | None]]) -> list[str] | None:
        """Documents the moved heads' writes touched, or None when only a full repair is safe."""
        docs: set[str] = set()
        for before, now in moves:
            if before is None or now is None or before.epoch != now.epoch or now.seq <= before.seq:
                return None
            page = self._call(
                CHANGES,
                "get",
                where={
                    "$and": [
                        {"writer": now.writer},
                        {"epoch": now.epoch},
                        {"chroma": chroma},
                        {"seq": {"$gt": before.seq}},
                        {"seq": {"$lte": now.seq}},
                    ]
                },
                include=["documents"],
            )
            if len(page["ids"]) != now.seq - before.seq:
                return None  # pruned, or announced without a change record
            for text in page["documents"]:
                docs.update(json.loads(text or "[]"))
        return sorted(docs)

    def _apply(
        self, changed: dict[str, list[tuple[Head | None, Head | None]]], heads: dict[str, Head]
    ) -> None:
        engine = self.engine
        records = {r.chroma_name: r for r in engine.state.collections()}
        existing = {name for name, _ in engine.vectors.list_collections()}
        for chroma in sorted(changed):
            record = records.get(chroma)
            if record is None:
                continue
            if chroma not in existing:
                self._vectors_gone(record, heads, existing)
                engine.vectors.forget(chroma)
                continue
            docs = self._touched(chroma, changed[chroma])
            if record.name in self._lost:  # another process put the vectors back: read them whole
                engine.vectors.forget(chroma)
                self._lost.discard(record.name)
                docs = None
            if docs is None:
                engine.vectors.forget(chroma)  # it may have been dropped and re-created under a new id
            self.refresh(record.name, chroma, docs)
        fresh = [h for c in changed if c not in records for h in heads.values() if h.chroma == c]
        if any(engine.state.collection(h.collection) is None for h in fresh):
            for name in engine._adopt_chroma_collections():  # collections another process created
                record = engine.state.collection(name)
                if record is not None:
                    self.refresh(name, record.chroma_name)
        for chroma in sorted(c for c in changed if c in self._left and c not in records):
            current = engine.state.collection(self._left[chroma][0])
            if current is not None and chroma in existing:
                since = self._left[chroma][1]
                self._catch_up(current, chroma, self._touched(chroma, changed[chroma]), since)
        for h in fresh:
            current = engine.state.collection(h.collection)
            if h.chroma in self._left:
                continue  # the old vectors this process switched from (caught up above), not a new model
            if current is not None and current.chroma_name != h.chroma:
                # Another process now writes this collection's chunks to another model's vectors (a retrain
                # or model switch): this one can neither query those nor follow those writes. Until restart.
                self._moved[h.collection] = h.model
                log.warning("collection %r is now served by model %r elsewhere", h.collection, h.model)

    def switched(self, collection: str, old_chroma: str) -> None:
        """This process switched `collection` away from `old_chroma` (under the engine's write lock)."""
        self._left[old_chroma] = (collection, time.time())

    def _catch_up(self, record: Any, old: str, doc_ids: Sequence[str] | None, switched_at: float) -> None:
        """Another process, still on the model this one switched from, wrote `doc_ids` (None: unknown, so every
        document) to the old vectors before it saw the switch: copy each such document's newest version into
        the serving vectors, embedded by the serving model, unless this process wrote it since (a document
        deleted there loses only chunks written here before the switch)."""
        engine = self.engine
        if doc_ids is None:  # every document written there since the switch (the rest was copied by it)
            every = engine.vectors.get(old, engine.vectors.all_ids(old))
            doc_ids = sorted(
                {
                    str(m["_rift_doc"])
                    for _, _, m in every
                    if m and "_rift_doc" in m and float(m.get("_rift_ts", 0.0) or 0.0) > switched_at
                }
            )
        copied: list[str] = []
        for start in range(0, len(doc_ids), 500):
            part = list(doc_ids[start : start + 500])
            theirs = _by_doc(engine.vectors.where_ids(old, {"_rift_doc": {"$in": part}}))
            ours = _by_doc(engine.vectors.where_ids(record.chroma_name, {"_rift_doc": {"$in": part}}))
            for doc_id in part:
                their_ts = max((ts for _, ts in theirs.get(doc_id, [])), default=None)
                our_ts = max((ts for _, ts in ours.get(doc_id, [])), default=None)
                if their_ts is not None and our_ts is not None and our_ts >= their_ts:
                    continue  # written here since: the newer version stays
                if their_ts is None and our_ts is None:
                    continue
                newest = [(c, ts) for c, ts in theirs.get(doc_id, []) if ts == their_ts]  # its newest version
                keep = [c for c, _ in newest]
                rows = engine.vectors.get(old, keep) if keep else []
                if rows:
                    vectors = engine.embedder_for(record).encode_documents([text for _, text, _ in rows])
                    engine.vectors.upsert(
                        record.chroma_name,
                        [c for c, _, _ in rows],
                        vectors,
                        [text for _, text, _ in rows],
                        [meta for _, _, meta in rows],
                    )
                gone = [c for c, ts in ours.get(doc_id, []) if c not in keep and (keep or ts < switched_at)]
                engine.vectors.delete(record.chroma_name, gone)
                if rows or gone:
                    copied.append(doc_id)
        if copied:
            self.refresh(record.name, record.chroma_name, copied)
            self.publish(record.name, record.chroma_name, record.model_version, copied)
            log.warning(
                "caught up %d document(s) another rift process wrote to collection %r's previous vectors",
                len(copied),
                record.name,
            )

    def refresh(self, collection: str, chroma: str, doc_ids: Sequence[str] | None = None) -> None:
        """Repair one collection's state from Chroma (all of it, or `doc_ids`) and apply the change to its live
        keyword index."""
        engine = self.engine
        if doc_ids is None:
            self.stats["full_repairs"] += 1
        delta = reconcile_with_chroma(
            engine.vectors, engine.state, engine.tokenizer, collection, chroma, logging.DEBUG, doc_ids
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

    def written_before(self, chroma: str, chunk_ids: Sequence[str], when: float) -> list[str]:
        """The chunks among `chunk_ids` last written before `when`. Chunk ids derive from content, so another
        process may have written the same ids since: recovery must leave those alone."""
        if not chunk_ids or chroma not in {name for name, _ in self.engine.vectors.list_collections()}:
            return list(chunk_ids)
        found = {i: meta for i, _, meta in self.engine.vectors.get(chroma, list(chunk_ids))}
        return [c for c in chunk_ids if c not in found or float(found[c].get("_rift_ts", 0.0)) <= when]

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


def _by_doc(found: Sequence[tuple[str, dict[str, Any]]]) -> dict[str, list[tuple[str, float]]]:
    """doc id -> [(chunk id, _rift_ts)] of chunks read back from Chroma."""
    out: dict[str, list[tuple[str, float]]] = {}
    for chunk_id, meta in found:
        doc = meta.get("_rift_doc") if meta else None
        ts = meta.get("_rift_ts", 0.0) if meta else 0.0
        if doc is not None:
            out.setdefault(str(doc), []).append((chunk_id, float(ts) if isinstance(ts, int | float) else 0.0))
    return out
