"""feedback: confirm or reject search results; mining prefers these labels over its own guesses."""

from __future__ import annotations

from typing import Annotated, Any

from mcp.server.mcpserver import Context
from mcp.server.mcpserver.exceptions import ToolError
from mcp.types import ToolAnnotations
from pydantic import BaseModel, ConfigDict, Field, model_validator

from tools._arguments import refuse_unknown_keys
from tools._common import ToolSpec, call, rift_of
from tools._learning import learning_of

MAX_JUDGMENTS = 100  # a default search's 100 hits at most; more (a larger max_k, blind spots) take more calls


class Judgment(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid")  # as the tool's own arguments: `relevant: 1` is refused

    @model_validator(mode="before")
    @classmethod
    def _known_fields(cls, data: Any) -> Any:
        return refuse_unknown_keys(cls, data, "a judgment", "field")

    doc_id: str = Field(min_length=1, max_length=512, description="A doc_id that search returned.")
    relevant: bool = Field(description="true if the document answered the query, false if not.")


class Judged(BaseModel):
    doc_id: str = Field(description="The judged document.")
    relevant: bool = Field(description="The verdict recorded.")
    replaced: bool = Field(description="True when this overwrote an earlier judgement of the same pair.")
    stored: bool = Field(
        description="False when the passage the search ranked is gone (deleted or rewritten): kept, but "
        "trains only if it comes back."
    )


class FeedbackResult(BaseModel):
    query_id: str
    # One verdict's fields, described once: they read as judged's.
    doc_id: str | None = Field(
        description="With doc_id and relevant: the verdict flat (relevant, replaced, stored as in judged); these "
        "four are null with judgments."
    )
    relevant: bool | None
    replaced: bool | None
    stored: bool | None
    judged: list[Judged] = Field(description="Every verdict recorded by this call, in the order given.")


async def feedback(
    query_id: Annotated[str, Field(min_length=1, max_length=64, description="query_id from hybrid_search.")],
    ctx: Context,
    doc_id: Annotated[
        str | None,
        Field(min_length=1, max_length=512, description="A doc_id that search returned (or give judgments)."),
    ] = None,
    relevant: Annotated[
        bool | None, Field(description="true if the document answered the query, false if not (with doc_id).")
    ] = None,
    judgments: Annotated[
        list[Judgment] | None,
        Field(
            min_length=1,
            max_length=MAX_JUDGMENTS,
            description="Several verdicts at once, instead of doc_id and relevant; all are recorded, or none when "
            "one is wrong.",
        ),
    ] = None,
) -> FeedbackResult:
    single = doc_id is not None or relevant is not None
    if single and judgments is not None:
        raise ToolError("give either doc_id and relevant, or judgments, not both")
    if single and (doc_id is None or relevant is None):
        raise ToolError(f"{'relevant' if relevant is None else 'doc_id'} is missing: give doc_id with relevant")
    if not single and judgments is None:
        raise ToolError("give doc_id and relevant (one verdict), or judgments (several)")
    verdicts = [(doc_id, relevant)] if single else [(j.doc_id, j.relevant) for j in judgments or []]
    learning = await call(learning_of, rift_of(ctx))
    judged = [Judged(**j) for j in await call(learning.judge, query_id, verdicts, not single)]
    first = judged[0] if single else None
    return FeedbackResult(
        query_id=query_id,
        doc_id=first and first.doc_id,
        relevant=first and first.relevant,
        replaced=first and first.replaced,
        stored=first and first.stored,
        judged=judged,
    )


TOOL = ToolSpec(
    fn=feedback,
    name="feedback",
    title="Judge search results",
    description=(
        "Tell rift whether documents a hybrid_search returned were relevant to it: one (doc_id, relevant) or "
        "several (judgments), with the search's query_id. These judgements are retrain's strongest training "
        "signal, and its gate uses them."
    ),
    annotations=ToolAnnotations(
        title="Judge search results",
        read_only_hint=False,
        destructive_hint=False,
        idempotent_hint=True,
        open_world_hint=False,
    ),
)
