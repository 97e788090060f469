"""Exact cosine search over an in-memory copy of a small collection's vectors.

Why: below a few tens of thousands of chunks a numpy scan of the unit vectors is exact and costs ~0.3 ms at 10K
chunks, while a Chroma query costs 1.5 ms of fixed overhead plus ~2 ms for 200 results (README "Benchmarks").
Chroma stays the store of record (and the search for larger collections and for Chroma server mode): the copy
is filled from it at start-up and follows every acknowledged write.

Rows line up with the collection's keyword snapshot, so liveness and filter masks are shared with BM25.
"""

from __future__ import annotations

import logging
import os
from concurrent.futures import Executor

import numpy as np

log = logging.getLogger(__name__)


def quiet_numpy_blas() -> None:
    """Run numpy's (and scipy's) OpenBLAS on one thread. A 10K x 384 scan is too small to gain from threads,
    and OpenBLAS workers busy-wait after every call, taking a core from the next query's embedding: one
    thread halved the CPU time of a hybrid search at equal latency (README "Benchmarks"). torch uses MKL and
    OpenMP, which this leaves alone."""
    try:
        from threadpoolctl import ThreadpoolController

        ThreadpoolController().select(internal_api="openblas").limit(limits=1)
    except Exception as exc:  # an optimisation only
        log.debug("could not limit OpenBLAS threads: %s", exc)


class VectorRows:
    """Append-only float32 rows with spare capacity. A view `rows[:n]` handed to a reader stays valid while a
    writer appends: appends only write beyond every published view, and growth copies into a new buffer."""

    def __init__(self, dimension: int, capacity: int = 0) -> None:
        self._buf = np.zeros((max(capacity, 16), dimension), dtype=np.float32)
        self.n = 0

    @classmethod
    def of(cls, vectors: np.ndarray) -> VectorRows:
        vectors = np.asarray(vectors, dtype=np.float32)
        out = cls(vectors.shape[1], int(len(vectors) * 1.25))
        out._buf[: len(vectors)] = vectors
        out.n = len(vectors)
        return out

    @property
    def dimension(self) -> int:
        return int(self._buf.shape[1])

    def view(self) -> np.ndarray:
        return self._buf[: self.n]

    def appended(self, vectors: np.ndarray) -> VectorRows:
        """These rows after the existing ones. Shares the buffer when it has room (the old object keeps its
        own `n`, so its readers never see the new rows)."""
        vectors = np.asarray(vectors, dtype=np.float32)
        need = self.n + len(vectors)
        out = VectorRows.__new__(VectorRows)
        if need <= len(self._buf):
            out._buf = self._buf
        else:
            out._buf = np.zeros((max(need, int(len(self._buf) * 1.5)), self.dimension), dtype=np.float32)
            out._buf[: self.n] = self._buf[: self.n]
        out._buf[self.n : need] = vectors
        out.n = need
        return out

    def kept(self, keep: np.ndarray) -> VectorRows:
        """Only the rows where `keep` is true, in order (a new buffer)."""
        return VectorRows.of(self.view()[keep])


# Each thread's part has at least this many rows (3 MB at 384 dimensions): smaller parts would gain less than
# a hand-off to another thread costs (~50 us).
MIN_PART_ROWS = 2048
MAX_PARTS = min(os.cpu_count() or 1, 4)  # read once: os.cpu_count() costs ~50 us a call here


def scores_of(vectors: np.ndarray, query: np.ndarray, pool: Executor | None = None) -> np.ndarray:
    """`vectors @ query`, split across the CPUs when a pool is given. The scan is memory-bound and one core
    cannot draw the memory bandwidth of several: on this 2-core machine two halves of a 10K x 384 matrix take
    0.55 ms against 1.0 ms for one (README "Benchmarks"). numpy's BLAS stays on one thread (see above), so
    the pool's idle workers block instead of spinning."""
    query = np.asarray(query, dtype=np.float32)
    parts = min(MAX_PARTS, len(vectors) // MIN_PART_ROWS) if pool is not None else 1
    if parts <= 1:
        return vectors @ query
    bounds = [len(vectors) * i // parts for i in range(parts + 1)]
    out = np.empty(len(vectors), dtype=np.float32)

    def part(i: int) -> None:
        np.matmul(vectors[bounds[i] : bounds[i + 1]], query, out=out[bounds[i] : bounds[i + 1]])

    waiting = [pool.submit(part, i) for i in range(1, parts)]
    part(0)
    for f in waiting:
        f.result()
    return out


def top_rows(
    vectors: np.ndarray,
    query: np.ndarray,
    allowed: np.ndarray | None,
    depth: int,
    pool: Executor | None = None,
) -> list[tuple[int, float]]:
    """(row, cosine) of the `depth` best allowed rows (every row when `allowed` is None), best first. Vectors
    and query are unit length."""
    if not len(vectors) or depth <= 0:
        return []
    scores = scores_of(vectors, query, pool)
    if allowed is not None and not allowed.all():
        scores = np.where(allowed, scores, -np.inf)
        depth = min(depth, int(allowed.sum()))
        if depth == 0:
            return []
    # The `depth` best in linear time (partition finds the cut; only the rows kept get sorted), ties in row
    # order, at the cut too, as the keyword side breaks them: argpartition kept an arbitrary few of the rows
    # tied at the cut, so copies of one text past the depth came back as other rows than BM25's, and the log
    # took both sides' identical scores for disagreement (blind spots on each side).
    n = len(scores)
    if depth < n:
        cut = np.partition(scores, n - depth)[n - depth]
        above = np.flatnonzero(scores > cut)
        best = np.concatenate([above, np.flatnonzero(scores == cut)[: depth - len(above)]])
    else:
        best = np.arange(n)
    best = best[np.argsort(-scores[best], kind="stable")]
    return list(zip(best.tolist(), scores[best].tolist(), strict=True))
