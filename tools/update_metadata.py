"""update_metadata: change stored documents' metadata without sending their text again."""

from __future__ import annotations

from typing import Annotated

from mcp.server.mcpserver import Context
from mcp.types import ToolAnnotations
from pydantic import BaseModel, Field

from tools._common import ToolSpec, call_write, rift_of
from tools.add_documents import MetadataValue
from tools.resources import announcing


class UpdateMetadataResult(BaseModel):
    collection: str
    updated: list[str] = Field(description="Documents whose metadata changed.")
    unchanged: list[str] = Field(description="Documents that already had this metadata.")


async def update_metadata(
    ids: Annotated[
        list[str],
        Field(
            min_length=1,
            description="Documents to change (at most the setting max_documents_per_call).",
        ),
    ],
    ctx: Context,
    metadata: Annotated[
        dict[str, MetadataValue] | None,
        Field(description="Keys to set or replace; values as in add_documents."),
    ] = None,
    remove: Annotated[list[str] | None, Field(description="Keys to delete.")] = None,
    collection: str = "default",
) -> UpdateMetadataResult:
    async with announcing(ctx, collection, ids) as changed:
        statuses = await call_write(rift_of(ctx).update_metadata, collection, ids, metadata, remove or [])
        changed += [s.id for s in statuses if s.status != "unchanged"]
    return UpdateMetadataResult(
        collection=collection,
        updated=[s.id for s in statuses if s.status != "unchanged"],
        unchanged=[s.id for s in statuses if s.status == "unchanged"],
    )


TOOL = ToolSpec(
    fn=update_metadata,
    name="update_metadata",
    title="Update metadata",
    description=(
        "Set or remove metadata keys (tags, status, dates for hybrid_search filters) of stored documents "
        "without sending their text again. All or nothing: an unknown id refuses the call. On a file's document "
        "the keys file sync sets (source, mtime, ...) cannot change, and once the file changes, its next sync "
        "replaces the keys set here."
    ),
    annotations=ToolAnnotations(
        title="Update metadata",
        read_only_hint=False,
        destructive_hint=True,  # (MCP: False means "only additive updates"; this one replaces or removes)
        idempotent_hint=True,
        open_world_hint=False,
    ),
    setting_bounds=(("ids", "maxItems", "max_documents_per_call"),),
)
