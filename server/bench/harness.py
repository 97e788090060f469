"""A throw-away rift instance for benchmarking: a temporary data dir, the real `Rift` app and engine, and the
corpus written through `add_documents` exactly as the MCP tool does (title + "\\n" + text, id = BEIR _id).

Searches go through `Rift.search` like `hybrid_search`. Its disagreement log lives in the temporary data dir,
so evaluation queries never reach a real user's learning log, and the whole dir is deleted on close.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from server.bench.beir import BeirDataset
from server.bench.embed_cache import CachingEmbedder
from server.config import Settings
from server.errors import RiftError

if TYPE_CHECKING:
    from server.learning.query_log import LoggedQuery

log = logging.getLogger(__name__)

COLLECTION = "bench"


@dataclass
class IngestStats:
    documents: int
    chunks: int
    seconds: float
    encode_seconds: float
    cache_hits: int
    cache_misses: int
    keyword_rebuild_ms: float


def bench_settings(data_dir: Path, model: str | None, /, **overrides: Any) -> Settings:
    # (Positional-only: a --set data_dir or model lands in `overrides`, to be refused by name below.)
    for key in ("data_dir", "model"):
        if key in overrides:
            hint = "use --model" if key == "model" else "the bench uses a temporary data dir of its own"
            raise RiftError(f"{key} cannot be set here: {hint}")
    values: dict[str, Any] = {"data_dir": data_dir, "log_queries": True, **overrides}
    if model:
        values["model"] = model
    return Settings(**values)


class BenchIndex:
    def __init__(
        self,
        model: str | None,
        cache_dir: Path | None,
        settings_overrides: dict[str, Any] | None = None,
    ) -> None:
        self.tmp = Path(tempfile.mkdtemp(prefix="rift-bench-"))
        try:
            self.settings = bench_settings(self.tmp / "data", model, **(settings_overrides or {}))
            from server.service import Rift

            self.rift = Rift(self.settings).start(background=False)
            self.engine = self.rift.engine()
        except BaseException:  # (bad settings, a model that does not load): no temporary folder left behind
            shutil.rmtree(self.tmp, ignore_errors=True)
            raise
        self.cache: CachingEmbedder | None = None
        if cache_dir is not None:
            self.cache = CachingEmbedder(self.engine.embedder, cache_dir)
            self.engine.embedder = self.cache

    def __enter__(self) -> BenchIndex:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        try:
            self.rift.close()
        finally:
            shutil.rmtree(self.tmp, ignore_errors=True)

    @property
    def embedder(self) -> Any:
        """The model itself (not the cache), for query embedding and raw-encode comparisons."""
        return self.cache.inner if self.cache is not None else self.engine.embedder

    def ingest(
        self, dataset: BeirDataset, collection: str = COLLECTION, batch: int | None = None
    ) -> IngestStats:
        from server.engine.engine import DocumentInput

        batch = batch or self.settings.max_documents_per_call
        ids = list(dataset.documents)
        hits0 = self.cache.hits if self.cache is not None else 0
        misses0 = self.cache.misses if self.cache is not None else 0
        enc0 = self.cache.encode_seconds if self.cache is not None else 0.0
        started = time.perf_counter()
        chunks = 0
        for start in range(0, len(ids), batch):
            part = ids[start : start + batch]
            statuses = self.rift.add_documents(
                collection, [DocumentInput(text=dataset.documents[i], id=i) for i in part]
            )
            chunks += sum(s.chunks for s in statuses)
            log.info("ingested %d/%d documents (%d chunks)", start + len(part), len(ids), chunks)
        seconds = time.perf_counter() - started
        info = self.engine.info(collection)
        return IngestStats(
            documents=len(ids),
            chunks=chunks,
            seconds=seconds,
            encode_seconds=(self.cache.encode_seconds - enc0) if self.cache is not None else seconds,
            cache_hits=(self.cache.hits - hits0) if self.cache is not None else 0,
            cache_misses=(self.cache.misses - misses0) if self.cache is not None else chunks,
            keyword_rebuild_ms=info.keyword_rebuild_ms,
        )

    def search(self, query: str, mode: str, k: int, **knobs: Any) -> Any:
        return self.rift.search(COLLECTION, query, k, mode, source="bench", **knobs)

    def logged_searches(self, queries: list[str]) -> list[LoggedQuery]:
        """Each query searched once in hybrid mode as an agent would (logged), then read back from the log: the
        `LoggedQuery` records, in order, whose candidate lists an analysis re-fuses or scores."""
        searched = [self.rift.search(COLLECTION, q, 10, "hybrid", source="bench").query_id for q in queries]
        self.rift.log.flush()
        out = []
        for query_id in searched:
            logged = self.rift.log.get(query_id)
            if logged is None:
                raise RuntimeError(f"search {query_id} was not logged")
            out.append(logged)
        return out

    def index_bytes(self) -> dict[str, int]:
        return self.rift.stats(COLLECTION)["index_bytes"]
