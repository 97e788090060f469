"""embed_backend='onnx': exported once from the local weights, same vectors as torch to float rounding."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.support.processes import wait_until

pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")


def test_onnx_matches_torch_and_is_cached(tmp_path: Path, tiny_model_path: Path) -> None:
    from server.engine.embedder import Embedder
    from server.engine.models import resolve_model

    spec = resolve_model(str(tiny_model_path))
    torch_e = Embedder(spec, version="tiny")
    onnx_e = Embedder(
        spec, version="tiny", backend="onnx", document_backend="onnx", onnx_dir=tmp_path / "onnx"
    )
    exported = list((tmp_path / "onnx").glob("*.onnx"))
    assert len(exported) == 1
    texts = ["the cat sat on the mat", "a dog", "quantum physics and the strong force " * 20]
    np.testing.assert_allclose(onnx_e.encode_documents(texts), torch_e.encode_documents(texts), atol=1e-5)
    np.testing.assert_allclose(onnx_e.encode_query("cat mat"), torch_e.encode_query("cat mat"), atol=1e-5)
    mtime = exported[0].stat().st_mtime_ns
    # The default pairing: onnx for queries, torch for document batches (reuses the export).
    split = Embedder(spec, version="tiny", backend="onnx", onnx_dir=tmp_path / "onnx")
    assert exported[0].stat().st_mtime_ns == mtime
    np.testing.assert_array_equal(split.encode_query("cat mat"), onnx_e.encode_query("cat mat"))
    np.testing.assert_array_equal(split.encode_documents(texts), torch_e.encode_documents(texts))


def test_single_texts_skip_the_batch_tokenizer_with_identical_inputs(
    tmp_path: Path, tiny_model_path: Path
) -> None:
    from server.engine.embedder import Embedder
    from server.engine.models import resolve_model

    spec = resolve_model(str(tiny_model_path))
    onnx_e = Embedder(spec, version="tiny", backend="onnx", onnx_dir=tmp_path / "onnx")
    encoder = onnx_e._onnx
    assert encoder._single is not None
    texts = ["cat mat", "the cat sat on the mat", "quantum physics and the strong force " * 200]
    for text in texts:
        wrapped = encoder.tokenizer(
            [text], truncation=True, max_length=encoder.max_length, return_tensors="np"
        )
        single = encoder._single.encode(text)
        assert wrapped["input_ids"][0].tolist() == single.ids
        assert wrapped["attention_mask"][0].tolist() == single.attention_mask
        assert wrapped["token_type_ids"][0].tolist() == single.type_ids
    # The one-text path gives the same vector as the batch path (which pads a batch of several).
    one = np.vstack([encoder.encode([t], "", 32) for t in texts])
    np.testing.assert_allclose(one, encoder.encode(texts, "", 32), atol=1e-5)


def test_with_onnx_for_documents_too_a_waiting_query_goes_before_the_next_batch(
    tmp_path: Path, tiny_model_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The onnx session had a plain lock: with both backends onnx, a search was passed over by a write's next
    batch in 2 of 5 runs (helper DV). It now takes the same turns as torch: queries first."""
    from server.engine import model_turns
    from server.engine.embedder import Embedder
    from server.engine.models import resolve_model

    monkeypatch.setattr(model_turns, "QUERY_TURN_S", 30.0)  # (so a late-waking search thread still goes)
    both = Embedder(
        resolve_model(str(tiny_model_path)), version="tiny", batch_size=2, backend="onnx",
        document_backend="onnx", onnx_dir=tmp_path / "onnx",
    )
    encoder = both._onnx
    runs: list[int] = []
    real_session = encoder.session

    class Recording:
        def run(self, names: Any, feed: dict[str, Any]) -> Any:
            runs.append(int(feed["input_ids"].shape[0]))
            if len(runs) == 1:  # the first documents hold the model: a search starts and waits for it
                searching.start()
                wait_until(lambda: encoder._turns.queries_waiting == 1, 10, "the search waiting for the model")
            return real_session.run(names, feed)

    encoder.session = Recording()
    searching = threading.Thread(target=lambda: both.encode_query("where"))
    vectors = both.encode_documents([f"text {n} " * (1 + n % 3) for n in range(20)])
    searching.join(10)
    assert vectors.shape[0] == 20 and not searching.is_alive()
    assert runs[:2] == [2, 1], runs  # the query's one-text run came right after the first batch


