"""delete_documents: remove documents (all their chunks) from both indices."""

from __future__ import annotations

from typing import Annotated, Any

from mcp.server.mcpserver import Context
from mcp.types import ToolAnnotations
from pydantic import BaseModel, Field

from server.errors import RiftError
from server.service import Rift
from tools._common import DOCUMENT_FILTERS_DESCRIPTION, ToolSpec, call_write, rift_of
from tools.resources import announcing

# Deleting by id costs little per id (no embedding, unlike an add); the bound only caps one request's size.
MAX_DELETE_IDS = 10_000


class DeleteDocumentsResult(BaseModel):
    collection: str
    deleted: list[str]
    not_found: list[str] = Field(description="Ids asked for that were not stored (with ids).")
    remaining: int = Field(
        description="With filters: matches left over (one call deletes at most the setting "
        "max_documents_per_call); call again with the same filters. 0 with ids."
    )


async def delete_documents(
    ctx: Context,
    ids: Annotated[
        list[str] | None,
        Field(
            min_length=1,
            max_length=MAX_DELETE_IDS,
            description="Ids to delete (or give filters).",
        ),
    ] = None,
    filters: Annotated[
        dict[str, Any] | None,
        Field(
            description=DOCUMENT_FILTERS_DESCRIPTION
            + " Deletes every match (or give ids); at least one condition; a field no document has is refused."
        ),
    ] = None,
    collection: str = "default",
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
        "Permanently remove documents with every chunk from both indices: by id, or all whose metadata matches "
        "filters (e.g. the files under a folder). Use it when stored knowledge is wrong or obsolete. Unknown ids "
        "are reported in not_found, not errors. list_documents shows what a filter matches first."
    ),
    annotations=ToolAnnotations(
        title="Delete documents",
        read_only_hint=False,
        destructive_hint=True,
        idempotent_hint=False,  # by filter, a repeat deletes the next page of matches
        open_world_hint=False,
    ),
)
