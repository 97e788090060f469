"""`rift serve` as a subprocess over stdio, the way Claude Desktop runs it: handshake, tools/list before the
model has loaded, then real tool calls; stdout carries nothing but JSON-RPC; a second server is refused."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from mcp import Client
from mcp.client.stdio import StdioServerParameters, stdio_client
from mcp_types.version import HANDSHAKE_PROTOCOL_VERSIONS

from server.stdio import request_id_of
from tests.support.helpers import make_settings, open_rift

RIFT = str(Path(sys.executable).parent / "rift")


def server_env(data_dir: Path, model: Path) -> dict[str, str]:
    return {
        "RIFT_DATA_DIR": str(data_dir),
        "RIFT_MODEL": str(model),
        "RIFT_CHUNK_TOKENS": "48",
        "RIFT_CHUNK_OVERLAP": "8",
        "HF_HUB_OFFLINE": "1",
        "RIFT_CONFIG": os.devnull,  # ignore any user config
    }


@pytest.mark.anyio
async def test_claude_desktop_style_session(tmp_path: Path, tiny_model_path: Path) -> None:
    params = StdioServerParameters(
        command=RIFT, args=["-v", "serve"], env=server_env(tmp_path / "data", tiny_model_path)
    )
    errlog_path = tmp_path / "stderr.log"
    with errlog_path.open("w") as errlog:
        started = time.perf_counter()
        async with Client(stdio_client(params, errlog=errlog), mode="legacy") as client:
            initialized = time.perf_counter() - started
            tools = await client.list_tools()
            listed = time.perf_counter() - started
            # The model loads in the background: the server answered before it was ready.
            loaded_before_list = "rift ready" in errlog_path.read_text()
            assert {"add_documents", "hybrid_search", "delete_documents", "stats"} <= {
                t.name for t in tools.tools
            }
            assert client.server_info is not None and client.server_info.name == "rift"

            added = await client.call_tool(
                "add_documents",
                {"documents": [{"id": "n1", "text": "the cat sat on the mat"}, {"text": "a blue fish"}]},
            )
            assert not added.is_error and added.structured_content["added"] == 2
            found = await client.call_tool("hybrid_search", {"query": "cat on a mat", "k": 1})
            assert not found.is_error
            assert [h["doc_id"] for h in found.structured_content["hits"]] == ["n1"]
            bad = await client.call_tool("hybrid_search", {"query": " "})
            assert bad.is_error and "query" in bad.content[0].text
    print(f"stdio cold start: initialize {initialized:.2f}s, tools/list {listed:.2f}s")
    assert not loaded_before_list, "tools/list waited for the model"
    assert listed < 10


# An initialize request's params (the newest protocol version).
HELLO = {
    "protocolVersion": HANDSHAKE_PROTOCOL_VERSIONS[-1],
    "capabilities": {},
    "clientInfo": {"name": "t", "version": "0"},
}


def rpc(msg_id: int | None, method: str, params: dict | None = None) -> str:
    msg: dict = {"jsonrpc": "2.0", "method": method}
    if msg_id is not None:
        msg["id"] = msg_id
    if params is not None:
        msg["params"] = params
    return json.dumps(msg) + "\n"


def test_stdout_carries_only_json_rpc(tmp_path: Path, tiny_model_path: Path) -> None:
    version = HANDSHAKE_PROTOCOL_VERSIONS[-1]
    env = {**os.environ, **server_env(tmp_path / "data", tiny_model_path)}
    stderr_path = tmp_path / "stderr.log"
    lines: list[str] = []
    with stderr_path.open("w") as errlog:
        proc = subprocess.Popen(
            [RIFT, "-v", "serve"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=errlog,
            text=True,
            env=env,
        )
        assert proc.stdin is not None and proc.stdout is not None

        def ask(msg_id: int | None, method: str, params: dict | None = None) -> dict | None:
            # One request at a time: the server handles requests concurrently.
            proc.stdin.write(rpc(msg_id, method, params))
            proc.stdin.flush()
            while msg_id is not None:
                line = proc.stdout.readline()
                assert line, stderr_path.read_text()[-3000:]
                lines.append(line)
                message = json.loads(line)  # any non-JSON byte on stdout would break a real client
                assert message["jsonrpc"] == "2.0"
                if message.get("id") == msg_id:
                    return message
            return None

        hello = {"protocolVersion": version, "capabilities": {}, "clientInfo": {"name": "t", "version": "0"}}
        assert ask(1, "initialize", hello)["result"]["serverInfo"]["name"] == "rift"
        ask(None, "notifications/initialized")
        assert len(ask(2, "tools/list")["result"]["tools"]) >= 4
        add = {"name": "add_documents", "arguments": {"documents": [{"text": "the sea"}]}}
        assert ask(3, "tools/call", add)["result"]["structuredContent"]["added"] == 1
        search = ask(4, "tools/call", {"name": "hybrid_search", "arguments": {"query": "sea"}})
        assert search["result"]["structuredContent"]["hits"][0]["text"] == "the sea"
        bad = ask(5, "tools/call", {"name": "hybrid_search", "arguments": {"query": "sea", "k": 0}})
        assert bad["result"]["isError"] is True

        def send_raw(line: str) -> dict:
            proc.stdin.write(line + "\n")
            proc.stdin.flush()
            answer = proc.stdout.readline()
            assert answer, stderr_path.read_text()[-3000:]
            lines.append(answer)
            return json.loads(answer)

        # Lines the SDK's parser cannot read are answered with the request's id, never left hanging.
        surrogate = '{"jsonrpc":"2.0","id":6,"method":"tools/call","params":{"name":"hybrid_search",'
        surrogate += '"arguments":{"query":"\\ud83d"}}}'
        assert send_raw(surrogate)["id"] == 6 and lines[-1].count("-32700") == 1
        deep = '{"jsonrpc":"2.0","id":"seven","method":"tools/call","params":{"name":"stats","arguments":'
        deep += '{"x":' + "[" * 3000 + "]" * 3000 + "}}}"
        answer = send_raw(deep)
        assert answer["id"] == "seven" and answer["error"]["code"] == -32700
        # An id no reply can carry (a lone surrogate cannot be written as UTF-8) is answered with id null; it
        # used to end the session, as the transport failed to write the reply.
        bad_id = send_raw('{"jsonrpc":"2.0","id":"\\ud83d","method":"ping","params":{"x":"\\udc00"}}')
        assert bad_id["id"] is None and bad_id["error"]["code"] == -32700
        garbage = send_raw("this is not json")
        assert garbage["id"] is None and garbage["error"]["code"] == -32700
        no_version = send_raw('{"id": 8, "method": "tools/list"}')
        assert no_version["id"] == 8 and no_version["error"]["code"] == -32600
        old_version = send_raw('{"jsonrpc": "1.0", "id": 9, "method": "tools/list"}')
        assert old_version["id"] == 9 and "jsonrpc: Input should be '2.0'" in old_version["error"]["message"]
        # A raw NaN (Python's JSON reader takes it) is named as what it is, not "less than or equal to 20".
        nan = send_raw('{"jsonrpc":"2.0","id":13,"method":"tools/call","params":{"name":"retrain","arguments":'
                       '{"epochs":NaN,"dry_run":true}}}')
        assert nan["id"] == 13 and nan["result"]["isError"] is True, nan
        assert nan["result"]["content"][0]["text"] == "Error executing tool retrain: epochs: must be a finite number, got NaN"
        bad_params = send_raw('{"jsonrpc": "2.0", "id": 10, "method": "tools/call", "params": "abc"}')
        assert bad_params["id"] == 10 and bad_params["error"]["code"] == -32600
        # An id JSON-RPC does not allow read as a notification's (the SDK ignores what it cannot take), so the
        # request was dispatched to nothing and never answered; its client waited forever.
        for odd in ("1.5", "null", '{"a": 1}', "true"):
            for method in ("ping", "tools/call"):
                answer = send_raw(f'{{"jsonrpc": "2.0", "id": {odd}, "method": "{method}", "params": {{}}}}')
                assert answer["id"] is None and answer["error"]["code"] == -32600, answer
                assert "id.int: Input should be a valid integer" in answer["error"]["message"], answer
        # Params the SDK's model refuses name the field, not a bare "Invalid request parameters".
        nameless = send_raw('{"jsonrpc": "2.0", "id": 12, "method": "tools/call", "params": {"arguments": {}}}')
        assert nameless["id"] == 12 and nameless["error"]["code"] == -32602
        assert "Invalid params for tools/call: params.name: Field required" in nameless["error"]["message"], nameless
        # A malformed notification gets no answer (nothing waits for one): the next line is the next reply.
        proc.stdin.write('{"jsonrpc": "1.0", "method": "notifications/initialized"}\n')
        before = len(lines)
        assert len(ask(11, "tools/list")["result"]["tools"]) >= 4  # and the session goes on
        assert [json.loads(line).get("id") for line in lines[before:]] == [11]
        closed = time.monotonic()
        proc.stdin.close()  # EOF ends the server
        rest = proc.stdout.read()
        assert proc.wait(timeout=60) == 0
        # Within the 2 s an MCP client (the SDK's stdio_client) waits before its SIGTERM: the interpreter's own
        # teardown took 3-4 s after a tool had run (found by helper BG). (3 s: a loaded CI machine's margin.)
        assert time.monotonic() - closed < 3.0
    for line in rest.splitlines():
        assert json.loads(line)["jsonrpc"] == "2.0"
    assert "rift ready" in stderr_path.read_text()  # logs go to stderr


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ('{"jsonrpc":"2.0","id":7,"method":"m"}', 7),
        ('{"jsonrpc":"2.0","method":"m","params":{"id":"inner","a":[{"id":1}]},"id":"outer"}', "outer"),
        ('{"method":"m","params":{"text":"say \\"id\\": 3"},"id":-2}', -2),
        ('{"jsonrpc":"2.0","method":"m","params":{"id":5}}', None),  # a notification: only a nested id
        ('{"id":true,"method":"m"}', None),  # not a JSON-RPC id
        ('{"id":1.5,"method":"m"}', None),
        ('{"jsonrpc":"2.0","id":"\\ud83d","method":"m"}', None),  # no reply could carry it as UTF-8
        ('{"params":"unterminated', None),
        ("[1, 2]", None),
    ],
)
def test_request_id_of_reads_only_the_top_level_id(line: str, expected: object) -> None:
    assert request_id_of(line) == expected


def test_second_server_on_a_locked_data_dir_is_refused(tmp_path: Path, tiny_model_path: Path) -> None:
    holder = open_rift(make_settings(tmp_path / "data", tiny_model_path))
    try:
        env = {**os.environ, **server_env(tmp_path / "data", tiny_model_path)}
        proc = subprocess.run(
            [RIFT, "serve"], env=env, capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL
        )
    finally:
        holder.close()
    assert proc.returncode != 0
    assert "in use by another rift process" in proc.stderr and str(tmp_path / "data") in proc.stderr
    assert f"pid {os.getpid()}" in proc.stderr
    assert proc.stdout == ""


@pytest.mark.parametrize("signum", ["SIGTERM", "SIGINT"])
def test_sigterm_closes_the_server_before_it_exits(tmp_path: Path, tiny_model_path: Path, signum: str) -> None:
    """A client's SIGTERM (its next step when closing stdin did not stop the server) must not lose the
    searches the server answered: their log records are what feedback and retrain read. Ctrl-C in a terminal
    (SIGINT) does the same: it left the process running, holding the data dir, until stdin closed."""
    import signal

    from server.learning.query_log import QueryLog

    env = {**os.environ, **server_env(tmp_path / "data", tiny_model_path)}
    with (tmp_path / "stderr.log").open("w") as errlog:
        proc = subprocess.Popen(
            [RIFT, "serve"], stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=errlog, text=True, env=env
        )
        assert proc.stdin is not None and proc.stdout is not None

        def ask(msg_id: int, method: str, params: dict) -> dict:
            proc.stdin.write(rpc(msg_id, method, params))
            proc.stdin.flush()
            while True:
                message = json.loads(proc.stdout.readline())
                if message.get("id") == msg_id:
                    return message

        ask(1, "initialize", HELLO)
        proc.stdin.write(rpc(None, "notifications/initialized", None))
        add = {"name": "add_documents", "arguments": {"documents": [{"text": "the sea and the river"}]}}
        ask(2, "tools/call", add)
        answered = []
        for i in range(20):
            found = ask(10 + i, "tools/call", {"name": "hybrid_search", "arguments": {"query": f"sea {i}"}})
            answered.append(found["result"]["structuredContent"]["query_id"])
        proc.send_signal(getattr(signal, signum))
        assert proc.wait(timeout=60) == 128 + getattr(signal, signum)
    log = QueryLog(make_settings(tmp_path / "data", tiny_model_path).log_db)
    try:
        assert all(log.get(query_id) is not None for query_id in answered)
    finally:
        log.close()
    open_rift(make_settings(tmp_path / "data", tiny_model_path)).close()  # the lock is free


# A served app whose close takes a while (a retrain checkpointing), stopped by two Ctrl-C presses.
SLOW_CLOSE = """
import os, signal, sys, threading, time
from pathlib import Path
import server.app as app
from tests.support.helpers import make_settings, open_rift

