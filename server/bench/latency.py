"""Speed: warm per-query latency of `Rift.search` per mode split into its parts, query embedding alone, and
ingest throughput against raw `model.encode` on the same texts."""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from typing import Any

import numpy as np

from server.bench.beir import BeirDataset
from server.bench.harness import BenchIndex

log = logging.getLogger(__name__)

PARTS = ("embed_ms", "vector_ms", "keyword_ms", "fusion_ms", "hydrate_ms", "log_ms")
LATENCY_K = 10  # hybrid_search's default k


def percentiles(values: Sequence[float]) -> dict[str, float]:
    if not values:
        return {}
    arr = np.asarray(values, dtype=np.float64)
    p50, p95, p99 = np.percentile(arr, [50, 95, 99])
    return {
        "p50": round(float(p50), 3),
        "p95": round(float(p95), 3),
        "p99": round(float(p99), 3),
        "mean": round(float(arr.mean()), 3),
    }


def measure_embed(embedder: Any, queries: Sequence[str], warmup: int = 10) -> dict[str, float]:
    for q in queries[:warmup]:
        embedder.encode_query(q)
    times, cpu = [], []
    for q in queries:
        t0, c0 = time.perf_counter(), time.process_time()
        embedder.encode_query(q)
        times.append((time.perf_counter() - t0) * 1000)
        cpu.append((time.process_time() - c0) * 1000)
    return {**percentiles(times), "cpu_p50": percentiles(cpu)["p50"]}


def measure_search(
    index: BenchIndex,
    queries: Sequence[str],
    modes: Sequence[str],
    knobs: dict[str, Any] | None = None,
    warmup: int = 20,
    k: int = LATENCY_K,
) -> dict[str, dict[str, Any]]:
    """Wall time of each `Rift.search` call (what hybrid_search spends below the MCP layer) and its parts."""
    knobs = knobs or {}
    out: dict[str, dict[str, Any]] = {}
    for mode in modes:
        for q in queries[:warmup]:
            index.search(q, mode, k, **knobs)
        total: list[float] = []
        cpu: list[float] = []  # process CPU time (all threads): the cost that does not depend on other load
        parts: dict[str, list[float]] = {p: [] for p in PARTS}
        for q in queries:
            t0, c0 = time.perf_counter(), time.process_time()
            response = index.search(q, mode, k, **knobs)
            total.append((time.perf_counter() - t0) * 1000)
            cpu.append((time.process_time() - c0) * 1000)
            for p in PARTS:
                if p in response.outcome.timings_ms:
                    parts[p].append(response.outcome.timings_ms[p])
        out[mode] = {
            "queries": len(queries),
            "total_ms": percentiles(total),
            "cpu_ms": percentiles(cpu),
            "parts_p50_ms": {p: percentiles(v)["p50"] for p, v in parts.items() if v},
        }
        log.info("latency %s %s", mode, out[mode])
    return out


def _raw_encode(embedder: Any, texts: Sequence[str]) -> float:
    """Seconds for plain `model.encode` with the engine's batch size (the baseline a user would write)."""
    t0 = time.perf_counter()
    embedder.model.encode(
        list(texts),
        batch_size=embedder.batch_size,
        normalize_embeddings=True,
        convert_to_numpy=True,
        show_progress_bar=False,
    )
    return time.perf_counter() - t0


def measure_ingest(index: BenchIndex, dataset: BeirDataset, sample: int, rounds: int = 2) -> dict[str, Any]:
    """Ingest `sample` documents through add_documents with no embedding cache, and compare with raw encoding
    of the same chunk texts and of the same documents (truncated by the model, as a naive indexer would).
    Ingest and raw encoding alternate for `rounds` rounds and the totals are compared, so a drift in CPU speed
    during the run (±3 % here) affects both sides alike."""
    from server.engine.engine import DocumentInput

    engine = index.engine
    ids = list(dataset.documents)[:sample]
    texts = [dataset.documents[i] for i in ids]
    model = index.embedder
    step = index.settings.max_documents_per_call
    raw_docs_1 = _raw_encode(model, texts)
    ingest_s = raw_chunks = 0.0
    chunks = 0
    chunk_texts: list[str] = []
    for round_ in range(rounds):
        collection = f"ingest{round_}"
        cached, engine.embedder = engine.embedder, model  # the real encoder, not the cache
        try:
            t0 = time.perf_counter()
            chunks = 0
            for start in range(0, len(ids), step):
                docs = [
                    DocumentInput(text=texts[j], id=ids[j]) for j in range(start, min(start + step, len(ids)))
                ]
                chunks += sum(s.chunks for s in index.rift.add_documents(collection, docs))
            ingest_s += time.perf_counter() - t0
        finally:
            engine.embedder = cached
        chunk_texts = [r.text for r in engine.state.iter_chunks(collection)]
        raw_chunks += _raw_encode(model, chunk_texts)
        engine.delete_collection(collection)
    raw_docs_2 = _raw_encode(model, texts)
    raw_docs = (raw_docs_1 + raw_docs_2) / 2
    ingest_s, raw_chunks = ingest_s / rounds, raw_chunks / rounds
    return {
        "backend": getattr(model, "document_backend", "torch"),  # of the ingest; raw encode is always torch
        "documents": len(ids),
        "chunks": chunks,
        "rounds": rounds,
        "ingest_seconds": round(ingest_s, 2),
        "ingest_docs_per_s": round(len(ids) / ingest_s, 2),
        "ingest_chunks_per_s": round(chunks / ingest_s, 2),
        "raw_encode_docs_per_s": round(len(ids) / raw_docs, 2),
        "raw_encode_chunks_per_s": round(len(chunk_texts) / raw_chunks, 2),
        "ratio_vs_raw_docs": round(raw_docs / ingest_s, 3),
        "ratio_vs_raw_chunks": round(raw_chunks / ingest_s, 3),
    }
