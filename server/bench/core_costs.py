"""Costs of rift's core design choices, measured on this machine:

1. Keyword index writes: bm25s has no incremental add, so `KeywordIndex` keeps bm25s' term-major postings and
   recomputes the score array with numpy on each add (see keyword_index.py). Measured on an index of 5K and
   50K chunks (SciFact abstracts, repeated to 50K): `KeywordIndex.apply(add=[one chunk])` (wall and CPU), the
   same right after a delete (the add then also compacts the deleted row away), the per-document cost when
   100 documents arrive in one call, a delete (a mask flip), and start-up: reading the chunks' tokens from
   the SQLite state store and building the index from them. At sizes up to 10K it also checks that the
   scores equal those of a fresh `bm25s.BM25().index(tokens)` over the same rows, bit for bit.
2. One disagreement-log write (`QueryLog.record` with 100 + 100 candidates), median over 1000 writes: the part a
   search waits for, and the writer thread's part after it.
3. Cold start of `rift serve` over stdio: time from spawn to the `initialize` answer, to `tools/list`, and to
   the first tool call that needs the model (it loads in the background).

    python -m server.bench.core_costs [--corpus PATH] [--sizes 5000,50000] [--starts 3] [--model NAME]

Prints one JSON line, then a markdown table, to stdout.
"""

from __future__ import annotations

import gzip
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import bm25s
import click
import numpy as np

from server.engine.keyword_index import KeywordIndex, KeywordRow, KeywordTokenizer
from server.engine.state_store import ChunkRow, StateStore
from server.learning.disagreement import summarize
from server.learning.query_log import QueryLog, new_query_id

DEFAULT_CORPUS = Path("/work/shared/beir/scifact/corpus.jsonl.gz")


def _ms(seconds: float) -> float:
    return round(seconds * 1000, 3)


def load_texts(corpus: Path | None, limit: int = 10_000) -> tuple[list[str], str]:
    """Title + abstract of each BEIR document; synthetic Zipf text when the corpus is not there."""
    if corpus is not None and corpus.exists():
        opener = gzip.open if corpus.suffix == ".gz" else open
        texts = []
        with opener(corpus, "rt", encoding="utf-8") as fh:
            for line in fh:
                doc = json.loads(line)
                texts.append(f"{doc.get('title', '')} {doc.get('text', '')}".strip())
                if len(texts) >= limit:
                    break
        return texts, str(corpus)
    rng = np.random.default_rng(0)
    vocab = [f"w{i}" for i in range(30_000)]
    ranks = rng.zipf(1.2, size=(5000, 200)) % len(vocab)
    return [" ".join(vocab[r] for r in row) for row in ranks], "synthetic zipf"


def _timed(fn: Any, *args: Any, **kwargs: Any) -> tuple[Any, float, float]:
    """fn(...)'s result, wall seconds and CPU seconds (CPU time is robust to a busy machine)."""
    wall, cpu = time.perf_counter(), time.process_time()
    out = fn(*args, **kwargs)
    return out, time.perf_counter() - wall, time.process_time() - cpu


def startup_costs(texts: Sequence[str], tokens: Sequence[Sequence[str]], size: int) -> dict[str, float]:
    """What `Engine` does per collection at start-up: read every chunk's tokens from SQLite, build the index."""
    with tempfile.TemporaryDirectory() as tmp:
        state = StateStore(Path(tmp) / "state.sqlite")
        for first in range(0, size, 5000):
            state.apply(
                "bench",
                [],
                [
                    ChunkRow(
                        f"c{i}", f"d{i}", "h", 0, texts[i % len(texts)], tuple(tokens[i % len(tokens)]), {}
                    )
                    for i in range(first, min(size, first + 5000))
                ],
            )
        rows, load_wall, load_cpu = _timed(
            lambda: [
                KeywordRow(r.chunk_id, r.doc_id, r.tokens, r.metadata) for r in state.iter_chunks("bench")
            ]
        )
        state.close()
    _, build_wall, build_cpu = _timed(KeywordIndex, rows)
    return {
        "startup_read_ms": _ms(load_wall),
        "startup_read_cpu_ms": _ms(load_cpu),
        "startup_build_ms": _ms(build_wall),
        "startup_build_cpu_ms": _ms(build_cpu),
    }


