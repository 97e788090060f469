"""get_document: a stored document's full text and metadata."""

from __future__ import annotations

from typing import Annotated, Any

from mcp.server.mcpserver import Context
from mcp.types import ToolAnnotations
from pydantic import BaseModel, Field

from server.ingest.manage import caught_up
from server.ingest.manage import get_document as fetch_document
from tools._common import ToolSpec, call, rift_of


class DocumentOut(BaseModel):
    collection: str
    doc_id: str
    text: str = Field(
        description="The text from offset, at most max_chars characters."
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
        description="True when this read was recorded against query_id (only a document that search showed: a "
        "hit or a blind spot)."
    )
    warnings: list[str] = Field(
        default_factory=list,
        description="Why this may be out of date (Chroma server unreachable: this process's own copy answered) "
        "or why the read was not recorded (the search is no longer logged, or did not show this document); "
        "empty normally.",
    )


async def get_document(
    doc_id: Annotated[str, Field(min_length=1)],
    ctx: Context,
    collection: str = "default",
    query_id: Annotated[
        str | None,
        Field(
            description="The query_id of the hybrid_search that found it: tells rift the hit was useful."
        ),
    ] = None,
    offset: Annotated[int, Field(ge=0, description="First character to return.")] = 0,
    max_chars: Annotated[
        int | None,
        Field(
            ge=1,
            description="At most this many characters; null: the server's get_document_max_chars (100,000 "
            "unless set).",
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
        "Read a stored document's text and metadata by doc_id, e.g. the rest of a hybrid_search hit. Pass the "
        "search's query_id so rift learns which results were worth reading. A long document comes back a window "
        "at a time (truncated: true): call again with a later offset, or read just a part with offset/max_chars."
    ),
    annotations=ToolAnnotations(
        title="Get document",
        read_only_hint=True,
        destructive_hint=False,
        idempotent_hint=True,
        open_world_hint=False,
    ),
)
