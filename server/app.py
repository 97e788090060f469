"""The MCP server: an `MCPServer` whose lifespan owns the `Rift` app object and whose tools come from
`tools.ALL_TOOLS`. Importing this module stays light (no torch) so `initialize` answers at once; the model
loads in the background and the first tool call waits for it."""

from __future__ import annotations

import json
import logging
import os
import time
import types
import typing
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import anyio
from mcp.server.mcpserver import Context, MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from mcp.shared.exceptions import MCPError
from mcp.types import INVALID_PARAMS, CallToolResult, CompleteRequestParams, ListResourcesResult, TextContent
from pydantic import ConfigDict, ValidationError, model_validator

from server import __version__
from server.config import Settings
from server.service import DataDirLock, Rift
from server.wire import read_ids_strictly
from tools import ALL_TOOLS
from tools._arguments import describe_invalid, quoted, refuse_unknown_keys
from tools._common import ToolSpec
from tools.prompts import ASK, IMPROVE, ask, improve_search, prompt_problem
from tools.resources import (
    DOCUMENT_TEMPLATE,
    MIME_TYPE,
    NOT_PATHS,
    handle_completion,
    handle_list_resources,
    percent_encoding_problem,
    read_document,
)

INSTRUCTIONS = (
    "rift stores documents and finds them again with hybrid (vector + keyword) search. Save knowledge with "
    "add_documents (or whole folders with add_paths), look it up with hybrid_search before answering from "
    "memory, read a full hit, or the text around it (a hit's start/end with get_document's offset and "
    "max_chars), with get_document (pass the search's query_id), retag documents with update_metadata, and "
    "remove stale entries with delete_documents (by id or by filter). Organise with list_collections / "
    "create_collection / list_documents; check what is stored with stats. Searches are logged so rift can "
    "learn from use: tell it which results were right or wrong with feedback, and call retrain (then "
    "retrain_status) to fine-tune the embedding model; a candidate only serves if it passes the gate, and "
    "rollback returns to an earlier version."
)


log = logging.getLogger(__name__)

# The apps this process serves (for a shutdown by signal, which does not unwind the protocol's lifespan).
SERVING: list[Rift] = []


def close_on_terminate() -> None:
    """On SIGTERM (or SIGINT), close what this process serves before exiting (the default handler exits at once): the
    query log writes the searches it has answered, a retrain checkpoints to continue at the next start. A
    stdio server is meant to stop when its client closes stdin; SIGTERM is the client's next step."""
    import signal

    closing: list[float] = []  # when the close began

    def terminate(signum: int, _frame: object) -> None:
        if closing:
            # A second signal runs inside the first one's close, which holds its lock: the same press reaching
            # twice (SIGINT from the terminal, SIGTERM from a launcher) lets the close go on; a later one, the
            # user pressing Ctrl-C again, exits now.
            if time.monotonic() - closing[0] < 1.0:
                return
            os._exit(128 + signum)
        closing.append(time.monotonic())
        for rift in list(SERVING):
            if rift.loading:  # nothing to save yet, and start-up work is safe to cut short
                continue
            try:
                rift.close()  # (waits for a close already under way: stdin EOF came first)
            except Exception:  # exiting anyway: say why the close was incomplete
                log.exception("closing rift on SIGTERM failed")
        os._exit(128 + signum)

    signal.signal(signal.SIGTERM, terminate)
    # Ctrl-C in a terminal: the same (Python's own handler cancelled the protocol's task, but the thread
    # reading stdin stayed blocked, so the process ran on, holding the data dir, until stdin closed).
    signal.signal(signal.SIGINT, terminate)


