"""The application object behind the MCP tools and the CLI: owns the data-dir lock, the engine and the
disagreement log, and loads the heavy parts (torch, the model, Chroma) off the critical path."""

from __future__ import annotations

import contextlib
import errno
import logging
import math
import os
import shutil
import sqlite3
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from filelock import FileLock, Timeout

from server.config import Settings
from server.errors import DataDirLockedError, NotFoundError, RiftError
from server.learning.disagreement import Disagreement, not_compared, summarize
from server.learning.query_log import QueryLog, new_query_id

log = logging.getLogger(__name__)


MIN_SNIPPET_CHARS = 20  # a search's max_chars: below this a hit's text shows a word or two


@dataclass
class SearchResponse:
    query_id: str | None
    outcome: Any  # engine.SearchOutcome
    disagreement: Disagreement | None
    logged: bool


# What rift writes into a data dir (SQLite adds -wal / -shm / -journal beside its files).
_OWN_ENTRIES = (
    "chroma", "models", "state.sqlite", "querylog.sqlite", "rift.lock", "rift.pid", "writer-id",
    "writer-home.json",
)
_DESKTOP_FILES = ("Thumbs.db", "desktop.ini")  # with dotfiles (.DS_Store): what opening a folder leaves


def foreign_entry(data_dir: Path) -> str | None:
    """The name of an entry that shows `data_dir` is not (and was never made into) rift's data folder: a
    folder of notes given by mistake, which rift must not write its store into. None when it is rift's,
    empty, or missing. A folder with rift's state database is rift's whatever else it holds."""
    try:
        if not data_dir.is_dir() or (data_dir / "state.sqlite").exists():
            return None
        for entry in sorted(data_dir.iterdir()):
            name = entry.name
            for suffix in ("-wal", "-shm", "-journal"):
                name = name.removesuffix(suffix)
            if name not in _OWN_ENTRIES and not name.startswith(".") and name not in _DESKTOP_FILES:
                return entry.name
    except OSError:  # unreadable: opening it names the problem
        return None
    return None


def _open_query_log(path: Path, max_queries: int = 0) -> QueryLog:
    """The query log, or a new one when the file is damaged: it is learning data, not the documents, and
    must not keep the server from starting. The damaged file is kept beside it."""
    try:
        return QueryLog(path, max_queries)
    except sqlite3.OperationalError as exc:  # unreadable, locked, I/O: the file may be fine, so it stays put
        raise RiftError(cannot_open("the query log", path, exc)) from None
    except sqlite3.DatabaseError as exc:  # not a database, malformed
        aside = path.with_name(f"{path.name}.damaged-{time.strftime('%Y%m%d-%H%M%S')}")
        for suffix in ("", "-wal", "-shm"):
            with contextlib.suppress(OSError):
                Path(f"{path}{suffix}").rename(f"{aside}{suffix}")
        log.warning(
            "the query log %s is damaged (%s); moved it to %s and started a new one", path, exc, aside
        )
        return QueryLog(path, max_queries)


# Below this much free space SQLite cannot create a database's -wal / -shm files, and says only "disk I/O
# error" or "unable to open database file".
_NEARLY_NO_SPACE = 1 << 20


def cannot_open(what: str, path: Path, exc: sqlite3.OperationalError) -> str:
    """Why an SQLite file could not be opened, when the cause is not damage (a full disk, permissions, a lock,
    I/O)."""
    try:
        free = shutil.disk_usage(path.parent).free
    except OSError:
        free = None
    if free is not None and free < _NEARLY_NO_SPACE:
        return (
            f"cannot open {what} {path} ({exc}): the disk holding it is full ({free:,} bytes free); free some "
            "space and start again (the file itself is not damaged: leave it in place)"
        )
    return (
        f"cannot open {what} {path} ({exc}); check that this user may read and write it and its folder "
        "(the file itself is not damaged: leave it in place)"
    )


CLOSE_WAIT_S = 10.0  # how long closing (off the main thread) waits for a write in flight to finish

# The job that registers a version of each kind (a version left half-switched names it).
JOB_OF_KIND = {"fine-tune": "retrain", "reindex": "reindex", "base": "rollback"}


def _rolled_back_from(registry: Any, serving: Any, entry: Any) -> bool:
    """Whether a rollback from the serving version could have targeted `entry`: it is one of serving's ancestors
    or of its base model's lineage. A `rift serve` with a new model retires the old one too, and one killed while
    re-embedding leaves collections on it: no rollback ran then (found by helper BP)."""
    seen: set[str] = set()
    current = serving
    while current is not None and current.version not in seen:
        if current.version == entry.version or current.base_model == entry.base_model:
            return True
        seen.add(current.version)
        current = registry.get(current.parent) if current.parent else None
    return False


