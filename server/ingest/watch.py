"""`rift watch`: keep a collection in sync with a folder. watchfiles (Rust `notify`) reports changes, grouped
over a debounce window; each group triggers one sync of the whole folder with pruning, which is cheap because
files whose size and mtime are unchanged are not read again."""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from server.errors import RiftError, user_message
from server.ingest.security import PathPolicy
from server.ingest.sync import SETTLING, SETTLING_S, SyncReport, sync_paths
from server.ingest.walker import VCS_DIRS

log = logging.getLogger(__name__)


def _not_its_interrupt_notice(record: logging.LogRecord) -> bool:
    """watchfiles logs a WARNING when Ctrl-C stops its wait; Ctrl-C is how a watch is meant to end."""
    return not str(record.msg).startswith("KeyboardInterrupt caught")


logging.getLogger("watchfiles.main").addFilter(_not_its_interrupt_notice)


FALLBACK_SYNC_S = 10  # how often a folder whose OS watch fails is synced instead


def _broken_link(path: str) -> bool:
    return os.path.islink(path) and not os.path.exists(path)


def watch_folder(
    engine: Any,
    folder: Path | str,
    collection: str,
    *,
    policy: PathPolicy | None = None,
    glob: str | Sequence[str] | None = None,
    prune: bool = True,
    debounce_ms: int = 1000,
    force_polling: bool | None = None,
    ignore_under: Sequence[Path] = (),
    stop_event: threading.Event | None = None,
    on_sync: Callable[[SyncReport], None] | None = None,
) -> None:
    """Sync once, then after every debounced group of changes, until `stop_event` is set (or Ctrl-C), or the
    rift `engine` belongs to is closed (a library's watch thread left running: it says so and ends).
    Changes under `ignore_under` (e.g. rift's own data dir) are not reacted to."""
    from watchfiles import Change, DefaultFilter, watch

    policy = policy or PathPolicy.unrestricted()
    # The path as given, which a symlink may lead elsewhere later ("current" -> releases/v2): its identity is
    # checked at every wake-up, and each sync names it, so the old target's documents are pruned.
    given = os.path.abspath(os.path.expanduser(str(folder)))
    folder = policy.check(given, "path")
    if not folder.is_dir():
        raise NotADirectoryError(f"{folder} is not a folder")
    # Only the folders the walk itself leaves out: watchfiles' defaults also skip node_modules, .venv, .tox
    # and the like, whose files a sync does ingest unless .gitignore excludes them; a change there must sync.
    default = DefaultFilter(ignore_dirs=tuple(sorted(VCS_DIRS)))
    skip = tuple(str(p.resolve()) for p in ignore_under)

    def within() -> str:
        """The folder's path with a separator: what its files' paths start with (of where `given` leads now)."""
        return str(folder).rstrip(os.sep) + os.sep

    def through_linked_folder(path: str) -> bool:
        """Whether `path` lies in a symlinked folder that leads outside the watched one: the OS watch follows such
        links, a sync does not ("symlinked folder not followed"), so a change there (a linked build tree) changes
        nothing. (A link to a folder inside it stays: the OS may report a change there through the link.)"""
        inside = within()
        if not path.startswith(inside):
            return False
        at = str(folder)
        for part in path[len(inside) :].split(os.sep)[:-1]:
            at = os.path.join(at, part)
            if os.path.islink(at):
                return not (os.path.realpath(at) + os.sep).startswith(inside)
        return False

    def relevant(change: Any, path: str) -> bool:
        # Under a skipped folder, not merely sharing its name's prefix ("data" vs "data-notes").
        return (
            default(change, path)
            and not any(path == s or path.startswith(s + os.sep) for s in skip)
            and not through_linked_folder(path)
        )

    # Files outside the folder that its symlinks lead to (a broken link's too: its file may come back), from the
    # last sync that ran: watched beside the folder, so a change there syncs too. The OS watch of a file ends
    # with that file, so the watch starts again whenever one of them is replaced (an editor's save), goes or
    # comes back, which is checked on the files themselves, not on a sync's report (a sync may fail).
    linked: frozenset[str] = frozenset()
    settle_at: float | None = None  # when to sync again for a file caught mid-save (sync.SETTLING), if any
    watch_links = True  # off once the OS refuses more watches (its per-user limit): the folder is still watched

    def linked_files(report: SyncReport) -> frozenset[str]:
        inside = within()
        out = set()
        for f in report.files:
            if f.status != "removed" and not f.path.startswith(inside):  # (one skipped, empty say, may be fixed)
                out.add(f.path)
            elif f.status == "skipped" and f.reason == "broken or looping symlink" and f.path.startswith(inside):
                target = os.path.realpath(f.path)
                if not target.startswith(inside):
                    out.add(target)
        return frozenset(out)

    def watchable(path: str) -> bool:
        """The OS watch takes UTF-8 paths only: a file named otherwise is synced with the folder, not watched."""
        try:
            path.encode("utf-8")
        except UnicodeEncodeError:
            return False
        return True

    def on_disk(paths: frozenset[str]) -> frozenset[tuple[str, int]]:
        """The files among `paths` that exist, with their inode."""
        out = set()
        for path in paths:
            try:
                if os.path.isfile(path):
                    out.add((path, os.stat(path).st_ino))
            except OSError:
                continue
        return frozenset(out)

    def rift_closed() -> bool:
        """Whether the rift this watch syncs into was closed (its engine's stores are): the watch then ends,
        saying so once, rather than failing every later sync with a closed database's traceback."""
        if not engine.closed:
            return False
        log.warning("the rift this watch syncs into was closed: stopping the watch of %s", folder)
        return True

    def sync() -> bool:
        """One sync of the folder; False when the rift was closed (before it, or under it): the watch ends."""
        nonlocal linked
        if rift_closed():
            return False
        try:
            report = sync_paths(engine, collection, [given], policy, glob=glob, prune=prune)
        except Exception as exc:  # one failed sync (a full disk, a bug on an odd file) must not end the watch
            if rift_closed():  # (closed while it ran: its error is the closed store's)
                return False
            from server.engine.vector_store import chroma_server_problem

            problem = user_message(exc) or chroma_server_problem(exc, then="the next change retries")
            if problem is None:  # a bug: its traceback
                log.exception("sync of %s failed; watching on, the next change retries", folder)
            else:
                log.error("sync of %s failed: %s; watching on, the next change retries", folder, problem)
            return True
        linked = frozenset(filter(watchable, linked_files(report))) if watch_links else frozenset()
        nonlocal settle_at
        settling = any(f.status == "skipped" and f.reason == SETTLING for f in report.files)
        settle_at = time.monotonic() + SETTLING_S if settling else None
        if on_sync is not None:
            on_sync(report)
        return True

    # A folder that is a mount point (a disk, a network share) and then is not is unmounted, not replaced: the
    # empty folder left under it must not prune the collection.
    # (Sticky: a watch that starts before the disk is mounted must not take its later unmount for a replacement.)
    # (Of where `given` leads: a symlink is never a mount point itself.)
    mount_point = os.path.ismount(os.path.realpath(given))

    def identity() -> tuple[int, int] | None:
        nonlocal mount_point
        mounted = os.path.ismount(os.path.realpath(given))  # (once per wake-up: it is every 500 ms)
        mount_point = mount_point or mounted
        try:
            st = os.stat(given)
        except OSError:
            return None
        if not os.path.isdir(given) or (mount_point and not mounted):
            return None
        return (st.st_dev, st.st_ino)

    def stopped() -> bool:
        return stop_event is not None and stop_event.is_set()

    def wait_while(condition: Callable[[], bool]) -> bool:
        """Check `condition` every second until it is false (True) or the watch is stopped, or its rift closed
        (False)."""
        while condition():
            if rift_closed():
                return False
            if stop_event is not None:
                if stop_event.wait(1.0):
                    return False
            else:
                try:
                    time.sleep(1.0)
                except KeyboardInterrupt:
                    return False
        return True

    # The OS watch is on the folder itself: once it is deleted (or replaced, e.g. by a tool that writes a new
    # copy and renames it over) no change under it is reported again. So the folder's identity is checked at
    # every wake-up (at least every rust_timeout), and a new watch starts when it changes. A vanished folder
    # is not pruned: an unmounted disk or a checkout in progress must not empty the collection.
    while not stopped():
        if rift_closed():
            return
        watching = identity()
        if watching is None:
            log.warning(
                "%s is %s; its documents are kept; watching for it to come back",
                folder,
                "no longer mounted" if mount_point and os.path.isdir(given) else "gone",
            )
            if not wait_while(lambda: identity() is None):
                return
            log.warning("%s is back; syncing it", folder)
            continue
        try:
            folder = policy.check(given, "path")  # where it leads now
        except RiftError as exc:  # (e.g. a link switched to somewhere outside the allowed roots)
            log.warning("%s cannot be watched now: %s; waiting for it to change", given, exc)
            if not wait_while(lambda was=watching: identity() == was):
                return
            continue
        started = False
        replaced = False
        relinked = False
        paths, watched = linked, on_disk(linked)
        missing = paths - {path for path, _ in watched}  # (no event says one came back: looked for at wake-ups)
        # yield_on_timeout: the first (empty) yield comes once the watcher is live, so the initial sync cannot
        # miss a change made while it runs; later empty yields only let stop_event be checked.
        # Every event is filtered here, not by the watch: a filtered event still keeps the watch's timeout from
        # coming, and the first yield, on which the first sync runs, is that timeout's (polling reports a broken
        # symlink, or an editor's lock link such as ".#notes.md", as deleted at every scan).
        events = watch(
            folder,
            *sorted(path for path, _ in watched),
            watch_filter=None,
            debounce=debounce_ms,
            stop_event=stop_event,
            rust_timeout=500,
            yield_on_timeout=True,
            force_polling=force_polling,
            raise_interrupt=False,
        )
        failed: Exception | None = None
        while True:
            try:
                raw = next(events)
            except StopIteration:
                break
            except (OSError, RuntimeError) as exc:  # the OS watch (watchfiles' own errors are RuntimeErrors)
                failed = exc
                break
            if rift_closed():  # (checked at every wake-up: a closed rift ends the watch without a change)
                return
            changes = {
                (c, path)
                for c, path in raw
                if relevant(c, path) and not (c == Change.deleted and _broken_link(path))
            }
            # A deleted and re-created folder or file may get its old inode back, but its OS watch has ended.
            gone = {path for change, path in changes if change == Change.deleted}
            if identity() != watching or str(folder) in gone:
                replaced = True
                break
            if not started or changes or (settle_at is not None and time.monotonic() >= settle_at):
                log.info("syncing %s (%d changes)", folder, len(changes))
                if not sync():
                    return
                started = True
                relinked = linked != paths or on_disk(paths) != watched or bool(gone & paths)
            else:
                relinked = any(os.path.isfile(path) for path in missing)
            if relinked:
                break
        if failed is not None:
            if identity() != watching:
                continue  # the folder went or changed meanwhile: the loop sees to it
            if watched and isinstance(failed, FileNotFoundError):
                log.debug("a file watched beside %s went as the watch started; starting again", folder)
                continue
            if watched and isinstance(failed, OSError) and not started:
                log.warning("cannot watch the files symlinks lead to outside %s (%s); watching the folder", folder, failed)
                watch_links, linked = False, frozenset()
                continue
            # The OS watch itself fails (a symlink loop met by polling, the OS limit on watches): sync on a timer.
            log.warning("watching %s failed (%s); syncing it every %d s instead", folder, failed, FALLBACK_SYNC_S)
            if not sync():
                return
            if not wait_while(lambda until=time.monotonic() + FALLBACK_SYNC_S: time.monotonic() < until):  # noqa: B008
                return
            continue
        if not (replaced or relinked):
            return  # stopped: stop_event or Ctrl-C
