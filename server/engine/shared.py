"""Several rift processes on one Chroma server (``vector_backend = "http"``).

Each process keeps its own data dir (keyword state, query log, lock) and shares the Chroma collections. The
processes tell each other about writes through two small Chroma collections:

- ``rift-heads``: one record per (writer, Chroma collection), id ``<writer>/<chroma name>``, holding the
  writer's latest sequence number for it. Writers only touch their own records, so concurrent writers never
  clobber each other (Chroma's collection metadata would: ``modify`` replaces it whole, with no compare-and-set).
- ``rift-changes``: one record per write, ``(writer, epoch, seq, chroma)`` and the document ids it touched.
- ``rift-deleted``: one record per Chroma collection a rift process dropped, keyed by the id Chroma gave it
  (a collection made again under a name gets a new id) and written before the drop, with why: the rift
  collection was deleted, or these vectors were retired by a model switch. Each process remembers the id of
  each Chroma collection it serves (in its state database), so it tells "dropped by rift" (deleted: forgotten
  here too; retired: switched elsewhere) from "lost by the server" (missing, or made again under the name,
  with no rift process having dropped it: a new or wiped server). A lost collection's documents are never
  forgotten: this process embeds the chunks the server lacks again from its own stored text.

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

import contextlib
import json
import logging
import threading
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from server.engine.keyword_index import KeywordRow
from server.engine.models import weights_identity
from server.engine.reconcile import reconcile_with_chroma
from server.engine.vector_store import chroma_not_answering, chroma_server_problem
from server.errors import NotFoundError, RiftError

if TYPE_CHECKING:
    from server.engine.engine import Engine

log = logging.getLogger(__name__)

HEADS = "rift-heads"
CHANGES = "rift-changes"
DELETED = "rift-deleted"
OWED_KEY = "owed_announcement:"  # state setting per Chroma name: a write there not yet announced (value: collection)
ID_KEY = "chroma_id:"  # state setting: the Chroma id of the collection this process serves under that name
KEEP_CHANGES = 2000  # change records each writer keeps; a reader further behind repairs in full
PRUNE_EVERY = 200
# Once the server could not be reached, searches answer from this process's copy for this long before one
# asks the server again: a hung server costs one search chroma_timeout_s per interval, not every search.
UNREACHABLE_RETRY_S = 10.0
SUPERSEDED_MARGIN_S = 0.001  # a version this much older than an announced one is left (stamps may come back off)
SEARCH_WHILE_DOWN = (
    "until it answers, searches answer from this process's copy: keyword results only (the vectors are on "
    "the server), without other processes' writes since it was last reached, and not logged for learning"
)


def unseen_while_unreachable(exc: NotFoundError, problem: str) -> NotFoundError:
    """`exc` for a read that answered from this process's copy: the missing thing may exist elsewhere."""
    return NotFoundError(
        f"{exc} (what other processes wrote since the Chroma server was last reached is not seen here: {problem})"
    )


@dataclass(frozen=True)
class Announced:
    """The newest version of a document that another process announced: its stamp (`_rift_ts`) and hash."""

    written: float
    version: str


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


WRITER_ID = "writer-id"
# Where the writer id was made: the data dir's resolved path, device and inode, and the id itself. A copy of the
# data dir (cp -a, rsync, a backup restored beside it) carries the id but sits in another folder: it is another
# writer, and must not read the original's announcements as its own (a model switch by one would never reach the
# other, and each would prune the other's change records).
WRITER_HOME = "writer-home.json"


def _whereabouts(data_dir: Path) -> dict[str, Any]:
    st = data_dir.stat()
    return {"path": str(data_dir.resolve()), "device": st.st_dev, "inode": st.st_ino}


def _same_folder(home: Mapping[str, Any], here: Mapping[str, Any]) -> bool:
    """Whether `home` (where the id was made) is the folder `here`: the same inode on the same device (moved
    within its file system, or reached by another path such as a bind mount), or the same inode at the same
    path (a device number that changed with a remount: NFS, btrfs subvolumes and overlayfs number theirs when
    mounted). A copy is a new folder: another inode. (A file system without inode numbers reports 0: there
    the path and device must both match.)"""
    if not here["inode"]:
        return home.get("path") == here["path"] and home.get("device") == here["device"]
    return home.get("inode") == here["inode"] and (
        home.get("device") == here["device"] or home.get("path") == here["path"]
    )


