"""MCP prompts: workflows a user starts from the client's menu (Claude Desktop's attachments menu, VS Code's
"/"), written out as the steps an agent follows with rift's tools. `ask` ends with the step that makes rift
learn: verdicts on the results the agent read (feedback), the strongest training signal rift gets."""

from __future__ import annotations

from typing import Annotated, Any

from mcp.server.mcpserver import Context
from mcp.shared.exceptions import MCPError
from mcp.types import INVALID_PARAMS
from pydantic import Field

from server.engine.engine import check_collection_name, check_query_text
from server.errors import NotFoundError, RiftError
from tools._arguments import quoted
from tools._common import call_request, rift_of

ASK = "ask"
IMPROVE = "improve_search"
COLLECTION_ARGUMENT = "collection"  # the prompts' argument that `completion/complete` completes


async def ask(
    question: Annotated[str, Field(description="What to find out from the stored documents.")],
    ctx: Context,
    collection: Annotated[str, Field(description="The collection to search (default: default).")] = "default",
) -> str:
    """Answer a question from stored documents with sources, then tell rift which results were right."""
    question = question.strip()
    if not question:
        raise MCPError(code=INVALID_PARAMS, message="question must not be empty")
    try:
        # The question becomes hybrid_search's query: refused here for what search would refuse (a NUL, only
        # invisible characters, too long), not after the agent has started on a prompt that cannot work.
        check_query_text(question, "question")
        check_collection_name(collection)
    except RiftError as exc:
        raise MCPError(code=INVALID_PARAMS, message=str(exc)) from None
    # A collection that does not exist is refused now, with the ones that do, not at the workflow's first search.
    engine = await call_request(f"prompt {ASK}", rift_of(ctx).engine, server_side=True)
    await call_request(f"prompt {ASK}", _known, engine, collection)
    return f"""Answer the question below from the documents stored in rift's collection "{collection}", not from memory.

Question: {question}

1. Search with hybrid_search (collection "{collection}", max_chars=300 to skim: each hit then shows the part of its text with the most query words). If the hits miss, search again in other words: a term the answer would contain, or a rephrasing. Each search returns its own query_id.
2. Read the hits that look promising with get_document (collection "{collection}"), passing the query_id of the search that returned them. In a long document, read around a hit with offset and max_chars (the hit's start and end say where its text is).
3. Answer, citing the doc_id of every document you used. If the documents do not answer the question, say so rather than guess.
4. Then judge what you read: for each search whose results you checked, call feedback with its query_id and judgments=[{{"doc_id": ..., "relevant": true or false}}, ...]: true for a document that answered the question, false for one that looked relevant and did not. rift fine-tunes its search on these verdicts, so judge only documents you checked. (A search whose query_id is null was not logged: skip it.)"""


def _known(engine: Any, collection: str) -> None:
    """NotFoundError unless `collection` exists; with a shared Chroma server, after catching up with other
    processes (one may have just made it), as a search would."""
    try:
        engine.info(collection)
    except NotFoundError:
        engine.follow_others(force=True)
        engine.info(collection)


def improve_search() -> str:
    """Fine-tune rift's search on how it has been used, through its quality gate, and report the outcome."""
    return """Help rift's search learn from how it has been used.

1. Call stats and report the learning status: searches logged, feedback verdicts, how often the vector and keyword sides disagree, and the retrain policy if one is set.
2. Call retrain with dry_run=true to see the training triples it would use (counts by type, with examples). If its would_train is false, report its refusal (too few triples, or a job already running) and stop: more searches, and feedback on their results, add triples.
3. Otherwise call retrain, then retrain_status with its job_id and wait_seconds=300 until the job has finished. Report the gate's decision with its numbers: a candidate that scores worse on the gate's measures is kept as a rejected version and the serving model stays; one that is no worse serves from then on.
4. Say that list_models shows every version, and that rollback serves an earlier one if search seems worse later."""


def prompt_problem(prompts: dict[str, tuple[set[str], set[str]]], name: str, arguments: dict[str, object]) -> str | None:
    """What is wrong with a prompts/get request (`prompts`: name -> (required, all) argument names), if anything."""
    if name not in prompts:
        return f"unknown prompt {quoted(name)}; the prompts are {', '.join(sorted(prompts))}"
    required, known = prompts[name]
    unknown = sorted(set(arguments) - known)
    if unknown:
        takes = f"it takes {', '.join(sorted(known))}" if known else "it takes none"
        return f"prompt {name!r} has no argument {', '.join(map(quoted, unknown[:5]))}; {takes}"
    missing = sorted(required - set(arguments))
    if missing:
        return f"prompt {name!r} needs the argument {', '.join(map(repr, missing))}"
    return None
