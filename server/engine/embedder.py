"""A sentence-transformers model behind a small, thread-safe interface: encode queries, encode documents,
and expose the tokenizer so chunking can respect the model's sequence limit."""

from __future__ import annotations

import contextlib
import functools
import hashlib
import importlib
import json
import logging
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from server.engine.model_turns import ModelTurns
from server.engine.models import ModelSpec, choose_query_prompt
from server.errors import RiftError

log = logging.getLogger(__name__)


def embed_options(settings: Any) -> dict[str, Any]:
    """The Embedder keyword arguments that come from Settings beyond model, device and batch size."""
    return {
        "backend": getattr(settings, "embed_backend", "torch"),
        "document_backend": getattr(settings, "document_backend", "torch"),
        "onnx_dir": settings.models_dir / "onnx",
    }


# Devices whose torch support a vendor's package adds when imported.
_DEVICE_PLUGINS = {"npu": "torch_npu", "hpu": "habana_frameworks.torch"}


def check_device(device: str) -> None:
    """A clear error naming the setting when `device` names hardware torch cannot use here (torch's own says
    "Torch not compiled with CUDA enabled" from deep inside the model load)."""
    if device == "auto":
        return
    import torch

    kind, _, index = device.partition(":")
    where = f"device {device!r} (setting `device`, RIFT_DEVICE)"
    if kind == "cuda":
        if not torch.cuda.is_available():
            build = " (this torch is a CPU-only build)" if torch.version.cuda is None else ""
            raise RiftError(
                f"{where}: torch {torch.__version__} sees no CUDA GPU{build}; use 'auto' or 'cpu'"
            )
        if index and int(index) >= torch.cuda.device_count():
            raise RiftError(f"{where}: there are {torch.cuda.device_count()} CUDA GPUs (cuda:0 ...)")
    elif kind == "mps" and not torch.backends.mps.is_available():
        raise RiftError(f"{where}: Apple's MPS is not available here; use 'auto' or 'cpu'")
    elif kind not in ("cpu", "cuda", "mps"):  # xpu, npu, hpu, mtia: torch.<kind>, built in or added by a plugin
        plugin = _DEVICE_PLUGINS.get(kind)
        if getattr(torch, kind, None) is None and plugin is not None:
            with contextlib.suppress(ImportError):  # (what the vendor's own code imports before using it)
                importlib.import_module(plugin)
        backend = getattr(torch, kind, None)
        if backend is None:
            missing = f"its torch plugin, {plugin}, is not installed" if plugin else "this torch cannot use it"
        elif not backend.is_available():
            missing = f"torch {torch.__version__} sees none"
        else:
            missing = ""
        if missing:
            raise RiftError(f"{where}: no {kind} device here ({missing}); use 'auto' or 'cpu'")
        count = backend.device_count() if hasattr(backend, "device_count") else None
        if index and count is not None and int(index) >= count:
            raise RiftError(f"{where}: there are {count} {kind} devices ({kind}:0 ...)")


