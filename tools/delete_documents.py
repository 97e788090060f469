"""delete_documents: remove documents (all their chunks) from both indices."""

from __future__ import annotations

from typing import Annotated, Any

from mcp.server.mcpserver import Context
from mcp.types import ToolAnnotations
from pydantic import BaseModel, Field

from server.errors import RiftError
from server.service import Rift
from tools._common import COLLECTION_DESCRIPTION, FILTERS_DESCRIPTION, ToolSpec, call_write, rift_of
from tools.resources import announcing

# Deleting by id costs little per id (no embedding, unlike an add); the bound only caps one request's size.
MAX_DELETE_IDS = 10_000


class DeleteDocumentsResult(BaseModel):
    collection: str
    deleted: list[str]
    not_found: list[str] = Field(description="Ids asked for that were not stored (with ids).")
    remaining: int = Field(
        description="With filters: documents that still match, beyond those one call deletes (the setting "
        "max_documents_per_call, 1,000 by default); call again with the same filters. 0 with ids."
    )


async def delete_documents(
    ctx: Context,
    ids: Annotated[
        list[str] | None,
        Field(
            min_length=1,
            max_length=MAX_DELETE_IDS,
            description=f"Document ids to delete (or give filters), up to {MAX_DELETE_IDS:,} a call: a fixed "
            "limit, unlike a delete by filters, which the setting max_documents_per_call bounds.",
        ),
    ] = None,
    filters: Annotated[
        dict[str, Any] | None,
        Field(
            description=FILTERS_DESCRIPTION
            + " Deletes every document whose metadata matches (or give ids); at least one condition. It reads "
            "document metadata, as list_documents does: a chunk's heading, symbol or page is not, and a field no "
            "document has is refused."
        ),
    ] = None,
    collection: Annotated[str, Field(description=COLLECTION_DESCRIPTION)] = "default",
) -> DeleteDocumentsResult:
    async with announcing(ctx, collection, ids or []) as changed:
        deleted, missing, remaining = await call_write(_delete, rift_of(ctx), collection, ids, filters)
        changed += deleted
    return DeleteDocumentsResult(collection=collection, deleted=deleted, not_found=missing, remaining=remaining)


def _delete(
    rift: Rift, collection: str, ids: list[str] | None, filters: dict[str, Any] | None
) -> tuple[list[str], list[str], int]:
    if ids is not None and filters is not None:
        raise RiftError("give either ids or filters, not both")
    if ids is not None:
        return (*rift.delete_documents(collection, ids), 0)
    if filters is None:
        raise RiftError(
            "give ids (the documents to delete) or filters (delete the documents whose metadata matches)"
        )
    deleted, remaining = rift.delete_matching(collection, filters)
    return deleted, [], remaining


TOOL = ToolSpec(
    fn=delete_documents,
    name="delete_documents",
    title="Delete documents",
    description=(
        "Permanently remove documents, with every chunk, from both the vector and keyword indices: by id, or "
        "every document whose metadata matches filters (e.g. all files under a folder). Use it when stored "
        "knowledge is wrong or obsolete. Ids that do not exist are reported, not errors. To check what a filter "
        "matches first, call list_documents with it."
    ),
    annotations=ToolAnnotations(
        title="Delete documents",
        read_only_hint=False,
        destructive_hint=True,
        idempotent_hint=False,  # by filter, a repeat deletes the next page of matches
        open_world_hint=False,
    ),
)
