"""How often are MNRL's in-batch negatives relevant to the row's query, and could the log tell? (No training.)

MultipleNegativesRankingLoss scores each row's query against every positive and negative in its batch: the
other rows' documents serve as negatives too. Where many documents are relevant to a query (NFCorpus: about 35
per query) some of them are relevant, and the loss pushes a relevant document away. A guard would mask them, but
only label-free: here a candidate is "flagged" when it sits in the row query's logged keyword list, or in any of
its logged lists (keyword, vector, fused). The usage split's query texts are replayed and mined as a retrain
does (the product's settings); batches are drawn as training draws them (shuffled, no text twice in a batch).
The usage labels are read only afterwards, to count which candidates are relevant.

    python -m server.bench.in_batch_negatives --data ../shared/beir/nfcorpus --split dev --usage-split train

An analysis, not a feature: the README ("Learning from use", "Open:") reports why no guard was built.
"""

from __future__ import annotations

import json
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click

from server.bench.beir import load_beir
from server.bench.errors import beir_analysis
from server.bench.harness import COLLECTION, BenchIndex
from server.bench.learning_experiment import _PRODUCT, usage_apart_from
from server.learning.gate import GateConfig
from server.learning.mining import MiningConfig
from server.learning.pipeline import collect_and_mine

TRIALS = 50  # shuffles of the rows: the batches differ each epoch, the rates barely


@dataclass(frozen=True)
class Row:
    """One training row as documents: its query's text, its positive and its hard negative."""

    query: str
    positive: str
    negative: str


def batches(rows: Sequence[Row], size: int, rng: random.Random) -> list[list[Row]]:
    """Shuffled batches in which no text repeats (sentence-transformers' NO_DUPLICATES sampler): a row whose
    query or document is already in the batch waits for a later one; the last, partial batch is kept."""
    waiting = list(rows)
    rng.shuffle(waiting)
    out: list[list[Row]] = []
    while waiting:
        batch: list[Row] = []
        seen: set[str] = set()
        later: list[Row] = []
        for row in waiting:
            texts = {f"q:{row.query}", f"d:{row.positive}", f"d:{row.negative}"}
            if len(batch) < size and not texts & seen:
                batch.append(row)
                seen |= texts
            else:
                later.append(row)
        out.append(batch)
        waiting = later
    return out


def in_batch_false_negatives(
    rows: Sequence[Row],
    relevant: Mapping[str, set[str]],
    flags: Mapping[str, Mapping[str, set[str]]],
    batch_size: int,
    trials: int = TRIALS,
    seed: int = 0,
) -> dict[str, Any]:
    """Over `trials` epochs of batches: the other rows' documents each row is scored against, how many are
    relevant to its query (`relevant`: query text -> relevant doc ids), and for each flag (name -> query text
    -> doc ids the log would mask) how many it masks, how many of those are relevant, and what share of the
    relevant ones it catches."""
    rng = random.Random(seed)
    counts = {"rows": 0, "candidates": 0, "relevant": 0, "rows_with_relevant": 0}
    flagged = {name: {"masked": 0, "relevant": 0} for name in flags}
    for _ in range(trials):
        for batch in batches(rows, batch_size, rng):
            for row in batch:
                own = {row.positive, row.negative}
                candidates = {d for other in batch if other is not row for d in (other.positive, other.negative)}
                candidates -= own
                hits = candidates & relevant.get(row.query, set())
                counts["rows"] += 1
                counts["candidates"] += len(candidates)
                counts["relevant"] += len(hits)
                counts["rows_with_relevant"] += bool(hits)
                for name, by_query in flags.items():
                    masked = candidates & by_query.get(row.query, set())
                    flagged[name]["masked"] += len(masked)
                    flagged[name]["relevant"] += len(masked & hits)
    rows_seen = max(1, counts["rows"])
    return {
        "rows": len(rows),
        "batch_size": batch_size,
        "trials": trials,
        "candidates_per_row": round(counts["candidates"] / rows_seen, 1),
        "relevant_share_of_candidates": round(counts["relevant"] / max(1, counts["candidates"]), 4),
        "rows_with_a_relevant_candidate": round(counts["rows_with_relevant"] / rows_seen, 3),
        "flags": {
            name: {
                "masked_per_row": round(f["masked"] / rows_seen, 2),
                "relevant_share_of_masked": round(f["relevant"] / max(1, f["masked"]), 3),
                "relevant_caught": round(f["relevant"] / max(1, counts["relevant"]), 3),
            }
            for name, f in flagged.items()
        },
    }


def run(data: Path, split: str, usage_split: str, model: str | None, cache_dir: Path | None) -> dict[str, Any]:
    evaluation = load_beir(Path(data), split)
    usage = load_beir(Path(data), usage_split)
    usage_ids, _ = usage_apart_from(usage.queries, evaluation.queries)
    with BenchIndex(model, cache_dir) as index:
        index.ingest(evaluation)
        for qid in usage_ids:
            index.rift.search(COLLECTION, usage.queries[qid], 10, "hybrid", source="usage")
        mined = collect_and_mine(index.rift.log, index.engine, MiningConfig.from_settings(_PRODUCT), GateConfig())
        triples = mined.report.triples
        logged = {q.query: q for q in index.rift.log.by_ids(sorted({t.query_id for t in triples if t.query_id}))}
    by_text = {usage.queries[q]: q for q in usage_ids}
    relevant = {
        text: {d for d, grade in usage.qrels.get(qid, {}).items() if grade > 0} for text, qid in by_text.items()
    }
    keyword = {text: {d for d, _c, _s in q.keyword} for text, q in logged.items()}
    listed = {
        text: keyword[text] | {d for d, _c, _s in q.vector} | set(q.fused) for text, q in logged.items()
    }
    rows = [Row(t.query, t.positive_doc, t.negative_doc) for t in triples]
    return {
        "dataset": evaluation.name,
        "usage_split": usage_split,
        "triples": len(rows),
        "queries": len({r.query for r in rows}),
        **in_batch_false_negatives(
            rows, relevant, {"keyword list": keyword, "any logged list": listed}, _PRODUCT.learn_batch_size
        ),
    }


@click.command()
@beir_analysis()
@click.option("--split", required=True, help="The evaluation split (its queries are never replayed).")
@click.option("--usage-split", required=True, help="Whose query texts are replayed and mined.")
def main(data: Path, split: str, usage_split: str, model: str | None, cache_dir: Path) -> None:
    click.echo(json.dumps(run(data, split, usage_split, model, cache_dir)))


if __name__ == "__main__":
    main()
