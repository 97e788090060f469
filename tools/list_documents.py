"""list_documents: page through a collection's documents, optionally filtered by metadata."""

from __future__ import annotations

from typing import Annotated, Any

from mcp.server.mcpserver import Context
from mcp.types import ToolAnnotations
from pydantic import BaseModel, Field

from server.ingest.manage import MAX_LIST, caught_up
from server.ingest.manage import list_documents as list_docs
from tools._common import DOCUMENT_FILTERS_DESCRIPTION, STALE_WARNINGS, ToolSpec, call, rift_of


class DocumentEntry(BaseModel):
    doc_id: str
    metadata: dict[str, Any]


class ListDocumentsResult(BaseModel):
    collection: str
    total: int = Field(description="Documents matching the filters and id_prefix.")
    offset: int
    documents: list[DocumentEntry]
    next_offset: int | None = Field(description="Offset of the next page; null on the last page.")
    next_after: str | None = Field(description="Pass as `after` for the next page; null on the last page.")
    warnings: list[str] = Field(default_factory=list, description=STALE_WARNINGS)


async def list_documents(
    ctx: Context,
    collection: str = "default",
    filters: Annotated[dict[str, Any] | None, Field(description=DOCUMENT_FILTERS_DESCRIPTION)] = None,
    limit: Annotated[int, Field(ge=1, le=MAX_LIST, description="Documents per page.")] = 50,
    offset: Annotated[int, Field(ge=0, description="Documents to skip (past the last one: an empty page).")] = 0,
    after: Annotated[
        str | None,
        Field(
            description="Start after this doc_id (the previous page's next_after) instead of at an offset: it "
            "lists every document once even while documents are added or deleted between pages."
        ),
    ] = None,
    id_prefix: Annotated[
        str, Field(max_length=512, description="Only documents whose doc_id starts with this, e.g. 'notes/'.")
    ] = "",
) -> ListDocumentsResult:
    engine = await call(rift_of(ctx).engine)
    read = caught_up(list_docs)
    (total, page, offset), warnings = await call(
        read, engine, collection, filters, limit, offset, after, id_prefix
    )
    end = offset + len(page)
    more = end < total
    return ListDocumentsResult(
        collection=collection,
        total=total,
        offset=offset,
        documents=[DocumentEntry(doc_id=d, metadata=m) for d, m in page],
        next_offset=end if more else None,
        next_after=page[-1][0] if more and page else None,
        warnings=warnings,
    )


TOOL = ToolSpec(
    fn=list_documents,
    name="list_documents",
    title="List documents",
    description=(
        "List a collection's documents with their metadata, ordered by id, a page at a time. Filter by "
        "metadata to answer questions like 'which PDFs are stored' or 'what is under this folder'. Read one "
        "with get_document."
    ),
    annotations=ToolAnnotations(
        title="List documents",
        read_only_hint=True,
        destructive_hint=False,
        idempotent_hint=True,
        open_world_hint=False,
    ),
)
