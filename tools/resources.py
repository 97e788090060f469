"""MCP resources: every stored document is the resource `rift://documents/{collection}/{doc_id}` (both parts
percent-encoded), so a client can list the documents, attach one to a conversation (Claude Desktop's attach
menu, VS Code's "MCP Resources") and complete a URI's parts as the user types. An agent's way in stays the
tools; resources are the user's."""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import json
import logging
import re
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from typing import Any
from urllib.parse import quote

import anyio
from mcp.server.context import ServerRequestContext
from mcp.server.mcpserver import Context
from mcp.server.mcpserver.resources.templates import ResourceSecurity
from mcp.shared.exceptions import MCPError
from mcp.types import (
    INVALID_PARAMS,
    Annotations,
    CompleteRequestParams,
    CompleteResult,
    Completion,
    ListResourcesResult,
    PaginatedRequestParams,
    PromptReference,
    Resource,
    ResourceTemplateReference,
)

from server.engine.state_store import DocumentEntry
from server.ingest.manage import collection_names, complete_doc_ids, resource_page
from server.ingest.manage import get_document as fetch_document
from server.service import Rift
from tools._common import call_request, lone_surrogate, rift_of
from tools.prompts import ASK, COLLECTION_ARGUMENT

log = logging.getLogger(__name__)

DOCUMENT_TEMPLATE = "rift://documents/{collection}/{doc_id}"
MIME_TYPE = "text/plain"
LIST_PAGE = 100  # documents per resources/list page
COMPLETION_LIMIT = 100  # the most values the MCP spec lets one completion return
MAX_CURSOR = 16_384  # characters; a real cursor (two names, JSON-escaped, base64) stays under 9,000
# Both parts are rift's names, never paths read from disk, and a doc_id may well look like one ("../a.md").
NOT_PATHS = ResourceSecurity(exempt_params={"collection", "doc_id"})


PERCENT_ESCAPES = re.compile(r"(?:%[0-9A-Fa-f]{2})+")


def document_uri(collection: str, doc_id: str) -> str:
    return f"rift://documents/{quote(collection, safe='')}/{quote(doc_id, safe='')}"


def percent_encoding_problem(uri: str) -> str | None:
    """What is wrong with a URI whose percent-escapes do not decode as UTF-8; None when they do. The SDK's
    template matching decodes them with errors="replace", so `caf%E9` named the document "caf\ufffd"."""
    for run in PERCENT_ESCAPES.finditer(uri):
        try:
            bytes.fromhex(run.group().replace("%", "")).decode("utf-8")
        except UnicodeDecodeError as exc:
            at = run.start() + 3 * exc.start
            return f"uri: percent-encoding is not UTF-8 ({uri[at : at + 3]} at character {at}: {exc.reason})"
    return None


async def read_document(collection: str, doc_id: str, ctx: Context) -> str:
    """The document's whole text."""
    uri = document_uri(collection, doc_id)
    rift = rift_of(ctx)
    await call_request(uri, rift.engine, server_side=True)
    view = await call_request(uri, fetch_document, rift, collection, doc_id)
    return view.text


def _encode_cursor(position: tuple[str, str]) -> str:
    return base64.urlsafe_b64encode(json.dumps(list(position)).encode()).decode()


def _decode_cursor(cursor: str) -> tuple[str, str]:
    position: Any = None
    if len(cursor) <= MAX_CURSOR:
        try:
            position = json.loads(base64.urlsafe_b64decode(cursor.encode("ascii")))
        except (binascii.Error, UnicodeError, ValueError, RecursionError):
            position = None
    if not (
        isinstance(position, list)
        and len(position) == 2
        and all(isinstance(p, str) and lone_surrogate(p, "") is None for p in position)
    ):
        raise MCPError(
            code=INVALID_PARAMS, message="invalid cursor: pass the nextCursor of the previous resources/list"
        )
    return position[0], position[1]


def _resource(collection: str, entry: DocumentEntry) -> Resource:
    title = entry.metadata.get("title")
    return Resource(
        uri=document_uri(collection, entry.doc_id),
        name=entry.doc_id,
        title=title if isinstance(title, str) and title.strip() else None,
        description=f"a document of rift collection {collection!r}",
        mime_type=MIME_TYPE,
        size=entry.size,
        annotations=Annotations(
            last_modified=dt.datetime.fromtimestamp(entry.updated_at, dt.UTC).isoformat(timespec="seconds")
        ),
    )


