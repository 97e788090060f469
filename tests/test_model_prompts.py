"""Which prompt a model's queries and documents are encoded with: the query_prompt setting, the model folder's
own prompts, rift's table of known models (bge), and never sentence-transformers' `default_prompt_name`."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from tests.support.tiny_model import build_tiny_model


def prompted_model(
    path: Path, prompts: dict[str, str], default_prompt_name: str | None = None, include_prompt: bool = True
) -> Path:
    """A tiny model folder whose config_sentence_transformers.json carries `prompts` (and a default)."""
    folder = build_tiny_model(path)
    config_file = folder / "config_sentence_transformers.json"
    config = json.loads(config_file.read_text())
    config.update(prompts=prompts, default_prompt_name=default_prompt_name)
    config_file.write_text(json.dumps(config))
    pooling_file = folder / "1_Pooling" / "config.json"
    pooling = json.loads(pooling_file.read_text())
    pooling["include_prompt"] = include_prompt
    pooling_file.write_text(json.dumps(pooling))
    return folder


@pytest.fixture(scope="module")
def default_query_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return prompted_model(
        tmp_path_factory.mktemp("default-query"), {"query": "query: ", "document": ""}, "query"
    )


def _reference(folder: Path, texts: list[str], prompt: str) -> np.ndarray:
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(folder), device="cpu")
    return model.encode(texts, prompt=prompt, normalize_embeddings=True, convert_to_numpy=True)


def test_a_default_prompt_name_does_not_reach_documents_or_an_empty_query_prompt(
    default_query_model: Path,
) -> None:
    from server.engine.embedder import Embedder
    from server.engine.models import resolve_model

    texts = ["the cat sat on the mat", "a dog in the river"]
    no_prompt = _reference(default_query_model, texts, "")
    with_query = _reference(default_query_model, texts, "query: ")
    assert not np.allclose(no_prompt, with_query, atol=1e-3)  # the prompt matters for this model

    embedder = Embedder(resolve_model(str(default_query_model)), version="d", device="cpu")
    assert (embedder.query_prompt, embedder.document_prompt) == ("query: ", "")
    np.testing.assert_allclose(embedder.encode_documents(texts), no_prompt, atol=1e-6)
    np.testing.assert_allclose(embedder.encode_query(texts[0]), with_query[0], atol=1e-6)

    off = Embedder(resolve_model(str(default_query_model), ""), version="d", device="cpu")
    assert off.query_prompt == ""
    np.testing.assert_allclose(off.encode_query(texts[0]), no_prompt[0], atol=1e-6)


BGE_PROMPT = "Represent this sentence for searching relevant passages: "


@pytest.fixture(scope="module")
def plain_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("plain"))


def _copy(source: Path, target: Path) -> Path:
    import shutil

    shutil.copytree(source, target)
    return target


def test_a_local_copy_of_a_known_model_gets_its_query_instruction(
    tmp_path: Path, plain_model: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """README: bge's instruction is applied automatically, and a local folder path works too: a folder named
    like the model, or the Hugging Face cache's snapshot of it, is known by that name (case-insensitively)."""
    import logging

    from server.engine.embedder import Embedder
    from server.engine.models import resolve_model

    named = _copy(plain_model, tmp_path / "models" / "BGE-Small-EN-v1.5")
    snapshot = _copy(plain_model, tmp_path / "hub" / "models--BAAI--bge-small-en-v1.5" / "snapshots" / "5c38ec7c")
    other = _copy(plain_model, tmp_path / "models" / "my-model")
    for folder in (named, snapshot, Path(f"{named}/")):
        with caplog.at_level(logging.INFO, logger="server.engine.embedder"):
            caplog.clear()
            embedder = Embedder(resolve_model(str(folder)), version="bge", device="cpu")
        assert embedder.query_prompt == BGE_PROMPT, folder
        assert any("query prompt" in r.getMessage() and "known models" in r.getMessage() for r in caplog.records)
        # The setting wins, and "" turns the instruction off.
        assert Embedder(resolve_model(str(folder), ""), version="bge", device="cpu").query_prompt == ""
        assert Embedder(resolve_model(str(folder), "q: "), version="bge", device="cpu").query_prompt == "q: "
    assert Embedder(resolve_model(str(other)), version="other", device="cpu").query_prompt == ""
    # Another organisation's hub id of the same name is not taken for it (it is no local folder).
    assert resolve_model("someone/bge-small-en-v1.5").known_query_prompt is None
    assert resolve_model("BAAI/BGE-small-en-v1.5").known_query_prompt == BGE_PROMPT
    # stats says which prompt applies and why: the log says it only with `rift -v` (found by helper BG).
    from tests.support.helpers import make_settings, open_rift

    rift = open_rift(make_settings(tmp_path / "data", named))
    try:
        stats = rift.stats()
        assert stats["query_prompt"] == BGE_PROMPT and "known models" in stats["query_prompt_because"]
    finally:
        rift.close()


def test_a_known_models_folder_with_its_own_query_prompt_keeps_it(tmp_path: Path) -> None:
    from server.engine.embedder import Embedder
    from server.engine.models import resolve_model

    own = prompted_model(tmp_path / "x", {"query": "find: ", "document": ""})
    folder = _copy(own, tmp_path / "bge-small-en-v1.5")
    assert Embedder(resolve_model(str(folder)), version="own", device="cpu").query_prompt == "find: "
    assert Embedder(resolve_model(str(folder), ""), version="own", device="cpu").query_prompt == ""
