"""Chroma as the vector store: embedded PersistentClient by default, a Chroma server through HttpClient.

rift always passes its own embeddings, so collections are created without an embedding function (Chroma's
default one would try to download a model).
"""

from __future__ import annotations

import functools
import logging
import re
import shutil
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from server.config import Settings
from server.errors import RiftError, ShuttingDown

log = logging.getLogger(__name__)


PROBE_TIMEOUT_S = 10.0  # for the Chroma server's first answer


class ChromaUnreachable(RiftError):
    """Nothing answered at the Chroma server's address (it may come up later)."""


def make_client(settings: Settings) -> Any:
    """Chroma's client: embedded in data_dir, or a Chroma server's (one attempt: ChromaUnreachable when nothing
    answers; a server retries, see Rift._chroma_client)."""
    import chromadb
    import chromadb.errors
    import httpx
    from chromadb.api.fastapi import FastAPI
    from chromadb.config import Settings as ChromaSettings

    chroma_settings = ChromaSettings(anonymized_telemetry=False)
    if settings.vector_backend == "http":
        headers = {}
        if settings.chroma_auth_token and settings.chroma_auth_header == "x-chroma-token":
            headers["X-Chroma-Token"] = settings.chroma_auth_token
        elif settings.chroma_auth_token:
            headers["Authorization"] = f"Bearer {settings.chroma_auth_token}"
        where = f"{settings.chroma_host}:{settings.chroma_port}"
        try:
            # Chroma's client waits for an answer without a time limit: a server that accepts connections and
            # never answers would hang start-up (and every tool call waiting on it). Ask it first, at the
            # address Chroma's client makes (chroma_host may be a whole URL with a path prefix).
            base = FastAPI.resolve_url(
                chroma_server_host=settings.chroma_host,
                chroma_server_http_port=settings.chroma_port,
                chroma_server_ssl_enabled=settings.chroma_ssl,
                default_api_path=chroma_settings.chroma_server_api_default_path,
            )
            probe_s = min(PROBE_TIMEOUT_S, settings.chroma_timeout_s)
            answer = httpx.get(f"{base}/heartbeat", headers=headers, timeout=probe_s)
            not_chroma = heartbeat_problem(answer, where)
            if not_chroma is not None:  # (a 5xx, a proxy whose Chroma is not up yet, is waited for below)
                raise RiftError(not_chroma)
            client = chromadb.HttpClient(
                host=settings.chroma_host,
                port=settings.chroma_port,
                ssl=settings.chroma_ssl,
                headers=headers,
                settings=chroma_settings,
                tenant=settings.chroma_tenant,
                database=settings.chroma_database,
            )
            limit_requests(client, settings.chroma_timeout_s)
            return client
        except RiftError:  # something answers there, and it is not (or not yet) Chroma's API
            raise
        except Exception as exc:
            if isinstance(exc, chromadb.errors.ChromaError):  # it answered: trying again will not change that
                raise RiftError(
                    f"the Chroma server at {where} refused rift's connection: {exc} (settings chroma_tenant, "
                    "chroma_database: both must exist on the server; chroma_auth_token)"
                ) from None
            why = excerpt(str(exc), 300)  # (an answer that is no Chroma's may be a whole web page)
            raise ChromaUnreachable(f"cannot reach the Chroma server at {where}: {why}") from None
    return open_embedded(settings.chroma_dir)


def open_embedded(folder: Path) -> Any:
    """An embedded Chroma client of the store in `folder` (made if missing); a damaged store raises the
    RiftError that says what to do."""
    import chromadb
    from chromadb.config import Settings as ChromaSettings

    folder.mkdir(parents=True, exist_ok=True)
    try:
        return chromadb.PersistentClient(path=str(folder), settings=ChromaSettings(anonymized_telemetry=False))
    except Exception as exc:
        damaged = damaged_store(folder, exc)
        if damaged is None:
            raise
        raise damaged from None