def matches_fresh_bm25s(index: KeywordIndex, queries: Sequence[Sequence[str]]) -> bool:
    """Every score of every query equals a fresh bm25s index's over the snapshot's (all live) rows."""
    snap = index.snapshot
    assert snap.bm25 is not None and snap.alive.all()
    ref = bm25s.BM25()
    ref.index([list(r.tokens) for r in snap.rows], show_progress=False)
    for query in queries:
        known = [t for t in query if t in ref.vocab_dict]
        if known and not np.array_equal(ref.get_scores(known), snap.bm25.get_scores(known)):
            return False
    return True


def keyword_costs(texts: Sequence[str], sizes: Sequence[int], repeats: int = 3) -> list[dict[str, Any]]:
    tokens = KeywordTokenizer().tokenize(list(texts))
    out = []
    for size in sizes:
        # Repeat the corpus to reach `size` chunks; copies get their own ids.
        rows = [KeywordRow(f"c{i}", f"d{i}", tuple(tokens[i % len(tokens)]), {"n": i}) for i in range(size)]
        index, initial, initial_cpu = _timed(KeywordIndex, rows)
        next_id = size

        def new_rows(n: int, first: int) -> list[KeywordRow]:
            return [
                KeywordRow(f"c{i}", f"d{i}", tuple(tokens[i % len(tokens)]), {"n": i})
                for i in range(first, first + n)
            ]

        one, one_cpu, after_delete, after_delete_cpu, batch, delete = [], [], [], [], [], []
        for _ in range(repeats):
            _, wall, cpu = _timed(index.apply, add=new_rows(1, next_id))
            one.append(wall)
            one_cpu.append(cpu)
            next_id += 1
        for r in range(repeats):
            index.apply(remove=[f"c{size - 1 - r}"])
            _, wall, cpu = _timed(index.apply, add=new_rows(1, next_id))
            after_delete.append(wall)
            after_delete_cpu.append(cpu)
            next_id += 1
        for _ in range(repeats):
            batch.append(_timed(index.apply, add=new_rows(100, next_id))[1])
            next_id += 100
        exact = matches_fresh_bm25s(index, tokens[:50]) if size <= 10_000 else None
        for r in range(repeats):
            delete.append(_timed(index.apply, remove=[f"c{r}"])[1])
        avg_tokens = sum(len(r.tokens) for r in rows) / len(rows)
        out.append(
            {
                "chunks": size,
                "avg_tokens_per_chunk": round(avg_tokens, 1),
                "postings": int(len(index.snapshot.postings.docs)),
                "vocabulary": len(index.snapshot.postings.vocab),
                "initial_build_ms": _ms(initial),
                "initial_build_cpu_ms": _ms(initial_cpu),
                "add_one_ms": _ms(statistics.median(one)),
                "add_one_cpu_ms": _ms(statistics.median(one_cpu)),
                "add_one_after_delete_ms": _ms(statistics.median(after_delete)),
                "add_one_after_delete_cpu_ms": _ms(statistics.median(after_delete_cpu)),
                "add_100_per_doc_ms": _ms(statistics.median(batch) / 100),
                "delete_one_ms": _ms(statistics.median(delete)),
                "scores_match_fresh_bm25s": exact,
                **startup_costs(texts, tokens, size),
            }
        )
    return out


