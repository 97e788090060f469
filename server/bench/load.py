"""Load test over the streamable-HTTP transport, and the cost of keeping keyword indices in sync across rift
processes that share one Chroma server.

``python -m server.bench.load`` starts ``rift serve --transport streamable-http`` on a free loopback port with a
fresh data dir (or targets ``--url``), seeds documents, then runs many concurrent ``hybrid_search`` sessions
while one writer adds documents and one deleter removes them. It stops by itself (``--duration`` and
``--max-searches``) and prints one JSON line, then markdown figures. It checks two things on the way: every call
succeeds, and no search that started after a delete was acknowledged names the deleted document.

``python -m server.bench.load --measure sync`` starts ``chroma run`` and two in-process rift apps sharing it,
and times what one pays to follow the other's writes (see server/engine/shared.py).
"""

from __future__ import annotations

import json
import logging
import os
import random
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import anyio
import click

from server.bench.processes import BIN, chroma_binary, free_port, launch_chroma, stop

log = logging.getLogger(__name__)

# --- corpus --------------------------------------------------------------------------------------------------


def vocabulary(n: int = 3000, seed: int = 7) -> list[str]:
    """Pronounceable pseudo-words: a keyword side with a realistic, Zipf-ish vocabulary and no data files."""
    rng = random.Random(seed)
    onsets, vowels, codas = "bcdfghklmnprstvz", "aeiou", ["", "n", "r", "s", "l", "m", "t"]
    words: set[str] = set()
    while len(words) < n:
        syllables = rng.randint(2, 3)
        words.add(
            "".join(rng.choice(onsets) + rng.choice(vowels) + rng.choice(codas) for _ in range(syllables))
        )
    return sorted(words)


def marker(i: int) -> str:
    return f"qx{i}z"  # one token only document i contains, so a search can aim at it


class Corpus:
    def __init__(self, seed: int = 0) -> None:
        self._rng = random.Random(seed)
        self._words = vocabulary()
        weights = [1 / (r + 1) for r in range(len(self._words))]
        total = sum(weights)
        self._cum = list(_accumulate(w / total for w in weights))

    def words(self, n: int) -> list[str]:
        return self._rng.choices(self._words, cum_weights=self._cum, k=n)

    def text(self, i: int, n_words: int = 60) -> str:
        return f"{marker(i)} " + " ".join(self.words(n_words)) + "."

    def query(self, target: int) -> str:
        return f"{marker(target)} " + " ".join(self.words(3))


def _accumulate(values: Iterator[float]) -> Iterator[float]:
    total = 0.0
    for v in values:
        total += v
        yield total


# --- processes -----------------------------------------------------------------------------------------------


def _wait_port(port: int, proc: subprocess.Popen, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode}")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise TimeoutError(f"{what} did not open port {port} in {timeout:.0f}s")


