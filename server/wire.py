"""Stricter reading of JSON-RPC messages, for both transports. The SDK's notification model ignores an "id"
it cannot take (1.5, null, an object, true), so such a request was read as a notification: dispatched to no
handler and never answered, a client waiting forever on it. Here a message with an "id" is never a
notification, so it fails to parse and is answered with an error (stdio: -32600 by `server.stdio`; HTTP: the
SDK's 400) naming the id. The transports read messages through a module-level adapter, which this swaps."""

from __future__ import annotations

import logging
from types import SimpleNamespace
from typing import Any

import mcp_types
from mcp_types import JSONRPCError, JSONRPCNotification, JSONRPCRequest, JSONRPCResponse
from pydantic import TypeAdapter, model_validator

log = logging.getLogger(__name__)


class _Notification(JSONRPCNotification):
    @model_validator(mode="before")
    @classmethod
    def _has_no_id(cls, data: Any) -> Any:
        if isinstance(data, dict) and "id" in data:
            raise ValueError("a request's id must be a string or an integer")
        return data


STRICT_MESSAGES: TypeAdapter[Any] = TypeAdapter(JSONRPCRequest | _Notification | JSONRPCResponse | JSONRPCError)


def read_ids_strictly() -> bool:
    """Make the SDK's stdio and streamable-HTTP transports parse with `STRICT_MESSAGES`; False (logged) when
    this SDK version reads messages some other way (tests/test_stdio_server.py notices)."""
    import mcp.server.stdio as stdio
    import mcp.server.streamable_http as streamable_http

    stdio_types = getattr(stdio, "types", None)
    if getattr(stdio_types, "jsonrpc_message_adapter", None) is None or not hasattr(
        streamable_http, "jsonrpc_message_adapter"
    ):
        log.debug("this mcp SDK reads messages differently: request ids are checked by the SDK alone")
        return False
    if stdio_types is mcp_types:  # the stdio module reads `types.jsonrpc_message_adapter` at every line
        stdio.types = SimpleNamespace(**{**vars(mcp_types), "jsonrpc_message_adapter": STRICT_MESSAGES})
    streamable_http.jsonrpc_message_adapter = STRICT_MESSAGES
    return True
