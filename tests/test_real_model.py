"""The packaged all-MiniLM-L6-v2 (the default model): relevant documents outrank irrelevant ones."""

from __future__ import annotations

from pathlib import Path

import pytest

from server.config import DEFAULT_MODEL, Settings
from tests.support.helpers import docs, ids, open_rift

pytestmark = pytest.mark.slow

CORPUS = [
    ("eiffel", "The Eiffel Tower is a wrought-iron lattice tower in Paris, France, completed in 1889."),
    ("banana", "Bananas are a good source of potassium and vitamin B6."),
    ("python", "Python is a programming language that emphasises code readability."),
    ("heart", "The human heart pumps blood through the circulatory system."),
]


@pytest.fixture(scope="module")
def minilm(tmp_path_factory: pytest.TempPathFactory):
    app = open_rift(Settings(data_dir=tmp_path_factory.mktemp("minilm") / "data", model=DEFAULT_MODEL))
    app.add_documents("default", docs(*CORPUS))
    yield app
    app.close()


@pytest.mark.parametrize(
    ("query", "relevant"),
    [
        ("famous landmark in the French capital", "eiffel"),  # no shared keyword: meaning only
        ("which fruit contains potassium", "banana"),
        ("organ that circulates blood", "heart"),
    ],
)
@pytest.mark.parametrize("mode", ["vector", "hybrid"])
def test_relevant_outranks_irrelevant(minilm, query: str, relevant: str, mode: str) -> None:
    ranked = ids(minilm.search("default", query, k=4, mode=mode).outcome.hits)
    assert ranked[0] == relevant, ranked


def test_packaged_model_is_the_default_and_works_offline(minilm) -> None:
    engine = minilm.engine()
    assert engine.embedder.version == DEFAULT_MODEL and engine.embedder.dimension == 384
    assert Path(engine.embedder.spec.location).is_dir()
    vectors = minilm.search("default", "Paris tower", k=4, mode="vector").outcome.vector
    scores = {c.doc_id: c.score for c in vectors}
    assert scores["eiffel"] > 0.5 > scores["banana"]
