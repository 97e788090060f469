"""list_collections: the collections that exist, with their sizes."""

from __future__ import annotations

from mcp.server.mcpserver import Context
from mcp.types import ToolAnnotations
from pydantic import BaseModel, Field

from server.ingest.manage import caught_up
from server.ingest.manage import list_collections as catalog
from tools._common import STALE_WARNINGS, ToolSpec, call, rift_of


class CollectionOut(BaseModel):
    name: str
    documents: int
    chunks: int
    model_version: str


class ListCollectionsResult(BaseModel):
    collections: list[CollectionOut]
    warnings: list[str] = Field(default_factory=list, description=STALE_WARNINGS)


async def list_collections(ctx: Context) -> ListCollectionsResult:
    engine = await call(rift_of(ctx).engine)
    listed, warnings = await call(caught_up(catalog), engine)
    return ListCollectionsResult(collections=[CollectionOut(**c) for c in listed], warnings=warnings)


TOOL = ToolSpec(
    fn=list_collections,
    name="list_collections",
    title="List collections",
    description=(
        "List every collection with its document and chunk counts and the embedding model version. Use it "
        "to see where knowledge is stored before searching or adding."
    ),
    annotations=ToolAnnotations(
        title="List collections",
        read_only_hint=True,
        destructive_hint=False,
        idempotent_hint=True,
        open_world_hint=False,
    ),
)
