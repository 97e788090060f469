"""feedback: confirm or reject a search result; mining prefers these labels over its own guesses."""

from __future__ import annotations

from typing import Annotated

from mcp.server.mcpserver import Context
from mcp.types import ToolAnnotations
from pydantic import BaseModel, Field

from tools._common import ToolSpec, call, rift_of
from tools._learning import learning_of


class FeedbackResult(BaseModel):
    query_id: str
    doc_id: str
    relevant: bool
    replaced: bool = Field(description="True when this overwrote an earlier judgement of the same pair.")


async def feedback(
    query_id: Annotated[str, Field(min_length=1, max_length=64, description="query_id from hybrid_search.")],
    doc_id: Annotated[str, Field(min_length=1, max_length=512, description="A doc_id that search returned.")],
    relevant: Annotated[bool, Field(description="true if the document answered the query, false if not.")],
    ctx: Context,
) -> FeedbackResult:
    learning = await call(learning_of, rift_of(ctx))
    return FeedbackResult(**await call(learning.feedback, query_id, doc_id, relevant))


TOOL = ToolSpec(
    fn=feedback,
    name="feedback",
    title="Judge a search result",
    description=(
        "Tell rift whether a document a hybrid_search returned was relevant to that search. These judgements "
        "are the strongest training signal for retrain and are used by its gate. Give the query_id from the "
        "search result and one of its doc_ids."
    ),
    annotations=ToolAnnotations(
        title="Judge a search result",
        read_only_hint=False,
        destructive_hint=False,
        idempotent_hint=True,
        open_world_hint=False,
    ),
)
