"""Each training loss trains on (query, positive, negative) rows and saves a model that loads and encodes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from server.learning.training import TrainConfig, train_model

ROWS = [
    ("river flood", "the river bank floods every spring", "bank loans and interest rates"),
    ("cat mat", "a cat sat on the warm mat", "the sea wall protects the harbour"),
    ("python server", "python code runs on the server", "spring flowers bloom near the river"),
    ("night train", "night trains cross the old bridge", "blue fish swim in the cold sea"),
]


@pytest.mark.parametrize("loss", ["mnrl", "cached_mnrl", "triplet"])
def test_each_loss_trains_and_saves_a_usable_model(tiny_model_path: Path, tmp_path: Path, loss: str) -> None:
    from sentence_transformers import SentenceTransformer

    # Several steps: the first one runs at warm-up learning rate 0.
    cfg = TrainConfig(epochs=3, learning_rate=1e-3, batch_size=2, loss=loss, device="cpu", seed=1)
    result = train_model(str(tiny_model_path), ROWS, tmp_path / loss, cfg)
    assert result.examples == len(ROWS) and result.steps >= 1 and result.path.is_dir()
    before = SentenceTransformer(str(tiny_model_path), device="cpu").encode(["river flood"])
    after = SentenceTransformer(str(result.path), device="cpu").encode(["river flood"])
    assert after.shape == before.shape and not np.allclose(after, before)  # it trained


def test_unknown_loss_is_refused(tiny_model_path: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown loss"):
        train_model(str(tiny_model_path), ROWS, tmp_path / "x", TrainConfig(loss="contrastive", device="cpu"))


def test_hardness_weighting_and_directions_reach_the_mnrl_loss(
    tiny_model_path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The bench's `learn_hardness_mode` and `learn_mnrl_directions` experiments: MNRL built with
    sentence-transformers' hardness weighting or symmetric directions; another loss is refused rather than
    trained without them."""
    from sentence_transformers import losses

    built: list[tuple[str | None, float, tuple[str, ...]]] = []
    real = losses.MultipleNegativesRankingLoss

    class Recording(real):  # type: ignore[misc,valid-type]
        def __init__(self, *args: object, **kwargs: object) -> None:
            super().__init__(*args, **kwargs)
            built.append((self.hardness_mode, self.hardness_strength, tuple(self.directions)))

    monkeypatch.setattr(losses, "MultipleNegativesRankingLoss", Recording)
    cfg = TrainConfig(epochs=1, batch_size=2, hardness_mode="hard_negatives", hardness_strength=5.0, device="cpu")
    assert train_model(str(tiny_model_path), ROWS, tmp_path / "hard", cfg).path.is_dir()
    symmetric = TrainConfig(epochs=1, batch_size=2, directions=("query_to_doc", "doc_to_query"), device="cpu")
    assert train_model(str(tiny_model_path), ROWS, tmp_path / "both", symmetric).path.is_dir()
    assert built == [("hard_negatives", 5.0, ("query_to_doc",)), (None, 0.0, ("query_to_doc", "doc_to_query"))]
    cached = TrainConfig(loss="cached_mnrl", hardness_mode="hard_negatives", hardness_strength=5.0, device="cpu")
    with pytest.raises(ValueError, match="hardness weighting applies only to the mnrl loss"):
        train_model(str(tiny_model_path), ROWS, tmp_path / "x", cached)
    triplet = TrainConfig(loss="triplet", directions=("query_to_doc", "doc_to_query"), device="cpu")
    with pytest.raises(ValueError, match="directions apply only to the mnrl loss"):
        train_model(str(tiny_model_path), ROWS, tmp_path / "y", triplet)


def test_a_merge_with_the_base_interpolates_every_trained_weight(
    tiny_model_path: Path, tmp_path: Path
) -> None:
    """WiSE-FT (`merge_base`): the saved weights lie between the base's and the trained model's."""
    from sentence_transformers import SentenceTransformer

    from server.learning.training import merge_into

    states = {}
    for share in (0.0, 0.5):
        cfg = TrainConfig(epochs=3, learning_rate=1e-3, batch_size=2, device="cpu", seed=1, merge_base=share)
        out = train_model(str(tiny_model_path), ROWS, tmp_path / f"m{share}", cfg).path
        states[share] = SentenceTransformer(str(out), device="cpu").state_dict()
    base = SentenceTransformer(str(tiny_model_path), device="cpu").state_dict()
    trained = states[0.0]
    moved = [n for n, w in trained.items() if w.is_floating_point() and not np.allclose(w, base[n])]
    assert moved  # training changed weights, so the merge has something to interpolate
    for name in moved:
        assert np.allclose(states[0.5][name], (trained[name] + base[name]) / 2, atol=1e-5)
    model = SentenceTransformer(str(tmp_path / "m0.0"), device="cpu")
    merge_into(model, str(tiny_model_path), 1.0)
    assert all(np.allclose(w, base[n], atol=1e-6) for n, w in model.state_dict().items())
    with pytest.raises(ValueError, match="base_share"):
        merge_into(model, str(tiny_model_path), 1.5)


def test_a_stopped_training_is_logged_as_stopped_not_trained(
    tiny_model_path: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A training that a cancel or a shutdown stops part way (continued at the next start) must not log
    "trained on N triples": a server's stderr said so at every shutdown during a retrain."""
    cfg = TrainConfig(epochs=3, learning_rate=1e-3, batch_size=2, device="cpu", seed=1)
    with caplog.at_level("INFO", logger="server.learning.training"):
        result = train_model(
            str(tiny_model_path),
            ROWS,
            tmp_path / "out",
            cfg,
            should_stop=lambda: True,
            checkpoint_dir=tmp_path / "ckpt",
        )
    assert result.cancelled and result.steps == 1
    said = [r.getMessage() for r in caplog.records if r.name == "server.learning.training"]
    assert not any(m.startswith("trained on") for m in said), said
    assert any(m.startswith("training stopped at step 1 of 6") for m in said), said
