"""MCP over stdio, answering every request line. The SDK's stdio transport hands a line it cannot read (not
JSON to its parser, such as a lone surrogate escape or nesting past its depth, or not a JSON-RPC message) to
the server as an exception, which the server only logs: the client waits for an answer that never comes.
Here such a line gets the JSON-RPC error the specification asks for (-32700 parse error, -32600 invalid
request), with the request's id wherever it can be found, so the client's call fails at once and says why.
The SDK also reads stdin with errors="replace", so a line that is not valid UTF-8 reached the tools with U+FFFD
in place of its bytes, and was stored so; here stdin is read keeping those bytes (surrogateescape), which the
parser refuses, and the line is answered with -32700 naming the first bad byte."""

from __future__ import annotations

import json
import logging
import sys
from types import TracebackType
from typing import Any, Self

import anyio
from mcp.server import stdio as sdk_stdio
from mcp.server.stdio import stdio_server
from mcp.shared.message import SessionMessage
from mcp_types import INVALID_REQUEST, PARSE_ERROR, ErrorData, JSONRPCError
from pydantic import ValidationError

log = logging.getLogger(__name__)


def request_id_of(line: str) -> str | int | None:
    """The top-level "id" of a JSON-RPC line, read without parsing the rest of it (which may be past a
    parser's depth or hold text no parser accepts); None when the line has none, or none a response may echo."""
    depth = 0
    i, n = 0, len(line)
    expect_key = False
    while i < n:
        ch = line[i]
        if ch == '"':
            end = _string_end(line, i)
            if end < 0:
                return None
            if depth == 1 and expect_key:
                rest = line[end + 1 :].lstrip()
                if line[i : end + 1] == '"id"' and rest.startswith(":"):
                    return _scalar_id(rest[1:].lstrip())
            i = end + 1
            expect_key = False
            continue
        if ch in "{[":
            depth += 1
            expect_key = ch == "{" and depth == 1
        elif ch in "}]":
            depth -= 1
        elif ch == "," and depth == 1:
            expect_key = True
        i += 1
    return None


def _string_end(line: str, start: int) -> int:
    """Index of the quote closing the JSON string opening at `start`; -1 if it never closes."""
    i = start + 1
    while i < len(line):
        if line[i] == "\\":
            i += 2
            continue
        if line[i] == '"':
            return i
        i += 1
    return -1


def _scalar_id(text: str) -> str | int | None:
    """The id value at the start of `text`: a JSON string or integer (what JSON-RPC ids are)."""
    decoder = json.JSONDecoder()
    try:
        value, _ = decoder.raw_decode(text)
    except ValueError:
        return None
    return echoable_id(value)


def echoable_id(value: Any) -> str | int | None:
    """`value` when a response may carry it as its id: an integer or a string that is valid Unicode (a lone
    surrogate escape such as "\\ud83d" cannot be written out as UTF-8, and writing it ended the session)."""
    if isinstance(value, bool) or not isinstance(value, str | int):
        return None
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return None
    return value


def not_utf8(line: str) -> str | None:
    """What is wrong with a line read with errors="surrogateescape" whose bytes were not valid UTF-8 (its bad
    bytes became U+DC80..U+DCFF, which valid UTF-8 never decodes to); None when they were valid."""
    try:
        raw = line.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:
        return None  # a surrogate no byte became: not from the transport's decoding
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        return f"byte 0x{raw[exc.start]:02x} at offset {exc.start}: {exc.reason}"
    return None


