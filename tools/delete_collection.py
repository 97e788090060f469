"""delete_collection: drop a collection with every document in it."""

from __future__ import annotations

from typing import Annotated

from mcp.server.mcpserver import Context
from mcp.types import ToolAnnotations
from pydantic import BaseModel, Field

from server.service import Rift
from tools._common import COLLECTION_DESCRIPTION, ToolSpec, call, call_write, rift_of
from tools.resources import announcing


class DeleteCollectionResult(BaseModel):
    collection: str
    deleted_documents: int
    deleted_chunks: int


async def delete_collection(
    collection: Annotated[str, Field(description=COLLECTION_DESCRIPTION)], ctx: Context
) -> DeleteCollectionResult:
    rift = rift_of(ctx)
    stored = await call(_doc_ids, rift, collection)  # (for the announcement: gone once it is deleted)
    async with announcing(ctx, collection, stored) as changed:
        info = await call_write(rift.delete_collection, collection)
        changed += stored
    return DeleteCollectionResult(
        collection=collection, deleted_documents=info.documents, deleted_chunks=info.chunks
    )


TOOL = ToolSpec(
    fn=delete_collection,
    name="delete_collection",
    title="Delete collection",
    description=(
        "Permanently delete a collection with all of its documents and chunks from both indices, and its logged "
        "searches with their feedback. This cannot be undone; use delete_documents to remove only some documents. Only do this when the user asked for it."
    ),
    annotations=ToolAnnotations(
        title="Delete collection",
        read_only_hint=False,
        destructive_hint=True,
        idempotent_hint=False,
        open_world_hint=False,
    ),
)


def _doc_ids(rift: Rift, collection: str) -> list[str]:
    """The collection's doc_ids, or none when it does not exist (the delete then says so)."""
    engine = rift.engine()
    engine.follow_others()
    if engine.state.collection(collection) is None:
        return []
    return engine.state.doc_ids(collection)
