"""list_models: the model registry (base model, fine-tunes, re-indexes) with status and gate numbers."""

from __future__ import annotations

from typing import Any

from mcp.server.mcpserver import Context
from mcp.types import ToolAnnotations
from pydantic import BaseModel, Field

from tools._common import ToolSpec, call, rift_of
from tools._learning import learning_of


class ModelsResult(BaseModel):
    versions: list[dict[str, Any]] = Field(
        description="Newest first: version, kind, status (serving/retired/rejected/failed), base_model, "
        "strategy, triples, training settings and time, gate numbers."
    )


async def list_models(ctx: Context) -> ModelsResult:
    learning = await call(learning_of, rift_of(ctx))
    return ModelsResult(versions=await call(learning.models))


TOOL = ToolSpec(
    fn=list_models,
    name="list_models",
    title="Model versions",
    description=(
        "List the embedding model versions rift has served or tried: which one serves now, what each was "
        "trained on, and the gate's verdict and numbers."
    ),
    annotations=ToolAnnotations(
        title="Model versions",
        read_only_hint=True,
        destructive_hint=False,
        idempotent_hint=True,
        open_world_hint=False,
    ),
)