async def list_document_resources(rift: Rift, cursor: str | None) -> ListResourcesResult:
    start = _decode_cursor(cursor) if cursor is not None else None
    engine = await call_request("resources/list", rift.engine, server_side=True)
    page, following = await call_request("resources/list", resource_page, engine, start, LIST_PAGE)
    return ListResourcesResult(
        resources=[_resource(c, e) for c, e in page],
        next_cursor=_encode_cursor(following) if following else None,
    )


NO_COMPLETION = CompleteResult(completion=Completion(values=[], total=0, has_more=False))


def _completion(values: list[str], total: int) -> CompleteResult:
    return CompleteResult(completion=Completion(values=values, total=total, has_more=total > len(values)))


async def _complete_collection(label: str, engine: Any, prefix: str) -> CompleteResult:
    """The collection names that start with `prefix` (the resource template's and the ask prompt's argument)."""
    names = [n for n in await call_request(label, collection_names, engine) if n.startswith(prefix)]
    return _completion(names[:COMPLETION_LIMIT], len(names))


async def complete_document_uri(rift: Rift, params: CompleteRequestParams) -> CompleteResult:
    """Completes the template's `collection` (names) and `doc_id` (ids in the collection already given)."""
    ref, argument = params.ref, params.argument
    if not isinstance(ref, ResourceTemplateReference) or ref.uri != DOCUMENT_TEMPLATE:
        return NO_COMPLETION
    engine = await call_request(ref.uri, rift.engine, server_side=True)
    if argument.name == "collection":
        return await _complete_collection(ref.uri, engine, argument.value)
    if argument.name != "doc_id":
        return NO_COMPLETION
    collection = ((params.context and params.context.arguments) or {}).get("collection")
    if not collection:
        return NO_COMPLETION  # which collection's ids: the client completes `collection` first
    return _completion(
        *await call_request(ref.uri, complete_doc_ids, engine, collection, argument.value, COMPLETION_LIMIT)
    )


async def complete_prompt_argument(rift: Rift, params: CompleteRequestParams) -> CompleteResult:
    """Completes a prompt's `collection` argument with the collection names."""
    ref, argument = params.ref, params.argument
    if not isinstance(ref, PromptReference) or ref.name != ASK or argument.name != COLLECTION_ARGUMENT:
        return NO_COMPLETION
    label = f"prompt {ref.name}"
    return await _complete_collection(label, await call_request(label, rift.engine, server_side=True), argument.value)


async def handle_completion(ctx: ServerRequestContext[Rift], params: CompleteRequestParams) -> CompleteResult:
    if isinstance(params.ref, PromptReference):
        return await complete_prompt_argument(ctx.lifespan_context, params)
    return await complete_document_uri(ctx.lifespan_context, params)


async def handle_list_resources(
    ctx: ServerRequestContext[Rift], params: PaginatedRequestParams | None
) -> ListResourcesResult:
    return await list_document_resources(ctx.lifespan_context, params.cursor if params else None)


async def announce(ctx: Context, collection: str, changed: Iterable[str], list_changed: bool = False) -> None:
    """Tell clients that listen for resource changes (MCP `subscriptions/listen`) about a write this server
    made: that the list changed (also with no doc_ids when `list_changed`), then each changed or removed
    document's URI. Writes by another process sharing a Chroma server
    are not announced. Best effort: a write that succeeded never fails here."""
    changed = list(changed)
    if not (changed or list_changed):
        return
    # Shielded: a cancel that arrives once the write has committed must not cut the news of it short. The
    # list change goes first: a listener subscribed to more URIs than its stream buffers (1,024 events)
    # loses the rest of a large write's updates, and re-listens; it must not lose the list change too.
    with anyio.CancelScope(shield=True):
        try:
            await ctx.notify_resources_changed()
            for doc_id in changed:
                await ctx.notify_resource_updated(document_uri(collection, doc_id))
        except Exception:
            log.warning("announcing changed resources failed", exc_info=True)


@asynccontextmanager
async def announcing(ctx: Context, collection: str, expected: Iterable[str] = ()) -> AsyncIterator[list[str]]:
    """Around a write tool's work: announces the doc_ids the body adds to the yielded list. A cancel can
    arrive after the write committed (the worker thread finishes it, then the cancel is raised): the
    documents it `expected` to change, and a list change, are announced then, as they may have changed."""
    changed: list[str] = []
    try:
        yield changed
    except anyio.get_cancelled_exc_class():
        await announce(ctx, collection, expected, list_changed=True)
        raise
    await announce(ctx, collection, changed)
