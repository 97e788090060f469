"""A document-embedding cache used only by the benchmark, so a second run over the same corpus skips encoding.

Vectors are stored per chunk text (sha1 of the text) under a folder keyed by the model's identity: its
location, configured version, document prompt and the size/mtime of its weight files. The inference backend
(torch or onnx) is not part of the key: both give the same vectors to ~1e-7 (tests/test_onnx_backend.py). A change of
chunking settings changes the chunk texts and so misses the cache by itself; unchanged chunks are reused.
Each encode call that misses writes one shard (.npz), so an interrupted run keeps what it finished.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import time
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

WEIGHT_SUFFIXES = (".safetensors", ".bin", ".onnx", ".pt")


def model_identity(embedder: Any) -> dict[str, Any]:
    spec = embedder.spec
    weights: list[tuple[str, int, int]] = []
    location = Path(spec.location)
    if location.is_dir():
        for path in sorted(location.rglob("*")):
            if path.is_file() and path.suffix in WEIGHT_SUFFIXES:
                stat = path.stat()
                weights.append((str(path.relative_to(location)), stat.st_size, stat.st_mtime_ns))
    return {
        "location": spec.location,
        "version": embedder.version,
        "document_prompt": embedder.document_prompt,
        "dimension": embedder.dimension,
        "max_seq_length": embedder.max_seq_length,
        "weights": weights,
    }


def cache_key(embedder: Any) -> str:
    identity = json.dumps(model_identity(embedder), sort_keys=True)
    slug = re.sub(r"[^A-Za-z0-9_.-]+", "-", Path(str(embedder.version)).name)[:40] or "model"
    return f"{slug}-{hashlib.sha256(identity.encode()).hexdigest()[:16]}"


def text_key(text: str) -> bytes:
    return hashlib.sha1(text.encode("utf-8")).digest()


class CachingEmbedder:
    """Wraps an Embedder; everything but encode_documents is passed through unchanged."""

    def __init__(self, inner: Any, cache_dir: Path) -> None:
        self._inner = inner
        self.folder = Path(cache_dir) / "embeddings" / cache_key(inner)
        self.folder.mkdir(parents=True, exist_ok=True)
        self._vectors: dict[bytes, np.ndarray] = {}
        for shard in sorted(self.folder.glob("*.npz")):
            try:
                with np.load(shard) as data:
                    keys, vectors = data["keys"], data["vectors"]
            except (OSError, ValueError, KeyError) as exc:  # a torn write: ignore, it will be re-encoded
                log.warning("ignoring unreadable cache shard %s: %s", shard, exc)
                continue
            for key, vec in zip(keys, vectors, strict=True):
                self._vectors[key.tobytes()] = vec
        self.hits = 0
        self.misses = 0
        self.encode_seconds = 0.0

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    @property
    def inner(self) -> Any:
        return self._inner

    @property
    def size(self) -> int:  # not __len__: an empty cache must not be falsy
        return len(self._vectors)

    def all_vectors(self) -> np.ndarray:
        if not self._vectors:
            return np.zeros((0, self._inner.dimension), dtype=np.float32)
        return np.stack(list(self._vectors.values())).astype(np.float32)

    def encode_documents(
        self, texts: Sequence[str], progress: Callable[[int, int], None] | None = None
    ) -> np.ndarray:
        keys = [text_key(t) for t in texts]
        missing = [i for i, k in enumerate(keys) if k not in self._vectors]
        self.hits += len(texts) - len(missing)
        self.misses += len(missing)
        if missing:
            started = time.perf_counter()
            fresh = self._inner.encode_documents([texts[i] for i in missing], progress)
            self.encode_seconds += time.perf_counter() - started
            shard_keys = np.frombuffer(b"".join(keys[i] for i in missing), dtype=np.uint8).reshape(-1, 20)
            tmp = self.folder / f".{uuid.uuid4().hex}.tmp.npz"
            np.savez(tmp, keys=shard_keys, vectors=fresh.astype(np.float32))
            tmp.rename(self.folder / f"{time.time_ns()}-{uuid.uuid4().hex[:8]}.npz")
            for i, vec in zip(missing, fresh, strict=True):
                self._vectors[keys[i]] = vec
        elif progress is not None:
            progress(len(texts), len(texts))
        if not texts:
            return np.zeros((0, self._inner.dimension), dtype=np.float32)
        return np.stack([self._vectors[k] for k in keys]).astype(np.float32)
