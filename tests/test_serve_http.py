"""The real `rift serve --transport streamable-http` process (uvicorn): loopback-only by default, a bearer token
that guards every request when set, a public bind refused without one, and a second server on the same
embedded data dir refused with a message naming the first one's pid."""

from __future__ import annotations

import socket
import subprocess
from pathlib import Path

import httpx
import httpx2
import pytest
from mcp import Client
from mcp.client.streamable_http import streamable_http_client

from tests.support.processes import free_port, rift_binary, rift_env, start_rift, stop

TOKEN = "t0ken-for-tests"
HELLO = {"jsonrpc": "2.0", "id": 1, "method": "tools/list"}


def outward_address() -> str | None:
    """This machine's non-loopback address, if it has one (no packet is sent)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect(("10.255.255.255", 1))
            address = s.getsockname()[0]
        except OSError:
            return None
    return None if address.startswith("127.") else address


@pytest.mark.slow
@pytest.mark.anyio
async def test_token_guards_every_request_of_a_real_server(tmp_path: Path, tiny_model_path: Path) -> None:
    server = start_rift(tmp_path / "data", tiny_model_path, token=TOKEN)
    try:
        for headers in ({}, {"Authorization": "Bearer nope"}, {"Authorization": TOKEN}):
            response = httpx.post(server.url, json=HELLO, headers=headers, timeout=10)
            assert response.status_code == 401, headers
            assert response.headers["www-authenticate"] == "Bearer"
        async with (
            httpx2.AsyncClient(headers=server.headers(), timeout=60) as http,
            Client(streamable_http_client(server.url, http_client=http)) as client,
        ):
            added = await client.call_tool("add_documents", {"documents": [{"id": "a", "text": "the sea"}]})
            assert not added.is_error, added.content
            found = await client.call_tool("hybrid_search", {"query": "sea"})
            assert [h["doc_id"] for h in found.structured_content["hits"]] == ["a"]

        # It listens on loopback only (the default host), so other machines cannot even reach the token check.
        address = outward_address()
        if address is not None:
            with socket.socket() as s:
                s.settimeout(2)
                assert s.connect_ex((address, server.port)) != 0, "rift serve listens beyond loopback"

        # A second server on the same embedded data dir refuses, before speaking any protocol.
        second = subprocess.run(
            [rift_binary(), "serve", "--transport", "streamable-http", "--port", str(free_port())],
            env=rift_env(server.data_dir, tiny_model_path),
            capture_output=True,
            text=True,
            timeout=120,
            stdin=subprocess.DEVNULL,
        )
        assert second.returncode == 1
        assert "in use by another rift process" in second.stderr
        assert f"pid {server.proc.pid}" in second.stderr and "Traceback" not in second.stderr
        assert server.proc.poll() is None  # the first one is unaffected
    finally:
        stop(server.proc)
    assert "Traceback" not in server.log.read_text()


def test_public_bind_without_a_token_is_refused(tmp_path: Path, tiny_model_path: Path) -> None:
    proc = subprocess.run(
        [
            rift_binary(),
            "serve",
            "--transport",
            "streamable-http",
            "--host",
            "0.0.0.0",
            "--port",
            str(free_port()),
        ],
        env=rift_env(tmp_path / "data", tiny_model_path),
        capture_output=True,
        text=True,
        timeout=120,
        stdin=subprocess.DEVNULL,
    )
    assert proc.returncode == 1
    assert "refusing to bind 0.0.0.0 without a bearer token" in proc.stderr
    assert "Traceback" not in proc.stderr