rift = open_rift(make_settings(Path(sys.argv[1]), Path(sys.argv[2])))
close = rift.learning.close
rift.learning.close = lambda: (time.sleep(3), close())
app.SERVING.append(rift)
app.close_on_terminate()

def presses():
    time.sleep(0.5)
    os.kill(os.getpid(), signal.SIGINT)
    os.kill(os.getpid(), signal.SIGTERM)  # the same press, forwarded by a launcher: the close goes on
    time.sleep(1.5)
    os.kill(os.getpid(), signal.SIGINT)  # pressed again

threading.Thread(target=presses, daemon=True).start()
while True:
    time.sleep(0.2)
"""


def test_a_second_ctrl_c_while_closing_exits_at_once(tmp_path: Path, tiny_model_path: Path) -> None:
    """The second signal ran the close again inside the first, which waited for the lock the first held:
    the process hung for good (a SIGTERM too), holding the data dir."""
    started = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-c", SLOW_CLOSE, str(tmp_path / "data"), str(tiny_model_path)],
        cwd=Path(__file__).resolve().parents[1],
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 130, proc.stderr
    assert time.monotonic() - started < 30


# `rift serve` whose model takes a minute to load (as a cold start on a busy machine can take half of one).
SLOW_LOAD_SERVE = """
import time
import server.engine.embedder as embedder
load = embedder.Embedder.__init__
def slow(self, *args, **kwargs):
    time.sleep(60)
    load(self, *args, **kwargs)