def close_client(client: Any) -> None:
    """Let go of a Chroma client made by `make_client` (or any chromadb client); never raises.

    Chroma keeps one System per embedded store path for the whole process (SharedSystemClient's
    `_identifier_to_system`), and a PersistentClient made later for that path reuses it, with the HNSW indexes
    it read then: rift closed and opened again in one process (a library user, the tests) searched the store as
    this process last saw it, missing what another process wrote meanwhile. Client.close() (public; 1.5.9 has
    it) drops this client's reference and, at the last one, stops that path's System and forgets it, leaving
    every other path's alone (chromadb's clear_system_cache() forgets all of them, also a store another rift in
    this process has open: not used). A chromadb without it, or whose close() stops the System but keeps it
    cached, gets the same by hand below."""
    closed = False
    try:
        close = getattr(client, "close", None)
    except Exception:  # (a stand-in whose every attribute raises)
        return
    if callable(close):
        try:
            close()
            closed = True
        except Exception as exc:
            log.debug("closing Chroma's client failed: %s", exc)
    try:  # the fallback: private state, so any change in it just leaves the System cached (as before)
        from chromadb.api.shared_system_client import SharedSystemClient

        identifier = getattr(client, "_identifier", None)
        systems = SharedSystemClient._identifier_to_system
        counts = getattr(SharedSystemClient, "_identifier_to_refcount", None)
        # (with reference counts, a System still cached is still used by another client of that path: keep it)
        if identifier in systems and (counts is None or identifier not in counts):
            system = systems.pop(identifier)
            if not closed:
                system.stop()
    except Exception as exc:
        log.debug("could not release Chroma's cached System: %s", exc)


# What embedded Chroma says of a damaged file: its SQLite database, or an HNSW segment's files (a kill while
# Chroma rewrote index_metadata.pickle in place left it cut short, and every command then failed with
# "Error constructing hnsw segment reader: ... Error deserializing pickle file"; found by helper BL).
_DAMAGE_SIGNS = (
    "malformed", "not a database", "hnsw segment reader", "deserializing pickle", "Error loading hnsw index",
    # A kill during a bulk write can leave a log the compactor cannot apply (helper DD, Chroma 1.5.9):
    "Failed to apply logs to the hnsw segment writer", "Error sending backfill request to compactor",
)


def damaged_store(chroma_dir: Path, exc: BaseException) -> RiftError | None:
    """The error that names a damaged embedded store and what to do, when `exc` is Chroma's word for one. A
    full disk can give the same words (Chroma's compaction fails): then the disk is named first, since moving
    the store aside would cost a re-embedding of everything for nothing."""
    from server.errors import disk_full_problem

    if not any(sign in str(exc) for sign in _DAMAGE_SIGNS) or disk_full_problem(exc) is not None:
        return None
    advice = (
        "restore it from a backup, or move the folder aside (keep the copy): `rift serve` or `rift add` then embed "
        "every document again from the text rift's state holds"
    )
    try:
        free = shutil.disk_usage(chroma_dir).free
    except OSError:
        free = None
    if free is not None and free < _LOW_DISK_BYTES:
        return RiftError(
            f"Chroma's store {chroma_dir} cannot be read ({excerpt(str(exc), 300)}) and its disk has "
            f"{free / 1048576:.0f} MB free: free some space and start again; if it still fails, the store is "
            f"damaged: {advice}"
        )
    return RiftError(f"Chroma's store {chroma_dir} is damaged ({excerpt(str(exc), 300)}); {advice}")


_LOW_DISK_BYTES = 256 * 1024 * 1024


def heartbeat_problem(answer: Any, where: str) -> str | None:
    """Why the answer to a heartbeat request (an httpx.Response) is not a Chroma server's, as a RiftError's
    message; None for Chroma's heartbeat. A 5xx (a proxy in front of a Chroma that is starting, or a server
    failing for now) raises ChromaUnreachable: waited for, as a server that does not answer is."""
    status = answer.status_code
    said = f"{status} {answer.reason_phrase}".strip()
    if status >= 500:
        raise ChromaUnreachable(
            f"cannot use the Chroma server at {where}: its heartbeat answered {said} ({excerpt(answer.text, 120)})"
        )
    if 200 <= status < 300:
        try:
            beat = answer.json()
        except ValueError:
            beat = None
        if isinstance(beat, dict) and "nanosecond heartbeat" in beat:
            return None
        said = f"{said} with {excerpt(answer.text, 80)}, not Chroma's heartbeat"
    elif 300 <= status < 400:
        location = answer.headers.get("location", "")
        said += f" (a redirect to {excerpt(location, 120)}: check chroma_ssl)" if location else ""
    elif status in (401, 403):
        return (
            f"the server at {where} refused rift's heartbeat request ({said}): check chroma_auth_token and "
            "chroma_auth_header, and chroma_host / chroma_port"
        )
    return (
        f"something answers at {where} but it is not a Chroma server (its {answer.request.url.path} answered "
        f"{said}): check chroma_host / chroma_port (a Chroma server older than 0.6 has no /api/v2 either)"
    )