def test_unknown_backend_is_refused(tiny_model_path: Path) -> None:
    from server.engine.embedder import Embedder
    from server.engine.models import resolve_model

    with pytest.raises(ValueError, match="unknown embed backend 'tensorrt'"):
        Embedder(resolve_model(str(tiny_model_path)), version="tiny", document_backend="tensorrt")


def test_settings_select_the_backend(tmp_path: Path, tiny_model_path: Path) -> None:
    from server.config import Settings
    from server.service import Rift

    settings = Settings(data_dir=tmp_path / "data", model=str(tiny_model_path), embed_backend="onnx")
    app = Rift(settings).start(background=False)
    try:
        assert app.engine().embedder.backend == "onnx"
        assert app.engine().embedder.document_backend == "torch"
        assert list((settings.models_dir / "onnx").glob("*.onnx"))
    finally:
        app.close()


def test_exports_of_deleted_model_folders_are_pruned(tmp_path: Path, tiny_model_path: Path) -> None:
    """A rejected fine-tune's weights are deleted; its ONNX export (about 90 MB for MiniLM) must go too."""
    import shutil

    from server.engine.embedder import Embedder
    from server.engine.models import resolve_model
    from server.engine.onnx_backend import prune_exports

    candidate = tmp_path / "ft-candidate"
    shutil.copytree(tiny_model_path, candidate)
    cache = tmp_path / "onnx"
    Embedder(resolve_model(str(tiny_model_path)), version="base", backend="onnx", onnx_dir=cache)
    Embedder(resolve_model(str(candidate)), version="ft", backend="onnx", onnx_dir=cache)
    (cache / "from-an-earlier-version.onnx").write_bytes(b"x")  # no recorded source: kept
    assert len(list(cache.glob("*.onnx"))) == 3
    assert prune_exports(cache) == 0
    shutil.rmtree(candidate)
    assert prune_exports(cache) == 1
    assert len(list(cache.glob("*.onnx"))) == 2 and len(list(cache.glob("*.source"))) == 1


@pytest.mark.parametrize("mode", ["mean", "cls"])
def test_onnx_leaves_the_prompt_out_of_pooling_like_torch(tmp_path: Path, mode: str) -> None:
    """A Pooling module with include_prompt false pools without the prompt's tokens (sentence-transformers
    zeroes them in the pooling mask); the onnx export must too, for queries and documents, one or many."""
    import json

    from server.engine.embedder import Embedder
    from server.engine.models import resolve_model
    from tests.test_model_prompts import prompted_model

    folder = prompted_model(
        tmp_path / "model", {"query": "query: ", "document": "passage: "}, include_prompt=False
    )
    pooling_file = folder / "1_Pooling" / "config.json"
    pooling_file.write_text(json.dumps({**json.loads(pooling_file.read_text()), "pooling_mode": mode}))
    spec = resolve_model(str(folder))
    torch_e = Embedder(spec, version="p", device="cpu")
    onnx_e = Embedder(spec, version="p", backend="onnx", document_backend="onnx", onnx_dir=tmp_path / "onnx")
    assert (torch_e.query_prompt, torch_e.document_prompt) == ("query: ", "passage: ")
    texts = ["the cat sat on the mat", "a dog", "quantum physics and the strong force " * 20]
    np.testing.assert_allclose(onnx_e.encode_documents(texts), torch_e.encode_documents(texts), atol=1e-6)
    for text in texts:
        np.testing.assert_allclose(onnx_e.encode_query(text), torch_e.encode_query(text), atol=1e-6)
    # And with no prompt at all (query_prompt = ""), nothing is left out.
    bare = resolve_model(str(folder), "")
    np.testing.assert_allclose(
        Embedder(bare, version="p", backend="onnx", onnx_dir=tmp_path / "onnx").encode_query("cat mat"),
        Embedder(bare, version="p", device="cpu").encode_query("cat mat"),
        atol=1e-6,
    )
