"""delete_collection: drop a collection with every document in it."""

from __future__ import annotations

from mcp.server.mcpserver import Context
from mcp.types import ToolAnnotations
from pydantic import BaseModel

from tools._common import ToolSpec, call_write, rift_of
from tools.resources import announcing


class DeleteCollectionResult(BaseModel):
    collection: str
    deleted_documents: int
    deleted_chunks: int


async def delete_collection(
    collection: str, ctx: Context
) -> DeleteCollectionResult:
    rift = rift_of(ctx)
    removed: list[str] = []  # its documents, read under the write lock that deletes them: all are announced
    async with announcing(ctx, collection, removed) as changed:
        info = await call_write(rift.delete_collection, collection, removed)
        changed += removed
    return DeleteCollectionResult(
        collection=collection, deleted_documents=info.documents, deleted_chunks=info.chunks
    )


TOOL = ToolSpec(
    fn=delete_collection,
    name="delete_collection",
    title="Delete collection",
    description=(
        "Permanently delete a collection: its documents and chunks in both indices, its logged searches and "
        "their feedback (a retrain training on them is cancelled). This cannot be undone; delete_documents "
        "removes only some documents. Only do this when the user asked for it."
    ),
    annotations=ToolAnnotations(
        title="Delete collection",
        read_only_hint=False,
        destructive_hint=True,
        idempotent_hint=False,
        open_world_hint=False,
    ),
)
