"""What every tool handler shares: finding the app object, running engine work off the event loop, and
turning rift's own errors into clear `is_error` results."""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import anyio
from mcp.server.mcpserver import Context
from mcp.server.mcpserver.exceptions import ToolError
from mcp.types import ToolAnnotations

from server.errors import RiftError
from server.service import Rift

log = logging.getLogger(__name__)
T = TypeVar("T")

COLLECTION_DESCRIPTION = "Collection name: 1-63 letters, digits, '_' or '-'."


@dataclass(frozen=True)
class ToolSpec:
    fn: Callable[..., Any]
    name: str
    title: str
    description: str
    annotations: ToolAnnotations


def rift_of(ctx: Context) -> Rift:
    return ctx.request_context.lifespan_context


async def call(fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """Run blocking engine work in a worker thread; RiftError becomes a ToolError with its message."""
    try:
        return await anyio.to_thread.run_sync(functools.partial(fn, *args, **kwargs))
    except RiftError as exc:
        raise ToolError(str(exc)) from None


def progress_reporter(ctx: Context, label: str) -> Callable[[int, int], None]:
    """A (done, total) callback usable from the worker thread that streams MCP progress notifications."""

    def report(done: int, total: int) -> None:
        try:
            anyio.from_thread.run(ctx.report_progress, done, total, f"{label}: {done}/{total}")
        except Exception:  # progress is best effort; never fail the write because a client went away
            log.debug("progress notification failed", exc_info=True)

    return report