embedder.Embedder.__init__ = slow
from server.cli import main
main(["serve"])
"""


def test_eof_while_the_model_loads_exits_at_once_and_frees_the_data_dir(tmp_path: Path, tiny_model_path: Path) -> None:
    """A client that closes stdin and starts the server again must not find the data dir in use by the first
    server, still loading its model (the close waited up to 60 s for the load). Loading writes nothing, so the
    close does not wait for it; the next server starts and serves."""
    env = {**os.environ, **server_env(tmp_path / "data", tiny_model_path)}
    with (tmp_path / "first.log").open("w") as errlog:
        first = subprocess.Popen(
            [sys.executable, "-c", SLOW_LOAD_SERVE], stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=errlog,
            text=True, env=env,
        )
        assert first.stdin is not None and first.stdout is not None
        try:
            first.stdin.write(rpc(1, "initialize", HELLO))
            first.stdin.flush()
            assert json.loads(first.stdout.readline())["id"] == 1
            first.stdin.close()
            closed = time.monotonic()
            assert first.wait(timeout=15) == 0
            assert time.monotonic() - closed < 15
        finally:
            first.kill()
            first.wait()
    second = subprocess.Popen(
        [RIFT, "serve"], stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env
    )
    assert second.stdin is not None and second.stdout is not None
    try:
        second.stdin.write(rpc(1, "initialize", HELLO) + rpc(None, "notifications/initialized"))
        second.stdin.write(rpc(2, "tools/call", {"name": "stats", "arguments": {}}))
        second.stdin.flush()
        replies = [json.loads(second.stdout.readline()) for _ in range(2)]  # (a locked data dir: none)
        assert [r.get("id") for r in replies] == [1, 2] and replies[1]["result"]["isError"] is False, replies
        second.stdin.close()
        assert second.wait(timeout=60) == 0
    finally:
        second.kill()
        second.wait()


def test_a_line_that_is_not_utf8_is_answered_and_nothing_is_stored(tmp_path: Path, tiny_model_path: Path) -> None:
    """The SDK's transport read stdin with errors="replace": a line whose bytes were not UTF-8 reached
    add_documents with U+FFFD in their place, and the altered text was stored (found by helper CG). Such a line
    is answered with -32700 naming the first bad byte, with the request's id; nothing is stored and the session
    goes on. fd 0 still points at the null device while the server runs (the SDK's claim of it, which rift's
    own reading of stdin keeps), and valid UTF-8, a real U+FFFD included, is stored as sent."""
    env = {**os.environ, **server_env(tmp_path / "data", tiny_model_path)}
    with (tmp_path / "stderr.log").open("w") as errlog:
        proc = subprocess.Popen([RIFT, "serve"], stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=errlog, env=env)
        assert proc.stdin is not None and proc.stdout is not None

        def ask(raw: bytes, msg_id: int | str | None) -> dict:
            proc.stdin.write(raw + b"\n")
            proc.stdin.flush()
            while True:
                line = proc.stdout.readline()
                assert line, (tmp_path / "stderr.log").read_text()[-3000:]
                message = json.loads(line)
                if message.get("id") == msg_id:
                    return message

        def call(msg_id: int, tool: str, arguments: dict) -> dict:
            params = {"name": tool, "arguments": arguments}
            return ask(rpc(msg_id, "tools/call", params).encode().rstrip(b"\n"), msg_id)

        ask(rpc(1, "initialize", HELLO).encode(), 1)
        proc.stdin.write(rpc(None, "notifications/initialized").encode())
        if Path(f"/proc/{proc.pid}/fd/0").exists():  # Linux: the descriptors as the SDK's claim leaves them
            assert os.readlink(f"/proc/{proc.pid}/fd/0") == os.devnull
            assert os.readlink(f"/proc/{proc.pid}/fd/1") == str(tmp_path / "stderr.log")

        head = b'{"jsonrpc":"2.0","id":3,"method":"tools/call","params":{"name":"add_documents","arguments":'
        bad = head + b'{"documents":[{"id":"l1","text":"caf\xe9 \xff\xfe"}]}}}'
        reply = ask(bad, 3)
        assert reply["error"]["code"] == -32700, reply
        offset = bad.index(b"\xe9")
        assert reply["error"]["message"] == (
            f"Parse error: the request line is not valid UTF-8 (byte 0xe9 at offset {offset}: invalid continuation byte)"
        )
        # A truncated sequence, an encoded surrogate, an overlong encoding; a bad byte in a string id (id null).
        for n, text in enumerate([b"caf\xc3", b"\xed\xa0\xbd\xed\xb8\x80", b"\xc0\xaf"]):
            line = head.replace(b'"id":3', b'"id":%d' % (4 + n)) + b'{"documents":[{"text":"' + text + b'"}]}}}'
            reply = ask(line, 4 + n)
            assert reply["error"]["code"] == -32700 and "not valid UTF-8" in reply["error"]["message"], reply
        bad_id = b'{"jsonrpc":"2.0","id":"r\xff","method":"ping"}'
        reply = ask(bad_id, None)
        assert reply["error"]["code"] == -32700, reply
        at = bad_id.index(b"\xff")
        assert f"byte 0xff at offset {at}: invalid start byte" in reply["error"]["message"], reply

        # Nothing was stored; the session goes on, and valid UTF-8 is stored as sent.
        assert call(9, "get_document", {"doc_id": "l1"})["result"]["isError"] is True
        assert sum(c["documents"] for c in call(10, "stats", {})["result"]["structuredContent"]["collections"]) == 0
        text = "caf\u00e9 \ufffd \u2615 \U0001f600"
        assert call(11, "add_documents", {"documents": [{"id": "l1", "text": text}]})["result"]["isError"] is False
        got = call(12, "get_document", {"doc_id": "l1"})["result"]["structuredContent"]
        assert got["text"] == text
        proc.stdin.close()
        assert proc.wait(timeout=60) == 0


# `rift serve` on an MCP SDK whose stdio transport has moved the private names rift claims stdin with.
SDK_WITHOUT_CLAIM = """
import server.stdio
server.stdio.SDK_STDIN_CLAIM = ("_claim_fd_moved", "_open_stdin_diversion", "_UnownedTextWrapper")
from server.cli import main
main(["serve"])
"""


def test_the_server_still_serves_when_the_sdk_moves_its_stdin_claim(tmp_path: Path, tiny_model_path: Path) -> None:
    """rift reads stdin through the SDK's private claim so that bytes that are not UTF-8 are refused; a later
    SDK 2.x (the pin allows one) may move those names. The server must then still serve, on the SDK's own
    reading of stdin, and say on stderr what it lost, rather than fail to start."""
    env = {**os.environ, **server_env(tmp_path / "data", tiny_model_path)}
    with (tmp_path / "stderr.log").open("w") as errlog:
        proc = subprocess.Popen(
            [sys.executable, "-c", SDK_WITHOUT_CLAIM], stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=errlog,
            text=True, env=env,
        )
        assert proc.stdin is not None and proc.stdout is not None
        try:
            proc.stdin.write(rpc(1, "initialize", HELLO) + rpc(None, "notifications/initialized"))
            proc.stdin.write(rpc(2, "tools/call", {"name": "stats", "arguments": {}}))
            proc.stdin.flush()
            replies = [json.loads(proc.stdout.readline()) for _ in range(2)]
            assert [r.get("id") for r in replies] == [1, 2] and replies[1]["result"]["isError"] is False, replies
            proc.stdin.close()
            assert proc.wait(timeout=60) == 0
        finally:
            proc.kill()
            proc.wait()
    stderr = (tmp_path / "stderr.log").read_text()
    assert "lacks _claim_fd_moved" in stderr and "U+FFFD" in stderr, stderr[-3000:]
