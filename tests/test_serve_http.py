"""The real `rift serve --transport streamable-http` process (uvicorn): loopback-only by default, a bearer token
that guards every request when set, a public bind refused without one, and a second server on the same
embedded data dir refused with a message naming the first one's pid."""

from __future__ import annotations

import contextlib
import json
import signal
import socket
import subprocess
import sys
from pathlib import Path

import httpx
import httpx2
import pytest
from mcp import Client
from mcp.client.streamable_http import streamable_http_client

from tests.support.helpers import make_settings, open_rift
from tests.support.processes import free_port, rift_binary, rift_env, start_rift, stop, wait_until

TOKEN = "t0ken-for-tests"
HELLO = {"jsonrpc": "2.0", "id": 1, "method": "tools/list"}


def _spawn(argv: list[str], env: dict[str, str], log: Path, **popen: object) -> subprocess.Popen:
    """A server process whose stdout and stderr go to `log`, with no stdin."""
    with log.open("wb") as out:
        return subprocess.Popen(
            argv, env=env, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, **popen
        )


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


def test_sigint_exits_130_when_started_with_sigint_ignored(tmp_path: Path, tiny_model_path: Path) -> None:
    """A `rift serve &` in a script starts with SIGINT ignored (a non-interactive shell's background job, and
    every child inherits it). uvicorn still stops on a `kill -INT`, but re-raised the signal into the ignored
    disposition once shut down, so no KeyboardInterrupt came and the server exited 0, not Ctrl-C's 130 (found
    when the test suite itself ran as such a job: the Ctrl-C-twice test below then read 0)."""
    port = free_port()
    url = f"http://127.0.0.1:{port}/mcp"
    log = tmp_path / "serve.log"
    proc = _spawn(
        [rift_binary(), "serve", "--transport", "streamable-http", "--port", str(port)],
        rift_env(tmp_path / "data", tiny_model_path),
        log,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN),
    )
    try:
        wait_until(lambda: httpx.get(url, timeout=1) and True, 60, "rift serve", proc, log)
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=60) == 130, log.read_text()
        assert "Traceback" not in log.read_text()
    finally:
        stop(proc)


# `rift serve --transport streamable-http` whose writes embed for 3 s (a big add_documents).
SLOW_WRITE_SERVE = """
import sys, time
import server.engine.embedder as embedder
encode = embedder.Embedder.encode_documents
def slow(self, texts, progress=None):
    sys.stderr.write("embedding now\\n")
    sys.stderr.flush()
    time.sleep(float(sys.argv[2]))
    return encode(self, texts, progress)
embedder.Embedder.encode_documents = slow
import server.service
server.service.CLOSE_WAIT_S = float(sys.argv[3])  # how long a shutdown waits for calls in flight
from server.cli import main
main(["serve", "--transport", "streamable-http", "--port", sys.argv[1]])
"""


def _sse_answer(body: str, request_id: int) -> dict | None:
    """The JSON-RPC answer to `request_id` in an SSE body, if it has one."""
    for line in body.splitlines():
        if line.startswith("data:") and line[5:].strip():
            message = json.loads(line[5:])
            if message.get("id") == request_id:
                return message
    return None


