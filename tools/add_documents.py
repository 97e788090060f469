"""add_documents: store or update documents in a collection (chunked, embedded, keyword-indexed)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from mcp.server.mcpserver import Context
from mcp.types import ToolAnnotations
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StrictBool,
    StrictFloat,
    StrictInt,
    StrictStr,
    model_validator,
)

from server.engine.engine import DocumentInput
from tools._arguments import json_type, refuse_unknown_keys
from tools._common import COLLECTION_DESCRIPTION, ToolSpec, call_write, progress_reporter, rift_of
from tools.resources import announcing


def _scalar_only(value: Any) -> Any:
    # One clear error instead of pydantic's four union-member failures.
    if isinstance(value, str | bool | int | float):
        return value
    raise ValueError(f"metadata values must be a string, number or boolean, got {json_type(value)}")


MetadataValue = Annotated[StrictStr | StrictBool | StrictInt | StrictFloat, BeforeValidator(_scalar_only)]


class DocumentIn(BaseModel):
    model_config = ConfigDict(extra="forbid")  # a misspelt "meta" must not drop the metadata in silence

    @model_validator(mode="before")
    @classmethod
    def _known_fields(cls, data: Any) -> Any:
        return refuse_unknown_keys(cls, data, "a document", "field")

    id: StrictStr | None = Field(
        None, min_length=1, max_length=512, description="Stable id; defaults to a hash of the text (the same text added again, with any metadata, "
        "updates that one document)."
    )
    text: StrictStr = Field(description="The document's full text; it is chunked to fit the model.")
    metadata: dict[str, MetadataValue] | None = Field(
        None,
        description="Flat str/int/float/bool values for hybrid_search filters: up to 128 keys (not starting "
        "'_rift_', '$' or '#') of up to 256 characters, 65,536 characters in all (every chunk stores a copy).",
    )


class DocumentStatusOut(BaseModel):
    id: str
    status: Literal["added", "updated", "unchanged"]
    chunks: int = Field(description="Chunks written for this document (0 when unchanged).")


class AddDocumentsResult(BaseModel):
    collection: str
    added: int
    updated: int
    unchanged: int
    documents: list[DocumentStatusOut]


async def add_documents(
    documents: Annotated[
        list[DocumentIn],
        Field(
            min_length=1,
            description="Documents to add or replace (at most the setting max_documents_per_call).",
        ),
    ],
    ctx: Context,
    collection: Annotated[str, Field(description=COLLECTION_DESCRIPTION)] = "default",
) -> AddDocumentsResult:
    rift = rift_of(ctx)
    inputs = [DocumentInput(text=d.text, id=d.id, metadata=d.metadata) for d in documents]
    async with announcing(ctx, collection, [d.id for d in documents if d.id]) as changed:
        statuses = await call_write(
            rift.add_documents, collection, inputs, progress_reporter(ctx, "embedding chunks")
        )
        changed += [s.id for s in statuses if s.status != "unchanged"]
    out = [DocumentStatusOut(id=s.id, status=s.status, chunks=s.chunks) for s in statuses]
    return AddDocumentsResult(
        collection=collection,
        added=sum(s.status == "added" for s in out),
        updated=sum(s.status == "updated" for s in out),
        unchanged=sum(s.status == "unchanged" for s in out),
        documents=out,
    )


TOOL = ToolSpec(
    fn=add_documents,
    name="add_documents",
    title="Add documents",
    description=(
        "Store documents for hybrid_search to find: notes, web pages or any knowledge worth retrieving. "
        "Re-adding an id replaces that document; unchanged content is skipped. The collection is created if it "
        "does not exist."
    ),
    annotations=ToolAnnotations(
        title="Add documents",
        read_only_hint=False,
        destructive_hint=True,  # (MCP: False means "only additive updates"; this one replaces or removes)
        idempotent_hint=True,
        open_world_hint=False,
    ),
    setting_bounds=(("documents", "maxItems", "max_documents_per_call"),),
)