def answer_to_unreadable(exc: Exception) -> JSONRPCError | None:
    """The error reply to a line the transport could not turn into a message; None where no reply is due (a
    malformed notification or response: nothing waits for an answer to those)."""
    if not isinstance(exc, ValidationError):
        return None
    errors = exc.errors(include_url=False)
    for e in errors:  # the parser refuses the bytes that were not UTF-8, kept as surrogate escapes
        raw = e.get("input")
        problem = not_utf8(raw) if e["type"] == "string_unicode" and isinstance(raw, str) else None
        if problem is not None:
            return _error(
                request_id_of(raw), PARSE_ERROR, f"Parse error: the request line is not valid UTF-8 ({problem})"
            )
    unreadable = next((e for e in errors if e["type"] == "json_invalid"), None)
    if unreadable is not None:  # not JSON the SDK's parser reads
        raw = unreadable.get("input")
        request_id = request_id_of(raw) if isinstance(raw, str) else None
        reason = unreadable.get("msg", "invalid JSON")
        return _error(request_id, PARSE_ERROR, f"Parse error: the request could not be read ({reason})")
    # JSON, but no JSON-RPC message: the errors of a field the object lacks carry the whole object.
    whole = next(
        (e["input"] for e in errors if e["type"] == "missing" and len(e["loc"]) == 2 and isinstance(e["input"], dict)),
        None,
    )
    if whole is None:
        if errors and all(len(e["loc"]) == 1 for e in errors):  # an array, a number: not an object at all
            return _error(None, INVALID_REQUEST, "Invalid request: expected one JSON-RPC request object per line")
        return None
    if "method" not in whole or "id" not in whole:  # a notification, or a response to us: nobody waits
        return None
    request_id = echoable_id(whole["id"])
    problems = "; ".join(
        f"{'.'.join(str(part) for part in e['loc'][1:])}: {e['msg']}" for e in errors if e["loc"][0] == "JSONRPCRequest"
    )
    return _error(request_id, INVALID_REQUEST, f"Invalid request: not a JSON-RPC 2.0 request ({problems})")


def _error(request_id: str | int | None, code: int, message: str) -> JSONRPCError:
    return JSONRPCError(jsonrpc="2.0", id=request_id, error=ErrorData(code=code, message=message))


class AnsweringReadStream:
    """The transport's read stream, answering the lines it could not read instead of passing them on."""

    def __init__(self, inner: Any, write_stream: Any) -> None:
        self._inner = inner
        self._write = write_stream

    @property
    def last_context(self) -> Any:  # the sender's context, which the dispatcher reads off the stream
        return getattr(self._inner, "last_context", None)

    async def receive(self) -> SessionMessage | Exception:
        while True:
            item = await self._inner.receive()
            if not isinstance(item, Exception):
                return item
            answer = answer_to_unreadable(item)
            if answer is None:
                return item  # (the server logs it)
            log.warning("answered an unreadable request line: %s", answer.error.message)
            await self._write.send(SessionMessage(answer))

    async def aclose(self) -> None:
        await self._inner.aclose()

    def __aiter__(self) -> Self:
        return self

    async def __anext__(self) -> SessionMessage | Exception:
        try:
            return await self.receive()
        except anyio.EndOfStream:
            raise StopAsyncIteration from None

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()


# The SDK's private names rift claims stdin with (mcp 2.3's mcp/server/stdio.py).
SDK_STDIN_CLAIM = ("_claim_fd", "_open_stdin_diversion", "_UnownedTextWrapper")


async def serve_stdio(lowlevel_server: Any) -> None:
    """Serve one MCP session on stdin/stdout (the SDK's transport: stdin and stdout claimed for the protocol,
    fd 0 pointing at the null device and fd 1 at stderr meanwhile). stdin is claimed here with the SDK's own
    claim, as its transport does, but read keeping bytes that are not UTF-8 rather than replacing them (an
    explicit stdin skips the transport's own claim of fd 0). These are the SDK's private names: should a later
    SDK 2.x move them, the server still starts, on the SDK's own reading of stdin (bytes that are not UTF-8
    then arrive as U+FFFD), and says so on stderr; tests/test_stdio_server.py fails if they move."""
    names = SDK_STDIN_CLAIM
    claim, divert, wrapper = (getattr(sdk_stdio, name, None) for name in names)
    if claim is None or divert is None or wrapper is None:
        log.warning(
            "this MCP SDK's stdio transport lacks %s: request lines that are not UTF-8 are read with U+FFFD "
            "in place of their bytes instead of being refused",
            ", ".join(n for n in names if getattr(sdk_stdio, n, None) is None),
        )
        async with stdio_server() as (read_stream, write_stream):
            await _run(lowlevel_server, read_stream, write_stream)
        return
    stdin_buffer, release_stdin = claim(0, sys.stdin, "rb", divert)
    try:
        text = wrapper(stdin_buffer, encoding="utf-8", errors="surrogateescape")
        async with stdio_server(stdin=anyio.wrap_file(text)) as (read_stream, write_stream):
            await _run(lowlevel_server, read_stream, write_stream)
    finally:
        if release_stdin is not None:
            release_stdin()


async def _run(lowlevel_server: Any, read_stream: Any, write_stream: Any) -> None:
    await lowlevel_server.run(
        AnsweringReadStream(read_stream, write_stream),
        write_stream,
        lowlevel_server.create_initialization_options(),
    )
