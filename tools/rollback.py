"""rollback: serve an earlier model version again (background job, like retrain)."""

from __future__ import annotations

from typing import Annotated

from mcp.server.mcpserver import Context
from mcp.types import ToolAnnotations
from pydantic import BaseModel, Field

from tools._common import ToolSpec, call, rift_of
from tools._learning import learning_of


class RollbackResult(BaseModel):
    job_id: str = Field(description="Follow it with retrain_status.")
    status: str
    version: str = Field(description="The version that will serve.")


async def rollback(
    ctx: Context,
    version: Annotated[
        str | None, Field(description="Version to serve (see list_models); the previous one when omitted.")
    ] = None,
) -> RollbackResult:
    learning = await call(learning_of, rift_of(ctx))
    return RollbackResult(**await call(learning.rollback, version))


TOOL = ToolSpec(
    fn=rollback,
    name="rollback",
    title="Roll back the model",
    description=(
        "Serve an earlier embedding model version again (the previously serving one by default). Runs in the "
        "background; searches keep answering and switch at once when it is ready. Recent versions keep their "
        "vectors, so this usually takes seconds."
    ),
    annotations=ToolAnnotations(
        title="Roll back the model",
        read_only_hint=False,
        # Not additive only: a new model serves, and older versions' vectors and weights past the settings
        # learn_keep_versions / learn_keep_weights are deleted (a version without weights cannot serve again).
        destructive_hint=True,
        idempotent_hint=False,
        open_world_hint=False,
    ),
)