class RiftMCPServer(MCPServer):
    """The SDK's server, whose stdio transport answers request lines it cannot read (`server.stdio`) and whose
    tool results' text is compact JSON."""

    async def call_tool(self, name: str, arguments: dict[str, Any], context: Context | None = None) -> Any:
        if self._tool_manager.get_tool(name) is None:
            # A protocol error, as MCP has it (and as an unknown prompt or resource is here), not a tool's
            # isError result; the SDK's "Unknown tool" also quoted the name whole.
            known = ", ".join(sorted(t.name for t in self._tool_manager.list_tools()))
            raise MCPError(code=INVALID_PARAMS, message=f"unknown tool {quoted(name)}; the tools are {known}")
        try:
            result = await super().call_tool(name, arguments, context)
        except ToolError as exc:
            # Arguments the tool's model refused (the SDK raises exactly ToolError from the ValidationError; a
            # tool's own ToolError has its ToolError as cause): the SDK passed on pydantic's text, "1 validation
            # error for add_documents arguments\ndocuments.0\n  Input should be a valid dictionary or instance
            # of DocumentIn [type=model_type, input_value=None, input_type=NoneType]". One line per problem
            # instead, as rift's own errors word them: "documents[0]: must be an object, got null".
            if type(exc) is ToolError and isinstance(exc.__cause__, ValidationError):
                problems = describe_invalid(exc.__cause__)
                raise ToolError(f"Error executing tool {name}: {problems}") from exc.__cause__
            raise
        # The SDK writes a result's text as JSON indented by 2: about 30 % of a search's text was whitespace,
        # which an agent pays for in context on every call. Same JSON, same structured content.
        if (
            isinstance(result, CallToolResult)
            and not result.is_error
            and result.structured_content is not None
            and len(result.content) == 1
            and isinstance(result.content[0], TextContent)
        ):
            text = json.dumps(result.structured_content, ensure_ascii=False, separators=(",", ":"))
            return result.model_copy(update={"content": [TextContent(type="text", text=text)]})
        return result

    async def get_prompt(
        self, name: str, arguments: dict[str, Any] | None = None, context: Context | None = None
    ) -> Any:
        # The SDK answers a missing argument, an unknown prompt or a misspelt argument with "Internal server
        # error" (or ignores the argument): name what is wrong, as a client error.
        prompts = {
            p.name: ({a.name for a in p.arguments or [] if a.required}, {a.name for a in p.arguments or []})
            for p in await self.list_prompts()
        }
        problem = prompt_problem(prompts, name, arguments or {})
        if problem is not None:
            raise MCPError(code=INVALID_PARAMS, message=problem)
        return await super().get_prompt(name, arguments, context)

    async def read_resource(self, uri: Any, context: Context | None = None) -> Any:
        # The SDK decodes a URI's escapes leniently (U+FFFD for bytes that are not UTF-8): refuse those instead.
        problem = percent_encoding_problem(str(uri))
        if problem is not None:
            raise MCPError(code=INVALID_PARAMS, message=problem, data={"uri": str(uri)})
        return await super().read_resource(uri, context)

    async def _handle_list_resources(self, ctx: Any, params: Any) -> ListResourcesResult:
        # The SDK lists only resources registered one by one, on one page; rift's documents are many and
        # change, so they are listed from the store, a page per cursor.
        return await handle_list_resources(ctx, params)

    async def run_stdio_async(self) -> None:
        from server.stdio import serve_stdio

        await serve_stdio(self._lowlevel_server)


def create_server(settings: Settings | None = None, lock: DataDirLock | None = None) -> RiftMCPServer:
    """`lock`: the data dir's lock, already held (`rift serve` takes it before the protocol starts, so
    another process cannot take the data dir in between and fail this server's start-up)."""
    settings = settings or Settings()

    @asynccontextmanager
    async def lifespan(_: MCPServer) -> AsyncIterator[Rift]:
        rift = Rift(settings, lock=lock).start(background=True)
        SERVING.append(rift)
        try:
            yield rift
        finally:
            try:
                await anyio.to_thread.run_sync(rift.close)
            finally:
                SERVING.remove(rift)  # only now: a SIGTERM meanwhile waits for this close to finish

    server = RiftMCPServer(
        name="rift",
        title="rift hybrid retrieval",
        instructions=INSTRUCTIONS,
        version=__version__,
        lifespan=lifespan,
        log_level="WARNING",
    )
    for spec in ALL_TOOLS:
        server.add_tool(
            spec.fn,
            name=spec.name,
            title=spec.title,
            description=spec.description,
            annotations=spec.annotations,
        )
        _refuse_unknown_arguments(server, spec.name)
        _publish_setting_bounds(server, spec, settings)
        _compact_schemas(server, spec.name)
    server.resource(
        DOCUMENT_TEMPLATE,
        name="document",
        title="rift document",
        description="A stored document's whole text. Both parts are percent-encoded (a doc_id's '/' is %2F).",
        mime_type=MIME_TYPE,
        security=NOT_PATHS,
    )(read_document)
    server.prompt(
        name=ASK, title="Ask your documents", description="Answer a question from rift's documents with sources, then "
        "judge the results read (feedback), which rift learns from."
    )(ask)
    server.prompt(
        name=IMPROVE, title="Improve search from use", description="Fine-tune rift's search on the logged searches "
        "and feedback (retrain, through its quality gate) and report the outcome."
    )(improve_search)
    # Registered on the low-level server for the request context (the app object); the SDK's decorator
    # passes its handler only the reference and the argument.
    server._lowlevel_server.add_request_handler(  # noqa: SLF001
        "completion/complete", CompleteRequestParams, handle_completion
    )
    server._lowlevel_server.middleware.append(_name_invalid_params)  # noqa: SLF001
    read_ids_strictly()
    return server