async def _add_during_shutdown(
    tmp_path: Path, model: Path, embed_s: float, wait_s: float, ctrl_c_twice: bool = False
) -> tuple[dict | None, str]:
    """An add_documents whose embedding takes `embed_s`, and SIGTERM as it starts, to a server that waits up to
    `wait_s` for calls in flight: (its JSON-RPC answer, the server's log). `ctrl_c_twice`: SIGINT instead, and
    SIGINT again once the server says it waits."""
    import anyio

    port = free_port()
    log = tmp_path / "serve.log"
    proc = _spawn(
        [sys.executable, "-c", SLOW_WRITE_SERVE, str(port), str(embed_s), str(wait_s)],
        rift_env(tmp_path / "data", model),
        log,
        cwd=Path(__file__).resolve().parents[1],
    )
    url = f"http://127.0.0.1:{port}/mcp"
    headers = {"accept": "application/json, text/event-stream", "content-type": "application/json"}
    try:
        wait_until(lambda: httpx.get(url, timeout=1) and True, 60, "rift serve", proc, log)
        async with httpx.AsyncClient(timeout=120) as http:
            hello = {"protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}}
            initialize = {"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": hello}
            opened = await http.post(url, headers=headers, json=initialize)
            headers |= {"mcp-session-id": opened.headers["mcp-session-id"], "mcp-protocol-version": "2025-06-18"}
            await http.post(url, headers=headers, json={"jsonrpc": "2.0", "method": "notifications/initialized"})
            answers: list[str] = []
            async with http.stream("GET", url, headers=headers) as listening:  # the session's own stream
                assert listening.status_code == 200
                async with anyio.create_task_group() as tg:

                    async def add() -> None:
                        args = {"documents": [{"id": "late", "text": "written as the server stops"}]}
                        call = {"name": "add_documents", "arguments": args}
                        sent = {"jsonrpc": "2.0", "id": 2, "method": "tools/call", "params": call}
                        try:
                            answers.append((await http.post(url, headers=headers, json=sent)).text)
                        except httpx.RemoteProtocolError:  # (cut off: a second Ctrl-C stops at once)
                            answers.append("")

                    tg.start_soon(add)
                    with anyio.fail_after(60):
                        while "embedding now" not in log.read_text():
                            await anyio.sleep(0.05)
                    proc.send_signal(signal.SIGINT if ctrl_c_twice else signal.SIGTERM)
                    if ctrl_c_twice:
                        with anyio.fail_after(60):
                            while "waiting up to" not in log.read_text():
                                await anyio.sleep(0.05)
                        proc.send_signal(signal.SIGINT)
                cut = (httpx.RemoteProtocolError,) if ctrl_c_twice else ()
                with anyio.fail_after(60), contextlib.suppress(*cut):  # the GET stream ends: nothing holds the stop
                    async for _ in listening.aiter_bytes():
                        pass
        status = proc.wait(timeout=60)
        assert status == (130 if ctrl_c_twice else -signal.SIGTERM)  # (Ctrl-C: 130, as every command)
    finally:
        stop(proc)
    return _sse_answer(answers[0], 2), log.read_text()


@pytest.mark.anyio
async def test_a_call_in_flight_when_the_server_stops_gets_its_answer(
    tmp_path: Path, tiny_model_path: Path
) -> None:
    """SIGTERM (or Ctrl-C) while a tool call runs: the call answers before the server stops. sse-starlette
    ended every SSE stream as uvicorn's shutdown began, so the client got an empty 200 for an add_documents
    that went on and was stored; the session's own GET stream still ends, so the server does stop."""
    answer, text = await _add_during_shutdown(tmp_path, tiny_model_path, embed_s=3, wait_s=10)
    assert answer is not None, text  # (was an empty 200)
    assert answer["result"]["structuredContent"]["documents"][0]["status"] == "added", answer
    assert "Traceback" not in text, text
    assert "waiting up to" in text  # one line saying why the stop waits
    app = open_rift(make_settings(tmp_path / "data", tiny_model_path))
    try:
        assert app.engine().state.doc_hashes("default", ["late"])
    finally:
        app.close()


@pytest.mark.anyio
async def test_a_call_that_outlasts_the_shutdowns_wait_is_stopped_and_says_so(
    tmp_path: Path, tiny_model_path: Path
) -> None:
    """A call still running when the wait for calls in flight ends got no answer at all (helper DA): its write
    is now stopped at its next safe point, and its answer says nothing of it is stored."""
    answer, text = await _add_during_shutdown(tmp_path, tiny_model_path, embed_s=2, wait_s=0.5)
    assert answer is not None, text
    assert answer["result"]["isError"] is True, answer
    assert "rift was shut down while this call ran" in answer["result"]["content"][0]["text"], answer
    assert "Traceback" not in text, text
    app = open_rift(make_settings(tmp_path / "data", tiny_model_path))
    try:
        assert not app.engine().state.doc_hashes("default", ["late"])
    finally:
        app.close()


@pytest.mark.anyio
async def test_ctrl_c_twice_stops_at_once_without_tracebacks_and_stores_nothing_half(
    tmp_path: Path, tiny_model_path: Path
) -> None:
    """Ctrl-C again while the server waits for a call: it stops at once, as its warning promised. uvicorn then
    cancels the call and the lifespan, and each logged a traceback, read as a crash; one line says it now.
    The cut-off write stops before it stores anything."""
    answer, text = await _add_during_shutdown(tmp_path, tiny_model_path, embed_s=3, wait_s=30, ctrl_c_twice=True)
    assert answer is None, answer
    assert "Traceback" not in text, text
    assert "stopping at once: 1 call(s) in flight end without an answer" in text, text
    app = open_rift(make_settings(tmp_path / "data", tiny_model_path))
    try:
        assert not app.engine().state.doc_hashes("default", ["late"])
    finally:
        app.close()


# `rift serve --transport streamable-http` whose retrain mines for up to 2 minutes (a long log), checking for a
# cancel or a shutdown every 0.1 s as real mining does; `retrain` returns its job at once.
SLOW_RETRAIN_SERVE = """
import sys, time
import server.learning.manager as manager
def slow_mine(self, strategy=None, negatives_per_query=None, progress=None, dry_run=False, **_):
    for _ in range(1200):
        progress(0, 1)
        time.sleep(0.1)
    raise RuntimeError("mining never ends in this test")
manager.LearningManager.mine = slow_mine
retrain = manager.LearningManager.retrain
manager.LearningManager.retrain = lambda self, *a, **k: retrain(self, *a, **{**k, "wait_for_mining": 0.1})
import server.service
server.service.CLOSE_WAIT_S = float(sys.argv[2])  # how long a shutdown waits for calls in flight
from server.cli import main
main(["serve", "--transport", "streamable-http", "--port", sys.argv[1]])
"""


@pytest.mark.anyio
async def test_a_retrain_status_wait_answers_at_once_when_the_server_stops(
    tmp_path: Path, tiny_model_path: Path
) -> None:
    """SIGTERM while an agent waits on retrain_status(wait_seconds): the wait held the shutdown for its whole
    wait for calls in flight (CLOSE_WAIT_S, 10 s), and then ended with no answer, the client's "SSE stream
    ended without a response" (found by helper DU). It now answers at once, saying why it stopped waiting."""
    import time

    import anyio

    port = free_port()
    log = tmp_path / "serve.log"
    proc = _spawn(
        [sys.executable, "-c", SLOW_RETRAIN_SERVE, str(port), "30"],
        rift_env(tmp_path / "data", tiny_model_path),
        log,
        cwd=Path(__file__).resolve().parents[1],
    )
    url = f"http://127.0.0.1:{port}/mcp"
    try:
        wait_until(lambda: httpx.get(url, timeout=1) and True, 60, "rift serve", proc, log)
        async with (
            httpx2.AsyncClient(timeout=120) as http,
            Client(streamable_http_client(url, http_client=http), mode="legacy") as client,
        ):
            started = await client.call_tool("retrain", {"min_triples": 1})
            assert not started.is_error, started.content
            job = started.structured_content["job_id"]
            waited: list = []

            async def wait() -> None:
                waited.append(await client.call_tool("retrain_status", {"job_id": job, "wait_seconds": 120}))

            async with anyio.create_task_group() as tg:
                tg.start_soon(wait)
                await anyio.sleep(1.0)  # the wait is under way
                stopped_at = time.monotonic()
                proc.send_signal(signal.SIGTERM)
                with anyio.fail_after(25):  # (it was answered, if at all, after CLOSE_WAIT_S: 30 s here)
                    while not waited:
                        await anyio.sleep(0.05)
            answered_s = time.monotonic() - stopped_at
        status = await anyio.to_thread.run_sync(lambda: proc.wait(timeout=60))
        exited_s = time.monotonic() - stopped_at
    finally:
        stop(proc)
    text = log.read_text()
    (answer,) = waited
    assert not answer.is_error, answer.content
    assert answer.structured_content["status"] == "running", answer.structured_content
    assert any("shutting down" in w for w in answer.structured_content["warnings"]), answer.structured_content
    assert answered_s < 5 and exited_s < 15, (answered_s, exited_s, text)
    assert status == -signal.SIGTERM
    assert "Traceback" not in text, text
