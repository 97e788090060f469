"""Small helpers shared by the engine, MCP and disagreement tests."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

from server.config import Settings
from server.engine.engine import DocumentInput
from server.service import Rift


def make_settings(data_dir: Path, model: Path, **overrides: Any) -> Settings:
    values: dict[str, Any] = {"chunk_tokens": 48, "chunk_overlap": 8}
    values.update(overrides)
    return Settings(data_dir=data_dir, model=str(model), **values)


def open_rift(settings: Settings) -> Rift:
    return Rift(settings).start(background=False)


def docs(*items: tuple[str, str] | tuple[str, str, dict[str, Any]]) -> list[DocumentInput]:
    """(id, text[, metadata]) tuples -> engine inputs."""
    return [DocumentInput(text=i[1], id=i[0], metadata=i[2] if len(i) > 2 else None) for i in items]


def ids(hits: list[Any]) -> list[str]:
    return [h.doc_id for h in hits]


def index_state(rift: Rift, collection: str = "default") -> dict[str, set[str]]:
    """Chunk ids as each store sees them: Chroma, the keyword snapshot (live rows) and SQLite."""
    engine = rift.engine()
    record = engine.state.collection(collection)
    assert record is not None
    return {
        "chroma": set(engine.vectors.all_ids(record.chroma_name)),
        "keyword": engine._keyword[collection].chunk_ids(),
        "sqlite": engine.state.chunk_ids(collection),
    }


def sqlite_rows(path: Path, sql: str) -> list[tuple[Any, ...]]:
    conn = sqlite3.connect(str(path))
    try:
        return conn.execute(sql).fetchall()
    finally:
        conn.close()


def sqlite_pages(path: Path) -> tuple[int, int, int]:
    """(auto_vacuum mode, pages, free pages) of a closed SQLite file."""
    conn = sqlite3.connect(str(path))
    try:
        mode, pages, free = (conn.execute(f"PRAGMA {n}").fetchone()[0] for n in ("auto_vacuum", "page_count", "freelist_count"))
        return mode, pages, free
    finally:
        conn.close()


def write_notes(folder: Path, count: int = 5) -> Path:
    """`count` small Markdown notes in `folder` (made), note0.md ... ."""
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        (folder / f"note{i}.md").write_text(f"# Note {i}\n\nThe harbour log entry number {i}.\n")
    return folder


class ChromaLostAtBatch:
    """Makes a file sync write batches of 2 files and its `at`-th batch fail as a Chroma server that stopped
    answering does (httpx's ConnectError, its address chroma.internal:8000); `flushes` counts the batches met,
    `restore()` lets the server answer again."""

    def __init__(self, monkeypatch: Any, at: int = 2) -> None:
        import httpx

        import server.ingest.sync as sync

        self.flushes: list[int] = []
        self._sync, self._monkeypatch, self._real = sync, monkeypatch, sync._Sync.flush
        request = httpx.Request("POST", "http://chroma.internal:8000/api/v2/collections")
        real, flushes = self._real, self.flushes

        def flush(batch_self: Any) -> None:
            if batch_self.batch:
                flushes.append(len(batch_self.batch))
                if len(flushes) == at:
                    raise httpx.ConnectError("[Errno 111] Connection refused", request=request)
            real(batch_self)

        self._lost = flush
        monkeypatch.setattr(sync, "BATCH_DOCS", 2)
        monkeypatch.setattr(sync._Sync, "flush", flush)

    def restore(self) -> None:
        self._monkeypatch.setattr(self._sync._Sync, "flush", self._real)

    def lose_again(self) -> None:
        self._monkeypatch.setattr(self._sync._Sync, "flush", self._lost)
