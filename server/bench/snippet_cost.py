"""What a search result costs an agent's context, whole chunks against `hybrid_search(max_chars=...)`, and how
much of the query each shows.

Indexes a BEIR corpus through rift (embeddings cached in `--cache-dir`, as `rift bench` does) and runs the
first `--queries` queries of `--split` as hybrid searches (k 10), once with whole chunks and once per
`--max-chars`. Per setting: the mean size of the hits as the tool returns them (compact JSON, metadata
included), the share of the query's keyword terms that a hit's text shows (mean over hits), and, for the
snippets, the same share for the chunk's first `max_chars` characters (a plain cut) as the baseline. No labels
are read; the searches are logged in the run's temporary data dir only.

    python -m server.bench.snippet_cost --data ../shared/beir/scifact [--split train] [--queries 200]

Prints one JSON line to stdout.
"""

from __future__ import annotations

import json
import statistics
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import click

from server.bench.beir import load_beir
from server.bench.errors import one_line_errors
from server.bench.harness import COLLECTION, BenchIndex

HIT_FIELDS = (
    "doc_id", "chunk_id", "text", "metadata", "score", "vector_score", "keyword_score", "vector_rank",
    "keyword_rank", "start", "end", "truncated",
)  # fmt: skip


def shown(terms: set[str], text: str, tokenize: Any) -> float:
    """The share of `terms` that `text` holds (1.0 for a query without keyword terms)."""
    return len(terms & set(tokenize([text])[0])) / len(terms) if terms else 1.0


def measure(
    data: Path, split: str, queries: int, max_chars: Sequence[int], model: str | None, cache_dir: Path | None
) -> dict[str, Any]:
    dataset = load_beir(data, split)
    texts = [dataset.queries[q] for q in sorted(dataset.queries)][:queries]  # (its texts only; no labels)
    with BenchIndex(model, cache_dir) as index:
        index.ingest(dataset)
        tokenize = index.engine.tokenizer.tokenize
        out: dict[str, Any] = {"data": str(data), "split": split, "queries": len(texts), "k": 10}
        for limit in (None, *max_chars):
            sizes, coverage, plain, seconds = [], [], [], 0.0
            for query in texts:
                terms = set(tokenize([query])[0])
                started = time.perf_counter()
                hits = index.search(query, "hybrid", 10, max_chars=limit).outcome.hits
                seconds += time.perf_counter() - started
                rows = [{f: getattr(h, f) for f in HIT_FIELDS} for h in hits]
                sizes.append(len(json.dumps(rows, ensure_ascii=False, separators=(",", ":"))))
                coverage += [shown(terms, h.text, tokenize) for h in hits]
                if limit is not None:  # the same hits' chunks, cut at max_chars from their start
                    whole = index.engine.state.chunks_by_id(COLLECTION, [h.chunk_id for h in hits])
                    plain += [shown(terms, whole[h.chunk_id].text[:limit], tokenize) for h in hits if h.chunk_id in whole]
            row = {
                "mean_hits_json_chars": round(statistics.mean(sizes)),
                "query_terms_shown": round(statistics.mean(coverage), 3),
                "ms_per_search": round(1000 * seconds / len(texts), 1),
            }
            if plain:
                row["query_terms_shown_by_a_plain_cut"] = round(statistics.mean(plain), 3)
            out["whole" if limit is None else f"max_chars_{limit}"] = row
    return out


@click.command()
@click.option("--data", type=click.Path(path_type=Path, file_okay=False, exists=True), required=True)
@click.option("--split", default="train", show_default=True, help="Whose queries to run (no labels are read).")
@click.option("--queries", default=200, show_default=True, type=click.IntRange(1))
@click.option("--max-chars", "max_chars", multiple=True, type=click.IntRange(20), default=(200, 300, 400), show_default=True)
@click.option("--model", default=None, help="Model name or path (default: the configured one).")
@click.option("--cache-dir", type=click.Path(path_type=Path, file_okay=False), default=Path(".bench_cache"), show_default=True)
@one_line_errors
def main(data: Path, split: str, queries: int, max_chars: tuple[int, ...], model: str | None, cache_dir: Path) -> None:
    click.echo(json.dumps(measure(data, split, queries, max_chars, model, cache_dir)))


if __name__ == "__main__":
    main()
