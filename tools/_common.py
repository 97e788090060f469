"""What every tool handler shares: finding the app object, running engine work off the event loop, and
turning rift's own errors into clear `is_error` results."""

from __future__ import annotations

import dataclasses
import functools
import inspect
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

import anyio
from anyio.lowlevel import RunVar
from mcp.server.mcpserver import Context
from mcp.server.mcpserver.exceptions import ToolError
from mcp.shared.exceptions import MCPError
from mcp.types import INTERNAL_ERROR, INVALID_PARAMS, ToolAnnotations

from server.engine.vector_store import chroma_server_problem
from server.errors import RiftError, disk_full_problem
from server.service import Rift

log = logging.getLogger(__name__)
T = TypeVar("T")

# tools/list goes into every agent's context (tests/test_tool_schemas.py BUDGET): the name rule is published
# where a collection can be created; a tool that only reads or deletes one refuses a bad name in its error.
COLLECTION_DESCRIPTION = "Collection name: 1-63 letters, digits, '_' or '-', starting with a letter or digit."
# The grammar in full once, on hybrid_search; the document tools refer to it.
FILTERS_DESCRIPTION = (
    'Metadata filter: {field: value} (several fields: all must match); a value matches exactly and by type (1, "1" '
    "and true differ). Operators: $eq, $ne; $gt, $gte, $lt, $lte (numbers); $in, $nin (a list); $and, $or (a "
    'list of filters); {"source": {"$prefix": "/abs/folder"}} (files only). A document without a field matches '
    'only $ne and $nin on it. E.g. {"$or": [{"lang": "en"}, {"year": {"$gte": 2020}}]}. Files also carry name, '
    "file_type, size, mtime and title."
)
DOCUMENT_FILTERS_DESCRIPTION = (
    "Metadata filter as in hybrid_search, over document metadata (a chunk's heading, symbol or page is not)."
)
# Why a read that catches up with other processes (a shared Chroma server) may not have.
STALE_WARNINGS = (
    "Why this may be out of date (Chroma server unreachable: this process's own copy answered); empty normally."
)

# Writes take the engine's write lock one at a time, so a worker thread per queued write only waits; with
# anyio's shared pool (40 threads), 40 queued writes would leave no thread for a search. Writes get their own
# few threads and queue without one.
WRITE_THREADS = 2
_write_limiter: RunVar[anyio.CapacityLimiter] = RunVar("rift_write_limiter")


def write_limiter() -> anyio.CapacityLimiter:
    try:
        return _write_limiter.get()
    except LookupError:
        limiter = anyio.CapacityLimiter(WRITE_THREADS)
        _write_limiter.set(limiter)
        return limiter


@dataclass(frozen=True)
class ToolSpec:
    fn: Callable[..., Any]
    name: str
    title: str
    description: str
    annotations: ToolAnnotations
    # (argument, JSON Schema keyword, setting): a bound that is a setting, published as the server is configured
    # (server/app.py) rather than fixed in the annotation; the engine enforces it and names the setting.
    setting_bounds: tuple[tuple[str, str, str], ...] = ()
    # (argument, setting): an argument whose default is a setting; its description's "(default: setting X)"
    # gets the value this server is configured with (server/app.py), not the built-in one.
    setting_defaults: tuple[tuple[str, str], ...] = ()


def rift_of(ctx: Context) -> Rift:
    return ctx.request_context.lifespan_context


def lone_surrogate(value: Any, path: str, depth: int = 0) -> str | None:
    """The path of the first string under `value` that is not valid Unicode (a lone surrogate): such text can
    reach a tool in-process, and SQLite, Chroma and JSON cannot store it."""
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return path
        return None
    if depth > 64:
        return None  # the call's own depth limits answer for deeper input
    if isinstance(value, Mapping):
        items = [(f"{path}.{k}" if isinstance(k, str) else path, k, v) for k, v in value.items()]
        for where, key, item in items:
            found = lone_surrogate(key, f"{path} (a key)", depth + 1) or lone_surrogate(
                item, where, depth + 1
            )
            if found:
                return found
    elif isinstance(value, list | tuple):
        for i, item in enumerate(value):
            found = lone_surrogate(item, f"{path}[{i}]", depth + 1)
            if found:
                return found
    elif dataclasses.is_dataclass(value) and not isinstance(value, type):
        for f in dataclasses.fields(value):
            found = lone_surrogate(getattr(value, f.name), f"{path}.{f.name}", depth + 1)
            if found:
                return found
    return None


