"""What reading a large collection's document list costs: `list_documents` pages (without filters, with a
metadata filter, with a `$prefix` filter), a `resources/list` page and a doc_id completion.

Fills rift's SQLite state with `--documents` synthetic file documents (metadata as `rift add` stores it, 50
folders) and times each call on it, as the tools make it (rift's listing code on that state; no model, no
Chroma: listings read only SQLite).

    python -m server.bench.listing_cost [--documents 100000] [--repeat 3]

Prints one JSON line to stdout: the best of `--repeat` calls, in milliseconds.
"""

from __future__ import annotations

import json
import sqlite3
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from server.engine.state_store import StateStore
from server.ingest.manage import complete_doc_ids, list_documents, resource_page

FOLDERS = 50


class _Engine:
    """What the listing code asks of the engine: its state, and (no-ops here) catching up with other processes
    and naming the known collections when one is unknown."""

    def __init__(self, state: StateStore) -> None:
        self.state = state

    def follow_others(self, force: bool = False, probe: bool = True) -> str | None:
        return None

    def info(self, collection: str) -> None:
        pass

    def collection_names(self) -> list[str]:
        return ["docs"]


def _fill(path: Path, documents: int) -> None:
    def metadata(i: int) -> str:
        path = f"/home/me/notes/proj{i % FOLDERS}/file{i}.md"
        return json.dumps(
            {"source": path, "name": f"file{i}.md", "file_type": "markdown", "size": 2000, "mtime": 1.7e9 + i,
             "title": f"Title {i}", "sha256": "ab" * 32, "extractor": 3}
        )  # fmt: skip

    rows = [
        ("docs", f"/home/me/notes/proj{i % FOLDERS}/file{i}.md", "h", "x" * 2000, metadata(i), 0.0)
        for i in range(documents)
    ]
    conn = sqlite3.connect(str(path))  # (documents only: listings never read chunks)
    try:
        with conn:
            conn.execute("INSERT INTO collections VALUES ('docs', 'docs-chroma', 'base', 0.0)")
            conn.executemany("INSERT INTO documents VALUES (?, ?, ?, ?, ?, ?)", rows)
    finally:
        conn.close()


def _best_ms(call: Callable[[], Any], repeat: int) -> float:
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        call()
        times.append(time.perf_counter() - started)
    return round(1000 * min(times), 1)


def measure(documents: int, repeat: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "state.sqlite"
        state = StateStore(path)  # (creates the schema)
        try:
            _fill(path, documents)
            engine = _Engine(state)
            _, first, _ = list_documents(engine, "docs", None, 50)
            folder = "/home/me/notes/proj1"
            calls: dict[str, Callable[[], Any]] = {
                "list_page_ms": lambda: list_documents(engine, "docs", None, 50),
                "list_page_after_ms": lambda: list_documents(engine, "docs", None, 50, after=first[-1][0]),
                "list_filtered_ms": lambda: list_documents(engine, "docs", {"file_type": "pdf"}, 50),
                "list_prefix_ms": lambda: list_documents(engine, "docs", {"source": {"$prefix": folder}}, 50),
                "resources_list_page_ms": lambda: resource_page(engine, None, 100),
                "complete_doc_id_ms": lambda: complete_doc_ids(engine, "docs", folder, 100),
            }
            return {"documents": documents, **{name: _best_ms(call, repeat) for name, call in calls.items()}}
        finally:
            state.close()


@click.command()
@click.option("--documents", default=100_000, show_default=True, type=click.IntRange(1))
@click.option("--repeat", default=3, show_default=True, type=click.IntRange(1))
def main(documents: int, repeat: int) -> None:
    click.echo(json.dumps(measure(documents, repeat)))


if __name__ == "__main__":
    main()
