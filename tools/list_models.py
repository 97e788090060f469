"""list_models: the model registry (base model, fine-tunes, re-indexes) with status and gate numbers."""

from __future__ import annotations

from typing import Annotated, Any

from mcp.server.mcpserver import Context
from mcp.types import ToolAnnotations
from pydantic import BaseModel, Field

from tools._common import ToolSpec, call, rift_of
from tools._learning import learning_of


class ModelsResult(BaseModel):
    versions: list[dict[str, Any]] = Field(
        description="Newest first, at most `limit`: version, kind, status (serving/retired/rejected/failed), "
        "base_model, strategy, triples, training settings and time, gate numbers."
    )
    serving_version: str | None = Field(description="The version that serves now (listed or not).")
    total: int = Field(description="Versions in the registry; `rift models` lists them all.")


async def list_models(
    ctx: Context,
    limit: Annotated[
        int, Field(ge=1, le=1000, description="Most versions to list, newest first (each is about 1 KB).")
    ] = 20,
) -> ModelsResult:
    # A periodic retrain adds a version per run, rejected ones too: the whole registry grows without bound.
    learning = await call(learning_of, rift_of(ctx))
    versions = await call(learning.models)
    serving = next((v["version"] for v in versions if v["status"] == "serving"), None)
    return ModelsResult(versions=versions[:limit], serving_version=serving, total=len(versions))


TOOL = ToolSpec(
    fn=list_models,
    name="list_models",
    title="Model versions",
    description=(
        "List the embedding model versions rift has served or tried, newest first: which one serves now, what "
        "each was trained on, and the gate's verdict and numbers."
    ),
    annotations=ToolAnnotations(
        title="Model versions",
        read_only_hint=True,
        destructive_hint=False,
        idempotent_hint=True,
        open_world_hint=False,
    ),
)
