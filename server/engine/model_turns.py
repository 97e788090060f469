"""Whose turn it is on a model: one encode at a time, queries before a write's next batch.

A plain lock is not fair: the thread encoding a long add_documents took it back at once after each batch, and
a search waited two batches or more (with MiniLM on a busy 2-core machine, 2 of 7 searches 4.5 s against 2.2 s
batches, 4 of 5 in another run: helper DU; the onnx backend passed a query over in 2 of 5 runs: helper DV)."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator

# How long a batch of documents waits, at most, for the queries waiting on the model to go first.
QUERY_TURN_S = 1.0


class ModelTurns:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.queries_waiting = 0
        self._count = threading.Lock()

    @contextlib.contextmanager
    def turn(self, query: bool) -> Iterator[None]:
        """Hold the model. A batch of documents first lets the queries already waiting go (up to QUERY_TURN_S,
        so that a steady stream of searches cannot hold a write back for good)."""
        if query:
            with self._count:
                self.queries_waiting += 1
            try:
                self.lock.acquire()
            finally:
                with self._count:
                    self.queries_waiting -= 1
        else:
            deadline = time.monotonic() + QUERY_TURN_S
            while self.queries_waiting and time.monotonic() < deadline:
                time.sleep(0.001)
            self.lock.acquire()
        try:
            yield
        finally:
            self.lock.release()
