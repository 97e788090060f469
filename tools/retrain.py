"""retrain: fine-tune the embedding model on triples mined from this server's own search log."""

from __future__ import annotations

from typing import Annotated, Any

from mcp.server.mcpserver import Context
from mcp.types import ToolAnnotations
from pydantic import BaseModel, Field

from server.config import RETRAIN_BOUNDS as _BOUNDS
from server.config import LearnSearches, LearnStrategy
from tools._common import ToolSpec, call, rift_of
from tools._learning import learning_of


def _default(setting: str) -> str:
    # server/app.py adds the value this server is configured with (ToolSpec.setting_defaults)
    return f"(default: setting {setting})"


class RetrainResult(BaseModel):
    job_id: str | None = Field(description="Poll it with retrain_status; null for a dry run.")
    status: str = Field(description="'running' (job started; 'cancelled' if cancelled meanwhile) or 'dry_run'.")
    mining: dict[str, Any] | None = Field(
        description="Strategy, logged queries seen, triples (by type), skipped counts, held-out queries, searches "
        "left out as already learnt (already_learnt_queries), examples; "
        "null while a long log is still being mined (retrain_status shows them, or why it stopped)."
    )
    would_train: bool | None = Field(None, description="Dry run: would the real call train?")
    refusal: str | None = Field(None, description="Dry run: why the real call would refuse.")


async def retrain(
    ctx: Context,
    strategy: Annotated[
        LearnStrategy | None,
        Field(description="Mining strategy; default from settings (fused: measured best)."),
    ] = None,
    epochs: Annotated[
        float | None,
        Field(ge=_BOUNDS["epochs"][0], le=_BOUNDS["epochs"][1], description=f"Training epochs {_default('learn_epochs')}."),
    ] = None,
    learning_rate: Annotated[
        float | None,
        Field(ge=_BOUNDS["learning_rate"][0], le=_BOUNDS["learning_rate"][1], description=f"Learning rate {_default('learn_learning_rate')}."),
    ] = None,
    batch_size: Annotated[
        int | None,
        Field(ge=_BOUNDS["batch_size"][0], le=_BOUNDS["batch_size"][1], description=f"Batch size {_default('learn_batch_size')}."),
    ] = None,
    min_triples: Annotated[
        int | None,
        Field(ge=_BOUNDS["min_triples"][0], le=_BOUNDS["min_triples"][1], description=f"Refuse to train on fewer triples {_default('learn_min_triples')}."),
    ] = None,
    merge_base: Annotated[
        float | None,
        Field(
            ge=_BOUNDS["merge_base"][0],
            le=_BOUNDS["merge_base"][1],
            description="Share by which the trained weights move back towards the serving model's "
            f"(WiSE-FT; 0 = none) {_default('learn_merge_base')}.",
        ),
    ] = None,
    searches: Annotated[
        LearnSearches | None,
        Field(
            description="'new': mine only searches the serving fine-tune was not trained on (and older ones "
            f"given feedback since); 'all': the whole log again {_default('learn_searches')}."
        ),
    ] = None,
    dry_run: Annotated[
        bool, Field(description="Only report the triples that would be used, with examples and counts.")
    ] = False,
) -> RetrainResult:
    learning = await call(learning_of, rift_of(ctx))
    out = await call(
        learning.retrain,
        strategy=strategy,
        epochs=epochs,
        learning_rate=learning_rate,
        batch_size=batch_size,
        min_triples=min_triples,
        merge_base=merge_base,
        searches=searches,
        dry_run=dry_run,
    )
    return RetrainResult(**out)


TOOL = ToolSpec(
    fn=retrain,
    name="retrain",
    title="Retrain from use",
    description=(
        "Fine-tune rift's embedding model on triples mined from its search log and your feedback. Returns at "
        "once with a job_id; follow it with retrain_status. The new model serves only if a gate on held-out "
        "recent searches finds it no worse, else it is kept as a rejected version. Searches keep working "
        "throughout. dry_run first shows the triples and whether it would train."
    ),
    annotations=ToolAnnotations(
        title="Retrain from use",
        read_only_hint=False,
        # Not additive only: a new model serves, and older versions' vectors and weights past the settings
        # learn_keep_versions / learn_keep_weights are deleted (a version without weights cannot serve again).
        destructive_hint=True,
        idempotent_hint=False,
        open_world_hint=False,
    ),
    setting_defaults=(
        ("epochs", "learn_epochs"),
        ("learning_rate", "learn_learning_rate"),
        ("batch_size", "learn_batch_size"),
        ("min_triples", "learn_min_triples"),
        ("merge_base", "learn_merge_base"),
        ("searches", "learn_searches"),
    ),
)