def excerpt(text: str, limit: int) -> str:
    """A short, one-line excerpt of what a server said: a web page is named by its title, never quoted whole."""
    flat = " ".join(text.split())
    if not flat:
        return "an empty body"
    head = flat[:200].lower()
    if head.startswith("<") and ("<html" in head or "<!doctype" in head or "<head" in head or "<body" in head):
        title = re.search(r"<title[^>]*>(.*?)</title", flat, re.IGNORECASE | re.DOTALL)
        named = " ".join(title.group(1).split())[:limit] if title else ""
        return f"a web page titled {named!r}" if named else "a web page"
    return flat if len(flat) <= limit else flat[:limit] + " …"


def limit_requests(client: Any, seconds: float) -> None:
    """Give a Chroma HttpClient's requests a time limit. Chroma (1.x) builds its httpx session with
    `timeout=None` and offers no setting for it: a server that accepts connections and never answers would
    block a tool call, and the write lock it holds, forever. The session is Chroma's private attribute, so a
    Chroma that no longer has it is logged, not failed."""
    import httpx

    session = getattr(getattr(client, "_server", None), "_session", None)
    if isinstance(session, httpx.Client):
        session.timeout = httpx.Timeout(seconds)
    else:
        log.warning(
            "cannot set chroma_timeout_s on this chromadb version's client: a Chroma server that stops "
            "answering will block rift's calls"
        )


def chroma_server_problem(exc: BaseException, then: str = "rift uses it again by itself once it answers") -> str | None:
    """What went wrong reaching a Chroma server, naming its address and what to do (`then`: what happens once
    it answers again); None when `exc` is not an HTTP client error with its request (the address comes from
    there, so it names the server the call used)."""
    import httpx

    if not isinstance(exc, httpx.RequestError):
        return None
    try:
        request = exc.request
    except RuntimeError:  # raised without a request
        return None
    where = f"{request.url.scheme}://{request.url.netloc.decode('ascii', 'replace')}"
    cause = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    if isinstance(exc, httpx.TimeoutException):
        limit = (request.extensions.get("timeout") or {}).get("read")
        within = f"within {limit:g} s" if isinstance(limit, int | float) else "in time"
        return (
            f"the Chroma server at {where} did not answer {within} ({cause}): it is stuck, overloaded or "
            f"unreachable; check it (setting chroma_timeout_s allows slow calls longer); {then}"
        )
    if isinstance(exc, httpx.ConnectError):
        return (
            f"cannot reach the Chroma server at {where} ({cause}): start it (`chroma run`) or check chroma_host "
            f"and chroma_port; {then}"
        )
    return f"the connection to the Chroma server at {where} failed ({cause}): check that it is up; {then}"


def chroma_not_answering(exc: BaseException) -> bool:
    """A refused connection or a request that timed out: the server is down or hung, so asking it again at
    once would fail (or wait) the same way. (A dropped keep-alive connection is not: a new one may work.)"""
    import httpx

    return isinstance(exc, httpx.ConnectError | httpx.TimeoutException)


HNSW_SEARCH_EF = 400

# A chunk's text is kept in its Chroma metadata, not as a Chroma document: Chroma builds a full-text index over
# documents that rift never queries, and that index was 60 % of the cost of an add (1.08 vs 0.48 ms per chunk).
# Collections written before keep their texts as documents; reads accept both.
TEXT_KEY = "_rift_text"


def _raise_search_ef(coll: Any, attempts: int = 6) -> None:
    """Collections made by earlier versions (or another tool) may search with Chroma's default ef 100."""
    try:
        hnsw = (getattr(coll, "configuration", None) or {}).get("hnsw") or {}
        if int(hnsw.get("ef_search") or HNSW_SEARCH_EF) >= HNSW_SEARCH_EF:
            return
    except Exception as exc:
        log.debug("could not read ef_search of %s: %s", getattr(coll, "name", "?"), exc)
        return
    for attempt in range(attempts):
        try:
            coll.modify(configuration={"hnsw": {"ef_search": HNSW_SEARCH_EF}})
            log.info("raised ef_search of Chroma collection %s to %d", coll.name, HNSW_SEARCH_EF)
            return
        except Exception as exc:  # an accuracy upgrade only; the collection works either way
            # Embedded Chroma 1.5.9's collection update (alone among rift's writes) meets SQLite's "database is
            # locked" while its own background work writes: 29 of 600 updates in a stress loop, none once retried.
            if "database is locked" in str(exc) and attempt + 1 < attempts:
                time.sleep(0.05 * 2**attempt)
                continue
            log.warning("could not raise ef_search of Chroma collection %s: %s", getattr(coll, "name", "?"), exc)
            return


