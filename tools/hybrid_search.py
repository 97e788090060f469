"""hybrid_search: vector + keyword retrieval fused with reciprocal rank fusion."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from mcp.server.mcpserver import Context
from mcp.types import ToolAnnotations
from pydantic import BaseModel, Field

from server.ingest.extract import synced_file_keys
from server.service import MIN_SNIPPET_CHARS
from tools._common import FILTERS_DESCRIPTION, ToolSpec, call, rift_of


class SearchHit(BaseModel):
    doc_id: str
    chunk_id: str
    text: str = Field(
        description="The document's best chunk (by fused rank); with max_chars, its part with the most query words."
    )
    metadata: dict[str, Any] = Field(
        description="The document's metadata with the chunk's labels (heading, symbol, page); a file's sha256, "
        "extractor and source (its doc_id; filters take it) are left out: get_document shows them."
    )
    score: float = Field(description="Fused RRF score, from ranks only (higher is better): compare within one search.")
    # A side's score and rank are null when that side did not return the document.
    vector_score: float | None = Field(
        description="Cosine similarity (-1 to 1) of the query and the document's best vector-side chunk (maybe not "
        "text's); comparable across searches with one model: low everywhere means nothing close."
    )
    keyword_score: float | None = Field(
        description="BM25 score (0 or more, unbounded) of the document's best keyword-side chunk."
    )
    vector_rank: int | None
    keyword_rank: int | None
    start: int | None = Field(
        description="Character offset of text in the document: read around it with get_document(doc_id, offset=...)."
    )
    end: int | None = Field(description="Where text ends (exclusive).")
    truncated: bool = Field(description="True when text is a part of the chunk (max_chars).")


class DisagreementOut(BaseModel):
    top: int
    compared: bool = Field(
        description="False when a side did not search (a query of only stopwords or symbols; the vector side "
        "failed: see warnings) or neither found anything; there are then no blind spots."
    )
    overlap: float | None = Field(
        description="Documents in both sides' top 5, over the longer of the two top-5 lists (0-1); "
        "null when not compared."
    )
    vector_blind_spots: list[str] = Field(
        description="Vector top hits the keyword side did not return in top-k."
    )
    keyword_blind_spots: list[str] = Field(
        description="Keyword top hits the vector side did not return in top-k."
    )


class SearchResult(BaseModel):
    query_id: str | None = Field(description="Id of the logged search (hybrid mode); cite it in feedback.")
    collection: str
    mode: str
    model_version: str
    hits: list[SearchHit]
    disagreement: DisagreementOut | None
    timings_ms: dict[str, float]
    warnings: list[str] = Field(
        default_factory=list,
        description="Why results may be incomplete (Chroma server unreachable: keyword results alone, not logged, "
        "query_id null) or empty (a keyword-mode query of stopwords; a filter field or value no chunk has, with "
        "the values it has); empty normally.",
    )


# What file sync keeps to notice a changed file or extractor: 90 bytes a hit that an agent has no use for (a
# k=50 skim paid more for metadata than for text); and a file's `source`, which is its doc_id again (its path).
# get_document and list_documents still show them.
_SYNC_BOOKKEEPING = frozenset({"sha256", "extractor", "source"})


def _shown_metadata(doc_id: str, metadata: dict[str, Any]) -> dict[str, Any]:
    hidden = _SYNC_BOOKKEEPING & synced_file_keys(doc_id, metadata)
    return {k: v for k, v in metadata.items() if k not in hidden} if hidden else metadata


async def hybrid_search(
    query: Annotated[str, Field(min_length=1, max_length=8192, description="A question or keywords.")],
    ctx: Context,
    k: Annotated[int, Field(ge=1, description="Results to return (at most the setting max_k).")] = 10,
    collection: Annotated[str, Field(description="Collection to search.")] = "default",
    filters: Annotated[dict[str, Any] | None, Field(description=FILTERS_DESCRIPTION)] = None,
    mode: Annotated[
        Literal["hybrid", "vector", "keyword"],
        Field(description="hybrid (default), vector only, or keyword only."),
    ] = "hybrid",
    group_by_document: Annotated[bool, Field(description="One hit per document (best chunk).")] = True,
    max_chars: Annotated[
        int | None,
        Field(
            ge=MIN_SNIPPET_CHARS,
            description="Cut each hit's text to the part of its chunk with the most query words, at most this many "
            "characters, e.g. 300 to skim; null: the server's search_max_chars, whole chunks unless set (then a "
            "large value such as 1000000 asks for them).",
        ),
    ] = None,
) -> SearchResult:
    rift = rift_of(ctx)
    if max_chars is None:
        max_chars = rift.settings.search_max_chars or None
    response = await call(
        rift.search, collection, query, k, mode, filters, group_by_document, max_chars=max_chars
    )
    outcome = response.outcome
    d = response.disagreement
    return SearchResult(
        query_id=response.query_id,
        collection=collection,
        mode=mode,
        model_version=outcome.model_version,
        hits=[
            SearchHit(
                doc_id=h.doc_id,
                chunk_id=h.chunk_id,
                text=h.text,
                metadata=_shown_metadata(h.doc_id, h.metadata),
                score=round(h.score, 6),
                vector_rank=h.vector_rank,
                keyword_rank=h.keyword_rank,
                vector_score=None if h.vector_score is None else round(h.vector_score, 4),
                keyword_score=None if h.keyword_score is None else round(h.keyword_score, 4),
                start=h.start,
                end=h.end,
                truncated=h.truncated,
            )
            for h in outcome.hits
        ],
        disagreement=None
        if d is None
        else DisagreementOut(
            top=d.top,
            compared=d.compared,
            overlap=d.overlap if d.compared else None,
            vector_blind_spots=d.vector_blind_spots,
            keyword_blind_spots=d.keyword_blind_spots,
        ),
        timings_ms={key: round(v, 3) for key, v in outcome.timings_ms.items()},
        warnings=outcome.warnings,
    )


TOOL = ToolSpec(
    fn=hybrid_search,
    name="hybrid_search",
    title="Hybrid search",
    description=(
        "Find the stored documents most relevant to a question or keywords: meaning-based (vector) and "
        "exact-word (BM25) retrieval fused by reciprocal rank, so it finds paraphrases as well as rare names, "
        "codes and identifiers. Use it before answering from stored knowledge. To skim many results, pass "
        "max_chars (e.g. 300) and read a hit with get_document, passing this search's query_id. Then tell rift which hits answered the "
        "question and which did not with feedback(query_id, judgments=[{doc_id, relevant}, ...]): retrain "
        "learns most from those. A side's score and rank are null when it did not return the hit."
    ),
    annotations=ToolAnnotations(
        title="Hybrid search",
        read_only_hint=True,
        destructive_hint=False,
        idempotent_hint=True,
        open_world_hint=False,
    ),
    setting_bounds=(("k", "maximum", "max_k"),),
)