@contextmanager
def rift_server(model: str, data_dir: Path, extra_env: dict[str, str] | None = None) -> Iterator[str]:
    """`rift serve --transport streamable-http` on a free loopback port; yields its MCP URL."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("RIFT_")}
    env.update({"RIFT_DATA_DIR": str(data_dir), "RIFT_MODEL": model, "RIFT_CONFIG": os.devnull})
    env.setdefault("HF_HUB_OFFLINE", "1")
    env.update(extra_env or {})
    rift = BIN / "rift"
    cmd = [
        str(rift) if rift.exists() else "rift",
        "serve",
        "--transport",
        "streamable-http",
        "--port",
        str(port),
    ]
    log_path = data_dir.parent / "rift-serve.log"
    with log_path.open("ab") as out:
        proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    try:
        _wait_port(port, proc, 120, "rift serve")
        yield f"http://127.0.0.1:{port}/mcp"
    finally:
        stop(proc)


@contextmanager
def chroma_server(path: Path) -> Iterator[tuple[str, int]]:
    """`chroma run` (shipped with the chromadb package) on a free loopback port; yields (host, port)."""
    binary = chroma_binary()
    if binary is None:
        raise click.ClickException("the `chroma` CLI (part of the chromadb package) is not installed")
    proc, port = launch_chroma(binary, path, path.parent / "chroma.log")
    try:
        _wait_port(port, proc, 60, "chroma run")
        yield "127.0.0.1", port
    finally:
        stop(proc)


# --- the load test -------------------------------------------------------------------------------------------


@dataclass
class LoadConfig:
    url: str | None = None  # None: start a rift server with a fresh data dir
    model: str = "all-MiniLM-L6-v2"
    docs: int = 300
    clients: int = 8
    duration_s: float = 20.0
    max_searches: int = 5000
    k: int = 10
    token: str | None = None
    seed: int = 0


@dataclass
class LoadResult:
    config: dict[str, Any]
    searches: int = 0
    adds: int = 0
    deletes: int = 0
    errors: int = 0
    error_samples: list[str] = field(default_factory=list)
    deleted_doc_violations: int = 0
    violation_samples: list[str] = field(default_factory=list)
    wall_s: float = 0.0
    search_ms: dict[str, float] = field(default_factory=dict)
    search_engine_ms: dict[str, float] = field(default_factory=dict)  # the server's own timings_ms, summed
    search_phase_p50_ms: dict[str, float] = field(default_factory=dict)  # embed / vector / keyword / log ...
    add_ms: dict[str, float] = field(default_factory=dict)
    delete_ms: dict[str, float] = field(default_factory=dict)
    searches_per_s: float = 0.0


def percentiles(values: Sequence[float]) -> dict[str, float]:
    if not values:
        return {}
    ordered = sorted(values)

    def at(q: float) -> float:
        return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))], 2)

    return {
        "p50": at(0.50),
        "p90": at(0.90),
        "p99": at(0.99),
        "max": round(ordered[-1], 2),
        "mean": round(statistics.fmean(ordered), 2),
    }


def _client(url: str, token: str | None) -> Any:
    from mcp import Client

    if not token:
        return Client(url)
    import httpx2
    from mcp.client.streamable_http import streamable_http_client

    http = httpx2.AsyncClient(
        headers={"Authorization": f"Bearer {token}"}, timeout=httpx2.Timeout(60, read=300)
    )
    return Client(streamable_http_client(url, http_client=http))


def _payload(result: Any) -> dict[str, Any]:
    text = result.content[0].text if result.content else ""
    if result.is_error:
        raise RuntimeError(text or "is_error without a message")
    return json.loads(text)


async def _load(config: LoadConfig, url: str) -> LoadResult:
    corpus = Corpus(config.seed)
    rng = random.Random(config.seed)
    result = LoadResult(config=asdict(config) | {"url": url})
    deleted_at: dict[str, float] = {}  # doc id -> when its delete was acknowledged (monotonic)
    live: list[int] = []
    ever: list[int] = []
    search_ms: list[float] = []
    engine_ms: list[float] = []
    phases: dict[str, list[float]] = {}
    add_ms: list[float] = []
    delete_ms: list[float] = []
    done = anyio.Event()

    def error(where: str, exc: BaseException) -> None:
        result.errors += 1
        if len(result.error_samples) < 5:
            result.error_samples.append(f"{where}: {exc}"[:500])

    async with _client(url, config.token) as seeder:
        for start in range(0, config.docs, 100):
            batch = range(start, min(start + 100, config.docs))
            docs = [{"id": f"doc{i}", "text": corpus.text(i)} for i in batch]
            _payload(await seeder.call_tool("add_documents", {"documents": docs}))
            live.extend(batch)
            ever.extend(batch)

    started = time.monotonic()
    deadline = started + config.duration_s

    def running() -> bool:
        if time.monotonic() >= deadline or result.searches >= config.max_searches:
            done.set()
        return not done.is_set()

    async def searcher() -> None:
        async with _client(url, config.token) as client:
            while running():
                target = rng.choice(ever)
                t0 = time.monotonic()
                try:
                    found = _payload(
                        await client.call_tool(
                            "hybrid_search", {"query": corpus.query(target), "k": config.k}
                        )
                    )
                except Exception as exc:
                    error("hybrid_search", exc)
                    continue
                search_ms.append((time.monotonic() - t0) * 1000)
                engine_ms.append(sum(found.get("timings_ms", {}).values()))
                for phase, ms in found.get("timings_ms", {}).items():
                    phases.setdefault(phase, []).append(ms)
                result.searches += 1
                for hit in found["hits"]:
                    gone = deleted_at.get(hit["doc_id"])
                    if gone is not None and gone < t0:
                        result.deleted_doc_violations += 1
                        if len(result.violation_samples) < 5:
                            result.violation_samples.append(
                                f"{hit['doc_id']} returned {t0 - gone:.3f}s after its delete was acknowledged"
                            )

    async def writer() -> None:
        next_id = config.docs
        async with _client(url, config.token) as client:
            while running():
                i, next_id = next_id, next_id + 1
                t0 = time.monotonic()
                try:
                    _payload(
                        await client.call_tool(
                            "add_documents", {"documents": [{"id": f"doc{i}", "text": corpus.text(i)}]}
                        )
                    )
                except Exception as exc:
                    error("add_documents", exc)
                    continue
                add_ms.append((time.monotonic() - t0) * 1000)
                result.adds += 1
                live.append(i)
                ever.append(i)

    async def deleter() -> None:
        async with _client(url, config.token) as client:
            while running():
                if len(live) < 2:
                    await anyio.sleep(0.05)
                    continue
                i = live.pop(rng.randrange(len(live)))
                t0 = time.monotonic()
                try:
                    _payload(await client.call_tool("delete_documents", {"ids": [f"doc{i}"]}))
                except Exception as exc:
                    error("delete_documents", exc)
                    continue
                deleted_at[f"doc{i}"] = time.monotonic()
                delete_ms.append((time.monotonic() - t0) * 1000)
                result.deletes += 1
                await anyio.sleep(0.02)  # deletes are cheap; keep some documents alive

    async with anyio.create_task_group() as tg:
        for _ in range(config.clients):
            tg.start_soon(searcher)
        tg.start_soon(writer)
        tg.start_soon(deleter)

    result.wall_s = round(time.monotonic() - started, 2)
    result.search_ms = percentiles(search_ms)
    result.search_engine_ms = percentiles(engine_ms)
    result.search_phase_p50_ms = {k: percentiles(v)["p50"] for k, v in sorted(phases.items())}
    result.add_ms = percentiles(add_ms)
    result.delete_ms = percentiles(delete_ms)
    result.searches_per_s = round(result.searches / max(result.wall_s, 1e-9), 1)
    return result


def run_load(config: LoadConfig) -> LoadResult:
    if config.url:
        return anyio.run(_load, config, config.url)
    with (
        tempfile.TemporaryDirectory(prefix="rift-load-") as tmp,
        rift_server(config.model, Path(tmp) / "data") as url,
    ):
        return anyio.run(_load, config, url)


def load_markdown(r: LoadResult) -> str:
    c = r.config
    lines = [
        f"### Load: {c['clients']} concurrent hybrid_search sessions + 1 writer + 1 deleter "
        f"({c['docs']} seed documents, model {c['model']}, {r.wall_s:.0f} s)",
        "",
        "| operation | count | p50 ms | p90 ms | p99 ms | max ms |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for name, count, ms in (
        ("hybrid_search", r.searches, r.search_ms),
        ("  of which inside the engine", r.searches, r.search_engine_ms),
        ("add_documents (1 doc)", r.adds, r.add_ms),
        ("delete_documents (1 doc)", r.deletes, r.delete_ms),
    ):
        lines.append(
            f"| {name} | {count} | {ms.get('p50', '-')} | {ms.get('p90', '-')} | {ms.get('p99', '-')} | "
            f"{ms.get('max', '-')} |"
        )
    lines += [
        "",
        "Engine phases, p50 ms: " + ", ".join(f"{k} {v}" for k, v in r.search_phase_p50_ms.items()) + ".",
        f"Searches/s: {r.searches_per_s}. Errors: {r.errors}. "
        f"Searches naming a document after its delete was acknowledged: {r.deleted_doc_violations}.",
    ]
    return "\n".join(lines)


# --- sync cost across processes sharing one Chroma server -----------------------------------------------------


def measure_sync(model: str, sizes: Sequence[int], reps: int = 20) -> dict[str, Any]:
    """Two rift apps on one `chroma run`: A writes, B follows. Documents are one chunk each and A's document
    vectors are random (embedding time is not what is measured); B's queries use the real model."""
    from server.bench.scale import SyntheticEmbedder
    from server.config import Settings
    from server.engine.engine import DocumentInput
    from server.service import Rift

    corpus = Corpus(1)
    rows: list[dict[str, Any]] = []
    with (
        tempfile.TemporaryDirectory(prefix="rift-sync-") as tmp,
        chroma_server(Path(tmp) / "chroma") as (host, port),
    ):

        def app(name: str) -> Rift:
            settings = Settings(
                data_dir=Path(tmp) / name,
                model=model,
                vector_backend="http",
                chroma_host=host,
                chroma_port=port,
                chroma_sync_ms=0,
            )
            return Rift(settings).start(background=False)

        a, b = app("a"), app("b")
        try:
            ea, eb = a.engine(), b.engine()
            ea.embedder = SyntheticEmbedder(ea.embedder, None)
            shared = eb.shared
            have = 0
            for size in sorted(sizes):
                while have < size:
                    n = min(1000, size - have)
                    a.add_documents(
                        "load", [DocumentInput(corpus.text(i), f"doc{i}") for i in range(have, have + n)]
                    )
                    have += n
                t0 = time.perf_counter()
                shared.sync(force=True)
                bulk_ms = (time.perf_counter() - t0) * 1000

                def timed(fn: Any) -> list[float]:
                    out = []
                    for _ in range(reps):
                        t = time.perf_counter()
                        fn()
                        out.append((time.perf_counter() - t) * 1000)
                    return out

                idle = timed(lambda: shared.sync(force=True))
                search = timed(lambda: b.search("load", corpus.query(5), k=10, source="bench"))
                after_add, after_delete = [], []
                for r in range(reps):
                    i = have + r
                    a.add_documents("load", [DocumentInput(corpus.text(i), f"doc{i}")])
                    t = time.perf_counter()
                    shared.sync(force=True)
                    after_add.append((time.perf_counter() - t) * 1000)
                    a.delete_documents("load", [f"doc{i}"])
                    t = time.perf_counter()
                    shared.sync(force=True)
                    after_delete.append((time.perf_counter() - t) * 1000)
                assert eb.state.chunk_ids("load") == ea.state.chunk_ids("load")
                rows.append(
                    {
                        "chunks": size,
                        "full_repair_ms": round(bulk_ms, 1),  # a reader seeing a writer for the first time
                        "check_no_change_ms": percentiles(idle),
                        "sync_after_1_add_ms": percentiles(after_add),
                        "sync_after_1_delete_ms": percentiles(after_delete),
                        "hybrid_search_ms": percentiles(search),
                    }
                )
        finally:
            a.close()
            b.close()
    return {"model": model, "sizes": rows}


