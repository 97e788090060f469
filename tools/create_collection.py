"""create_collection: an empty, named collection."""

from __future__ import annotations

from typing import Annotated

from mcp.server.mcpserver import Context
from mcp.types import ToolAnnotations
from pydantic import BaseModel, Field

from tools._common import COLLECTION_DESCRIPTION, ToolSpec, call, call_write, rift_of


class CreateCollectionResult(BaseModel):
    collection: str
    created: bool = Field(description="False when the collection already existed (nothing changed).")


async def create_collection(
    collection: Annotated[str, Field(description=COLLECTION_DESCRIPTION)], ctx: Context
) -> CreateCollectionResult:
    engine = await call(rift_of(ctx).engine)
    created = await call_write(engine.create_collection, collection)
    return CreateCollectionResult(collection=collection, created=created)


TOOL = ToolSpec(
    fn=create_collection,
    name="create_collection",
    title="Create collection",
    description=(
        "Create an empty collection, e.g. to keep one project's documents apart. Optional: add_documents and "
        "add_paths create the collection they write to. Creating one that exists changes nothing."
    ),
    annotations=ToolAnnotations(
        title="Create collection",
        read_only_hint=False,
        destructive_hint=False,
        idempotent_hint=True,
        open_world_hint=False,
    ),
)
