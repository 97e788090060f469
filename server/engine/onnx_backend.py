"""Optional onnxruntime inference for the embedding model (setting `embed_backend = "onnx"`).

The model's transformer, its pooling (mean or CLS, with or without the prompt's tokens) and L2 normalisation
are exported once, offline, from the local weights with torch's ONNX exporter into `<data_dir>/models/onnx/`,
keyed by the weights' identity, and then run with onnxruntime. Vectors match the torch path to within float rounding (~1e-7).

Why: a single short query is latency-bound, and on a small, busy CPU torch's spinning intra-op threads lose
badly to onnxruntime with spinning turned off (measured in README "Benchmarks").
"""

from __future__ import annotations

import hashlib
import json
import logging
import uuid
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from server.engine.model_turns import ModelTurns
from server.errors import RiftError

log = logging.getLogger(__name__)

INPUTS = ("input_ids", "attention_mask", "token_type_ids")
POOLING_MASK = "pooling_mask"


def _structure(model: Any) -> tuple[Any, str, bool]:
    """(the Hugging Face transformer, pooling mode, whether pooling includes the prompt's tokens) of a plain
    Transformer + Pooling [+ Normalize] model."""
    modules = list(model)
    names = [type(m).__name__ for m in modules]
    if (
        len(modules) not in (2, 3)
        or names[:2] != ["Transformer", "Pooling"]
        or names[2:] not in ([], ["Normalize"])
    ):
        raise RiftError(
            f"embed_backend='onnx' supports Transformer + Pooling models only, not {' + '.join(names)}"
        )
    pooling = modules[1]
    mode = str(getattr(pooling, "pooling_mode", None) or pooling.get_config_dict().get("pooling_mode", ""))
    if mode not in ("mean", "cls"):
        raise RiftError(f"embed_backend='onnx' supports mean or CLS pooling, not {mode!r}")
    include_prompt = bool(getattr(pooling, "include_prompt", True))
    return modules[0].auto_model, mode, include_prompt


def _fingerprint(location: str, mode: str) -> str:
    import torch

    parts: list[Any] = [location, mode, torch.__version__]
    root = Path(location)
    if root.is_dir():
        for path in sorted(root.rglob("*")):
            if path.is_file() and path.suffix in (".safetensors", ".bin", ".json"):
                stat = path.stat()
                parts.append((str(path.relative_to(root)), stat.st_size, stat.st_mtime_ns))
    return hashlib.sha256(json.dumps(parts).encode()).hexdigest()[:20]


