"""Child processes that benchmarks and tests start: a free loopback port, `chroma run`, a clean stop."""

from __future__ import annotations

import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path

BIN = Path(sys.executable).parent  # the virtual environment's scripts: rift, chroma


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def chroma_binary() -> str | None:
    """The `chroma` CLI shipped with the chromadb package (this environment's first)."""
    local = BIN / "chroma"
    return str(local) if local.exists() else shutil.which("chroma")


def launch_chroma(binary: str, path: Path, log_path: Path) -> tuple[subprocess.Popen, int]:
    """Start `chroma run` on `path` at a free loopback port, its output going to `log_path`."""
    port = free_port()
    with log_path.open("ab") as out:
        proc = subprocess.Popen(
            [binary, "run", "--path", str(path), "--host", "127.0.0.1", "--port", str(port)],
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
    return proc, port


def stop(proc: subprocess.Popen, sig: int = signal.SIGTERM, timeout: float = 15) -> int:
    """Signal, wait, then kill if it is still there; returns the exit code."""
    if proc.poll() is None:
        proc.send_signal(sig)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
    return int(proc.returncode)