async def call(fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """Run blocking engine work in a worker thread; RiftError becomes a ToolError with its message."""
    return await _run(None, fn, *args, **kwargs)


async def call_write(fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """`call` for work that writes (takes the engine's write lock): it runs on the writes' own threads."""
    return await _run(write_limiter(), fn, *args, **kwargs)


async def _run(limiter: anyio.CapacityLimiter | None, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    problem = not_unicode(fn, args, kwargs)
    if problem is not None:
        raise ToolError(problem)
    try:
        return await anyio.to_thread.run_sync(functools.partial(fn, *args, **kwargs), limiter=limiter)
    except RiftError as exc:
        raise ToolError(str(exc)) from None
    except Exception as exc:
        raise ToolError(failure_message(fn, exc)) from None


def not_unicode(fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> str | None:
    """What names an argument holding a string that is not valid Unicode, if one does."""
    try:
        bound = inspect.signature(fn).bind_partial(*args, **kwargs).arguments
    except (TypeError, ValueError):
        bound = {f"argument {i}": a for i, a in enumerate(args)} | kwargs
    for name, value in bound.items():
        where = lone_surrogate(value, name)
        if where is not None:
            return f"{where} is not valid Unicode (it contains a lone surrogate)"
    return None


def failure_message(fn: Callable[..., Any], exc: Exception) -> str:
    """The message for an exception that is not rift's own: Chroma's, or a bug. Call it in the `except` block
    that caught `exc`: it logs the traceback being handled."""
    full = disk_full_problem(exc)
    if full is not None:  # not a bug: one line in the log, no traceback
        log.warning("%s failed: %s", getattr(fn, "__name__", "a tool"), full)
        return full
    if not from_vector_store(exc):
        # A bug, not bad input: name the cause rather than the SDK's bare "Error executing tool".
        log.exception("%s failed unexpectedly", getattr(fn, "__name__", "a tool"))
        return f"{UNEXPECTED}: {type(exc).__name__}: {exc} (a bug in rift; the server's log has the traceback)"
    # Chroma's and its HTTP client's errors: the cause, not the SDK's bare "Error executing tool".
    unreachable = chroma_server_problem(exc)
    if unreachable is not None:  # the network or the server, not a bug: one line in the log, no traceback
        log.warning("%s", unreachable)
        return unreachable
    log.exception("Chroma failed")
    hint = " (check that the Chroma server is up)" if _from_connection(exc) else ""
    return f"the vector store (Chroma) failed: {type(exc).__name__}: {exc}{hint}"


UNEXPECTED = "rift failed unexpectedly"


def _from_connection(exc: BaseException) -> bool:
    """An error of the connection to a Chroma server (vector_backend = "http"), not of Chroma itself."""
    module = type(exc).__module__ or ""
    return module.split(".")[0] in {"httpx", "httpcore"} or isinstance(exc, ConnectionError)


def from_vector_store(exc: BaseException) -> bool:
    return (type(exc).__module__ or "").split(".")[0] == "chromadb" or _from_connection(exc)


def progress_reporter(ctx: Context, label: str) -> Callable[..., None]:
    """A (done, total) callback usable from the worker thread that streams MCP progress notifications. It is
    also where a cancelled request stops its work: when the client cancels (notifications/cancelled), the
    next report raises in the worker thread. A write stops before it commits (nothing of that call is
    stored; add_paths keeps the files it finished), instead of running on and holding the write lock; it
    reports its last progress again right before committing, to look once more."""

    last: list[tuple[float, float]] = []

    def report(done: float, total: float, message: str | None = None) -> None:
        anyio.from_thread.check_cancelled()
        if last and last[0] == (done, total):
            return  # the same progress again is a cancellation checkpoint only (progress must increase)
        last[:] = [(done, total)]
        try:
            anyio.from_thread.run(ctx.report_progress, done, total, message or f"{label}: {done}/{total}")
        except Exception:  # progress is best effort; never fail the write because a client went away
            log.debug("progress notification failed", exc_info=True)

    return report


async def call_request(what: str, fn: Callable[..., T], *args: Any, server_side: bool = False) -> T:
    """Run engine work in a worker thread; its failure becomes a JSON-RPC error with a clear message, its data
    naming `what` was asked for (a URI, or the method). Bad input (an unknown document or collection) is the
    request's fault (-32602); a server that cannot answer yet (`server_side`: waiting for its Chroma server,
    or it failed to start; while the model loads, the call waits) or a failing vector store is the server's
    (-32603), so a client tries again rather than giving up on the request."""
    data = {"uri": what} if "://" in what else {"method": what}
    problem = not_unicode(fn, args, {})
    if problem is not None:
        raise MCPError(code=INVALID_PARAMS, message=problem, data=data)
    try:
        return await anyio.to_thread.run_sync(functools.partial(fn, *args))
    except RiftError as exc:
        raise MCPError(code=INTERNAL_ERROR if server_side else INVALID_PARAMS, message=str(exc), data=data) from None
    except Exception as exc:
        raise MCPError(code=INTERNAL_ERROR, message=failure_message(fn, exc), data=data) from None
