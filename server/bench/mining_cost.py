"""What mining a full disagreement log costs `retrain`: time and the process's peak memory.

Writes a synthetic log of `--searches` hybrid searches (each with `--candidates` vector and keyword candidates
named like file paths, as `rift add` names documents; a third of the searches agree on their first document),
then runs the product's `collect_and_mine` with the default mining settings on it, as a retrain's job does,
in a fresh process: its peak resident size (VmHWM) is mining's, not that of writing the log.

    python -m server.bench.mining_cost [--searches 20000] [--candidates 200] [--seed 0]

Prints one JSON line to stdout.
"""

from __future__ import annotations

import json
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import click

from server.config import Settings
from server.learning.gate import GateConfig
from server.learning.mining import MiningConfig
from server.learning.pipeline import collect_and_mine
from server.learning.query_log import QueryLog


class _Collections:
    """The one thing mining asks of the engine: which collections exist."""

    def collection_names(self) -> list[str]:
        return ["default"]


def _peak_mb() -> float:
    """This process's peak resident size. VmHWM, where Linux has it: ru_maxrss carries over a parent's peak
    across fork and exec."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024  # kB
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def measure(searches: int, candidates: int, seed: int = 0) -> dict[str, Any]:
    rng = random.Random(seed)
    docs = [f"/home/me/notes/projects/2026/folder-{i % 50:02d}/note-{i:05d}.md" for i in range(5000)]
    with tempfile.TemporaryDirectory() as tmp:
        log = QueryLog(Path(tmp) / "log.sqlite")
        started = time.perf_counter()
        for n in range(searches):
            vector, keyword = rng.sample(docs, candidates), rng.sample(docs, candidates)
            if n % 3 == 0:
                keyword[0] = vector[0]
            log.record(
                f"q{n}", f"question {n} about notes", "default", "base", "hybrid", 10, None,
                [(d, f"{d}::0123456789abcdef::{j % 3}", 1 - j / 400) for j, d in enumerate(vector)],
                [(d, f"{d}::0123456789abcdef::{j % 3}", 40.0 if j == 0 else 20 - j / 20) for j, d in enumerate(keyword)],
                vector[:5] + keyword[:5], 5, 0.2, vector[:2], keyword[:2],
            )  # fmt: skip
        log.flush()
        written = time.perf_counter() - started
        write_peak = _peak_mb()  # (searches as fast as the CPU allows: the log's writer thread falls behind)
        log.close()
        log_mb = (Path(tmp) / "log.sqlite").stat().st_size / 1e6
        run = subprocess.run(
            [sys.executable, "-m", "server.bench.mining_cost", "--mine", str(Path(tmp) / "log.sqlite")],
            capture_output=True,
            text=True,
            check=True,
        )
        mined = json.loads(run.stdout)
    return {
        "searches": searches,
        "candidates_per_side": candidates,
        "log_mb": round(log_mb, 1),
        "log_write_s": round(written, 1),
        "log_write_peak_rss_mb": round(write_peak),
        **mined,
        "ms_per_search": round(1000 * mined["mining_s"] / searches, 3),
    }


def mine_log(path: Path) -> dict[str, Any]:
    """Mine the log at `path` as a retrain does (this process does nothing else)."""
    s = Settings.model_construct()
    mining = MiningConfig.from_settings(s)
    log = QueryLog(path)
    before = _peak_mb()
    started = time.perf_counter()
    mined = collect_and_mine(log, _Collections(), mining, GateConfig(holdout_fraction=s.gate_holdout_fraction))
    seconds = time.perf_counter() - started
    log.close()
    return {
        "mining_s": round(seconds, 2),
        "peak_rss_mb_before": round(before),
        "peak_rss_mb_after": round(_peak_mb()),
        "triples": len(mined.report.triples),
        "holdout": len(mined.holdout),
    }


@click.command()
@click.option("--searches", default=20_000, show_default=True, type=click.IntRange(10))
@click.option("--candidates", default=200, show_default=True, type=click.IntRange(10, 5000))
@click.option("--seed", default=0, show_default=True)
@click.option("--mine", "mine_path", default=None, hidden=True, help="Only mine this log (the child process).")
def main(searches: int, candidates: int, seed: int, mine_path: str | None) -> None:
    result = mine_log(Path(mine_path)) if mine_path else measure(searches, candidates, seed)
    click.echo(json.dumps(result))


if __name__ == "__main__":
    main()
