"""Streamable-HTTP transport: loopback by default, and a bearer token that is required beyond loopback."""

from __future__ import annotations

import hmac
import ipaddress
import json
import logging
import signal
import socket
import sys
import time
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


class CallsInFlight:
    """ASGI middleware: counts the POST requests being answered (a tool call's answer streams on its POST)."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.count = 0

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope.get("method") != "POST":
            await self.app(scope, receive, send)
            return
        self.count += 1
        try:
            await self.app(scope, receive, send)
        finally:
            self.count -= 1


# After the wait for calls in flight, the time a stopped write gets to send its answer.
STOP_GRACE_S = 2.0


def draining_server(config: Any, calls: CallsInFlight, wait_s: float) -> Any:
    """uvicorn's Server whose shutdown (SIGTERM, Ctrl-C) lets the calls in flight answer first, up to `wait_s`.
    sse-starlette (the SDK's SSE responses) ended every open stream as soon as uvicorn began its shutdown, a
    POST's too: a tool call in flight answered its client with an empty 200, while its write went on and was
    stored (found by helper CV). Its streams now end once those calls have answered (or the wait is over): the
    session's GET stream too, which never ends by itself and would hold uvicorn's shutdown for good."""
    import asyncio

    import uvicorn
    from sse_starlette.sse import AppStatus

    AppStatus.disable_automatic_graceful_drain()  # (should_exit is set below, once the calls have answered)

    class DrainingServer(uvicorn.Server):
        interrupted = False  # a SIGINT (Ctrl-C) stopped it

        def handle_exit(self, sig: int, frame: Any) -> None:
            # uvicorn re-raises the signal once shut down, and run_http exits 130 on the KeyboardInterrupt; but a
            # process started with SIGINT ignored (a `cmd &` of a script, which every child inherits) gets no
            # KeyboardInterrupt, and exited 0 after a `kill -INT` stopped it.
            if sig == signal.SIGINT:
                self.interrupted = True
            super().handle_exit(sig, frame)

        async def shutdown(self, sockets: Any = None) -> None:
            from server.app import SERVING

            for listening in self.servers:  # no new connection meanwhile (uvicorn's own shutdown does it again)
                listening.close()
            for rift in list(SERVING):  # a call that only waits (a retrain_status wait) answers now
                rift.begin_shutdown()
            deadline = time.monotonic() + wait_s
            if calls.count and not self.force_exit:
                log.warning(
                    "shutting down: waiting up to %.0f s for %d call(s) in flight to answer (Ctrl-C again to stop "
                    "at once)",
                    wait_s,
                    calls.count,
                )
            while calls.count and not self.force_exit and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            if calls.count and self.force_exit:
                log.warning("stopping at once: %d call(s) in flight end without an answer", calls.count)
            if calls.count and not self.force_exit:
                # Still running (a long write): stop the writes at their next safe point, so that their calls
                # answer that nothing of them is stored, rather than end without an answer (helper DA).
                for rift in list(SERVING):
                    rift.stop_writes()
                grace = time.monotonic() + STOP_GRACE_S
                while calls.count and not self.force_exit and time.monotonic() < grace:
                    await asyncio.sleep(0.05)
            AppStatus.should_exit = True  # the streams still open end now
            await super().shutdown(sockets)

    return DrainingServer(config)


class _CutOffQuietly(logging.Filter):
    """A second Ctrl-C stops the server at once: uvicorn then cancels the calls still running and the
    lifespan, and logged a traceback for each, read as a crash. The shutdown's warning ("stopping at once")
    says what happened; the tracebacks of those cancellations are dropped (anything else is still logged)."""

    def __init__(self, server: Any) -> None:
        super().__init__()
        self.server = server

    def filter(self, record: logging.LogRecord) -> bool:
        import asyncio

        if not self.server.force_exit:
            return True
        cut_off = (asyncio.CancelledError, KeyboardInterrupt)
        if record.exc_info and isinstance(record.exc_info[1], cut_off):
            return False
        text = record.getMessage()  # (the lifespan's own failure arrives as a formatted traceback)
        return not (text.startswith("Traceback") and text.rstrip().endswith(("CancelledError", "KeyboardInterrupt")))


def run_http(server: Any, settings: Settings) -> None:
    import uvicorn

    from server.service import CLOSE_WAIT_S

    calls = CallsInFlight(build_http_app(server, settings))
    host, port = settings.http_host, settings.http_port
    check_can_listen(host, port)
    shown = f"[{host}]" if ":" in host else host
    log.warning("rift MCP over streamable HTTP on http://%s:%d/mcp", shown, port)
    config = uvicorn.Config(calls, host=host, port=port, log_level="warning")
    http = draining_server(config, calls, CLOSE_WAIT_S)
    from sse_starlette.sse import AppStatus

    quiet = _CutOffQuietly(http)
    logging.getLogger("uvicorn.error").addFilter(quiet)
    interrupted = False
    try:
        http.run()
    except KeyboardInterrupt:  # the Ctrl-C uvicorn re-raises once shut down (SIGTERM's ends the process, 143)
        interrupted = True
    finally:
        AppStatus.should_exit = False  # (process-wide: a later server in this process must not start ended)
        logging.getLogger("uvicorn.error").removeFilter(quiet)
    if not http.started:
        sys.exit(3)  # (uvicorn.run's exit status when the server could not start)
    if interrupted or http.interrupted:
        sys.exit(130)  # (as every command stopped by Ctrl-C; uvicorn.run's is 0)


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
