"""Real processes for the trust-and-scale tests: a Chroma server (`chroma run`) and `rift serve`.

Everything binds 127.0.0.1 on a free port and is stopped (SIGTERM, then SIGKILL) when the test ends."""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx

from server.bench.processes import BIN as VENV_BIN
from server.bench.processes import chroma_binary, free_port, launch_chroma, stop

__all__ = ["chroma_binary", "free_port", "stop"]  # tests import them from here


def rift_binary() -> str:
    local = VENV_BIN / "rift"
    return str(local) if local.exists() else "rift"


def wait_until(
    check, timeout: float, what: str, proc: subprocess.Popen | None = None, log: Path | None = None
):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            tail = log.read_text()[-3000:] if log and log.exists() else ""
            raise RuntimeError(f"{what}: process exited with {proc.returncode}\n{tail}")
        try:
            result = check()
            if result:
                return result
        except Exception:
            pass
        time.sleep(0.1)
    tail = log.read_text()[-3000:] if log and log.exists() else ""
    raise TimeoutError(f"{what} not ready after {timeout}s\n{tail}")


@dataclass
class ChromaServer:
    host: str
    port: int
    path: Path
    proc: subprocess.Popen

    def client(self):
        import chromadb
        from chromadb.config import Settings as ChromaSettings

        return chromadb.HttpClient(
            host=self.host, port=self.port, settings=ChromaSettings(anonymized_telemetry=False)
        )

    def wipe(self) -> None:
        """Delete every collection, so each test starts from an empty server."""
        client = self.client()
        for c in client.list_collections():
            client.delete_collection(c.name if hasattr(c, "name") else c)


@contextmanager
def chroma_server(path: Path) -> Iterator[ChromaServer]:
    binary = chroma_binary()
    if binary is None:
        raise FileNotFoundError("the `chroma` CLI (shipped with the chromadb package) is not installed")
    log = path.parent / f"chroma-{path.name}.log"
    proc, port = launch_chroma(binary, path, log)
    try:
        url = f"http://127.0.0.1:{port}/api/v2/heartbeat"
        wait_until(lambda: httpx.get(url, timeout=1).status_code == 200, 60, "chroma server", proc, log)
        yield ChromaServer("127.0.0.1", port, path, proc)
    finally:
        stop(proc)


@dataclass
class RiftServer:
    port: int
    data_dir: Path
    proc: subprocess.Popen
    log: Path
    token: str | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/mcp"

    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"} if self.token else {}


def rift_env(data_dir: Path, model: Path | str, extra: Mapping[str, str] | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RIFT_")}
    env.update(
        {
            "HF_HUB_OFFLINE": "1",
            "RIFT_DATA_DIR": str(data_dir),
            "RIFT_MODEL": str(model),
            "RIFT_CHUNK_TOKENS": "48",
            "RIFT_CHUNK_OVERLAP": "8",
            "RIFT_CONFIG": os.devnull,  # never a developer's own config file
            "TOKENIZERS_PARALLELISM": "false",
        }
    )
    env.update(extra or {})
    return env


def start_rift(
    data_dir: Path,
    model: Path | str,
    extra_env: Mapping[str, str] | None = None,
    token: str | None = None,
    port: int | None = None,
    wait_ready: bool = True,
) -> RiftServer:
    """`rift serve --transport streamable-http` on a free loopback port; waits until the port answers."""
    port = port or free_port()
    env = rift_env(data_dir, model, extra_env)
    if token:
        env["RIFT_HTTP_TOKEN"] = token
    data_dir.mkdir(parents=True, exist_ok=True)
    log = data_dir.parent / f"rift-{port}.log"
    with log.open("ab") as out:
        proc = subprocess.Popen(
            [rift_binary(), "serve", "--transport", "streamable-http", "--port", str(port)],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
    server = RiftServer(port, data_dir, proc, log, token)
    if wait_ready:

        def answers() -> bool:
            # Any HTTP answer means uvicorn is up (a GET without a session is refused, which is fine).
            httpx.get(server.url, timeout=1, headers=server.headers())
            return True

        wait_until(answers, 60, "rift serve", proc, log)
    return server
