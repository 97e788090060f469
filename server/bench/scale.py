"""Scale sweep: grow one collection through `add_documents` to each requested size and measure search latency,
ingest time, the bm25s rebuild each write pays, Chroma HNSW recall against exact search, disk and memory.

Texts are made of sentences drawn from the BEIR corpora (so the keyword side sees a real vocabulary); the
document embedder is replaced by one that returns real cached corpus vectors plus noise (random unit vectors
when no cache exists), so encoding time does not dominate. Queries are real BEIR queries embedded by the
real model, so query-embedding time is the real one.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from server.bench.embed_cache import CachingEmbedder
from server.bench.harness import COLLECTION, BenchIndex
from server.bench.latency import measure_search
from server.bench.report import peak_rss_mib

log = logging.getLogger(__name__)

SENTENCE = re.compile(r"(?<=[.!?])\s+")
MAX_CHARS = 600  # about 150 tokens: one chunk per synthetic document


class SyntheticEmbedder:
    """Looks like the engine's Embedder; documents get base vectors + noise, queries the real model. A text
    always gets the same vector, as from a real model (the engine reuses a stored vector for a text it holds)."""

    def __init__(self, inner: Any, base: np.ndarray | None, seed: int = 0, noise: float = 0.35) -> None:
        self._inner = inner
        self._base = base
        self._rng = np.random.default_rng(seed)
        self._noise = noise
        self._by_text: dict[str, np.ndarray] = {}  # every vector handed out, for exact-search recall checks

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    def vector_of(self, text: str) -> np.ndarray | None:
        return self._by_text.get(text)

    def encode_documents(
        self, texts: Sequence[str], progress: Callable[[int, int], None] | None = None
    ) -> np.ndarray:
        new = list(dict.fromkeys(t for t in texts if t not in self._by_text))
        n, dim = len(new), self._inner.dimension
        if self._base is not None and len(self._base):
            picks = self._base[self._rng.integers(0, len(self._base), n)]
            noise = self._rng.standard_normal((n, dim)).astype(np.float32) * (self._noise / np.sqrt(dim))
            fresh = picks + noise
        else:
            fresh = self._rng.standard_normal((n, dim)).astype(np.float32)
        fresh /= np.linalg.norm(fresh, axis=1, keepdims=True)
        self._by_text.update(zip(new, fresh.astype(np.float32), strict=True))
        out = np.stack([self._by_text[t] for t in texts]) if texts else np.zeros((0, dim), np.float32)
        if progress is not None:
            progress(len(texts), len(texts))
        return out


def sentence_pool(texts: Sequence[str], limit: int = 200_000) -> list[str]:
    pool: list[str] = []
    for text in texts:
        pool.extend(s.strip() for s in SENTENCE.split(text.replace("\n", " ")) if len(s.strip()) > 20)
        if len(pool) >= limit:
            break
    return pool


def synthetic_texts(pool: Sequence[str], n: int, rng: np.random.Generator) -> list[str]:
    """Documents of 2-4 random sentences: short enough for one chunk each, so documents = chunks."""
    counts = rng.integers(2, 5, n)
    picks = rng.integers(0, len(pool), int(counts.sum()))
    out, pos = [], 0
    for c in counts:
        out.append(" ".join(pool[i] for i in picks[pos : pos + c])[:MAX_CHARS])
        pos += c
    return out


def _dir_bytes(path: Any) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) if path.exists() else 0


def hnsw_recall(
    index: BenchIndex, embedder: SyntheticEmbedder, queries: Sequence[str], k: int = 100
) -> float:
    """Fraction of the exact top-k chunks (brute-force cosine over every stored vector) that Chroma returns."""
    engine = index.engine
    record = engine.state.collection(COLLECTION)
    rows = list(engine.state.iter_chunks(COLLECTION))
    vectors = [embedder.vector_of(r.text) for r in rows]
    if not rows or any(v is None for v in vectors) or not queries:
        return float("nan")
    matrix = np.stack(vectors)
    k = min(k, len(matrix))
    found = 0
    for q in queries:
        vec = embedder.encode_query(q)
        exact = np.argpartition(-(matrix @ vec), k - 1)[:k]
        want = {rows[i].chunk_id for i in exact}
        got = {cid for cid, _ in engine.vectors.query(record.chroma_name, vec, k)}
        found += len(want & got)
    return found / (k * len(queries))


def run_scale(
    sizes: Sequence[int],
    model: str | None,
    texts: Sequence[str],
    queries: Sequence[str],
    cache_dir: Path | None,
    batch: int = 10_000,
    latency_queries: int = 100,
    recall_queries: int = 50,
    max_rss_gib: float = 20.0,
    seed: int = 0,
    modes: Sequence[str] = ("keyword", "vector", "hybrid"),
    settings_overrides: dict[str, Any] | None = None,
) -> list[dict[str, Any]]:
    """One row per size reached; stops early (and says why) if memory passes `max_rss_gib`."""
    from server.engine.engine import DocumentInput

    rng = np.random.default_rng(seed)
    pool = sentence_pool(texts)
    rows: list[dict[str, Any]] = []
    with BenchIndex(model, None, {**(settings_overrides or {}), "max_documents_per_call": batch}) as index:
        base = CachingEmbedder(index.engine.embedder, cache_dir).all_vectors() if cache_dir else None
        log.info("scale: %d cached corpus vectors as bases", 0 if base is None else len(base))
        embedder = SyntheticEmbedder(index.engine.embedder, base, seed)
        index.engine.embedder = embedder
        written = 0
        ingest_total = 0.0
        qs = list(queries[:latency_queries])
        for size in sorted(set(sizes)):
            stopped = None
            started = time.perf_counter()
            while written < size:
                n = min(batch, size - written)
                docs = [
                    DocumentInput(text=t, id=f"{written + i:09d}")
                    for i, t in enumerate(synthetic_texts(pool, n, rng))
                ]
                index.rift.add_documents(COLLECTION, docs)
                written += n
                rss_gib = peak_rss_mib() / 1024
                log.info("scale: %d/%d chunks, peak RSS %.1f GiB", written, size, rss_gib)
                if rss_gib > max_rss_gib:
                    stopped = (
                        f"peak RSS {rss_gib:.1f} GiB passed the {max_rss_gib} GiB limit at {written:,} chunks"
                    )
                    break
            ingest_total += time.perf_counter() - started
            info = index.engine.info(COLLECTION)
            exact = index.engine.exact_search_active(COLLECTION)
            latency = measure_search(index, qs, modes, warmup=10)
            row = {
                "chunks": info.chunks,
                "ingest_seconds": round(ingest_total, 1),
                "ingest_chunks_per_s": round(info.chunks / ingest_total, 1) if ingest_total else None,
                "keyword_rebuild_seconds": round(info.keyword_rebuild_ms / 1000, 2),
                "hnsw_recall@100": round(hnsw_recall(index, embedder, qs[:recall_queries]), 4),
                # Small collections are searched exactly in memory (exact_search_max_chunks), larger by HNSW.
                "vector_search": "exact" if exact else "hnsw",
                "latency": latency,
                "disk_bytes": _dir_bytes(index.settings.data_dir),
                "rss_mib": peak_rss_mib(),
            }
            log.info("scale row %s", {k: v for k, v in row.items() if k != "latency"})
            rows.append(row)
            if stopped:
                row["stopped"] = stopped
                break
    return rows