def log_costs(writes: int = 1000, depth: int = 100) -> dict[str, Any]:
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as tmp:
        log = QueryLog(Path(tmp) / "querylog.sqlite")
        record_s, summary_s, write_s = [], [], []
        cpu_in_record = 0.0
        for _ in range(writes):
            vector = [(uuid.uuid4().hex, f"{uuid.uuid4().hex}::0", float(s)) for s in rng.random(depth)]
            keyword = [(uuid.uuid4().hex, f"{uuid.uuid4().hex}::0", float(s) * 20) for s in rng.random(depth)]
            t0 = time.perf_counter()
            d = summarize([v[0] for v in vector], [k[0] for k in keyword], 10)
            t1 = time.perf_counter()
            c1 = time.process_time()
            log.record(
                new_query_id(),
                "what does the disagreement log cost",
                "default",
                "all-MiniLM-L6-v2",
                "hybrid",
                10,
                None,
                vector,
                keyword,
                [v[0] for v in vector[:10]],
                d.top,
                d.overlap,
                d.vector_blind_spots,
                d.keyword_blind_spots,
            )
            t2 = time.perf_counter()
            cpu_in_record += time.process_time() - c1
            summary_s.append(t1 - t0)
            record_s.append(t2 - t1)
            t3 = time.perf_counter()
            log.flush()  # the writer thread's share, which searches no longer wait for
            write_s.append(time.perf_counter() - t3)
        log.close()
    record_s.sort()
    return {
        "writes": writes,
        "candidates_per_side": depth,
        "record_median_ms": _ms(statistics.median(record_s)),
        "record_p95_ms": _ms(record_s[int(0.95 * len(record_s))]),
        "record_mean_cpu_ms": _ms(cpu_in_record / writes),
        "summarize_median_ms": _ms(statistics.median(summary_s)),
        "background_write_median_ms": _ms(statistics.median(write_s)),
    }


def _rpc(proc: subprocess.Popen, msg_id: int | None, method: str, params: dict | None = None) -> None:
    msg: dict[str, Any] = {"jsonrpc": "2.0", "method": method}
    if msg_id is not None:
        msg["id"] = msg_id
    if params is not None:
        msg["params"] = params
    assert proc.stdin is not None
    proc.stdin.write(json.dumps(msg) + "\n")
    proc.stdin.flush()


def _answer(proc: subprocess.Popen, msg_id: int) -> dict[str, Any]:
    assert proc.stdout is not None
    while True:
        line = proc.stdout.readline()
        if not line:
            raise RuntimeError("rift serve exited before answering")
        message = json.loads(line)
        if message.get("id") == msg_id:
            return message


def cold_start(model: str | None, starts: int) -> dict[str, Any]:
    from mcp_types.version import HANDSHAKE_PROTOCOL_VERSIONS

    rift = str(Path(sys.executable).parent / "rift")
    runs = []
    for _ in range(starts):
        with tempfile.TemporaryDirectory() as tmp:
            env = {**os.environ, "RIFT_DATA_DIR": str(Path(tmp) / "data"), "HF_HUB_OFFLINE": "1"}
            env["RIFT_CONFIG"] = os.devnull
            if model:
                env["RIFT_MODEL"] = model
            started = time.perf_counter()
            proc = subprocess.Popen(
                [rift, "serve"],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL,
                text=True,
                env=env,
            )
            try:
                hello = {
                    "protocolVersion": HANDSHAKE_PROTOCOL_VERSIONS[-1],
                    "capabilities": {},
                    "clientInfo": {"name": "bench", "version": "0"},
                }
                _rpc(proc, 1, "initialize", hello)
                _answer(proc, 1)
                initialized = time.perf_counter() - started
                _rpc(proc, None, "notifications/initialized")
                _rpc(proc, 2, "tools/list")
                _answer(proc, 2)
                listed = time.perf_counter() - started
                _rpc(proc, 3, "tools/call", {"name": "stats", "arguments": {}})
                _answer(proc, 3)
                first_call = time.perf_counter() - started
            finally:
                assert proc.stdin is not None
                proc.stdin.close()
                proc.wait(timeout=60)
            runs.append((initialized, listed, first_call))
    return {
        "starts": starts,
        "model": model or "default (packaged all-MiniLM-L6-v2)",
        "initialize_s": round(statistics.median(r[0] for r in runs), 3),
        "tools_list_s": round(statistics.median(r[1] for r in runs), 3),
        "first_tool_call_s": round(statistics.median(r[2] for r in runs), 3),
        "tools_list_max_s": round(max(r[1] for r in runs), 3),
    }


