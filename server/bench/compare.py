"""Is a changed setting better, query by query? Paired nDCG@10 of the defaults against `--set` overrides.

Both runs index the same split into their own temporary store (corpus vectors from the bench cache) and answer
every query through `Rift.search` in each mode; the change is the mean per-query difference with a 95 %
paired-bootstrap CI, and the count of queries whose nDCG@10 moved. Labels are read only to score.

    python -m server.bench.compare --data ../shared/beir/scifact --split test --set stopwords=en

A choice of default should rest on the usage (train) splits as much as on the evaluation ones: the README's
"How the defaults were picked" says which splits each choice read.
"""

from __future__ import annotations

import json
import logging
import tempfile
from pathlib import Path
from typing import Any

import click
import numpy as np

from server.bench.beir import BeirDataset, load_beir
from server.bench.cli import parse_overrides
from server.bench.errors import beir_analysis
from server.bench.harness import BenchIndex, bench_settings
from server.bench.learning_experiment import paired_bootstrap
from server.bench.metrics import evaluate
from server.bench.quality import MODES, RANK_K

log = logging.getLogger(__name__)


def per_query_ndcg(
    dataset: BeirDataset, model: str | None, cache_dir: Path | None, overrides: dict[str, Any], modes: tuple[str, ...]
) -> dict[str, dict[str, float]]:
    """mode -> query id -> nDCG@10, for a store with `overrides` on the bench's settings."""
    out: dict[str, dict[str, float]] = {}
    with BenchIndex(model, cache_dir, overrides) as index:
        index.ingest(dataset)
        for mode in modes:
            run = {q: [h.doc_id for h in index.search(text, mode, RANK_K).outcome.hits] for q, text in dataset.queries.items()}
            _means, per_query = evaluate(dataset.qrels, run)
            out[mode] = {q: scores["ndcg@10"] for q, scores in per_query.items()}
    return out


def compare(base: dict[str, float], changed: dict[str, float]) -> dict[str, Any]:
    """The paired change from `base` to `changed` (query id -> score, the same queries)."""
    queries = sorted(base)
    before = [base[q] for q in queries]
    after = [changed[q] for q in queries]
    delta, low, high = paired_bootstrap(before, after)
    return {
        "base": round(float(np.mean(before)), 4),
        "changed": round(float(np.mean(after)), 4),
        "delta": round(delta, 4),
        "ci95": [round(low, 4), round(high, 4)],
        "queries_moved": sum(1 for b, a in zip(before, after, strict=True) if abs(a - b) > 1e-12),
    }


def run(
    data: Path, split: str, overrides: dict[str, Any], model: str | None, cache_dir: Path | None, modes: tuple[str, ...]
) -> dict[str, Any]:
    dataset = load_beir(Path(data), split)
    base = per_query_ndcg(dataset, model, cache_dir, {}, modes)
    changed = per_query_ndcg(dataset, model, cache_dir, overrides, modes)
    return {
        "dataset": dataset.name,
        "split": split,
        "queries": len(next(iter(base.values()), {})),
        "set": overrides,
        "ndcg@10": {mode: compare(base[mode], changed[mode]) for mode in modes},
    }


@click.command()
@beir_analysis()
@click.option("--split", required=True)
@click.option("--set", "items", multiple=True, required=True, help="A setting to change, KEY=VALUE (repeatable).")
@click.option("--mode", "modes", multiple=True, type=click.Choice(MODES), help="Repeatable; default all three.")
def main(data: Path, split: str, items: tuple[str, ...], modes: tuple[str, ...], model: str | None, cache_dir: Path) -> None:
    overrides = parse_overrides(items)
    try:  # checked before anything runs: a setting the Settings model refuses (its error names it)
        bench_settings(Path(tempfile.gettempdir()) / "rift-compare-check", model, **overrides)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--set") from None
    click.echo(json.dumps(run(data, split, overrides, model, cache_dir, modes or MODES)))


if __name__ == "__main__":
    main()
