"""Serve the retrained model only where it helps? Per-query routing by label-free rules, measured offline.

The retrained model gains where BM25 half answers and loses where BM25 fails (README, by BM25 group). Keeping
the base model's vectors beside it and choosing per query by something the search itself shows would keep the
gain and drop the loss, if such a rule exists. This takes the per-query hybrid nDCG@10 of finished `rift bench
--learn --json-out` runs (base and retrained), searches every evaluation query once with the base model to read
label-free features off its lists (the keyword side's score margin, whether both sides agree on the first
document, how much their first 10 overlap, where the fused first document sits on the keyword side), and scores
each fixed rule: the retrained model's result where the rule holds, the base model's elsewhere, against the base
(paired bootstrap). The rules are fixed in advance, not fitted: evaluation labels only score.

    python -m server.bench.routing --data ../shared/beir/scifact --split test --run sf_seed0.jsonl

An analysis, not a feature: the README ("Learning from use", "Open:") reports that no rule beat serving the
retrained model everywhere on both datasets.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import click

from server.bench.beir import BenchError, load_beir
from server.bench.errors import beir_analysis
from server.bench.harness import COLLECTION, BenchIndex
from server.bench.learning_experiment import _PRODUCT, paired_bootstrap
from server.learning.query_log import LoggedQuery

Features = Mapping[str, float]

# Where the retrained model answers (True) or the base model does; each reads one search's features.
RULES: dict[str, Callable[[Features], bool]] = {
    "everywhere": lambda f: True,
    "keyword margin >= the miner's": lambda f: f["keyword_margin"] >= _PRODUCT.learn_positive_min_keyword_margin,
    "keyword margin < the miner's": lambda f: f["keyword_margin"] < _PRODUCT.learn_positive_min_keyword_margin,
    "both sides' first agree": lambda f: f["first_agree"] > 0,
    "both sides' first differ": lambda f: f["first_agree"] == 0,
    "top-10 overlap >= 0.3": lambda f: f["overlap"] >= 0.3,
    "top-10 overlap < 0.3": lambda f: f["overlap"] < 0.3,
    "fused first in the keyword top 3": lambda f: f["fused_first_keyword_rank"] < 3,
}


def features(logged: LoggedQuery) -> dict[str, float]:
    """What one logged search shows without labels."""
    keyword = [d for d, _c, _s in logged.keyword]
    vector = [d for d, _c, _s in logged.vector]
    scores = [s for _d, _c, s in logged.keyword]
    margin = scores[0] / scores[1] if len(scores) > 1 and scores[1] > 0 else (float("inf") if scores else 0.0)
    first = logged.fused[0] if logged.fused else None
    return {
        "keyword_margin": margin,
        "first_agree": float(bool(keyword and vector and keyword[0] == vector[0])),
        "overlap": len(set(keyword[:10]) & set(vector[:10])) / 10,
        "fused_first_keyword_rank": float(keyword[:10].index(first)) if first in keyword[:10] else 99.0,
    }


def routed(
    base: Mapping[str, float], retrained: Mapping[str, float], use_retrained: Mapping[str, bool]
) -> dict[str, Any]:
    """The routed system's gain over the base: per query the retrained score where `use_retrained` holds."""
    qids = sorted(base)
    mixed = [retrained[q] if use_retrained[q] else base[q] for q in qids]
    delta, low, high = paired_bootstrap([base[q] for q in qids], mixed)
    return {"retrained_queries": sum(use_retrained[q] for q in qids), "hybrid": [round(x, 4) for x in (delta, low, high)]}


def read_runs(paths: Sequence[Path]) -> list[dict[str, Any]]:
    """The finished results of `rift bench --learn --json-out` files (each file's last line)."""
    runs = []
    for path in paths:
        lines = Path(path).read_text().strip().splitlines()
        if not lines:
            raise BenchError(f"{path} holds no result")
        try:
            result = json.loads(lines[-1])
        except json.JSONDecodeError:
            result = None
        if not isinstance(result, dict) or result.get("kind") != "learn" or "base_per_query" not in result:
            raise BenchError(f"{path} is not a `rift bench --learn --json-out` result")
        runs.append(result)
    return runs


def run(data: Path, split: str, runs: Sequence[Path], model: str | None, cache_dir: Path | None) -> dict[str, Any]:
    results = read_runs(runs)
    evaluation = load_beir(Path(data), split)
    for path, result in zip(runs, results, strict=True):  # (before minutes of indexing)
        if not set(result["base_per_query"]["hybrid"]) <= set(evaluation.queries):
            raise BenchError(f"{path} scored other queries than {evaluation.name} {split}'s: give a run of this split")
    found: dict[str, dict[str, float]] = {}
    with BenchIndex(model, cache_dir) as index:  # a throwaway log: evaluation queries never reach a retrain
        index.ingest(evaluation)
        for qid, text in evaluation.queries.items():
            hit = index.rift.search(COLLECTION, text, 10, "hybrid", source="usage")
            [logged] = list(index.rift.log.by_ids([hit.query_id]))
            found[qid] = features(logged)
    out: dict[str, Any] = {"dataset": evaluation.name, "split": split, "rules": {}}
    for name, rule in RULES.items():
        use = {q: rule(f) for q, f in found.items()}
        out["rules"][name] = [
            {"seed": seed["seed"], **routed(result["base_per_query"]["hybrid"], seed["per_query"]["hybrid"], use)}
            for result in results
            for seed in result["seeds"]
        ]
    return out


@click.command()
@beir_analysis("The runs' base model (default: rift's).")
@click.option("--split", required=True, help="The runs' evaluation split.")
@click.option(
    "--run", "runs", type=click.Path(path_type=Path, exists=True, dir_okay=False), multiple=True, required=True,
    help="A `rift bench --learn --json-out` file of this dataset and split (repeatable).",
)
def main(data: Path, split: str, runs: tuple[Path, ...], model: str | None, cache_dir: Path) -> None:
    click.echo(json.dumps(run(data, split, runs, model, cache_dir)))


if __name__ == "__main__":
    main()