def sync_markdown(report: dict[str, Any]) -> str:
    lines = [
        "### Keeping a second rift process in sync through one Chroma server (p50 ms)",
        "",
        "| chunks | check, nothing changed | sync after 1 add | sync after 1 delete | hybrid search | "
        "full repair |",
        "|---:|---:|---:|---:|---:|---:|",
    ]
    for row in report["sizes"]:
        lines.append(
            f"| {row['chunks']} | {row['check_no_change_ms']['p50']} | {row['sync_after_1_add_ms']['p50']} | "
            f"{row['sync_after_1_delete_ms']['p50']} | {row['hybrid_search_ms']['p50']} | {row['full_repair_ms']} |"
        )
    return "\n".join(lines)


# --- command line ----------------------------------------------------------------------------------------------


@click.command()
@click.option("--measure", type=click.Choice(["load", "sync"]), default="load", show_default=True)
@click.option("--url", default=None, help="An existing rift MCP endpoint; default: start one on loopback.")
@click.option("--token", default=None, help="Bearer token for --url.")
@click.option("--model", default="all-MiniLM-L6-v2", show_default=True)
@click.option("--docs", default=300, show_default=True, help="Seed documents (load).")
@click.option("--clients", default=8, show_default=True, help="Concurrent search sessions (load).")
@click.option("--duration", default=20.0, show_default=True, help="Seconds of load.")
@click.option("--max-searches", default=5000, show_default=True)
@click.option("--sizes", default="1000,10000", show_default=True, help="Collection sizes in chunks (sync).")
@click.option("-v", "--verbose", is_flag=True)
def main(
    measure: str,
    url: str | None,
    token: str | None,
    model: str,
    docs: int,
    clients: int,
    duration: float,
    max_searches: int,
    sizes: str,
    verbose: bool,
) -> None:
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, stream=sys.stderr)
    if measure == "sync":
        report = measure_sync(model, [int(s) for s in sizes.split(",") if s.strip()])
        click.echo(json.dumps(report))
        click.echo(sync_markdown(report))
        return
    config = LoadConfig(
        url=url,
        model=model,
        docs=docs,
        clients=clients,
        duration_s=duration,
        max_searches=max_searches,
        token=token,
    )
    result = run_load(config)
    click.echo(json.dumps(asdict(result)))
    click.echo(load_markdown(result))
    if result.errors or result.deleted_doc_violations:
        sys.exit(1)


if __name__ == "__main__":
    main()