async def _name_invalid_params(ctx: Any, call_next: Any) -> Any:
    """The SDK answers params its model refuses (`tools/call` without a name, `resources/read` without a
    uri) with a bare "Invalid request parameters": name the field and what is wrong with it."""
    try:
        return await call_next(ctx)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(part) for part in e['loc']) or 'params'}: {e['msg']}"
            for e in exc.errors(include_url=False)[:5]
        )
        raise MCPError(code=INVALID_PARAMS, message=f"Invalid params for {ctx.method}: {problems}") from None


def _refuse_unknown_arguments(server: MCPServer, name: str) -> None:
    """The SDK's argument model ignores names it does not know, so `delete_documents(ids, colection=...)`
    deleted from "default". Swap in a subclass that forbids them (the error names the argument) and publish
    `additionalProperties: false` so a client can see it. The tool manager is the SDK's private attribute:
    tests/test_mcp_tools.py fails if it moves. Strict types too: the SDK converted `k=true` to 1 and
    `relevant=1` to true, past rift's own checks; a value of the wrong JSON type is now named instead."""
    tool = server._tool_manager.get_tool(name)  # noqa: SLF001
    assert tool is not None, name
    loose = tool.fn_metadata.arg_model
    # The title names the tool in pydantic's own text ("1 validation error for delete_documents arguments"),
    # which call_tool rewords for the agent (describe_invalid).
    # allow_inf_nan=False: a raw NaN or Infinity in a number argument (retrain's epochs, learning_rate,
    # merge_base; retrain_status' wait_seconds), which Python's JSON reader takes, was refused for the wrong
    # reason ("less than or equal to 20" for a NaN epochs); now "must be a finite number, got NaN".
    config = ConfigDict(
        **loose.model_config, extra="forbid", strict=True, allow_inf_nan=False, title=f"{name} arguments"
    )
    integers = _integer_fields(loose.model_json_schema())

    def integral_floats(cls: type, data: Any) -> Any:
        """Unknown names are refused first, each quoted short; JSON Schema counts 5.0 as an integer, which strict
        validation would refuse."""
        if not isinstance(data, dict):
            return data
        refuse_unknown_keys(loose, data, name)
        return {
            k: int(v) if k in integers and isinstance(v, float) and v.is_integer() else v
            for k, v in data.items()
        }

    namespace = {"model_config": config, "_integral_floats": model_validator(mode="before")(integral_floats)}
    strict = type(loose.__name__, (loose,), namespace)
    tool.fn_metadata.arg_model = strict
    _keep_optional_text(tool.fn_metadata)
    tool.parameters = strict.model_json_schema(by_alias=True)


def _publish_setting_bounds(server: MCPServer, spec: ToolSpec, settings: Settings) -> None:
    """Write into the published input schema the bounds that are settings (max_k, max_documents_per_call), as
    this server is configured: a fixed number in the annotation would allow what the server refuses, or
    refuse what a raised setting allows. The engine enforces them, naming the setting. Defaults that are
    settings (retrain's epochs, min_triples, ...) are described with the configured value, for the same
    reason: an agent reading the built-in 32 may not try a retrain this server would run."""
    tool = server._tool_manager.get_tool(spec.name)  # noqa: SLF001
    assert tool is not None, spec.name
    for argument, keyword, setting in spec.setting_bounds:
        schema = tool.parameters["properties"][argument]
        # an optional argument's bound belongs to its non-null branch
        target = next((s for s in schema.get("anyOf", []) if s.get("type") != "null"), schema)
        target[keyword] = getattr(settings, setting)
    for argument, setting in spec.setting_defaults:
        schema = tool.parameters["properties"][argument]
        said = f"(default: setting {setting})"
        assert said in schema["description"], (spec.name, argument)
        value = getattr(settings, setting)
        shown = f"{value:g}" if isinstance(value, int | float) else json.dumps(value)
        schema["description"] = schema["description"].replace(said, f"(default: setting {setting}, {shown})")


