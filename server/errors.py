"""Errors whose message is meant for the caller (an agent or a person), not a traceback."""

from __future__ import annotations

import errno


class RiftError(ValueError):
    """Bad input or a state the caller can fix; the message names what is wrong."""


class NotFoundError(RiftError):
    """A named collection, document or query does not exist."""


class ShuttingDown(RiftError):
    """rift was closed (a shutdown: the client's EOF, SIGTERM, Ctrl-C, `Rift.close`) while a write was in
    flight: the write stopped at a safe point, and nothing of it is stored (what it had put into Chroma is
    removed by the next start)."""

    def __init__(
        self,
        message: str = "rift was shut down while this call ran: nothing of it is stored; send it again once rift "
        "runs again",
    ) -> None:
        super().__init__(message)


class DataDirLockedError(RuntimeError):
    """Another rift process holds the data directory."""


# What SQLite, Chroma (which wraps SQLite's errors in its own) and the OS say when a disk is full.
_FULL_MARKERS = ("database or disk is full", "no space left on device", "disk quota exceeded")


def disk_full_problem(exc: BaseException) -> str | None:
    """One line for an error caused by a full disk (in `exc` or what it was raised from), else None. Chroma
    reports it as "Error in compaction", SQLite as "database or disk is full": neither names the disk."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        full = isinstance(current, OSError) and current.errno in (errno.ENOSPC, errno.EDQUOT)
        # The words count only from the storage layers (a bug's message may quote a user's text).
        storage = isinstance(current, OSError) or type(current).__module__.split(".")[0] in ("sqlite3", "chromadb")
        if full or (storage and any(marker in str(current).lower() for marker in _FULL_MARKERS)):
            return (
                "the disk holding rift's data (or the Chroma server's) is full: free some space and try again "
                f"({type(current).__name__}: {current})"
            )
        current = current.__cause__ or current.__context__
    return None


def user_message(exc: BaseException) -> str | None:
    """The one line to show for `exc` when it is meant for the user (rift's own errors, a full disk), else None."""
    return str(exc) if isinstance(exc, RiftError) else disk_full_problem(exc)
