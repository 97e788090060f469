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
