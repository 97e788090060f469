"""list_documents: page through a collection's documents, optionally filtered by metadata."""

from __future__ import annotations

from typing import Annotated, Any

from mcp.server.mcpserver import Context
from mcp.types import ToolAnnotations
from pydantic import BaseModel, Field

from server.ingest.manage import MAX_LIST
from server.ingest.manage import list_documents as list_docs
from tools._common import COLLECTION_DESCRIPTION, ToolSpec, call, rift_of


class DocumentEntry(BaseModel):
    doc_id: str
    metadata: dict[str, Any]


class ListDocumentsResult(BaseModel):
    collection: str
    total: int = Field(description="Documents matching the filters.")
    offset: int
    documents: list[DocumentEntry]
    next_offset: int | None = Field(description="Offset of the next page; null on the last page.")


async def list_documents(
    ctx: Context,
    collection: Annotated[str, Field(description=COLLECTION_DESCRIPTION)] = "default",
    filters: Annotated[
        dict[str, Any] | None,
        Field(
            description='Metadata filter, same grammar as hybrid_search: {"file_type": "markdown"}, '
            '{"source": {"$prefix": "/abs/folder"}}, {"mtime": {"$gte": 1700000000}}, {"$or": [...]}.'
        ),
    ] = None,
    limit: Annotated[int, Field(ge=1, le=MAX_LIST, description="Documents per page.")] = 50,
    offset: Annotated[int, Field(ge=0, description="Documents to skip.")] = 0,
) -> ListDocumentsResult:
    engine = await call(rift_of(ctx).engine)
    total, page = await call(list_docs, engine, collection, filters, limit, offset)
    end = offset + len(page)
    return ListDocumentsResult(
        collection=collection,
        total=total,
        offset=offset,
        documents=[DocumentEntry(doc_id=d, metadata=m) for d, m in page],
        next_offset=end if end < total else None,
    )


TOOL = ToolSpec(
    fn=list_documents,
    name="list_documents",
    title="List documents",
    description=(
        "List the documents stored in a collection with their metadata (for files: source path, file_type, "
        "size, mtime, title), ordered by id, a page at a time. Filter by metadata to answer questions like "
        "'which PDFs are stored' or 'what is indexed under this folder'. Use get_document to read one."
    ),
    annotations=ToolAnnotations(
        title="List documents",
        read_only_hint=True,
        destructive_hint=False,
        idempotent_hint=True,
        open_world_hint=False,
    ),
)