class DataDirLock:
    def __init__(self, settings: Settings) -> None:
        foreign = foreign_entry(settings.data_dir)
        if foreign is not None:
            raise RiftError(
                f"data_dir {settings.data_dir} holds files that are not rift's (such as {foreign}) and no rift "
                "store; rift will not write one into it. Point --data-dir / RIFT_DATA_DIR at a new or empty folder"
            )
        try:
            settings.data_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise RiftError(
                f"data_dir {settings.data_dir} cannot be used as rift's data folder: {exc.strerror or exc}"
            ) from None
        self._path = settings.lock_file
        self._pid_file = settings.data_dir / "rift.pid"
        # Not thread-local: the MCP lifespan acquires it on the event loop and releases it from a worker thread.
        self._lock = FileLock(str(self._path), timeout=0, thread_local=False)

    def acquire(self) -> None:
        try:
            self._lock.acquire()
        except Timeout:  # (first: filelock's Timeout is an OSError too)
            try:
                holder = self._pid_file.read_text().strip()
            except OSError:
                holder = "unknown"
            raise DataDirLockedError(
                f"data dir {self._path.parent} is in use by another rift process (pid {holder}); stop it or "
                "point this one elsewhere (--data-dir, or RIFT_DATA_DIR / data_dir in the settings)"
            ) from None
        except OSError as exc:  # a read-only copy, a folder in the lock file's place, ...
            raise RiftError(self._unusable(exc)) from None
        with contextlib.suppress(OSError):  # informational only (names the holder to a second process)
            self._pid_file.write_text(str(os.getpid()))

    def _unusable(self, exc: OSError) -> str:
        """Why the lock file cannot be taken, and what to do."""
        message = (
            f"data dir {self._path.parent} cannot be used: its lock file {self._path.name} cannot be written "
            f"({exc.strerror or exc})"
        )
        # A backup on read-only media, another user's store: nothing here may change it, but export reads it.
        readable = "`rift export` can still read the store as it is"
        if exc.errno == errno.EROFS:
            return f"{message}; copy the data dir somewhere writable to use it ({readable})"
        if exc.errno in (errno.EACCES, errno.EPERM):
            return f"{message}; check the folder's owner and permissions ({readable})"
        if exc.errno in (errno.EISDIR, errno.ENOTDIR):
            return f"{message}; something else is in its place: remove or rename it"
        return f"{message}; check the disk and the folder, then start again"

    def release(self) -> None:
        if self._lock.is_locked:
            self._lock.release(force=True)  # also a hold taken over from `rift serve`'s start-up check


# A server whose Chroma server does not answer keeps trying (tool calls meanwhile say so, at once): every 2 s
# for the first minute (a Chroma started together with rift comes up second), then every 30 s.
CHROMA_RETRY_S = (2.0, 30.0)
CHROMA_PATIENT_S = 60.0
CHROMA_WARN_EVERY_S = 600.0  # how often a long wait is logged again


class WaitAbandoned(RiftError):
    """Start-up was waiting (for a Chroma server) when the app was closed."""


