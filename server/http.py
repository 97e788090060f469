"""Streamable-HTTP transport: loopback by default, and a bearer token that is required beyond loopback."""

from __future__ import annotations

import hmac
import ipaddress
import json
import logging
import socket
from typing import Any

from server.config import Settings

log = logging.getLogger(__name__)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class BearerAuth:
    """ASGI middleware: every HTTP request must carry `Authorization: Bearer <token>`."""

    def __init__(self, app: Any, token: str) -> None:
        self.app = app
        self._expected = token.encode()

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            given = dict(scope.get("headers") or []).get(b"authorization", b"")
            # The scheme is case-insensitive (RFC 9110 11.1) and may be followed by more than one space.
            scheme, _, credentials = given.strip().partition(b" ")
            if scheme.lower() != b"bearer" or not hmac.compare_digest(credentials.strip(), self._expected):
                body = b'{"error": "missing or wrong bearer token"}'
                await send(
                    {
                        "type": "http.response.start",
                        "status": 401,
                        "headers": [(b"content-type", b"application/json"), (b"www-authenticate", b"Bearer")],
                    }
                )
                await send({"type": "http.response.body", "body": body})
                return
        await self.app(scope, receive, send)


class ExplainTooLarge:
    """ASGI middleware: the SDK answers a body over `max_request_body_size` with a plain-text 413, which an MCP
    client reports as a bare "error response" (found by helper CB: the Python SDK's said nothing more), so an
    agent never learns to split its call. The 413 goes out as a JSON-RPC error that says what to do."""

    def __init__(self, app: Any, limit_mb: int) -> None:
        self.app = app
        self._body = json.dumps(
            {
                "jsonrpc": "2.0",
                "id": None,
                "error": {
                    "code": -32600,
                    "message": f"request body over {limit_mb} MiB (setting http_max_request_mb): send fewer or "
                    "shorter documents per call",
                },
            }
        ).encode()

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        replaced = False

        async def explained(message: dict[str, Any]) -> None:
            nonlocal replaced
            if message["type"] == "http.response.start" and message.get("status") == 413:
                replaced = True
                headers = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(self._body))]
                await send({"type": "http.response.start", "status": 413, "headers": headers})
                await send({"type": "http.response.body", "body": self._body})
            elif not replaced:
                await send(message)

        await self.app(scope, receive, explained)


def build_http_app(server: Any, settings: Settings) -> Any:
    if not is_loopback(settings.http_host) and not settings.http_token:
        raise ValueError(
            f"refusing to bind {settings.http_host} without a bearer token: set RIFT_HTTP_TOKEN (or bind 127.0.0.1)"
        )
    from mcp.server.transport_security import TransportSecuritySettings

    host = settings.http_host
    if is_loopback(host):
        # No token on loopback, so a web page must not reach the server through DNS rebinding: only loopback
        # names in Host and Origin. The SDK does this itself for three spellings of loopback; every loopback
        # bind (127.0.0.2, a long-form ::1) gets it here.
        names = {"127.0.0.1", "localhost", "[::1]", f"[{host}]" if ":" in host else host}
        security = TransportSecuritySettings(
            enable_dns_rebinding_protection=True,
            allowed_hosts=sorted({*names, *(f"{name}:*" for name in names)}),
            allowed_origins=sorted({*(f"http://{n}" for n in names), *(f"http://{n}:*" for n in names)}),
        )
    else:  # beyond loopback the bearer token guards every request
        security = TransportSecuritySettings(enable_dns_rebinding_protection=False)
    app = server.streamable_http_app(
        transport_security=security,
        host=host,
        max_request_body_size=settings.http_max_request_mb * 1024 * 1024,
    )
    app = ExplainTooLarge(app, settings.http_max_request_mb)
    return BearerAuth(app, settings.http_token) if settings.http_token else app


def run_http(server: Any, settings: Settings) -> None:
    import uvicorn

    app = build_http_app(server, settings)
    host, port = settings.http_host, settings.http_port
    check_can_listen(host, port)
    shown = f"[{host}]" if ":" in host else host
    log.warning("rift MCP over streamable HTTP on http://%s:%d/mcp", shown, port)
    uvicorn.run(app, host=host, port=port, log_level="warning")


def check_can_listen(host: str, port: int) -> None:
    """A port in use or a host that is not this machine's: one clear error before anything says it serves."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except OSError as exc:
        raise ValueError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    # Every address the name resolves to (localhost: ::1 and 127.0.0.1), as asyncio's server binds them all.
    for family, kind, proto, _name, address in dict.fromkeys(infos):
        with socket.socket(family, kind, proto) as probe:
            # As uvicorn binds: a port whose last server just stopped (sockets in TIME_WAIT) is free to use.
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:  # as asyncio does: the IPv6 socket does not also take IPv4
                probe.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            try:
                probe.bind(address)
            except OSError as exc:
                raise ValueError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
