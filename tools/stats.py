"""stats: what is stored, which model serves, and how often the two retrievers disagree."""

from __future__ import annotations

from typing import Annotated, Any

from mcp.server.mcpserver import Context
from mcp.types import ToolAnnotations
from pydantic import BaseModel, Field

from tools._common import ToolSpec, call, rift_of


class QueryStats(BaseModel):
    """The disagreement log. Means and shares (0-1) are over compared searches (null before one):
    mean_top_overlap, of the top hits both sides returned; share_with_*_blind_spots, of searches where that
    side had a top hit the other missed; mean_*_blind_spots, such hits per search."""

    logged_queries: int
    queries_not_compared: int
    queries_without_keyword_terms: int = Field(description="Not compared: the vector side answered alone.")
    mean_top_overlap: float | None
    share_with_vector_blind_spots: float | None
    share_with_keyword_blind_spots: float | None
    mean_vector_blind_spots: float | None
    mean_keyword_blind_spots: float | None
    feedback_labels: int


class CollectionStats(BaseModel):
    name: str
    documents: int
    chunks: int
    model_version: str
    keyword_rebuild_ms: float
    queries: QueryStats | None
    problem: str | None = Field(
        None,
        description="With a Chroma server: what keeps this collection from being searched and written here "
        "(e.g. the server lost its vectors) and what to do; null normally.",
    )


class StatsResult(BaseModel):
    model: str
    model_version: str
    dimension: int
    query_prompt: str = Field(
        "", description="The instruction put before every query for this model (empty: none)."
    )
    query_prompt_because: str = Field("", description="Why that prompt applies (a setting, the model, rift's table).")
    data_dir: str
    vector_backend: str
    chroma_unreachable: str | None = Field(
        None,
        description="With a Chroma server: why it cannot be reached (searches then return keyword results "
        "alone, and these figures are this process's own); null when the last check reached it.",
    )
    index_bytes: dict[str, int]
    collections: list[CollectionStats]
    queries: QueryStats | None = Field(description="All collections' searches.")
    logging_enabled: bool
    load_seconds: float
    learning: dict[str, Any] | None = Field(
        None,
        description="Serving model version, registry size, running learning job, an interrupted retrain "
        "waiting for the next start, periodic policy.",
    )


async def stats(
    ctx: Context,
    collection: Annotated[str | None, Field(description="One collection, or all when omitted.")] = None,
) -> StatsResult:
    return StatsResult(**await call(rift_of(ctx).stats, collection))


TOOL = ToolSpec(
    fn=stats,
    name="stats",
    title="Index statistics",
    description=(
        "Report collections with their document and chunk counts, the embedding model in use, index sizes "
        "on disk, and the disagreement log: logged searches and how often vector and keyword results disagree."
    ),
    annotations=ToolAnnotations(
        title="Index statistics",
        read_only_hint=True,
        destructive_hint=False,
        idempotent_hint=True,
        open_world_hint=False,
    ),
)
