"""Giving an SQLite file's free pages back to the disk, for rift's state and its query log.

Deleted rows leave free pages that SQLite reuses but never returns: deleting a 1,500-document collection left
state.sqlite at 31.6 MB with 99.8 % of its pages free, and a log pruned to a lower log_max_queries stayed 45 MB
with 99.9 % free, for good. A new file is made with incremental auto-vacuum, and once free pages are a quarter
of the file and at least 1 MB they go back (`reclaim`); a small delete, or a rewrite whose new rows fill the
pages again, leaves them. A file from before (no auto-vacuum) is rewritten once by a VACUUM at a start, which
also converts it. Either is one write transaction through the WAL, so a crash leaves the file as it was or as
after, never between; a failure (too little disk, another process's lock past the busy timeout) is logged and
the file works as before.
"""

from __future__ import annotations

import logging
import shutil
import sqlite3
import time
from contextlib import suppress
from pathlib import Path

log = logging.getLogger(__name__)

# What a WAL file is truncated back to after a checkpoint (journal_size_limit): a large delete, or a burst of
# writes while readers hold the WAL, grows it, and without a limit it stays that large until the last close.
WAL_LIMIT_BYTES = 64 * 1024 * 1024
RECLAIM_FRACTION = 0.25
RECLAIM_MIN_BYTES = 1 << 20
INCREMENTAL = 2  # PRAGMA auto_vacuum's value for incremental (0: none, 1: full, which rift never sets)


def incremental_if_new(conn: sqlite3.Connection) -> None:
    """Make a new (empty) file incremental. Only before its first table: on an existing file the pragma waits
    for another process's write lock, and takes effect only with a VACUUM anyway."""
    if conn.execute("PRAGMA page_count").fetchone()[0] == 0:
        conn.execute(f"PRAGMA auto_vacuum={INCREMENTAL}")


def reclaim(conn: sqlite3.Connection, path: Path, what: str, starting: bool = False) -> None:
    """Give `conn`'s free pages back to the disk once they are a large part of its file (`path`; `what` names it
    in the log). The caller holds whatever serializes its use of `conn`; nothing happens inside a transaction
    (VACUUM cannot run in one, and executescript would commit it). A file without auto-vacuum is rewritten only
    `starting` up: while serving, a VACUUM would hold the file for as long as a rewrite takes."""
    if conn.in_transaction:
        return
    try:
        (free,) = conn.execute("PRAGMA freelist_count").fetchone()
        (pages,) = conn.execute("PRAGMA page_count").fetchone()
        (page_size,) = conn.execute("PRAGMA page_size").fetchone()
        if free < pages * RECLAIM_FRACTION or free * page_size < RECLAIM_MIN_BYTES:
            return
        (mode,) = conn.execute("PRAGMA auto_vacuum").fetchone()
        if mode not in (0, INCREMENTAL) or (mode == 0 and not starting):
            return
        live = (pages - free) * page_size
        # The incremental vacuum writes the live pages it moves (at most the free ones) to the WAL; VACUUM
        # copies every live page to a temporary database, then writes them all to the WAL.
        need = min(live, free * page_size) if mode == INCREMENTAL else 2 * live
        room = shutil.disk_usage(path.parent).free
        if room < need + RECLAIM_MIN_BYTES:
            log.warning(
                "%s %s: %d MB of its %d MB are free pages, but the disk has %d MB free, too little for the %s "
                "that gives them back; it is tried again %s",
                what, path, free * page_size >> 20, pages * page_size >> 20, room >> 20,
                "incremental vacuum" if mode == INCREMENTAL else "VACUUM",
                "after the next large delete or at the next start" if mode == INCREMENTAL else "at the next start",
            )
            return
        started = time.perf_counter()
        shrink_wal(conn)  # (what the delete wrote goes to the file: what follows reuses the WAL from its start)
        if mode == INCREMENTAL:
            conn.executescript("PRAGMA incremental_vacuum")  # (execute() runs one step: frees one page)
        else:
            log.info(
                "%s %s: %d MB of its %d MB are free pages; rewriting it once (VACUUM) to give them back to the "
                "disk and free later deletes' pages as they happen",
                what, path, free * page_size >> 20, pages * page_size >> 20,
            )
            conn.execute(f"PRAGMA auto_vacuum={INCREMENTAL}")  # (takes effect with the VACUUM)
            conn.execute("VACUUM")
        shrink_wal(conn)
        (after,) = conn.execute("PRAGMA page_count").fetchone()
        log.info(
            "%s %s: gave %d MB of free pages back to the disk in %.1f s",
            what, path, (pages - after) * page_size >> 20, time.perf_counter() - started,
        )
    except (sqlite3.Error, OSError) as exc:
        log.warning("%s %s: could not give its free pages back to the disk: %s", what, path, exc)
    finally:
        if conn.in_transaction:  # (a statement that failed part way)
            with suppress(sqlite3.Error):
                conn.execute("ROLLBACK")


def shrink_wal(conn: sqlite3.Connection) -> None:
    """Checkpoint the WAL into the file (which shrinks to the pages kept) and truncate it, without waiting: a
    reader in another process (`rift export`) keeps the rest in the WAL until a later checkpoint, and
    journal_size_limit then bounds what stays."""
    (timeout,) = conn.execute("PRAGMA busy_timeout").fetchone()
    conn.execute("PRAGMA busy_timeout=0")
    try:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
    finally:
        conn.execute(f"PRAGMA busy_timeout={int(timeout)}")
