"""delete_documents: remove documents (all their chunks) from both indices."""

from __future__ import annotations

from typing import Annotated

from mcp.server.mcpserver import Context
from mcp.types import ToolAnnotations
from pydantic import BaseModel, Field

from tools._common import COLLECTION_DESCRIPTION, ToolSpec, call_write, rift_of


class DeleteDocumentsResult(BaseModel):
    collection: str
    deleted: list[str]
    not_found: list[str]


async def delete_documents(
    ids: Annotated[list[str], Field(min_length=1, max_length=10_000, description="Document ids to delete.")],
    ctx: Context,
    collection: Annotated[str, Field(description=COLLECTION_DESCRIPTION)] = "default",
) -> DeleteDocumentsResult:
    deleted, missing = await call_write(rift_of(ctx).delete_documents, collection, ids)
    return DeleteDocumentsResult(collection=collection, deleted=deleted, not_found=missing)


TOOL = ToolSpec(
    fn=delete_documents,
    name="delete_documents",
    title="Delete documents",
    description=(
        "Permanently remove documents by id, with every chunk, from both the vector and keyword indices. "
        "Use it when stored knowledge is wrong or obsolete. Ids that do not exist are reported, not errors."
    ),
    annotations=ToolAnnotations(
        title="Delete documents",
        read_only_hint=False,
        destructive_hint=True,
        idempotent_hint=True,
        open_world_hint=False,
    ),
)