def writer_id(data_dir: Path) -> str:
    """A stable id for the process that owns `data_dir` (one writer per data dir: the dir is locked, and the
    caller holds its lock). A copy of the data dir gets a new id at its first start (see WRITER_HOME)."""
    path, home_path = data_dir / WRITER_ID, data_dir / WRITER_HOME
    try:
        value = path.read_text().strip()
    except OSError:
        value = ""
    data_dir.mkdir(parents=True, exist_ok=True)
    here = _whereabouts(data_dir)
    if value:
        try:
            home = json.loads(home_path.read_text())
        except (OSError, ValueError):
            home = None
        if not isinstance(home, dict) or home.get("id") != value or _same_folder(home, here):
            # Its own folder (perhaps moved within its file system, or remounted), or an id without its home,
            # made by an earlier version or written by hand: adopted where it is.
            if home != {**here, "id": value}:
                home_path.write_text(json.dumps({**here, "id": value}))
            return value
        new = uuid.uuid4().hex[:16]
        made = home.get("path")
        log.warning(
            "data dir %s is not the folder its writer id %s was made in (%s): it was copied (or moved to another "
            "file system), so it writes to the shared Chroma server as a new writer, %s",
            here["path"],
            value,
            "a folder since made anew at this path" if made == here["path"] else made,
            new,
        )
        value = new
    else:
        value = uuid.uuid4().hex[:16]
    path.write_text(value)  # (before its home: a home written first would bind a copied id to this folder)
    home_path.write_text(json.dumps({**here, "id": value}))
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
        self._served_elsewhere: set[str] = set()  # ... of `_moved`: made with that model there, not switched
        self._heads_before_repair: dict[str, Head] | None = None  # read by `gone_while_down`, for `prime`
        # Chroma name -> collection, for vectors this process switched a collection away from: a process still
        # on the old model may write there until it sees the switch, and those writes are caught up here.
        self._left: dict[str, tuple[str, float]] = {}  # ... -> (collection, when it switched)
        # chroma -> (collection, model, doc ids or None for all) of writes whose announcement failed
        self._owed: dict[str, tuple[str, str, list[str] | None]] = {}
        self._noted: set[str] = set()  # Chroma names with an OWED_KEY setting (kept here: no read per write)
        # While the server cannot be reached: what is wrong, and until when searches skip asking it again.
        self._unreachable: str | None = None
        self._unreachable_until = float("-inf")
        self._answered = float("-inf")  # when a read last reached it
        self._unreachable_lock = threading.Lock()
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

    def publish(
        self,
        collection: str,
        chroma: str,
        model: str,
        doc_ids: Sequence[str] | None = None,
        written: float | None = None,
        versions: Mapping[str, str] | None = None,
    ) -> None:
        """Announce a write that has fully landed in Chroma (the caller holds the engine's write lock). Without
        `doc_ids` (a new or switched collection) readers repair the whole collection. `written` and `versions`
        (doc id -> the version's hash): the version stamp (`_rift_ts`) of the versions this write committed;
        other versions of those documents stamped before it are superseded, and readers remove those they
        find. The write is committed whatever happens here: an announcement that fails is owed, and paid at the
        next sync or write (without a stamp: such versions then stay, never shown, until the next write)."""
        try:
            self._announce(collection, chroma, model, doc_ids, written, versions)
        except Exception as exc:
            log.warning(
                "telling other rift processes about a write failed (%s); retrying at the next sync", exc
            )
            owed = self._owed.get(chroma)
            docs = None
            if doc_ids is not None and (owed is None or owed[2] is not None):
                docs = sorted({*doc_ids, *(owed[2] if owed else ())})
            self._owed[chroma] = (collection, model, docs)
            # Noted until paid: a process that stops first announces it at its next start.
            with contextlib.suppress(Exception):
                self.engine.state.put_setting(f"{OWED_KEY}{chroma}", collection)
                self._noted.add(chroma)
        else:
            if chroma not in self._owed and chroma in self._noted:
                with contextlib.suppress(Exception):  # (left, it costs one announcement of the whole collection)
                    self._unnote(chroma)

    def expect(self, collection: str, chroma: str) -> None:
        """Before a write reaches Chroma collection `chroma`: note its announcement as owed in the state until
        `publish` makes it, so a process that crashes in between has its next start announce the collection
        (whole: which documents it wrote is not kept), as for an announcement that failed."""
        if chroma not in self._noted:
            self.engine.state.put_setting(f"{OWED_KEY}{chroma}", collection)
            self._noted.add(chroma)

    def unexpect(self, chroma: str) -> None:
        """A write to `chroma` that was undone whole: nothing to announce for it (an earlier failed
        announcement stays owed)."""
        if chroma in self._noted and chroma not in self._owed:
            with contextlib.suppress(Exception):
                self._unnote(chroma)

    def _unnote(self, chroma: str) -> None:
        self.engine.state.delete_setting(f"{OWED_KEY}{chroma}")
        self._noted.discard(chroma)

    def _still_served(self, collection: str, chroma: str) -> Any:
        """`collection`'s record if this process still serves it from `chroma` (one another process switched is
        not: an announcement there would read as a switch back), else None."""
        record = self.engine.state.collection(collection)
        if record is None or record.chroma_name != chroma or collection in self._moved:
            return None
        return record

    def _pay_owed(self, until_failure: bool = False) -> None:
        """Announce writes whose announcement failed (the caller holds the engine's write lock); one for vectors
        this process no longer serves is dropped. `until_failure`: stop at the first that fails again."""
        for chroma, (collection, model, docs) in list(self._owed.items()):
            del self._owed[chroma]
            if self._still_served(collection, chroma) is None:
                self._unnote(chroma)
                continue
            self.publish(collection, chroma, model, docs)
            if until_failure and chroma in self._owed:
                return

    def settle(self) -> None:
        """Before this process stops (under the engine's write lock): announce what is owed, unless the server
        is known to be down; at the first failure it stops (each would wait out chroma_timeout_s): the next
        start announces the rest."""
        if self._unreachable is None:
            self._pay_owed(until_failure=True)

    def _announce(
        self,
        collection: str,
        chroma: str,
        model: str,
        doc_ids: Sequence[str] | None,
        written: float | None = None,
        versions: Mapping[str, str] | None = None,
    ) -> None:
        seq = self._seqs.get(chroma, 0) + 1
        self._seqs[chroma] = seq
        self._announced += 1
        now = time.time()
        change: dict[str, Any] = {"writer": self.writer, "epoch": self.epoch, "seq": seq, "chroma": chroma, "ts": now}
        touched: Any = list(doc_ids or ())
        if written is not None and versions is not None:
            # ("stamp": the key "written" went out, briefly, without the hashes it needs; readers of that key
            # take this record as unstamped.)
            change["stamp"] = written
            # doc id -> version hash (readers that predate it take the keys, as they took the list)
            touched = {d: versions.get(d, "") for d in touched}
        if doc_ids is not None:
            self._call(
                CHANGES,
                "upsert",
                ids=[f"{self.writer}:{self.epoch}:{chroma}:{seq}"],
                embeddings=[[1.0]],
                metadatas=[change],
                documents=[json.dumps(touched, ensure_ascii=False)],
            )
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

    def dropping(self, ids: dict[str, str | None], reason: str, collection: str, model: str = "") -> None:
        """Before this process drops Chroma collections of `collection` (name -> Chroma's id for it, None when
        there is none): note each id as dropped by rift and why ("deleted": the collection was deleted;
        "retired": old vectors after a switch to `model`), so that no process takes its absence for a server
        that lost it. A deletion notes the id this process remembers for a name too: a collection deleted
        while the server had lost it must not be put back by a process that still knows it by that id.
        Raises before anything is dropped."""
        found = {chroma_id: name for name, chroma_id in ids.items() if chroma_id}
        for name in ids:
            known = self.engine.state.setting(f"{ID_KEY}{name}")
            if known and reason == "deleted":
                found.setdefault(known, name)
        if not found:
            return
        now = time.time()
        self._call(
            DELETED,
            "upsert",
            ids=list(found),
            embeddings=[[1.0]] * len(found),
            metadatas=[
                {"chroma": name, "collection": collection, "reason": reason, "model": model, "ts": now}
                for name in found.values()
            ],
        )

    def not_dropped(self, chroma_id: str | None) -> None:
        """A drop noted by `dropping` failed: the collection lives on, so its note goes (best effort)."""
        if chroma_id:
            try:
                self._call(DELETED, "delete", ids=[chroma_id])
            except Exception:
                log.warning(
                    "could not withdraw the drop note of Chroma collection %s", chroma_id, exc_info=True
                )

    def _drop_note(self, chroma_id: str | None) -> dict[str, Any] | None:
        if not chroma_id:
            return None
        page = self._call(DELETED, "get", ids=[chroma_id], include=["metadatas"])
        return dict(page["metadatas"][0] or {}) if page["ids"] else None

    def _deleted_since(self, collection: str, since: float) -> bool:
        """Whether a rift process deleted `collection` at or after `since`."""
        page = self._call(
            DELETED,
            "get",
            where={"$and": [{"collection": collection}, {"reason": "deleted"}]},
            include=["metadatas"],
        )
        return any(float((m or {}).get("ts", 0.0) or 0.0) >= since for m in page["metadatas"])

    def remember(self, chroma: str, chroma_id: str | None = None) -> None:
        """Note the Chroma id of collection `chroma` as the one this process serves (looked up if not given)."""
        chroma_id = chroma_id or self.engine.vectors.collection_id(chroma)
        if chroma_id:
            self.engine.state.put_setting(f"{ID_KEY}{chroma}", chroma_id)

    def retire(self, chroma: str) -> None:
        """A dropped Chroma collection: remove every writer's head and changes for it; the others notice."""
        self._call(HEADS, "delete", where={"chroma": chroma})
        self._call(CHANGES, "delete", where={"chroma": chroma})
        self._seen = {k: h for k, h in self._seen.items() if h.chroma != chroma}

    def withdraw(self, chroma: str) -> None:
        """Remove this process's head and changes for Chroma collection `chroma`, announced after another
        process dropped it (and retired everyone's)."""
        self._call(HEADS, "delete", ids=[f"{self.writer}/{chroma}"])
        self._call(CHANGES, "delete", where={"$and": [{"writer": self.writer}, {"chroma": chroma}]})
        self._seen = {k: h for k, h in self._seen.items() if not (h.chroma == chroma and h.writer == self.writer)}

    def gone_while_down(self) -> list[str]:
        """At start-up, before the repair: collections whose vectors left the server, or were made again
        there, while this process was down. One another process deleted is forgotten here too rather than
        re-created empty (one made again since under the name is then adopted as new); one switched to another
        model (the old vectors dropped) is refused, as a switch seen while running is; one the server lost is
        noted (`lost`), and start-up embeds what the server lacks from the stored text. Returns the deleted
        ones."""
        engine = self.engine
        ids = engine.vectors.collection_ids()
        heads = self.read()
        # Taken as seen once the repair is done (`prime`): what others announce meanwhile (a restore of their
        # own) is then followed at the first sync instead of being taken as already read.
        self._heads_before_repair = heads
        deleted = []
        for record in engine.state.collections():
            if self.rejoin(record, heads, set(ids)) or record.name in self._moved:
                continue
            if self._check(record, heads, ids) == "deleted":
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
        self.remember(newest.chroma)
        self._moved.pop(record.name, None)
        return True

    def _check(self, record: Any, heads: dict[str, Head], ids: dict[str, str]) -> str:
        """Whether `record`'s Chroma collection is still the one this process serves: "same"; "moved" (another
        process switched the collection to other vectors: refused here until restart, or served at start-up
        when this process runs that model); "deleted" (another process deleted it: forgotten here too); or
        "lost" (missing, or made again under the name, and no rift process dropped it: the server lost it;
        kept, and marked `lost` until what the server lacks is embedded again). `ids`: name -> Chroma id of
        every collection on the server."""
        chroma = record.chroma_name
        now, known = ids.get(chroma), self.engine.state.setting(f"{ID_KEY}{chroma}")
        if now is not None and known in (None, now):
            if known is None:
                self.remember(chroma, now)
            return "same"
        newer = [
            h
            for h in heads.values()
            if h.collection == record.name and h.chroma in ids and h.chroma != chroma
        ]
        if record.name in self.engine._moving and not newer:
            # Moving here from this data dir's embedded store (see Engine.open), its documents are not all on
            # the server yet: what another process deleted or the server lost there is not this collection,
            # which goes onto the server (unless another process switched it to another model: refused).
            if now is not None:
                self.remember(chroma, now)
                return "same"
            self._lost.add(record.name)
            return "lost"
        note = self._drop_note(known)
        dropped_at = float(note.get("ts", 0.0) or 0.0) if note else 0.0
        # Deleted: this id was dropped with its collection, or retired by a switch and the collection deleted
        # since. (Without a note nothing is known of this id: a deletion of an earlier collection of the same
        # name proves nothing about it. A store from before ids were remembered knows none: for it, a
        # deletion noted under the name is taken as its own.)
        if note is not None and (
            note.get("reason") == "deleted" or self._deleted_since(record.name, dropped_at)
        ):
            return self._forget(record)
        if known is None and now is None and not newer and self._deleted_name(chroma):
            return self._forget(record)
        if now is not None and note is not None:  # retired, then made again by a switch back: rift's own
            self.remember(chroma, now)
            return "same"
        if newer or note is not None:
            model = newer[0].model if newer else str(note.get("model") or "another model")  # type: ignore[union-attr]
            self._moved[record.name] = model
            log.warning("collection %r was switched to model %r elsewhere", record.name, model)
            return "moved"
        if record.name not in self._lost:
            log.warning(
                "collection %r: the Chroma server %s its vectors (%s), and no rift process dropped them (a new "
                "server, or one whose data was lost); its %d documents are kept, and what the server lacks is "
                "embedded again from rift's stored text",
                record.name,
                "no longer has" if now is None else "made again",
                chroma,
                self.engine.state.counts(record.name)[0],
            )
        self._lost.add(record.name)
        return "lost"

    def _forget(self, record: Any) -> str:
        log.warning("collection %r was deleted by another rift process", record.name)
        self.engine.state.delete_collection(record.name)
        self.engine._keyword.pop(record.name, None)
        self._lost.discard(record.name)
        if self.engine.on_deleted_elsewhere is not None:
            try:
                self.engine.on_deleted_elsewhere(record.name)
            except Exception:  # (its state is gone already: the rest is this process's own log and plans)
                log.exception("forgetting collection %r's searches here failed", record.name)
        return "deleted"

    def _deleted_name(self, chroma: str) -> bool:
        """Whether a rift process noted Chroma collection `chroma` (by name) as dropped with its collection."""
        page = self._call(
            DELETED, "get", where={"$and": [{"chroma": chroma}, {"reason": "deleted"}]}, include=[]
        )
        return bool(page["ids"])

    def check_again(self, record: Any) -> str:
        """`_check` against the server as it is now (its collection went since start-up listed them)."""
        return self._check(record, self.read(), self.engine.vectors.collection_ids())

    def lost(self, collection: str) -> bool:
        """Whether the server lost `collection`'s vectors (see `_check`)."""
        return collection in self._lost

    def restored(self, collection: str) -> None:
        """`collection`'s vectors are whole on the server again (its chunks the server lacked were embedded
        again here, or it was switched to new vectors): remember their id and tell the others."""
        record = self.engine.state.collection(collection)
        if record is None or collection not in self._lost:
            return
        self._lost.discard(collection)
        self.remember(record.chroma_name)
        self.publish(collection, record.chroma_name, record.model_version)

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
        mine = model_identity(self.engine.embedder)
        if mine and any(h.weights == mine for h in others):
            # The same weights under another name (a copy of the model folder at another path, as on another
            # host): its vectors are this process's model's, so it serves them under its own name.
            log.info(
                "collection %r: its vectors are those of model %r, whose weights this process runs as %r",
                record.name,
                record.model_version,
                self.engine.embedder.version,
            )
            self.engine.state.put_collection(record.name, record.chroma_name, self.engine.embedder.version)
            return True
        if others:
            self._moved[record.name] = record.model_version
            self._served_elsewhere.add(record.name)
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
        """After start-up's full repair: take the heads read before it as seen, and owe the announcements the
        last process here did not make (it stopped or crashed first): whole collections, so the others read
        them in full."""
        for chroma in self.engine.state.setting_keys(OWED_KEY):
            collection = self.engine.state.setting(f"{OWED_KEY}{chroma}") or ""
            self._noted.add(chroma)
            record = self._still_served(collection, chroma)
            if record is not None:
                self._owed[chroma] = (collection, record.model_version, None)
            else:
                self._unnote(chroma)
        heads, self._heads_before_repair = self._heads_before_repair, None
        self._seen = heads if heads is not None else self.read()
        self._checked = float("-inf")  # the first search looks at once

    # --- reading: follow the other writers ------------------------------------------------------------------

    def _changed(self, heads: dict[str, Head]) -> dict[str, list[tuple[Head | None, Head | None]]]:
        """Chroma name -> (seen, now) for each head that moved."""
        out: dict[str, list[tuple[Head | None, Head | None]]] = {}
        for head_id in heads.keys() | self._seen.keys():
            now, before = heads.get(head_id), self._seen.get(head_id)
            if now != before:
                out.setdefault((now or before).chroma, []).append((before, now))  # type: ignore[union-attr]
        return out

    def before_search(self, collection: str) -> str | None:
        """Catch up before a search. Returns None, or what is wrong when the server cannot be reached: the
        search then answers from this process's copy (the keyword side) rather than failing."""
        problem = self.catch_up()
        self.check_served_here(collection)
        return problem

    def catch_up(self, probe: bool = True) -> str | None:
        """`sync()` for a read that can answer from this process's copy: None, or what is wrong when the
        server cannot be reached. After a failure one caller asks again per UNREACHABLE_RETRY_S; the others
        meanwhile get the problem at once rather than each waiting for the server. `probe=False` (a call a
        client expects at once, such as a completion) never is that one caller."""
        with self._unreachable_lock:
            known = self._unreachable
            if known is not None:
                now = time.monotonic()
                if now < self._unreachable_until or not probe:
                    return known
                self._unreachable_until = now + UNREACHABLE_RETRY_S  # this caller asks
        asked = time.monotonic()
        try:
            self.sync(force=known is not None)
        except Exception as exc:
            problem = self.note_unreachable(exc, asked)
            if problem is None:
                raise
            return problem
        return None

    @property
    def known_unreachable(self) -> bool:
        """Whether the server is known not to answer now (a call saw it fail, and none has seen it answer since)."""
        return self._unreachable is not None

    def note_unreachable(self, exc: BaseException, asked: float) -> str | None:
        """The one-line problem if `exc` (from a request begun at `asked`, time.monotonic()) says the server
        cannot be reached, else None. A refused connection or a timeout is remembered (searches answer from
        the local copy for UNREACHABLE_RETRY_S before asking again), unless the server answered since."""
        problem = chroma_server_problem(exc, then=SEARCH_WHILE_DOWN)
        if problem is None or not chroma_not_answering(exc):
            return problem  # (a dropped connection: this request alone)
        with self._unreachable_lock:
            if asked < self._answered:
                return problem
            if self._unreachable is None:
                log.warning("%s", problem)
            self._unreachable = problem
            self._unreachable_until = time.monotonic() + UNREACHABLE_RETRY_S
        return problem

    def check_served_here(self, collection: str, lost_ok: bool = False) -> None:
        """Refuse to search or write a collection another process switched to another model: this one can
        neither query those vectors nor write chunks the other would see. `lost_ok`: one the server lost
        passes (new vectors built from the stored text make it whole again)."""
        if collection in self._served_elsewhere:
            raise RiftError(
                f"collection {collection!r} is served with model {self._moved[collection]!r} by another rift "
                f"process sharing this Chroma server; restart this process with that model (or a copy of its "
                f"folder) to serve it"
            )
        if collection in self._moved:
            raise RiftError(
                f"collection {collection!r} was switched to model {self._moved[collection]!r} by another rift "
                f"process sharing this Chroma server; restart this process to serve that model"
            )
        if collection in self._lost and not lost_ok:
            raise RiftError(
                f"collection {collection!r}: the Chroma server no longer has its vectors (its data was lost or "
                "replaced) and no rift process deleted them; rift keeps the documents: restart rift to embed "
                "them again from their stored text"
            )

    def problem(self, collection: str) -> str | None:
        """What keeps `collection` from being searched and written here (the server lost its vectors, another
        process switched its model), as `check_served_here` says it; None when nothing does."""
        try:
            self.check_served_here(collection)
        except RiftError as exc:
            return str(exc)
        return None

    def sync(self, force: bool = False) -> bool:
        """Catch up with other processes' writes; returns whether anything moved. Without `force`, at most
        once per `interval`."""
        started = time.perf_counter()
        if not force and self.interval and time.monotonic() - self._checked < self.interval:
            return False
        # While the server does not answer, a search that asks it pays owed announcements only once it
        # answers: each would otherwise wait out chroma_timeout_s first, holding the write lock.
        was_down = self._unreachable is not None
        if self._owed and not was_down:
            with self.engine._write_lock:
                self._pay_owed()
        heads = self.read()
        self._checked = time.monotonic()
        with self._unreachable_lock:
            self._answered = self._checked
            if self._unreachable is not None:
                log.warning("the Chroma server answers again: searches use it again")
                self._unreachable, self._unreachable_until = None, float("-inf")
        if was_down and self._owed:
            with self.engine._write_lock:
                self._pay_owed()
            heads = self.read()
        if self.engine.finish_owed_undos(wait=False):  # (a write the server's failure left half undone)
            heads = self.read()
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

    def _touched(
        self, chroma: str, moves: list[tuple[Head | None, Head | None]]
    ) -> dict[str, Announced | None] | None:
        """Documents the moved heads' writes touched, each with the newest version announced for it (None if
        none was: see `publish`), or None when only a full repair is safe."""
        docs: dict[str, Announced | None] = {}
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
                include=["documents", "metadatas"],
            )
            if len(page["ids"]) != now.seq - before.seq:
                return None  # pruned, or announced without a change record
            for text, meta in zip(page["documents"], page["metadatas"], strict=True):
                written = (meta or {}).get("stamp")
                touched = json.loads(text or "[]")
                for doc_id in touched:
                    docs.setdefault(doc_id, None)
                    if not isinstance(touched, dict) or not isinstance(written, int | float) or isinstance(written, bool):
                        continue
                    known = docs[doc_id]
                    if known is None or written > known.written:
                        docs[doc_id] = Announced(float(written), str(touched[doc_id]))
        return dict(sorted(docs.items()))

    def _apply(
        self, changed: dict[str, list[tuple[Head | None, Head | None]]], heads: dict[str, Head]
    ) -> None:
        import chromadb.errors

        engine = self.engine
        records = {r.chroma_name: r for r in engine.state.collections()}
        ids = engine.vectors.collection_ids()
        existing = set(ids)
        for chroma in sorted(changed):
            record = records.get(chroma)
            if record is None:
                continue
            try:
                self._follow(record, changed[chroma], heads, ids)
            except chromadb.errors.ChromaError:
                # Deleted by another process since the listing above (a collection this search may not even
                # read): "does not exist", or "Missing metadata segment" while the server drops it. Look
                # again, now that it is gone, rather than fail the whole call.
                now = engine.vectors.collection_ids()
                if now.get(chroma) == ids.get(chroma):
                    raise
                engine.vectors.forget(chroma)
                ids, existing = now, set(now)
                self._follow(record, changed[chroma], heads, ids)
        fresh = [
            h
            for c in changed
            if c not in records and c in existing
            for h in heads.values()
            if h.chroma == c and h.writer != self.writer
        ]
        if any(engine.state.collection(h.collection) is None for h in fresh):
            self._adopt_new()  # collections another process created
        for chroma in sorted(c for c in changed if c in self._left and c not in records):
            current = engine.state.collection(self._left[chroma][0])
            if current is not None and chroma in existing:
                since = self._left[chroma][1]
                touched = self._touched(chroma, changed[chroma])
                self._catch_up(current, chroma, None if touched is None else list(touched), since)
        for h in fresh:
            current = engine.state.collection(h.collection)
            if h.chroma in self._left:
                continue  # the old vectors this process switched from (caught up above), not a new model
            if current is not None and current.chroma_name != h.chroma:
                # Another process now writes this collection's chunks to another model's vectors (a retrain
                # or model switch): this one can neither query those nor follow those writes. Until restart.
                self._moved[h.collection] = h.model
                log.warning("collection %r is now served by model %r elsewhere", h.collection, h.model)

    def _follow(
        self, record: Any, moves: list[tuple[Head | None, Head | None]], heads: dict[str, Head], ids: dict[str, str]
    ) -> None:
        """Bring one collection this process serves up to date with the moved heads `moves` of its vectors.
        `ids`: name -> Chroma id of every collection on the server."""
        engine = self.engine
        chroma = record.chroma_name
        docs = None if chroma not in ids else self._touched(chroma, moves)
        if docs is None or record.name in self._lost:
            engine.vectors.forget(chroma)  # it may have been dropped, or made again under a new id
            verdict = self._check(record, heads, ids)
            if verdict == "deleted" and chroma in ids:  # deleted, then made again: a new collection
                self._adopt_new()
            if verdict != "same" and not (verdict == "lost" and self._put_back(record)):
                return
            docs = None
        self.refresh(record.name, chroma, docs)

    def _adopt_new(self) -> None:
        """Serve the collections other processes created: adopt them, then read them in full. One deleted again
        in between is forgotten here as well, rather than failing the call (and staying, empty, until a restart:
        its deletion retired the heads that would have told this process)."""
        import chromadb.errors

        engine = self.engine
        for name in engine._adopt_chroma_collections():
            record = engine.state.collection(name)
            if record is None:
                continue
            try:
                self.refresh(name, record.chroma_name)
            except chromadb.errors.ChromaError:
                engine.vectors.forget(record.chroma_name)
                if self.check_again(record) == "same":
                    raise

    def _put_back(self, record: Any) -> bool:
        """While running: `record`'s collection, lost by the server, is there again (another process made it
        again): embed the chunks it lacks from this process's stored text, so that reading it back loses
        nothing, and tell the others. Returns whether it is whole again (not when its model is not loaded
        here: then it stays refused until a restart re-embeds it)."""
        engine = self.engine
        if record.model_version not in engine._embedders or not engine.vectors.exists(record.chroma_name):
            return False
        engine._restore_lost_vectors(record.name, record.chroma_name, repair=True)
        self.restored(record.name)
        return True

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

    def refresh(
        self, collection: str, chroma: str, doc_ids: Sequence[str] | Mapping[str, Announced | None] | None = None
    ) -> None:
        """Repair one collection's state from Chroma (all of it, or `doc_ids`) and apply the change to its live
        keyword index. `doc_ids` as a mapping: each document's newest announced version (see `publish`);
        versions of it in Chroma stamped before that one are removed first."""
        engine = self.engine
        if doc_ids is None:
            self.stats["full_repairs"] += 1
        in_chroma = None
        if isinstance(doc_ids, Mapping):
            in_chroma = self._without_superseded(chroma, doc_ids)
            doc_ids = list(doc_ids)
        delta = reconcile_with_chroma(
            engine.vectors,
            engine.state,
            engine.tokenizer,
            collection,
            chroma,
            logging.DEBUG,
            doc_ids,
            in_chroma=in_chroma,
            chunkings=engine.version_chunkings(collection),
        )
        index = engine._keyword.get(collection)
        if index is None:
            engine._load_keyword(collection)
        elif not delta.empty:
            index.apply(
                remove=delta.removed,
                add=[KeywordRow(r.chunk_id, r.doc_id, r.tokens, r.metadata) for r in delta.added],
            )
        engine._texts_gone(collection, delta.texts_gone)  # (deleted or rewritten by another process)

    # --- last writer wins for one document id ---------------------------------------------------------------

    def _without_superseded(self, chroma: str, announced: Mapping[str, Announced | None]) -> set[str]:
        """The chunk ids Chroma holds of the documents `announced`, after removing the versions stamped before
        the one each was announced with. Their writer's own sweep misses a version whose chunks landed after it
        (one written at the same moment, whose upload took longer); a version older than a committed one is
        never shown again, and its writer, should its write fail, removes only its own chunks. The announced
        version's chunks stay whatever their stamp: chunk ids derive from content, so a late upload of the
        same text (by another process) stamps them back."""
        found: set[str] = set()
        superseded: list[str] = []
        docs = list(announced)
        for start in range(0, len(docs), 500):
            listed = self.engine.vectors.where_ids(chroma, {"_rift_doc": {"$in": docs[start : start + 500]}})
            # Only a version Chroma holds whole supersedes the others: another writer's sweep may have removed
            # the announced one (its chunks, stamped back by a late upload of the same text, read as older).
            held: dict[str, set[str]] = {}
            needed: dict[str, Any] = {}
            for chunk_id, meta in listed:
                doc_id = str((meta or {}).get("_rift_doc"))
                bar = announced.get(doc_id)
                if bar is not None and (meta or {}).get("_rift_hash") == bar.version:
                    held.setdefault(doc_id, set()).add(chunk_id)
                    needed[doc_id] = (meta or {}).get("_rift_n")
            whole = {d for d, chunks in held.items() if len(chunks) == needed[d]}
            for chunk_id, meta in listed:
                meta = meta or {}
                doc_id = str(meta.get("_rift_doc"))
                bar = announced.get(doc_id)
                ts = meta.get("_rift_ts")
                if (
                    bar is not None
                    and doc_id in whole
                    and meta.get("_rift_hash") != bar.version
                    and isinstance(ts, int | float)
                    and ts < bar.written - SUPERSEDED_MARGIN_S  # (a stamp may come back from Chroma a little off)
                ):
                    superseded.append(chunk_id)
                else:
                    found.add(chunk_id)
        if superseded:
            try:
                self.engine.vectors.delete(chroma, superseded)
            except Exception:  # left for the next write of those documents; never shown meanwhile
                log.warning("removing %d superseded chunks from %s failed", len(superseded), chroma, exc_info=True)
                found.update(superseded)
        return found

    def written_before(self, chroma: str, chunk_ids: Sequence[str], when: float) -> list[str]:
        """The chunks among `chunk_ids` last written before `when`. Chunk ids derive from content, so another
        process may have written the same ids since: recovery must leave those alone."""
        if not chunk_ids or chroma not in {name for name, _ in self.engine.vectors.list_collections()}:
            return list(chunk_ids)
        found = {i: meta for i, _, meta in self.engine.vectors.get(chroma, list(chunk_ids))}
        return [c for c in chunk_ids if c not in found or float(found[c].get("_rift_ts", 0.0)) <= when]

    def changed_since(
        self,
        chroma: str,
        doc_ids: Sequence[str],
        since: float,
        known: set[str],
        held: set[str],
        floors: Mapping[str, float] | None = None,
    ) -> set[str]:
        """The documents among `doc_ids` another process wrote or deleted after this one read them at `since`
        (or, where `floors` gives one, after the stamp of the version it read, if earlier): with chunks in
        Chroma stamped after that which are not among this process's `known` chunk ids, or, of those it `held`
        then, with no chunk left."""
        out: set[str] = set()
        present: set[str] = set()
        for start in range(0, len(doc_ids), 500):
            part = list(doc_ids[start : start + 500])
            for chunk_id, meta in self.engine.vectors.where_ids(chroma, {"_rift_doc": {"$in": part}}):
                doc_id, ts = str((meta or {}).get("_rift_doc")), (meta or {}).get("_rift_ts")
                present.add(doc_id)
                floor = min(since, (floors or {}).get(doc_id, since))
                if chunk_id not in known and isinstance(ts, int | float) and ts > floor:
                    out.add(doc_id)
        return out | (held - present)

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