class Rift:
    def __init__(self, settings: Settings | None = None, lock: DataDirLock | None = None) -> None:
        """`lock`: the data dir's lock, already held by the caller (so no other process gets in between)."""
        self.settings = settings or Settings()
        self._lock = lock or DataDirLock(self.settings)
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._engine: Any = None
        self.log: QueryLog | None = None
        self.started_at = time.time()
        self.load_seconds: float | None = None
        self.repair_report: dict[str, Any] = {}
        self.learning: Any = None  # server.learning.manager.LearningManager, once the engine is open
        self._deleted_while_opening: list[str] = []  # collections another process deleted, seen at start-up
        # Documents whose texts left the store before learning started (followed from another process at start-up).
        self._gone_while_opening: list[tuple[str, list[str]]] = []
        self._background = True
        self._reembed = True
        self._close_lock = threading.Lock()
        self._closed = False
        self._released = False  # close() has stopped the jobs and is closing the stores: engine() refuses
        self._waiting: str | None = None  # why start-up is waiting (an unreachable Chroma server), while it is
        self._stopping = threading.Event()  # close() was called: a start-up still waiting gives up
        self._shutting_down = threading.Event()  # a transport is draining its calls (begin_shutdown)
        self._step_lock = threading.Lock()
        self._quiet = False  # start-up is in a step that writes nothing (_writing_nothing)

    # --- lifecycle -----------------------------------------------------------------------------------------

    def start(self, background: bool = True, reembed: bool = True) -> Rift:
        """`reembed=False` (commands that only read or manage models): refuse to start when the configured
        model is not the one the collections are embedded with, instead of re-embedding them all with it
        and retiring the version that served (a wrong RIFT_MODEL in one shell must not rewrite the store)."""
        self._reembed = reembed
        self._lock.acquire()
        self._background = background
        if background:
            threading.Thread(target=self._open, name="rift-open", daemon=True).start()
        else:
            self._open()
            if self._error is not None:
                self.close()  # the caller gets no app to close: free the data dir now
                if isinstance(self._error, KeyboardInterrupt):  # Ctrl-C: not a failure to start
                    raise KeyboardInterrupt
                self.engine()  # re-raise the failure to the caller
        return self

    def _open(self) -> None:
        started = time.perf_counter()
        try:
            with self._writing_nothing():
                from server.engine.embedder import Embedder
                from server.engine.engine import Engine
                from server.engine.models import resolve_model
                from server.engine.state_store import StateStore
                from server.engine.vector_store import VectorStore, close_client

            s = self.settings
            self.log = _open_query_log(s.log_db, s.log_max_queries)
            try:
                state = StateStore(s.state_db)
            except sqlite3.OperationalError as exc:
                raise RiftError(cannot_open("rift's state database", s.state_db, exc)) from None
            except sqlite3.DatabaseError as exc:
                raise RiftError(
                    f"rift's state database {s.state_db} is damaged ({exc}); move it aside (keep the copy): the "
                    "next start rebuilds it from the chunks Chroma holds"
                ) from None
            try:
                self._adopt_stored_name(state)
                if not self._reembed:
                    self._refuse_another_model(state)
                embedder = self._serving_embedder(Embedder, resolve_model)
                keep = self._kept_versions()
                client = self._chroma_client()
            except BaseException:
                state.close()
                raise
            folder = s.chroma_dir if s.vector_backend != "http" else None
            store: VectorStore | None = None
            try:
                while True:
                    store = VectorStore(client, folder)
                    engine = Engine(s, embedder, store, state)
                    engine.on_deleted_elsewhere = self._deleted_elsewhere
                    engine.on_documents_gone = self._documents_gone
                    try:
                        self.repair_report = engine.open(rechunk=self._reembed, keep=keep)
                        break
                    except Exception as exc:
                        # The Chroma server answered, then went away during the repairs: a server waits for
                        # it and opens again (the repairs are written to survive a crash at any point, so an
                        # open cut short is finished by the next one), rather than failing every call until a
                        # restart.
                        lost = client
                        client = self._chroma_lost_while_opening(engine, exc)
                        close_client(lost)
            except BaseException:
                state.close()
                close_client(client)  # (an embedded store's System would otherwise stay cached: see close_client)
                if store is not None and store.client is not client:
                    store.close()  # (a drop during the repairs opened the embedded store again: that client)
                raise
            self._engine = engine
            self._forget_searches_of_deleted_collections(engine)
            from server.learning.manager import LearningManager

            self.learning = LearningManager(self)
            for name in self._deleted_while_opening:  # (seen by the engine's start-up, before learning was)
                self.learning.forget_collection(name)
            for name, doc_ids in self._gone_while_opening:
                try:  # (the job that would continue the plan checks for deleted documents itself)
                    self.learning.forget_documents(name, doc_ids)
                except Exception:
                    log.exception("could not remove deleted documents of %r from a retrain's plan", name)
            self.learning.start(engine, resume_jobs=self._background)  # a server, not a CLI command
            self.load_seconds = time.perf_counter() - started
            log.info("rift ready in %.1fs (model %s)", self.load_seconds, embedder.version)
        except BaseException as exc:  # surfaced to every tool call, with the cause
            # A server's stderr is its only log: the traceback goes there. A foreground caller (a CLI command)
            # re-raises the failure and shows it once; -v adds the traceback.
            if isinstance(exc, WaitAbandoned):  # a shutdown, not a failure
                log.info("%s", exc)
            elif self._background or log.isEnabledFor(logging.INFO):
                log.exception("rift failed to start")
            self._error = exc
        finally:
            self._ready.set()

    def _forget_searches_of_deleted_collections(self, engine: Any) -> None:
        """A collection's deletion commits in rift's state, then its searches leave the query log (another
        database). Killed in between, the searches and their feedback stayed, and a later collection of that
        name trained on them (helper DD). Start-up forgets the searches of every collection that is gone."""
        if self.log is None:
            return
        try:
            for name in sorted(set(self.log.collections()) - set(engine.collection_names())):
                gone = self.log.forget_collection(name)
                log.warning("forgot %d logged search(es) of collection %r, which was deleted", gone, name)
        except Exception:  # (the next start tries again)
            log.exception("could not forget the logged searches of deleted collections")

    @contextlib.contextmanager
    def _writing_nothing(self) -> Any:
        """A start-up step that writes nothing to the data dir (importing torch, loading the model: most of a
        cold start). close() does not wait for it: start-up gives up when the step ends, before writing
        anything, and a process exiting on its client's EOF abandons the load."""
        with self._step_lock:
            if self._stopping.is_set():  # closed between two steps
                raise WaitAbandoned("closed while starting")
            self._quiet = True
        try:
            yield
        finally:
            with self._step_lock:
                self._quiet = False
                stopping = self._stopping.is_set()
        if stopping:
            raise WaitAbandoned("closed while loading the model")

    def _chroma_client(self) -> Any:
        """Chroma's client. A server whose Chroma server does not answer keeps trying until it does, and
        starts then (tool calls meanwhile answer at once with why); a CLI command fails at once."""
        from server.engine.vector_store import ChromaUnreachable, close_client, make_client

        if not self._background or self.settings.vector_backend != "http":
            return make_client(self.settings)
        first = time.monotonic()
        warned = -math.inf
        while True:
            try:
                client = make_client(self.settings)
                if self._stopping.is_set():  # closed meanwhile (close() gave up waiting): start nothing
                    close_client(client)
                    raise WaitAbandoned("closed while waiting for the Chroma server")
                if self._waiting is not None:
                    log.warning("the Chroma server answers: starting")
                self._waiting = None
                return client
            except ChromaUnreachable as exc:
                waited = time.monotonic() - first
                self._waiting = (
                    f"rift is waiting for its Chroma server: {exc}. It has tried for {waited:.0f} s and keeps "
                    "trying: start the server (`chroma run`), or check chroma_host and chroma_port"
                )
                if time.monotonic() - warned >= CHROMA_WARN_EVERY_S or waited < CHROMA_PATIENT_S:
                    log.warning("%s", self._waiting)
                    warned = time.monotonic() if waited >= CHROMA_PATIENT_S else warned
                pause = CHROMA_RETRY_S[0] if waited < CHROMA_PATIENT_S else CHROMA_RETRY_S[1]
                if self._stopping.wait(pause):
                    raise WaitAbandoned(f"closed while waiting for the Chroma server ({exc})") from None

    def _chroma_lost_while_opening(self, engine: Any, exc: Exception) -> Any:
        """Re-raise `exc` unless a server lost its Chroma server during start-up; else a client once it
        answers again (tool calls meanwhile answer at once with why)."""
        from server.engine.vector_store import (
            ChromaUnreachable,
            chroma_server_problem,
            close_client,
            damaged_store,
            make_client,
        )

        engine.discard()
        if self.settings.vector_backend != "http":
            damaged = damaged_store(self.settings.chroma_dir, exc)  # (found when a segment is first read)
            if damaged is not None:
                raise damaged from None
        problem = chroma_server_problem(exc, then="start-up waits for it and repairs again once it answers")
        if problem is None or not self._background or self.settings.vector_backend != "http":
            raise exc
        try:
            close_client(make_client(self.settings))  # (its heartbeat)
        except ChromaUnreachable:
            pass  # gone: wait for it
        else:
            raise exc  # it answers: this request failed by itself (e.g. one slower than chroma_timeout_s)
        self._waiting = f"rift is waiting for its Chroma server: {problem}"
        log.warning("%s", self._waiting)
        if self._stopping.wait(CHROMA_RETRY_S[0]):
            raise WaitAbandoned(f"closed while waiting for the Chroma server ({problem})") from None
        return self._chroma_client()

    def _adopt_stored_name(self, state: Any) -> None:
        """Stores made before model folders were named by their absolute path may know the configured folder
        by another name ("tiny/model", "./m/"): the same folder is the same model, so the stored name is used
        instead of re-embedding every collection (and retiring a serving fine-tune) over a spelling. (A
        relative name that resolves elsewhere from this working folder is another model, as before.) So are
        the same weights in another folder (`_adopt_moved_folder`)."""
        from server.learning.registry import Registry

        s = self.settings
        here = Path(s.model)
        if not here.is_absolute() or not here.is_dir():
            return
        registry = Registry(s.models_dir)
        names: set[str] = set()
        for record in state.collections():
            entry = registry.get(record.model_version)
            names.add(entry.base_model if entry is not None else record.model_version)
        serving = registry.serving()
        if serving is not None:  # (its lineage, also where no collection holds vectors yet)
            names.add(serving.base_model)
        for name in sorted(names - {s.model}):
            folder = Path(name).expanduser()
            try:
                same = folder.is_dir() and folder.resolve() == here
            except OSError:
                continue
            if same:
                log.info("model %s is the folder this store knows as %r; keeping that name", s.model, name)
                s.model = name
                return
        self._adopt_moved_folder(state, registry, names, serving)

    def _adopt_moved_folder(self, state: Any, registry: Any, names: set[str], serving: Any) -> None:
        """A model folder moved (a new machine, a new home folder) with `model` set to its new path: the
        weights the store recorded for its earlier path (`model_weights:<path>`, written by
        Engine._check_configured_weights) are the configured folder's, so it is the same model. Its earlier
        path stays its name, which labels the stored vectors and the versions trained from it
        (`Settings.model_location` names the folder it loads from), and the registry's versions that loaded
        the earlier path load the new one: the serving fine-tune and every collection's vectors are kept,
        rather than every collection re-embedded with the base model and the fine-tune retired. Other weights
        at the new path are another model, as before."""
        from server.engine.models import weights_identity

        s = self.settings
        here = s.model
        own = registry.get(here)
        if own is not None and own.kind == "base" and own.location != here:
            # Moved back (or `model` names its first path again): the base version, relocated by an earlier
            # start, loads from where `model` says once the weights are the ones recorded for that path.
            recorded_here = state.setting(f"model_weights:{here}") or ""
            same = recorded_here.startswith("sha256:") and recorded_here == weights_identity(here)
            if same and registry.relocate(here, here):
                log.info("model folder %s is back where this store first knew it (same weights)", here)
        reindexed = {v.location for v in registry.all() if v.kind == "reindex"}
        # The serving lineage's name first, then the collections' (one store rarely holds two).
        first = [serving.base_model] if serving is not None else []
        candidates = [n for n in dict.fromkeys(first + sorted(names) + sorted(reindexed)) if n != here]
        recorded = {n: state.setting(f"model_weights:{n}") for n in candidates}
        candidates = [n for n in candidates if (recorded[n] or "").startswith("sha256:")]
        if not candidates:
            return
        identity = weights_identity(here)  # (hashed once per process; start-up checks it again anyway)
        for name in candidates:
            if recorded[name] != identity:
                continue
            moved = registry.relocate(name, here)
            if moved:
                log.info(
                    "model folder moved from %s to %s (same weights): keeping the fine-tunes and the vectors "
                    "made with it (version %s loads from the new path)",
                    name,
                    here,
                    ", ".join(moved),
                )
            else:
                log.debug("model %s holds the weights this store knows as %r", here, name)
            if name in names:  # the name the stored vectors and versions know this model by
                s.model = name
                s.model_location = here
            return

    def _refuse_another_model(self, state: Any) -> None:
        from server.learning.registry import Registry

        s = self.settings
        if s.vector_backend == "http":  # a shared Chroma: other processes' collections serve their own models
            return
        registry = Registry(s.models_dir)
        serving = registry.serving_descendant(s.model)
        would_serve = serving.version if serving is not None else s.model
        other = {r.model_version: r.name for r in state.collections() if r.model_version != would_serve}
        if not other:
            return
        version, name = next(iter(other.items()))
        entry = registry.get(version)
        lineage = entry.base_model if entry is not None else version
        if entry is not None and entry.status in ("failed", "rejected"):  # a switch cut short (a kill)
            job = JOB_OF_KIND.get(entry.kind, "model switch")
            raise RiftError(
                f"collection {name!r} was left on version {version!r} by a {job} that stopped before it "
                f"finished; the serving version is {would_serve!r}. This command does not re-embed the store: "
                "start `rift serve`, which re-embeds such collections with the serving version"
            )
        if (
            entry is not None
            and entry.status == "retired"
            and registry._has_weights(entry)
            and serving is not None
            and _rolled_back_from(registry, serving, entry)
        ):
            # A rollback switches the collections to a retired version, then names it serving: killed in
            # between, they are on it and the registry still names the version before (found by helper BI).
            raise RiftError(
                f"collection {name!r} was left on version {version!r} by a rollback that stopped before it "
                f"finished; the serving version is still {would_serve!r}. This command does not re-embed the "
                "store: start `rift serve`, which switches such collections back to the serving version, then "
                "run `rift rollback` again"
            )
        if lineage == s.model and entry is not None:  # this lineage, but its version cannot serve
            raise RiftError(
                f"collection {name!r} is embedded with version {version!r}, whose weights at "
                f"{registry.location_of(entry)} are missing; this command does not re-embed the store. Restore "
                "them, or start `rift serve` to re-embed every collection with the configured model"
            )
        raise RiftError(
            f"collection {name!r} is embedded with {version!r} (model {lineage!r}), but this command is "
            f"configured with model {s.model!r} (setting `model`, RIFT_MODEL); it does not re-embed the store. "
            f"Set model to {lineage!r}, or start `rift serve` with the new model to re-embed every collection"
        )

    def _kept_versions(self) -> set[str]:
        """Versions whose vectors stay when start-up switches a collection left on one to the serving version:
        those a rollback may return to within `learn_keep_versions`. A rollback killed after switching the
        collections to its target, before the registry named it serving, left them there; start-up goes back
        to the serving version, and dropped the target's vectors, so the next rollback to it embedded the
        whole corpus again (an hour for 100k chunks on a CPU)."""
        from server.learning.registry import Registry

        s = self.settings
        return Registry(s.models_dir).kept_for_rollback(s.learn_keep_versions, s.model)

    def _serving_embedder(self, embedder_cls: Any, resolve_model: Any) -> Any:
        """The registry's serving version (it survives restarts), else the configured model."""
        from server.engine.embedder import embed_options
        from server.learning.registry import Registry

        s = self.settings
        registry = Registry(s.models_dir)
        serving = registry.serving_descendant(s.model)
        recorded = registry.serving()
        if serving is None and recorded is not None and registry.descends_from(recorded, s.model):
            log.warning(
                "the serving version %s cannot serve: its weights at %s are gone; serving the configured model %s "
                "(collections embedded with %s are re-embedded; `rift models` lists versions to roll back to)",
                recorded.version, registry.location_of(recorded), s.model, recorded.version,
            )
        if serving is not None and serving.version != s.model:
            try:
                # A fine-tune saved before fine-tunes kept their prompt takes its base model's known one.
                origin = registry.origin_model(serving) if serving.kind == "fine-tune" else None
                spec = resolve_model(registry.location_of(serving), s.query_prompt, origin)
                with self._writing_nothing():
                    return embedder_cls(
                        spec,
                        version=serving.version,
                        device=s.device,
                        batch_size=s.embed_batch_size,
                        **embed_options(s),
                    )
            except WaitAbandoned:
                raise
            except Exception as exc:
                if not self._reembed:  # falling back would re-embed every collection and retire the version
                    from server.engine.models import describe_load_failure

                    raise RiftError(
                        f"the serving version {serving.version!r} cannot load: "
                        f"{describe_load_failure(registry.location_of(serving), exc)}; this command does not "
                        "re-embed the store with the configured model (`rift serve` would)"
                    ) from exc
                log.exception("cannot load serving version %s; serving the configured model", serving.version)
        # A moved folder, renamed too, keeps the known query prompt its earlier name gave (bge-small-en-v1.5).
        moved = s.model if s.model_location != s.model else None
        spec = resolve_model(s.model_location, s.query_prompt, moved_from=moved)
        try:
            with self._writing_nothing():
                embedder = embedder_cls(
                    spec, version=s.model, device=s.device, batch_size=s.embed_batch_size, **embed_options(s)
                )
        except RiftError:
            raise  # already names its setting (device, embed_backend)
        except Exception as exc:
            from server.engine.models import describe_load_failure

            raise RiftError(
                f"cannot load the embedding model {s.model_location!r} (setting `model`, RIFT_MODEL): "
                + describe_load_failure(spec.location, exc)
            ) from exc
        # Only once it loaded: a model that cannot load changes nothing.
        registry.serve_base(s.model, s.model_location)
        return embedder

    @property
    def ready(self) -> bool:
        return self._ready.is_set() and self._error is None

    def engine(self, timeout: float | None = None) -> Any:
        deadline = None if timeout is None else time.monotonic() + timeout
        while not self._ready.is_set():
            waiting = self._waiting  # (a call waiting for the model learns of this at once too)
            if waiting is not None:
                raise RiftError(waiting)
            left = 0.25 if deadline is None else min(0.25, deadline - time.monotonic())
            if left <= 0:
                raise RiftError("rift is still loading its model; try again in a few seconds")
            self._ready.wait(left)
        if self._error is not None:
            from server.engine.vector_store import chroma_server_problem

            why = chroma_server_problem(self._error, then="then restart rift") or self._error
            raise RiftError(f"rift failed to start: {why}")
        if self._released:
            # (a library's Rift used after close(): its stores are closed, and a search would return a
            # query_id its closed query log never records)
            raise RiftError("this rift is closed: open its data dir again (Rift(settings).start()) to use it")
        return self._engine

    def begin_shutdown(self) -> None:
        """A transport began its shutdown and waits for the calls in flight to answer: a call that only waits
        (retrain_status's wait_seconds, up to 300 s) answers now instead of holding that wait for its whole
        length and then ending with no answer."""
        self._shutting_down.set()

    @property
    def shutting_down(self) -> bool:
        return self._shutting_down.is_set() or self._stopping.is_set()

    def stop_writes(self) -> None:
        """A shutdown is under way: writes in flight stop at their next safe point, saying so (see
        Engine.begin_close), before `close` closes the stores; for a transport that must answer its calls first."""
        engine = self._engine
        if engine is not None:
            engine.begin_close()

    def close(self) -> None:
        """Stop jobs (a retrain checkpoints), write the query log, release the data dir. Once: a second
        caller (a SIGTERM arriving while the client's stdin EOF is already closing the server) waits for
        the first to finish instead of closing twice. While start-up loads the model it does not wait for
        the load (start-up gives up after it); while start-up writes (repairs, re-embedding) up to 60 s."""
        with self._close_lock:
            if self._closed:
                return
            self._stopping.set()
            with self._step_lock:
                loading_model = self._quiet and not self._ready.is_set()
            # Loading the model writes nothing and may take half a minute: a client that closed stdin must not
            # find the data dir in use by a server that was only loading. Start-up then opens nothing more.
            if not loading_model:
                self._ready.wait(60)
            self._release()
            self._closed = True

    def _release(self) -> None:
        """Close what is open and release the data dir's lock."""
        if self.learning is not None:
            self.learning.close()
        self._released = True
        if self._engine is not None:
            # A write in flight (a SIGTERM arriving mid-call) stops at its next safe point (begin_close), or
            # commits, before the state database closes under it; one that takes longer is rolled back by the
            # next start (its journal), and says so in one line. On the main thread (a SIGTERM handler, which
            # blocks the event loop a write's progress report may need, and whose client kills it soon) only
            # briefly.
            self._engine.begin_close()
            main = threading.current_thread() is threading.main_thread()
            held = self._engine._write_lock.acquire(timeout=1.0 if main else CLOSE_WAIT_S)
            try:
                if held and self._engine.shared is not None and not main:
                    try:  # the others learn of this process's last writes now, not at its next start
                        self._engine.shared.settle()
                    except Exception:
                        log.warning("announcing owed writes failed; the next start announces them", exc_info=True)
                self._engine.state.close()
                # Chroma's client too: embedded Chroma keeps each store's System for the whole process, and
                # rift opened again here would read the store as it was (see vector_store.close_client).
                self._engine.vectors.close()
            finally:
                if held:
                    self._engine._write_lock.release()
        if self.log is not None:
            self.log.close()
        self._lock.release()

    @property
    def loading(self) -> bool:
        """Still opening (loading the model, re-embedding at start-up): nothing to save yet."""
        return not self._ready.is_set()

    # --- operations shared by the MCP tools and the CLI ----------------------------------------------------

    def search(
        self,
        collection: str,
        query: str,
        k: int = 10,
        mode: str = "hybrid",
        filters: Mapping[str, Any] | None = None,
        group_by_document: bool = True,
        source: str = "mcp",
        max_chars: int | None = None,
        **knobs: Any,
    ) -> SearchResponse:
        """`max_chars`: each hit's text at most this long, the part of its chunk with the most query terms."""
        if max_chars is not None and (
            isinstance(max_chars, bool) or not isinstance(max_chars, int) or max_chars < MIN_SNIPPET_CHARS
        ):
            raise RiftError(
                f"max_chars must be an integer of at least {MIN_SNIPPET_CHARS} (or null: each hit's whole chunk)"
            )
        engine = self.engine()
        outcome = engine.search(collection, query, k, mode, filters, group_by_document, **knobs)
        if max_chars is not None:
            from server.engine.snippets import clip_hits

            terms = engine.tokenizer.tokenize([query])[0]
            outcome.hits = clip_hits(outcome.hits, terms, engine.tokenizer.stem, max_chars)
        if mode != "hybrid":
            return SearchResponse(None, outcome, None, False)
        if outcome.vector_skipped:
            # Keyword results alone (the Chroma server could not be reached): nothing to compare, and logging
            # them would teach the miner that every keyword hit is a vector blind spot.
            return SearchResponse(None, outcome, not_compared(self.settings.blind_spot_depth), False)
        # Per document, also when the lists rank chunks: the summary and the miner read document ranks.
        vector, keyword = _per_document(outcome.vector), _per_document(outcome.keyword)
        top = self.settings.blind_spot_depth
        if outcome.keyword_terms == 0 or not (vector or keyword):
            # Nothing to compare (no keyword terms; a filter or collection with no match): not a disagreement.
            disagreement = not_compared(top)
        else:
            disagreement = summarize([d for d, _c, _s in vector], [d for d, _c, _s in keyword], k, top)
        query_id = new_query_id()
        logged = False
        if self.settings.log_queries and self.log is not None:
            started = time.perf_counter()
            logged = self.log.record(
                query_id,
                query,
                collection,
                outcome.model_version,
                mode,
                k,
                dict(filters) if filters else None,
                vector,
                keyword,
                list(dict.fromkeys(h.doc_id for h in outcome.hits)),
                disagreement.top,
                disagreement.overlap,
                disagreement.vector_blind_spots,
                disagreement.keyword_blind_spots,
                source,
                compared=disagreement.compared,
                collection_created=outcome.collection_created,
            )
            outcome.timings_ms["log_ms"] = (time.perf_counter() - started) * 1000
        # An id that names no record would only make feedback on it fail later.
        return SearchResponse(query_id if logged else None, outcome, disagreement, logged)

    def add_documents(
        self, collection: str, documents: Sequence[Any], progress: Callable[[int, int], None] | None = None
    ) -> list[Any]:
        return self.engine().add_documents(collection, documents, progress)

    def delete_documents(self, collection: str, ids: Sequence[str]) -> tuple[list[str], list[str]]:
        return self.engine().delete_documents(collection, ids)

    def delete_matching(self, collection: str, filters: Mapping[str, Any] | None) -> tuple[list[str], int]:
        """Delete up to max_documents_per_call documents whose metadata matches `filters`: (deleted ids,
        matching documents left for the next call)."""
        return self.engine().delete_matching(collection, filters, self.settings.max_documents_per_call)

    def update_metadata(
        self, collection: str, ids: Sequence[str], metadata: Mapping[str, Any] | None, remove: Sequence[str]
    ) -> list[Any]:
        from server.ingest.extract import synced_file_keys

        return self.engine().update_metadata(collection, ids, metadata, remove, synced_file_keys)

    def delete_collection(self, collection: str, removed: list[str] | None = None) -> Any:
        """Drop a collection from both indices and its searches from the query log; returns its info as it
        was (NotFoundError naming the collections that exist when it does not); `removed` gets its doc_ids."""
        engine = self.engine()
        engine.follow_others(force=True)  # (a shared Chroma server: a collection made elsewhere is known)
        engine.info(collection)  # (unknown: NotFoundError before the query log is touched)
        if self.log is None:
            info = engine.delete_collection(collection, removed)
        else:
            with self.log.forgetting(collection):  # also a search of it still running meanwhile
                info = engine.delete_collection(collection, removed)
        try:  # nor does a retrain's plan keep its texts
            self._forget_in_plans(collection)
        except Exception:  # the deletion is done: say so; the next start drops what is left (its plan check)
            log.exception("could not remove collection %r's texts from a retrain's plan", collection)
        return info

    def _deleted_elsewhere(self, collection: str) -> None:
        """Another process sharing the Chroma server deleted `collection`: its searches logged here, with their
        feedback, and its texts in a retrain's plan go too, as they do when it is deleted here."""
        if self.log is not None:
            with self.log.forgetting(collection):
                pass
        self._forget_in_plans(collection)

    def _documents_gone(self, collection: str, doc_ids: list[str]) -> None:
        """Documents of `collection` were deleted, or written again with other text (by any path: a tool, the
        CLI, a file sync's prune, or another process sharing the Chroma server, followed here): their texts
        leave the retrain plans (the engine logs a failure; the deletion stands). In a one-off CLI process too,
        which scrubs the plans an interrupted retrain left on disk."""
        if self.learning is not None:
            self.learning.forget_documents(collection, doc_ids)
        else:
            self._gone_while_opening.append((collection, list(doc_ids)))

    def _forget_in_plans(self, collection: str) -> None:
        """A deleted collection's texts leave the retrain plans (once learning starts, for one that the engine's
        start-up found deleted elsewhere)."""
        if self.learning is not None:
            self.learning.forget_collection(collection)
        else:
            self._deleted_while_opening.append(collection)

    def stats(self, collection: str | None = None) -> dict[str, Any]:
        engine = self.engine()
        # With a Chroma server that cannot be reached, this process's own figures, and why.
        unreachable = engine.follow_others()
        names = [collection] if collection is not None else engine.collection_names()
        collections = []
        for name in names:
            try:
                info = engine.info(name)
            except NotFoundError:
                if collection is not None:
                    raise
                continue  # deleted since the names were read
            collections.append(
                {
                    "name": info.name,
                    "documents": info.documents,
                    "chunks": info.chunks,
                    "model_version": info.model_version,
                    "keyword_rebuild_ms": round(info.keyword_rebuild_ms, 2),
                    "queries": self.log.stats(name) if self.log else None,
                    # (a shared Chroma server that lost its vectors, a model switched elsewhere: not healthy)
                    "problem": engine.shared.problem(name) if engine.shared is not None else None,
                }
            )
        return {
            "model": self.settings.model_location,
            "model_version": engine.embedder.version,
            "dimension": engine.embedder.dimension,
            "query_prompt": getattr(engine.embedder, "query_prompt", ""),
            "query_prompt_because": getattr(engine.embedder, "query_prompt_because", ""),
            "data_dir": str(self.settings.data_dir),
            "vector_backend": self.settings.vector_backend,
            "chroma_unreachable": unreachable,
            "index_bytes": _index_bytes(self.settings),
            "collections": collections,
            # (one collection asked for: its block, not the same query over the log again)
            "queries": collections[0]["queries"] if collection is not None else self.log.stats() if self.log else None,
            "logging_enabled": self.settings.log_queries,
            "load_seconds": round(self.load_seconds or 0.0, 2),
            "learning": self.learning.stats() if self.learning is not None else None,
        }


def _index_bytes(settings: Settings) -> dict[str, int]:
    def size(path: Any) -> int:
        # Files come and go under a walk (a model switch drops a collection's folder): a vanished one is 0 bytes.
        total = 0
        for root, _dirs, files in os.walk(path):
            for name in files:
                with contextlib.suppress(OSError):
                    total += os.lstat(os.path.join(root, name)).st_size
        if not total and not os.path.isdir(path):
            with contextlib.suppress(OSError):
                total = os.stat(path).st_size
        return total

    return {
        "chroma": size(settings.chroma_dir) if settings.vector_backend == "embedded" else 0,
        "state_sqlite": sum(
            size(settings.state_db.with_name(settings.state_db.name + s)) for s in ("", "-wal")
        ),
        "query_log_sqlite": sum(
            size(settings.log_db.with_name(settings.log_db.name + s)) for s in ("", "-wal")
        ),
    }


def _per_document(candidates: Sequence[Any]) -> list[tuple[str, str, float]]:
    """(doc, best chunk, score) in rank order, one entry per document; a list already grouped is unchanged."""
    out: dict[str, tuple[str, str, float]] = {}
    for c in candidates:
        out.setdefault(c.doc_id, (c.doc_id, c.chunk_id, c.score))
    return list(out.values())