def markdown(result: dict[str, Any]) -> str:
    lines = [
        f"keyword index ({result['corpus']}):",
        "",
        "| chunks | tokens/chunk | postings | add 1 doc ms (cpu) | add 1 after a delete ms (cpu) "
        "| per doc in a 100-doc add ms | delete 1 ms | start-up: read tokens ms (cpu) | start-up: build ms (cpu) "
        "| = fresh bm25s |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|:-:|",
    ]
    for k in result["keyword"]:
        exact = {True: "yes", False: "NO", None: "-"}[k["scores_match_fresh_bm25s"]]
        lines.append(
            f"| {k['chunks']:,} | {k['avg_tokens_per_chunk']} | {k['postings']:,} | "
            f"{k['add_one_ms']:.0f} ({k['add_one_cpu_ms']:.0f}) | "
            f"{k['add_one_after_delete_ms']:.0f} ({k['add_one_after_delete_cpu_ms']:.0f}) | "
            f"{k['add_100_per_doc_ms']:.2f} | {k['delete_one_ms']:.3f} | "
            f"{k['startup_read_ms']:.0f} ({k['startup_read_cpu_ms']:.0f}) | "
            f"{k['startup_build_ms']:.0f} ({k['startup_build_cpu_ms']:.0f}) | {exact} |"
        )
    lg = result["query_log"]
    lines += [
        "",
        "| measure | value |",
        "|---|---:|",
        f"| log write median ({lg['writes']} writes, {lg['candidates_per_side']}+{lg['candidates_per_side']} "
        f"candidates) | {lg['record_median_ms']:.3f} ms |",
        f"| log write p95 | {lg['record_p95_ms']:.3f} ms |",
        f"| log write mean CPU time | {lg['record_mean_cpu_ms']:.3f} ms |",
        f"| background write by the log's thread, median | {lg['background_write_median_ms']:.3f} ms |",
        f"| disagreement summary median | {lg['summarize_median_ms']:.3f} ms |",
    ]
    if result.get("cold_start"):
        cs = result["cold_start"]
        lines += [
            f"| stdio cold start: initialize (median of {cs['starts']}) | {cs['initialize_s']:.2f} s |",
            f"| stdio cold start: tools/list (max {cs['tools_list_max_s']:.2f} s) | {cs['tools_list_s']:.2f} s |",
            f"| stdio cold start: first tool call (model loaded) | {cs['first_tool_call_s']:.2f} s |",
        ]
    lines.append(
        f"\nload average (1 min) at start / end: {result['load_avg_1m_at_start']} / "
        f"{result['load_avg_1m_at_end']} on {result['cpus']} CPUs"
    )
    return "\n".join(lines)


@click.command()
@click.option("--corpus", type=click.Path(path_type=Path), default=DEFAULT_CORPUS, show_default=True)
@click.option("--sizes", default="5000,50000", show_default=True, help="Keyword index sizes, in chunks.")
@click.option("--writes", default=1000, show_default=True, help="Disagreement-log writes to time.")
@click.option("--starts", default=3, show_default=True, help="Cold starts of `rift serve` (0 skips).")
@click.option("--model", default=None, help="RIFT_MODEL for the cold starts (default: the packaged MiniLM).")
def main(corpus: Path, sizes: str, writes: int, starts: int, model: str | None) -> None:
    texts, source = load_texts(corpus)
    result: dict[str, Any] = {
        "schema": "rift-core-costs/2",
        "corpus": source,
        "cpus": os.cpu_count(),
        "load_avg_1m_at_start": round(os.getloadavg()[0], 2),  # other work on the box inflates wall times
        "keyword": keyword_costs(texts, [int(s) for s in sizes.split(",") if s.strip()]),
        "query_log": log_costs(writes),
        "cold_start": cold_start(model, starts) if starts > 0 else None,
    }
    result["load_avg_1m_at_end"] = round(os.getloadavg()[0], 2)
    click.echo(json.dumps(result))
    click.echo(markdown(result))


if __name__ == "__main__":
    main()
