"""MCP resources: every stored document is the resource `rift://documents/{collection}/{doc_id}` (both parts
percent-encoded), so a client can list the documents, attach one to a conversation (Claude Desktop's attach
menu, VS Code's "MCP Resources") and complete a URI's parts as the user types. An agent's way in stays the
tools; resources are the user's."""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import json
from collections.abc import Callable
from typing import Any, TypeVar
from urllib.parse import quote

from mcp.server.context import ServerRequestContext
from mcp.server.mcpserver import Context
from mcp.server.mcpserver.exceptions import ToolError
from mcp.server.mcpserver.resources.templates import ResourceSecurity
from mcp.shared.exceptions import MCPError
from mcp.types import (
    INTERNAL_ERROR,
    INVALID_PARAMS,
    Annotations,
    CompleteRequestParams,
    CompleteResult,
    Completion,
    ListResourcesResult,
    PaginatedRequestParams,
    Resource,
    ResourceTemplateReference,
)

from server.engine.state_store import DocumentEntry
from server.ingest.manage import complete_doc_ids, document_page
from server.ingest.manage import get_document as fetch_document
from server.service import Rift
from tools._common import UNEXPECTED, call, rift_of

T = TypeVar("T")

DOCUMENT_TEMPLATE = "rift://documents/{collection}/{doc_id}"
MIME_TYPE = "text/plain"
LIST_PAGE = 100  # documents per resources/list page
COMPLETION_LIMIT = 100  # the most values the MCP spec lets one completion return
# Both parts are rift's names, never paths read from disk, and a doc_id may well look like one ("../a.md").
ANY_VALUE = ResourceSecurity(exempt_params={"collection", "doc_id"})


def document_uri(collection: str, doc_id: str) -> str:
    return f"rift://documents/{quote(collection, safe='')}/{quote(doc_id, safe='')}"


async def _call(uri: str, fn: Callable[..., T], *args: Any) -> T:
    """`call`, with its clear message as a JSON-RPC error: bad input (an unknown document or collection)
    is the request's fault, a bug is rift's."""
    try:
        return await call(fn, *args)
    except ToolError as exc:
        code = INTERNAL_ERROR if str(exc).startswith(UNEXPECTED) else INVALID_PARAMS
        raise MCPError(code=code, message=str(exc), data={"uri": uri}) from None


async def read_document(collection: str, doc_id: str, ctx: Context) -> str:
    """The document's whole text."""
    view = await _call(document_uri(collection, doc_id), fetch_document, rift_of(ctx), collection, doc_id)
    return view.text


def _encode_cursor(position: tuple[str, str]) -> str:
    return base64.urlsafe_b64encode(json.dumps(list(position)).encode()).decode()


def _decode_cursor(cursor: str) -> tuple[str, str]:
    try:
        position = json.loads(base64.urlsafe_b64decode(cursor.encode("ascii")))
    except (binascii.Error, UnicodeError, ValueError):
        position = None
    if not (isinstance(position, list) and len(position) == 2 and all(isinstance(p, str) for p in position)):
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
    engine = await _call("resources/list", rift.engine)
    page, following = await _call("resources/list", document_page, engine, start, LIST_PAGE)
    return ListResourcesResult(
        resources=[_resource(c, e) for c, e in page],
        next_cursor=_encode_cursor(following) if following else None,
    )


async def complete_document_uri(rift: Rift, params: CompleteRequestParams) -> CompleteResult:
    """Completes the template's `collection` (names) and `doc_id` (ids in the collection already given)."""
    none = CompleteResult(completion=Completion(values=[], total=0, has_more=False))
    ref, argument = params.ref, params.argument
    if not isinstance(ref, ResourceTemplateReference) or ref.uri != DOCUMENT_TEMPLATE:
        return none
    engine = await _call(ref.uri, rift.engine)
    if argument.name == "collection":
        names = [n for n in sorted(await _call(ref.uri, engine.collection_names)) if n.startswith(argument.value)]
        values, total = names[:COMPLETION_LIMIT], len(names)
    elif argument.name == "doc_id":
        collection = ((params.context and params.context.arguments) or {}).get("collection")
        if not collection:
            return none  # which collection's ids: the client completes `collection` first
        values, total = await _call(ref.uri, complete_doc_ids, engine, collection, argument.value, COMPLETION_LIMIT)
    else:
        return none
    return CompleteResult(completion=Completion(values=values, total=total, has_more=total > len(values)))


async def handle_completion(ctx: ServerRequestContext[Rift], params: CompleteRequestParams) -> CompleteResult:
    return await complete_document_uri(ctx.lifespan_context, params)


async def handle_list_resources(
    ctx: ServerRequestContext[Rift], params: PaginatedRequestParams | None
) -> ListResourcesResult:
    return await list_document_resources(ctx.lifespan_context, params.cursor if params else None)