_SEGMENT_DIR = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}\Z")


def remove_dropped_index_folders(folder: Path) -> list[str]:
    """Delete the index folders an embedded Chroma leaves behind for dropped collections (Chroma 1.x drops
    the collection's rows but not its `<segment id>/` HNSW files: chroma-core/chroma#5259), so a deleted
    collection's vectors and chunk ids do not stay on disk. Only folders named like a segment id that no
    segment in chroma.sqlite3 has; nothing when that layout does not hold (another Chroma version)."""
    db = folder / "chroma.sqlite3"
    if not db.is_file():
        return []
    try:
        con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)
        try:
            segments = con.execute("SELECT id, type FROM segments").fetchall()
        finally:
            con.close()
    except sqlite3.Error as exc:
        log.debug("not sweeping %s: %s", folder, exc)
        return []
    live = {str(i) for i, _ in segments}
    folders = {p.name for p in folder.iterdir() if p.is_dir() and _SEGMENT_DIR.match(p.name)}
    vector = {str(i) for i, kind in segments if "hnsw" in str(kind)}
    if folders - live and not (vector & folders) and vector:
        return []  # no live index is where this layout puts it: leave everything alone
    removed = sorted(folders - live)
    for name in removed:
        shutil.rmtree(folder / name, ignore_errors=True)
    return removed


class _ClosedClient:
    """Chroma's client once `VectorStore.close` has closed it: any use says so."""

    def __getattr__(self, name: str) -> Any:
        raise RiftError("rift's vector store is closed (rift was closed): open the data dir again to use it")


class _Unopened:
    """An embedded store whose client could not be opened again after a drop (see `VectorStore._release_dropped`):
    the next call tries again, and any use until then says why."""

    def __init__(self, why: str) -> None:
        self.why = why

    def __getattr__(self, name: str) -> Any:
        raise RiftError(self.why)


# A release due this long (calls overlapping without a gap since the drop) makes new calls wait for the calls
# in flight to end, each at most RELEASE_WAIT_S: without it, a busy server never let go of a dropped index.
RELEASE_PATIENCE_S = 1.0
RELEASE_WAIT_S = 2.0


def _in_use(method: Callable[..., Any]) -> Callable[..., Any]:
    """A VectorStore method that uses Chroma's client: it runs while the client is not being replaced."""

    @functools.wraps(method)
    def using(self: VectorStore, *args: Any, **kwargs: Any) -> Any:
        with self._using():
            return method(self, *args, **kwargs)

    return using


# Rows per Chroma upsert, below Chroma's own cap (5,461 embedded): a write is told to stop (rift closing, a
# SIGTERM) only between two upserts, and one of 5,000 rows took 5-6 s here. 20,000 chunks of 384 dimensions
# upserted in 19-22 s by 5,000 and in 20 s by 1,000 (embedded Chroma 1.5, this CPU): the same throughput, with
# a stop heard within about a second.
WRITE_BATCH = 1000