def export(transformer: Any, mode: str, tokenizer: Any, out: Path, pooling_mask: bool = False) -> None:
    """With `pooling_mask`, the graph takes a fourth input, the mask of the tokens to pool (the attention mask
    without the prompt's tokens, for a Pooling module with include_prompt false); without it, it pools the
    attention mask (and its inputs are those of exports made before that option)."""
    import torch

    try:
        import onnx  # noqa: F401  (torch's exporter needs it)
    except ImportError:
        raise RiftError("embed_backend='onnx' needs the onnx package: pip install 'rift-mcp[onnx]'") from None

    class Pooled(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.transformer = transformer

        def forward(self, input_ids: Any, attention_mask: Any, token_type_ids: Any, *pooled_mask: Any) -> Any:
            hidden = self.transformer(
                input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids
            ).last_hidden_state
            pool = pooled_mask[0] if pooled_mask else attention_mask
            if mode == "cls" and pooled_mask:  # sentence-transformers takes the first token it pools
                first = pool.argmax(dim=1).view(-1, 1, 1).expand(-1, 1, hidden.shape[-1])
                pooled = torch.gather(hidden, 1, first).squeeze(1)
            elif mode == "cls":
                pooled = hidden[:, 0]
            else:
                mask = pool.unsqueeze(-1).to(hidden.dtype)
                pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
            return torch.nn.functional.normalize(pooled, p=2, dim=1)

    sample = tokenizer(
        ["an example query", "a second, longer example text"], padding=True, return_tensors="pt"
    )
    args = tuple(sample.get(name, torch.zeros_like(sample["input_ids"])) for name in INPUTS)
    names = list(INPUTS)
    if pooling_mask:
        args = (*args, sample["attention_mask"])
        names.append(POOLING_MASK)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{uuid.uuid4().hex}.onnx")
    with torch.inference_mode(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation and tracer notes
        torch.onnx.export(
            Pooled().eval(),
            args,
            str(tmp),
            input_names=names,
            output_names=["embedding"],
            dynamic_axes={**{n: {0: "batch", 1: "tokens"} for n in names}, "embedding": {0: "batch"}},
            opset_version=17,
            dynamo=False,
        )
    tmp.rename(out)


class OnnxEncoder:
    def __init__(self, model: Any, location: str, cache_dir: Path, threads: int = 0) -> None:
        import onnxruntime as ort

        transformer, mode, include_prompt = _structure(model)
        self.tokenizer = model.tokenizer
        self.max_length = int(model.max_seq_length or 512)
        # A Pooling module with include_prompt false leaves the prompt's tokens out of the pooled vector, as
        # sentence-transformers does; its export takes the mask to pool (a distinct file: another graph).
        self.exclude_prompt = not include_prompt
        self._prompt_lengths: dict[str, int] = {}
        keyed = f"{mode}:without-prompt" if self.exclude_prompt else mode
        self.path = Path(cache_dir) / f"{_fingerprint(location, keyed)}.onnx"
        if not self.path.is_file():
            log.info("exporting the embedding model to ONNX at %s", self.path)
            export(transformer, mode, self.tokenizer, self.path, pooling_mask=self.exclude_prompt)
        if Path(location).is_dir():  # so prune_exports can tell when the weights it came from are gone
            self.path.with_suffix(".source").write_text(str(Path(location).resolve()))
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        # Spinning threads win benchmarks on an idle machine and lose badly on a shared one.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.session = ort.InferenceSession(str(self.path), options, providers=["CPUExecutionProvider"])
        self._turns = ModelTurns()  # (its own: onnx queries need not wait for torch document batches)
        self._single = _single_text_tokenizer(self.tokenizer, self.max_length)

    def _prompt_length(self, prompt: str) -> int:
        """Tokens the prompt takes at the start of a text, [CLS] included, as sentence-transformers counts them
        (Transformer._get_prompt_length: the prompt tokenized alone, less a trailing special token)."""
        if prompt not in self._prompt_lengths:
            ids = list(self.tokenizer([prompt])["input_ids"][0])
            special = set(getattr(self.tokenizer, "all_special_ids", []) or [])
            self._prompt_lengths[prompt] = len(ids) - (1 if ids and ids[-1] in special else 0)
        return self._prompt_lengths[prompt]

    def _with_pooling_mask(self, feed: dict[str, np.ndarray], prompt: str) -> dict[str, np.ndarray]:
        if not self.exclude_prompt:
            return feed
        mask = feed["attention_mask"].copy()
        if prompt:  # as Pooling._exclude_prompt_from_mask: the prompt's positions after any left padding
            starts = mask.argmax(axis=1) + self._prompt_length(prompt)
            mask[np.arange(mask.shape[1])[None, :] < starts[:, None]] = 0
        return {**feed, POOLING_MASK: mask}

    def encode(self, texts: Sequence[str], prompt: str, batch_size: int, query: bool = False) -> np.ndarray:
        texts = [prompt + t for t in texts] if prompt else list(texts)
        if len(texts) == 1 and self._single is not None:
            enc = self._single.encode(texts[0])
            feed = {
                n: np.asarray([getattr(enc, attr)], dtype=np.int64)
                for n, attr in zip(INPUTS, ("ids", "attention_mask", "type_ids"), strict=True)
            }
            feed = self._with_pooling_mask(feed, prompt)
            with self._turns.turn(query):
                return np.asarray(self.session.run(None, feed)[0], dtype=np.float32)
        out = []
        for start in range(0, len(texts), max(batch_size, 1)):
            enc = self.tokenizer(
                texts[start : start + batch_size],
                padding=True,
                truncation=True,
                max_length=self.max_length,
                return_tensors="np",
            )
            feed = {
                n: np.asarray(enc.get(n, np.zeros_like(enc["input_ids"])), dtype=np.int64) for n in INPUTS
            }
            feed = self._with_pooling_mask(feed, prompt)
            with self._turns.turn(query):
                out.append(self.session.run(None, feed)[0])
        return np.concatenate(out).astype(np.float32) if out else np.zeros((0, 0), dtype=np.float32)


def _single_text_tokenizer(tokenizer: Any, max_length: int) -> Any | None:
    """A private copy of a fast tokenizer's Rust backend, truncating like the transformers call in `encode`,
    for one text at a time. Why: the transformers wrapper sends even one text through `encode_batch`, which
    releases the GIL; during a hybrid search the BM25 side thread takes it, and the embedding cannot go on
    until BM25's Python code gives it back (0.39 ms per search in `encode_batch` there, 0.04 ms alone).
    `encode` keeps the GIL for its 0.01 ms. The inputs are identical (tests compare them). None for a slow
    (pure Python) tokenizer."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        return None
    try:
        from tokenizers import Tokenizer

        single = Tokenizer.from_str(backend.to_str())
        single.enable_truncation(max_length, direction=getattr(tokenizer, "truncation_side", "right"))
        single.no_padding()
        return single
    except Exception as exc:  # an optimisation only
        log.debug("no single-text tokenizer: %s", exc)
        return None


def prune_exports(cache_dir: Path) -> int:
    """Delete exports of local model folders that no longer exist (a rejected fine-tune's deleted weights):
    about 90 MB each for MiniLM. Exports of hub models, or from before sources were recorded, stay."""
    removed = 0
    for source in Path(cache_dir).glob("*.source"):
        try:
            gone = not Path(source.read_text().strip()).is_dir()
        except OSError:
            continue
        if gone:
            source.with_suffix(".onnx").unlink(missing_ok=True)
            source.unlink(missing_ok=True)
            removed += 1
    return removed