class Embedder:
    def __init__(
        self,
        spec: ModelSpec,
        version: str,
        device: str = "auto",
        batch_size: int = 32,
        backend: str = "torch",
        onnx_dir: Path | None = None,
        document_backend: str = "torch",
    ) -> None:
        """`backend` runs query embedding, `document_backend` batch document encoding. They can differ because
        the fastest differs: onnxruntime answers one short query sooner (and without spinning threads on a
        busy CPU), while torch encoded batches of chunks 8 % faster on this 2-core machine (README
        "Benchmarks"). Both give the same vectors to ~1e-7."""
        # Imported here: torch + sentence-transformers take seconds, and the server must answer before that.
        from sentence_transformers import SentenceTransformer
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        hf_logging.set_verbosity_error()
        self.spec = spec
        self.version = version
        self.batch_size = batch_size
        self._turns = ModelTurns()  # (queries go before a write's next batch)
        check_device(device)
        self.model = SentenceTransformer(spec.location, device=None if device == "auto" else device)
        self.model.eval()
        prompts = getattr(self.model, "prompts", None) or {}
        self.query_prompt, why = choose_query_prompt(spec, prompts.get("query", "") or "")
        self.query_prompt_because = why  # (stats shows both: the log says it only with -v)
        log.info("query prompt for %s: %r, because %s", spec.name, self.query_prompt, why)
        self.document_prompt: str = prompts.get("document", "") or prompts.get("passage", "")
        self.dimension: int = int(self.model.get_embedding_dimension())
        self.max_seq_length: int = int(self.model.max_seq_length or 512)
        for name in (backend, document_backend):
            if name not in ("torch", "onnx"):
                raise ValueError(f"unknown embed backend {name!r}")
        self.backend = backend
        self.document_backend = document_backend
        self._onnx: Any = None
        if "onnx" in (backend, document_backend):
            from server.engine.onnx_backend import OnnxEncoder

            cache = onnx_dir or Path(tempfile.gettempdir()) / "rift-onnx"
            self._onnx = OnnxEncoder(self.model, spec.location, cache)

    @property
    def tokenizer(self) -> Any:
        return self.model.tokenizer

    @functools.cached_property
    def vocabulary_id(self) -> str:
        """A short hash of the tokenizer's vocabulary and casing. Chunks are cut in its tokens, so chunks cut
        with another vocabulary may run past what this model reads (see Engine._chunking_of)."""
        vocab = sorted(self.tokenizer.get_vocab().items())
        lower = bool(getattr(self.tokenizer, "do_lower_case", False))
        return hashlib.sha256(json.dumps([vocab, lower]).encode()).hexdigest()[:16]

    def max_chunk_tokens(self, wanted: int) -> int:
        """Content tokens per chunk so that [CLS] + document prompt + chunk + [SEP] fits the model."""
        prompt_tokens = len(self.tokenizer(self.document_prompt, add_special_tokens=False)["input_ids"])
        return max(8, min(wanted, self.max_seq_length - 2 - prompt_tokens))

    def _encode(
        self, texts: Sequence[str], prompt: str, batch_size: int, backend: str, query: bool = False
    ) -> np.ndarray:
        if backend == "onnx":
            return self._onnx.encode(texts, prompt, batch_size, query=query)
        with self._turns.turn(query):
            vectors = self.model.encode(
                list(texts),
                # "" and not None: None makes sentence-transformers apply the model's `default_prompt_name`
                # prompt, so a model whose default is its query prompt would get it on documents too, and a
                # query_prompt set to "" would still get it.
                prompt=prompt,
                batch_size=batch_size,
                normalize_embeddings=True,
                convert_to_numpy=True,
                show_progress_bar=False,
            )
        return np.asarray(vectors, dtype=np.float32)

    def encode_query(self, text: str) -> np.ndarray:
        return self._encode([text], self.query_prompt, 1, self.backend, query=True)[0]

    def encode_documents(
        self, texts: Sequence[str], progress: Callable[[int, int], None] | None = None
    ) -> np.ndarray:
        """Encode in batches, reporting (done, total) after every 4 so callers can stream progress."""
        if not texts:
            return np.zeros((0, self.dimension), dtype=np.float32)
        # Sorting by length keeps padding (and so CPU time) low; the original order is restored below.
        order = np.argsort([-len(t) for t in texts], kind="stable")
        out = np.zeros((len(texts), self.dimension), dtype=np.float32)
        batch = max(self.batch_size, 1)
        step = batch * 4
        for start in range(0, len(texts), step):
            # One model batch per encode, so a search waiting for the model goes in after this batch and not
            # after all 4 (with MiniLM on a busy 2-core machine about 3 s instead of 11 s); progress stays per 4.
            for first in range(start, min(start + step, len(texts)), batch):
                idx = order[first : first + batch]
                out[idx] = self._encode(
                    [texts[i] for i in idx], self.document_prompt, self.batch_size, self.document_backend
                )
            if progress is not None:
                progress(min(start + step, len(texts)), len(texts))
        return out