# Keywords whose value is a schema, a list of schemas, or a map of names to schemas (JSON Schema 2020-12).
_SUBSCHEMA = ("items", "additionalProperties", "not", "contains", "propertyNames", "if", "then", "else")
_SUBSCHEMAS = ("anyOf", "oneOf", "allOf", "prefixItems")
_SCHEMA_MAPS = ("properties", "patternProperties", "$defs", "dependentSchemas")


def _compact_schemas(server: MCPServer, name: str) -> None:
    """Publish the tool's schemas without what pydantic adds that no agent reads: tools/list sits in every
    agent's context, and this was about 13 % of it. Dropped everywhere: `title`, pydantic's restatement of each
    property's name ("Doc Id" for doc_id) and of the Python class name (the tool's own title is Tool.title).
    Dropped from the output schema only, where they have no effect on validation: `default` (every field is
    always sent), `additionalProperties: true` (JSON Schema's default), and `anyOf: [{type: T}, {type: null}]`
    written as `type: [T, null]` (the same set of values). Descriptions, bounds, enums, `required` and
    `$defs` stay; the input schema keeps its `anyOf` and defaults, which clients turn into call forms. The
    arguments and results are still validated by the SDK's pydantic models, not by these dicts;
    tests/test_tool_schemas.py checks real results against what is published, and the size."""
    tool = server._tool_manager.get_tool(name)  # noqa: SLF001
    assert tool is not None, name
    tool.parameters = _compact(tool.parameters, output=False)
    meta = tool.fn_metadata
    if meta.output_schema is not None:
        meta.output_schema = _compact(meta.output_schema, output=True)
        tool.__dict__.pop("output_schema", None)  # Tool.output_schema is a cached_property over it


def _compact(schema: Any, *, output: bool) -> Any:
    if not isinstance(schema, dict):
        return schema  # a boolean schema
    out: dict[str, Any] = {}
    for key, value in schema.items():
        if key == "title" or (output and key == "default"):
            continue
        if output and key == "additionalProperties" and value is True:
            continue
        if key in _SUBSCHEMA:
            value = _compact(value, output=output)
        elif key in _SUBSCHEMAS and isinstance(value, list):
            value = [_compact(v, output=output) for v in value]
        elif key in _SCHEMA_MAPS and isinstance(value, dict):
            value = {k: _compact(v, output=output) for k, v in value.items()}
        out[key] = value
    if output and "type" not in out:
        branches = out.get("anyOf")
        if (
            isinstance(branches, list)
            and len(branches) == 2
            and {"type": "null"} in branches
            and all(set(b) == {"type"} and isinstance(b["type"], str) for b in branches)
        ):
            # Both branches are plain types: one type list (["integer", "null"]).
            kept = next(b["type"] for b in branches if b != {"type": "null"})
            del out["anyOf"]
            out = {"type": [kept, "null"], **out}
    return out


def _integer_fields(schema: dict[str, Any]) -> set[str]:
    """Argument names whose JSON Schema type is integer (alone, or in an anyOf with null)."""
    out = set()
    for field, spec in (schema.get("properties") or {}).items():
        options = [spec, *spec.get("anyOf", [])]
        if any(o.get("type") == "integer" for o in options):
            out.add(field)
    return out


def _keep_optional_text(meta: Any) -> None:
    """The SDK JSON-decodes a string argument whose type is not exactly `str` (for clients that send lists as
    JSON text), so an optional text argument given "null" became None and '["a"]' a list: feedback on a
    document named "null" failed, and list_documents(after="null") started again at the first page. Arguments
    typed `str | None` keep the string they were given. (`fn_metadata` is the SDK's: tests/test_mcp_tools.py
    fails if this stops taking effect.)"""
    texts = {
        name
        for name, field in meta.arg_model.model_fields.items()
        if typing.get_origin(field.annotation) in (typing.Union, types.UnionType)
        and {a for a in typing.get_args(field.annotation) if a is not type(None)} == {str}
    }
    if not texts:
        return
    decode = meta.pre_parse_json

    def pre_parse_json(data: dict[str, Any]) -> dict[str, Any]:
        decoded = decode(data)
        return {k: data[k] if k in texts and isinstance(data[k], str) else v for k, v in decoded.items()}

    object.__setattr__(meta, "pre_parse_json", pre_parse_json)
