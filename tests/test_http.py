"""Streamable HTTP: a bearer token guards every request, and binding beyond loopback needs one."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import httpx2
import pytest
import uvicorn
from mcp import Client
from mcp.client.streamable_http import streamable_http_client

from server.app import create_server
from server.config import Settings
from server.http import build_http_app, is_loopback
from tests.support.helpers import make_settings

TOKEN = "s3cret-token"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def http_url(tmp_path: Path, tiny_model_path: Path) -> Iterator[str]:
    port = free_port()
    settings = make_settings(tmp_path / "data", tiny_model_path, http_port=port, http_token=TOKEN)
    server, thread = serve(settings, "127.0.0.1")
    yield f"http://127.0.0.1:{port}/mcp"
    server.should_exit = True
    thread.join(timeout=30)


def test_requests_without_the_token_are_refused(http_url: str) -> None:
    hello = {"jsonrpc": "2.0", "id": 1, "method": "tools/list"}
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": TOKEN}):
        response = httpx.post(http_url, json=hello, headers=headers, timeout=10)
        assert response.status_code == 401, headers
        assert response.headers["www-authenticate"] == "Bearer"
        assert "bearer token" in response.json()["error"]
    # The scheme is case-insensitive (RFC 9110): these pass the token check (and get the protocol's answer).
    for given in (f"bearer {TOKEN}", f"BEARER  {TOKEN}"):
        response = httpx.post(http_url, json=hello, headers={"Authorization": given}, timeout=10)
        assert response.status_code != 401, given


@pytest.mark.anyio
async def test_requests_with_the_token_work(http_url: str) -> None:
    auth = {"Authorization": f"Bearer {TOKEN}"}
    for _ in range(2):  # two sessions in a row share the one engine (the lifespan runs once)
        async with (
            httpx2.AsyncClient(headers=auth, timeout=30) as http,
            Client(streamable_http_client(http_url, http_client=http), mode="legacy") as client,
        ):
            tools = {t.name for t in (await client.list_tools()).tools}
            assert {"add_documents", "hybrid_search", "delete_documents", "stats"} <= tools
            added = await client.call_tool("add_documents", {"documents": [{"id": "a", "text": "the sea"}]})
            assert not added.is_error, added.content
            found = await client.call_tool("hybrid_search", {"query": "sea"})
            assert [h["doc_id"] for h in found.structured_content["hits"]] == ["a"]


@pytest.mark.anyio
@pytest.mark.parametrize("mode", ["legacy", "2026-07-28"])
async def test_an_sdk_client_is_told_its_request_was_too_large(
    tmp_path: Path, tiny_model_path: Path, mode: str
) -> None:
    """The SDK's plain-text 413 reached an agent as a bare "error response" (found by helper CB): the JSON-RPC
    error it gets instead says which setting bounds it and what to do, and the session goes on."""
    from mcp.shared.exceptions import MCPError

    port = free_port()
    settings = make_settings(tmp_path / "data", tiny_model_path, http_port=port, http_max_request_mb=1)
    server, thread = serve(settings, "127.0.0.1")
    try:
        async with (
            httpx2.AsyncClient(timeout=30) as http,
            Client(streamable_http_client(f"http://127.0.0.1:{port}/mcp", http_client=http), mode=mode) as client,
        ):
            with pytest.raises(MCPError, match="over 1 MiB .*http_max_request_mb.*fewer or shorter documents"):
                await client.call_tool("add_documents", {"documents": [{"id": "big", "text": "word " * 400_000}]})
            assert not (await client.call_tool("stats", {})).is_error
    finally:
        server.should_exit = True
        thread.join(timeout=30)


def test_binding_beyond_loopback_needs_a_token(tmp_path: Path, tiny_model_path: Path) -> None:
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("192.168.1.5") and not is_loopback("example.com")
    open_settings = make_settings(tmp_path / "data", tiny_model_path, http_host="0.0.0.0")
    with pytest.raises(ValueError, match="without a bearer token"):
        build_http_app(create_server(open_settings), open_settings)
    guarded = Settings(**{**open_settings.model_dump(), "http_token": TOKEN})
    assert build_http_app(create_server(guarded), guarded) is not None
    local = make_settings(tmp_path / "data", tiny_model_path)  # loopback without a token is allowed
    assert build_http_app(create_server(local), local) is not None


def serve(settings: Settings, host: str) -> tuple[uvicorn.Server, threading.Thread]:
    app = build_http_app(create_server(settings), settings)
    server = uvicorn.Server(uvicorn.Config(app, host=host, port=settings.http_port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert time.monotonic() < deadline and thread.is_alive(), "uvicorn did not start"
        time.sleep(0.05)
    return server, thread


def test_every_loopback_bind_refuses_foreign_hosts_and_bounds_the_body(
    tmp_path: Path, tiny_model_path: Path
) -> None:
    """No token on loopback, so DNS rebinding must be refused on any loopback address, not only 127.0.0.1;
    and a request body over http_max_request_mb gets 413."""
    port = free_port()
    settings = make_settings(
        tmp_path / "data", tiny_model_path, http_host="127.0.0.2", http_port=port, http_max_request_mb=1
    )
    server, thread = serve(settings, "127.0.0.2")
    try:
        url = f"http://127.0.0.2:{port}/mcp"
        hello = {
            "jsonrpc": "2.0",
            "id": 1,
            "method": "initialize",
            "params": {
                "protocolVersion": "2025-06-18",
                "capabilities": {},
                "clientInfo": {"name": "t", "version": "1"},
            },
        }
        accept = {"Accept": "application/json, text/event-stream"}
        evil = httpx.post(
            url, json=hello, headers={**accept, "Host": "evil.example", "Origin": "http://evil.example"}
        )
        assert evil.status_code == 421
        foreign_origin = httpx.post(url, json=hello, headers={**accept, "Origin": "http://evil.example"})
        assert foreign_origin.status_code == 403
        assert httpx.post(url, json=hello, headers=accept, timeout=10).status_code == 200
        big = {**hello, "params": {**hello["params"], "pad": "x" * (1024 * 1024)}}
        too_large = httpx.post(url, json=big, headers=accept, timeout=10)
        assert too_large.status_code == 413 and "http_max_request_mb" in too_large.json()["error"]["message"]
        # In a session, a request whose id JSON-RPC does not allow was taken for a notification: 202 Accepted,
        # and no answer ever came.
        opened = httpx.post(url, json=hello, headers=accept, timeout=10)
        session = {**accept, "Mcp-Session-Id": opened.headers["mcp-session-id"], "Mcp-Protocol-Version": "2025-06-18"}
        initialized = {"jsonrpc": "2.0", "method": "notifications/initialized"}
        assert httpx.post(url, json=initialized, headers=session, timeout=10).status_code == 202
        for odd in (1.5, None, {"a": 1}):
            answer = httpx.post(url, json={"jsonrpc": "2.0", "id": odd, "method": "ping"}, headers=session, timeout=10)
            assert answer.status_code == 400 and "id.int" in answer.json()["error"]["message"], answer.text
    finally:
        server.should_exit = True
        thread.join(timeout=30)


def test_a_token_with_whitespace_is_refused_at_start(tmp_path: Path, tiny_model_path: Path) -> None:
    from pydantic import ValidationError

    for token in ("secret ", " secret", "sec ret"):
        with pytest.raises(ValidationError, match="must not contain whitespace"):
            make_settings(tmp_path / "data", tiny_model_path, http_token=token)
    for token in ("sécret", "密钥"):  # clients send header bytes as Latin-1, or refuse: it could never match
        with pytest.raises(ValidationError, match="must be printable ASCII"):
            make_settings(tmp_path / "data", tiny_model_path, http_token=token)


def test_a_port_in_use_is_one_clear_error_before_anything_says_it_serves() -> None:
    import socket

    from server.http import check_can_listen

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(ValueError, match=f"cannot listen on 127.0.0.1:{port}: Address already in use"):
            check_can_listen("127.0.0.1", port)
        # A name that resolves to several addresses (localhost: ::1 and 127.0.0.1 on many hosts) is refused
        # when any of them is taken, whichever the resolver lists first.
        with pytest.raises(ValueError, match=f"cannot listen on localhost:{port}: Address already in use"):
            check_can_listen("localhost", port)
    with socket.socket() as stopped:  # a server that just stopped leaves its port reusable at once
        stopped.bind(("127.0.0.1", 0))
        port = stopped.getsockname()[1]
    check_can_listen("127.0.0.1", port)
    with pytest.raises(ValueError, match="cannot listen on no-such-host.invalid:80"):
        check_can_listen("no-such-host.invalid", 80)