class VectorStore:
    def __init__(self, client: Any, folder: Path | None = None) -> None:
        self._client = client
        self._folder = folder  # an embedded store's folder (dropped collections' index files are swept there)
        self._collections: dict[str, Any] = {}
        self._lock = threading.Lock()
        self.max_batch = int(getattr(client, "get_max_batch_size", lambda: 5000)() or 5000)
        # Calls using the client now (`_using`); a drop asks for the client to be replaced once none is
        # (`_release_due`), and while it is (`_releasing`, tens of ms) new calls wait (`_release_dropped`).
        self._idle = threading.Condition()
        self._users = 0
        self._releasing = False
        self._release_due = False
        self._due_since = 0.0
        self._depth = threading.local()

    def _due(self) -> None:
        """A collection was dropped: the client is to be replaced once no call uses it (`_release_dropped`)."""
        if self._folder is not None and not self._release_due:
            self._due_since = time.monotonic()
            self._release_due = True

    def _overdue(self) -> bool:
        """A release has waited long for a gap between calls (under `_idle`)."""
        return self._release_due and self._users > 0 and time.monotonic() - self._due_since > RELEASE_PATIENCE_S

    @contextmanager
    def _using(self) -> Iterator[None]:
        depth = getattr(self._depth, "n", 0)
        if depth == 0:
            with self._idle:
                give_up = time.monotonic() + RELEASE_WAIT_S
                while self._releasing or (self._overdue() and time.monotonic() < give_up):
                    self._idle.wait(None if self._releasing else max(0.0, give_up - time.monotonic()))
                self._users += 1
        self._depth.n = depth + 1
        try:
            if depth == 0 and isinstance(self._client, _Unopened):
                self._open_again()
            yield
        finally:
            self._depth.n = depth
            if depth == 0:
                with self._idle:
                    self._users -= 1
                    last = not self._users
                if last and self._release_due:
                    self._release_dropped()

    def _open_again(self) -> None:
        """Open the embedded store again after `_release_dropped` failed to (a RiftError says why if it fails
        again)."""
        with self._lock:
            if isinstance(self._client, _Unopened):
                why = self._open_store()
                if why is not None:
                    raise RiftError(why)
                log.info("opened Chroma's store %s again", self._folder)

    def _open_store(self) -> str | None:
        """Open the embedded store as this store's client (hold self._lock), or leave an `_Unopened` standing in
        that says why, and return why."""
        assert self._folder is not None
        try:
            self._client = open_embedded(self._folder)
        except Exception as exc:
            self._client = _Unopened(f"cannot open Chroma's store {self._folder} again: {excerpt(str(exc), 300)}")
            return self._client.why
        return None

    def _release_dropped(self) -> None:
        """Embedded: let go of what Chroma keeps in this process of the collections dropped so far. Chroma 1.x
        (1.5.9) keeps a dropped collection's HNSW index in its cache (chroma-core/chroma#3296, #3336) and its
        four index files open, so each model swap (a new collection in, the old one dropped) kept the old
        vectors' index in memory (about 2.6 MB for a small collection, the whole index for a large one) and,
        the folder being deleted, its files' disk space, hidden from `du`, until the process ended (its cache
        is sized RLIMIT_NOFILE / 5 indexes, 4,000 for a limit of 20,000). Only stopping the store's System
        frees them, so the call that leaves the store unused after a drop (the drop itself, or the last of the
        calls in flight then) closes the client and opens the store again: a close and an open, tens of ms,
        during which new calls wait (and, once a release has been due for RELEASE_PATIENCE_S with calls
        overlapping all along, for the calls in flight, each at most RELEASE_WAIT_S);
        each collection's index is read from its files at its next use. Nothing is written to the store. If
        it cannot be opened again, calls fail saying why and the next one tries again."""
        if self._folder is None or getattr(self._depth, "n", 0):
            return
        with self._idle:
            if not self._release_due or self._releasing or self._users:
                return  # nothing dropped, another thread at it, or calls in flight: the last of them does it
            self._releasing, self._release_due = True, False
        try:
            with self._lock:
                client = self._client
                if isinstance(client, _ClosedClient | _Unopened):
                    return
                self._collections.clear()
                close_client(client)
                why = self._open_store()
                if why is not None:
                    log.warning("%s; the next call tries again", why)
        finally:
            with self._idle:
                self._releasing = False
                self._idle.notify_all()

    def _coll(
        self,
        name: str,
        dimension: int | None = None,
        labels: Mapping[str, Any] | None = None,
        create: bool = False,
    ) -> Any:
        """Chroma's handle of collection `name`. Only writes (`create`) make one that is not there: a read that
        made it would bring back, empty, a collection another process sharing the server just deleted (every
        process would then adopt it). Otherwise chromadb.errors.NotFoundError."""
        coll = self._collections.get(name)
        if coll is not None:
            return coll
        with self._lock:
            coll = self._collections.get(name)
            if coll is None:
                if create:
                    # ef_search 400 (Chroma's default is 100, and a query uses max(ef, n)): the vector side
                    # becomes practically exact up to ~100K chunks, so rankings no longer vary between index
                    # builds (README "Benchmarks": up to 0.007 nDCG@10 on SciFact at ef 100).
                    metadata: dict[str, Any] = {"hnsw:space": "cosine", "hnsw:search_ef": HNSW_SEARCH_EF}
                    if dimension is not None:
                        metadata["rift:dimension"] = dimension
                    metadata.update(labels or {})  # lets start-up re-adopt it if rift's state db is lost
                    coll = self._client.get_or_create_collection(
                        name=name, embedding_function=None, metadata=metadata
                    )
                else:
                    coll = self._client.get_collection(name=name, embedding_function=None)
                _raise_search_ef(coll)
                self._collections[name] = coll
        return coll

    @_in_use
    def ensure(self, name: str, dimension: int, labels: Mapping[str, Any] | None = None) -> None:
        self._coll(name, dimension, labels, create=True)

    @_in_use
    def list_collections(self) -> list[tuple[str, dict[str, Any]]]:
        """(name, metadata) of every collection in the Chroma database."""
        out = []
        for c in self._client.list_collections():
            if isinstance(c, str):
                out.append((c, dict(self._client.get_collection(c).metadata or {})))
            else:
                out.append((c.name, dict(c.metadata or {})))
        return out

    @_in_use
    def collection_ids(self) -> dict[str, str]:
        """name -> Chroma's id of every collection in the Chroma database (one made again gets a new id)."""
        out = {}
        for c in self._client.list_collections():
            coll = self._client.get_collection(c) if isinstance(c, str) else c
            out[coll.name] = str(coll.id)
        return out

    @property
    def client(self) -> Any:
        return self._client

    def close(self) -> None:
        """Close Chroma's client (see `close_client`): this store's handles are unusable afterwards, and a
        later use of the store says it is closed (rather than chromadb's AttributeError, "'RustBindingsAPI'
        object has no attribute 'bindings'", or httpx's closed client)."""
        with self._lock:
            self._collections.clear()
            client, self._client = self._client, _ClosedClient()
            if not isinstance(client, _ClosedClient | _Unopened):  # (an _Unopened one was closed already)
                close_client(client)

    def forget(self, name: str) -> None:
        """Drop the cached handle: another process may have deleted and re-created the collection."""
        with self._lock:
            self._collections.pop(name, None)

    def drop(self, name: str) -> None:
        """Delete Chroma collection `name`; one already gone is fine, any other failure raises."""
        import chromadb.errors

        with self._using(), self._lock:
            self._collections.pop(name, None)
            try:
                self._client.delete_collection(name)
                self._due()  # (when this call, or the last in flight, ends)
            except (chromadb.errors.NotFoundError, ValueError) as exc:  # already gone
                log.debug("drop %s: %s", name, exc)
            # Under the lock: a collection made meanwhile has segment rows but no index folder until its first
            # write, which a sweep between its reads would take for a dropped one's. (The files' disk is free
            # once the release has closed them too.)
            self.sweep()

    def sweep(self) -> list[str]:
        """Embedded: delete dropped collections' leftover index folders (see `remove_dropped_index_folders`)."""
        return remove_dropped_index_folders(self._folder) if self._folder is not None else []

    @_in_use
    def collection_id(self, name: str) -> str | None:
        """Chroma's id of collection `name` (a collection dropped and made again gets a new one); None if
        there is none."""
        import chromadb.errors

        try:
            return str(self._client.get_collection(name).id)
        except (chromadb.errors.NotFoundError, ValueError):
            return None

    @_in_use
    def exists(self, name: str) -> bool:
        return name in {c.name if hasattr(c, "name") else c for c in self._client.list_collections()}

    @_in_use
    def upsert(
        self,
        name: str,
        ids: Sequence[str],
        embeddings: np.ndarray,
        documents: Sequence[str],
        metadatas: Sequence[Mapping[str, Any]],
        stop: Callable[[], bool] | None = None,
    ) -> None:
        """`stop`: asked before each batch after the first; true ends the upsert there (raising ShuttingDown),
        leaving the batches already written (the caller's journal names them)."""
        coll = self._coll(name, int(embeddings.shape[1]) if len(ids) else None, create=True)
        step = min(self.max_batch, WRITE_BATCH)
        for start in range(0, len(ids), step):
            if start and stop is not None and stop():
                raise ShuttingDown(f"stopped after {start} of {len(ids)} chunks: rift is closing")
            end = start + step
            coll.upsert(
                ids=list(ids[start:end]),
                embeddings=embeddings[start:end],
                metadatas=[
                    {**m, TEXT_KEY: text}
                    for m, text in zip(metadatas[start:end], documents[start:end], strict=True)
                ],
            )

    @_in_use
    def delete(self, name: str, ids: Sequence[str]) -> None:
        """Delete chunks `ids`; none to delete in a collection that is not there."""
        import chromadb.errors

        if not ids:
            return
        try:
            coll = self._coll(name)
            for start in range(0, len(ids), self.max_batch):
                coll.delete(ids=list(ids[start : start + self.max_batch]))
        except chromadb.errors.NotFoundError:  # (a handle of a collection deleted since: it took them)
            self.forget(name)

    @_in_use
    def query(
        self, name: str, embedding: np.ndarray, n: int, where: Mapping[str, Any] | None = None
    ) -> list[tuple[str, float]]:
        """(chunk_id, cosine similarity) best first, filtered inside Chroma."""
        coll = self._coll(name)
        result = coll.query(
            query_embeddings=[embedding],
            n_results=n,
            where=dict(where) if where else None,
            include=["distances"],
        )
        ids = result["ids"][0] if result["ids"] else []
        dists = result["distances"][0] if result.get("distances") else [0.0] * len(ids)
        return [(i, 1.0 - float(d)) for i, d in zip(ids, dists, strict=True)]

    @_in_use
    def count(self, name: str) -> int:
        return int(self._coll(name).count())

    @_in_use
    def all_ids(self, name: str) -> list[str]:
        coll = self._coll(name)
        out: list[str] = []
        offset = 0
        while True:
            page = coll.get(include=[], limit=self.max_batch, offset=offset)
            out.extend(page["ids"])
            if len(page["ids"]) < self.max_batch:
                return out
            offset += self.max_batch

    @_in_use
    def get(self, name: str, ids: Sequence[str]) -> list[tuple[str, str, dict[str, Any]]]:
        """(id, document, metadata) for the ids that exist."""
        coll = self._coll(name)
        out: list[tuple[str, str, dict[str, Any]]] = []
        for start in range(0, len(ids), self.max_batch):
            page = coll.get(ids=list(ids[start : start + self.max_batch]), include=["documents", "metadatas"])
            for chunk_id, document, meta in zip(
                page["ids"], page["documents"], page["metadatas"], strict=True
            ):
                meta = dict(meta or {})
                text = meta.pop(TEXT_KEY, None)
                out.append((chunk_id, document if text is None else text, meta))
        return out

    @_in_use
    def present(self, name: str, ids: Sequence[str]) -> set[str]:
        """Those of `ids` the collection holds (none when it is not there)."""
        import chromadb.errors

        out: set[str] = set()
        try:
            coll = self._coll(name)
            for start in range(0, len(ids), self.max_batch):
                out.update(coll.get(ids=list(ids[start : start + self.max_batch]), include=[])["ids"])
        except chromadb.errors.NotFoundError:
            return set()
        return out

    @_in_use
    def where_ids(self, name: str, where: Mapping[str, Any]) -> list[tuple[str, dict[str, Any]]]:
        """(id, metadata) of the chunks matching a Chroma `where` filter."""
        page = self._coll(name).get(where=dict(where), include=["metadatas"])
        return [
            (i, {k: v for k, v in (m or {}).items() if k != TEXT_KEY})
            for i, m in zip(page["ids"], page["metadatas"], strict=True)
        ]

    @_in_use
    def embeddings_matrix(self, name: str, ids: Sequence[str]) -> np.ndarray | None:
        """The stored vectors of `ids`, one row each in that order; None if any id is missing (or the whole
        collection)."""
        import chromadb.errors

        try:
            coll = self._coll(name)
        except chromadb.errors.NotFoundError:
            return None
        position = {chunk_id: i for i, chunk_id in enumerate(ids)}
        out: np.ndarray | None = None
        filled = 0
        for start in range(0, len(ids), self.max_batch):
            page = coll.get(ids=list(ids[start : start + self.max_batch]), include=["embeddings"])
            vectors = np.asarray(page["embeddings"], dtype=np.float32)
            if not len(page["ids"]):
                continue
            if out is None:
                out = np.zeros((len(ids), vectors.shape[1]), dtype=np.float32)
            rows = [position[i] for i in page["ids"]]
            out[rows] = vectors
            filled += len(set(rows))
        if filled != len(ids):
            return None if ids else np.zeros((0, 0), dtype=np.float32)
        return out
