"""get_document: a stored document's full text and metadata."""

from __future__ import annotations

from typing import Annotated, Any

from mcp.server.mcpserver import Context
from mcp.types import ToolAnnotations
from pydantic import BaseModel, Field

from server.ingest.manage import caught_up
from server.ingest.manage import get_document as fetch_document
from tools._common import COLLECTION_DESCRIPTION, ToolSpec, call, rift_of


class DocumentOut(BaseModel):
    collection: str
    doc_id: str
    text: str = Field(
        description="The document's text, or the window offset .. offset + max_chars of it (by default at most the "
        "server's get_document_max_chars: truncated says whether more follows)."
    )
    metadata: dict[str, Any]
    chunks: int
    updated_at: float = Field(description="When it was last written (Unix seconds).")
    total_chars: int
    offset: int
    truncated: bool = Field(
        description="True when text stops before the end; call again with a later offset."
    )
    fetch_recorded: bool = Field(
        description="True when this read was recorded against query_id (only a document that search's response named: a hit or a listed blind spot)."
    )
    warnings: list[str] = Field(
        default_factory=list,
        description="Why this may be out of date (the Chroma server could not be reached, so this process's own "
        "copy answered, without other processes' writes since), or why the read was not recorded against "
        "query_id (the search is no longer in the query log, or did not show this document); empty normally.",
    )


async def get_document(
    doc_id: Annotated[str, Field(min_length=1, description="The doc_id of a search hit or listed document.")],
    ctx: Context,
    collection: Annotated[str, Field(description=COLLECTION_DESCRIPTION)] = "default",
    query_id: Annotated[
        str | None,
        Field(
            description="The query_id of the hybrid_search that found this document: it tells rift the hit "
            "was useful."
        ),
    ] = None,
    offset: Annotated[int, Field(ge=0, description="First character to return.")] = 0,
    max_chars: Annotated[
        int | None,
        Field(
            ge=1,
            description="Return at most this many characters; null for the server's default (its "
            "get_document_max_chars, 100,000 unless set; truncated says whether more follows).",
        ),
    ] = None,
) -> DocumentOut:
    rift = rift_of(ctx)
    if max_chars is None:
        max_chars = rift.settings.get_document_max_chars or None
    read = caught_up(fetch_document)
    view, warnings = await call(read, rift, collection, doc_id, query_id, offset, max_chars)
    return DocumentOut(**{**view.__dict__, "warnings": [*view.warnings, *warnings]})


TOOL = ToolSpec(
    fn=get_document,
    name="get_document",
    title="Get document",
    description=(
        "Read a whole stored document (full text and metadata) by its doc_id, typically after hybrid_search "
        "returned one of its chunks and you need the rest. Pass the search's query_id so rift can learn "
        "which results were worth reading. A very long document comes back a window at a time (truncated: "
        "true): call again with a later offset, or use offset/max_chars to read just the part you need."
    ),
    annotations=ToolAnnotations(
        title="Get document",
        read_only_hint=True,
        destructive_hint=False,
        idempotent_hint=True,
        open_world_hint=False,
    ),
)
