"""Exact in-memory vector search: the numpy scan ranks as a brute-force sort does, its row copy follows every
write, and through the engine it returns what Chroma returns, with filters, updates, deletes, restarts, model
switches and a collection that outgrows it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from server.engine.exact_vectors import MIN_PART_ROWS, VectorRows, scores_of, top_rows
from tests.support.helpers import docs, make_settings, open_rift

TEXTS = [
    "the river bank floods every spring",
    "a cat sat on the warm mat",
    "python code runs on the server",
    "the old city wall by the sea",
    "blue fish swim in the cold sea",
    "bank loans and interest rates",
    "a server crashed during the night shift",
    "spring flowers bloom near the river",
    "cats and dogs sleep in the sun",
    "the sea wall protects the harbour",
    "interest in python grows every year",
    "night trains cross the old bridge",
]
QUERIES = ["river in spring", "cat on a mat", "python server", "sea wall", "bank interest", "night"]


def unit(rng: np.random.Generator, n: int, d: int = 8) -> np.ndarray:
    x = rng.standard_normal((n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_top_rows_is_a_sorted_brute_force_over_allowed_rows() -> None:
    rng = np.random.default_rng(0)
    vectors, query = unit(rng, 50), unit(rng, 1)[0]
    allowed = rng.random(50) < 0.6
    scores = vectors @ query
    expected = [int(i) for i in np.argsort(-scores) if allowed[i]]
    assert [r for r, _ in top_rows(vectors, query, allowed, 7)] == expected[:7]
    assert [r for r, _ in top_rows(vectors, query, allowed, 500)] == expected  # depth beyond the allowed rows
    got = top_rows(vectors, query, np.ones(50, bool), 50)
    assert [r for r, _ in got] == [int(i) for i in np.argsort(-scores)]
    assert all(abs(s - float(scores[r])) < 1e-6 for r, s in got)
    assert top_rows(vectors, query, None, 9) == top_rows(
        vectors, query, np.ones(50, bool), 9
    )  # None: all rows
    assert [r for r, _ in top_rows(vectors, query, None, 9)] == [int(i) for i in np.argsort(-scores)[:9]]
    assert top_rows(vectors, query, np.zeros(50, bool), 5) == []
    assert top_rows(vectors[:0], query, np.ones(0, bool), 5) == []


def test_a_scan_split_across_threads_scores_and_ranks_as_one_thread_does() -> None:
    from concurrent.futures import ThreadPoolExecutor

    rng = np.random.default_rng(2)
    n = MIN_PART_ROWS * 3 + 17  # uneven parts
    vectors, query = unit(rng, n, 32), unit(rng, 1, 32)[0]
    allowed = rng.random(n) < 0.9
    with ThreadPoolExecutor(4) as pool:
        np.testing.assert_allclose(scores_of(vectors, query, pool), vectors @ query, rtol=0, atol=1e-6)
        assert top_rows(vectors, query, allowed, 200, pool) == top_rows(vectors, query, allowed, 200)
        small = vectors[: MIN_PART_ROWS * 2 - 1]  # too small for two parts: one thread, the same answer
        np.testing.assert_array_equal(scores_of(small, query, pool), small @ query)


def test_vector_rows_append_never_changes_an_older_view() -> None:
    rng = np.random.default_rng(1)
    first = VectorRows.of(unit(rng, 3))
    before = first.view().copy()
    grown = first
    for _ in range(30):  # past the spare capacity: the buffer is replaced
        grown = grown.appended(unit(rng, 2))
    assert grown.n == 63 and first.n == 3
    assert np.array_equal(first.view(), before) and np.array_equal(grown.view()[:3], before)
    keep = np.zeros(63, bool)
    keep[[0, 5, 62]] = True
    assert np.array_equal(grown.kept(keep).view(), grown.view()[[0, 5, 62]])


@pytest.fixture
def pair(tmp_path: Path, tiny_model_path: Path):
    """The same corpus in two apps: exact search on, and Chroma only."""
    apps = []

    def open_one(name: str, **overrides: Any):
        app = open_rift(make_settings(tmp_path / name, tiny_model_path, **overrides))
        apps.append(app)
        return app

    yield open_one
    for app in apps:
        app.close()


def vector_ranking(app: Any, query: str, **kwargs: Any) -> list[tuple[str, float]]:
    out = app.search("default", query, k=10, mode="vector", **kwargs).outcome
    return [(c.doc_id, round(c.score, 4)) for c in out.vector]


def assert_same_rankings(exact: Any, chroma: Any, **kwargs: Any) -> None:
    for query in QUERIES:
        got, want = vector_ranking(exact, query, **kwargs), vector_ranking(chroma, query, **kwargs)
        assert [d for d, _ in got] == [d for d, _ in want], query
        assert [s for _, s in got] == pytest.approx([s for _, s in want], abs=1e-3), query


def corpus() -> list:
    return docs(
        *[(f"d{i}", t, {"n": i, "kind": "even" if i % 2 == 0 else "odd"}) for i, t in enumerate(TEXTS)]
    )


def test_exact_search_ranks_as_chroma_does_through_writes_and_restart(pair) -> None:
    exact, chroma = pair("exact"), pair("chroma", exact_search_max_chunks=0)
    for app in (exact, chroma):
        app.add_documents("default", corpus())
    snap = exact.engine()._keyword["default"].snapshot
    assert snap.vectors is not None and snap.vectors.n == len(snap.rows)
    assert chroma.engine()._keyword["default"].snapshot.vectors is None
    assert_same_rankings(exact, chroma)
    assert_same_rankings(exact, chroma, filters={"kind": "even"})
    assert_same_rankings(exact, chroma, filters={"n": {"$gte": 9}})

    for app in (exact, chroma):  # an update, a delete, a new document
        app.add_documents("default", docs(("d1", "a dog sat on the cold floor", {"n": 1, "kind": "odd"})))
        app.engine().delete_documents("default", ["d4"])
        app.add_documents("default", docs(("d99", "river fish in spring", {"n": 99, "kind": "odd"})))
    assert_same_rankings(exact, chroma)
    assert "d4" not in [d for d, _ in vector_ranking(exact, "blue fish sea")]

    settings = exact.settings
    exact.close()
    reopened = open_rift(settings)  # the copy is rebuilt from Chroma at start-up
    try:
        snap = reopened.engine()._keyword["default"].snapshot
        assert snap.vectors is not None and snap.vectors.n == len(snap.rows)
        assert_same_rankings(reopened, chroma)
    finally:
        reopened.close()


def test_a_collection_that_outgrows_the_copy_falls_back_to_chroma(pair) -> None:
    app = pair("small", exact_search_max_chunks=5)
    app.add_documents("default", corpus()[:4])
    assert app.engine()._keyword["default"].snapshot.vectors is not None
    app.add_documents("default", corpus()[4:])
    assert app.engine()._keyword["default"].snapshot.vectors is None
    assert vector_ranking(app, "cat on a mat")[0][0] == "d1"  # answered by Chroma


def test_model_switch_reloads_the_copy_for_the_new_model(pair, tiny_model_path: Path) -> None:
    from server.engine.embedder import Embedder
    from server.engine.models import resolve_model

    app = pair("switch")
    app.add_documents("default", corpus())
    engine = app.engine()
    other = Embedder(resolve_model(str(tiny_model_path), "query: "), version="other")
    engine.reembed("default", other)
    snap = engine._keyword["default"].snapshot
    assert snap.vectors_version == "other" and snap.vectors.n == len(snap.rows)
    # The copy holds the new model's vectors: exact search agrees with Chroma's collection of that model.
    record = engine.state.collection("default")
    query = other.encode_query("python server")
    from_chroma = [c for c, _ in engine.vectors.query(record.chroma_name, query, 5)]
    from_copy = [row.chunk_id for row, _ in engine._keyword["default"].vector_search(query, 5, None, "other")]
    assert from_copy == from_chroma


def hit_payloads(app: Any, query: str, mode: str) -> list[tuple[str, str, str, dict]]:
    hits = app.search("default", query, k=10, mode=mode).outcome.hits
    return [(h.doc_id, h.chunk_id, h.text, h.metadata) for h in hits]


def test_hits_hydrated_from_memory_match_those_read_from_sqlite(pair) -> None:
    memory, sqlite = pair("memory"), pair("sqlite", exact_search_max_chunks=0)
    for app in (memory, sqlite):
        app.add_documents("default", corpus())
        app.add_documents("default", docs(("d1", "a dog sat on the cold floor", {"n": 1, "kind": "odd"})))
        app.engine().delete_documents("default", ["d4"])
    rows = memory.engine()._keyword["default"].snapshot.rows
    assert rows and all(r.text is not None for r in rows)  # the copy's collection keeps chunk text in memory
    assert all(r.text is None for r in sqlite.engine()._keyword["default"].snapshot.rows)
    for query in QUERIES:
        for mode in ("hybrid", "keyword", "vector"):
            assert hit_payloads(memory, query, mode) == hit_payloads(sqlite, query, mode), (query, mode)
    updated = hit_payloads(memory, "dog cold floor", "hybrid")
    assert updated[0][:3] == ("d1", updated[0][1], "a dog sat on the cold floor")

    settings = memory.settings
    memory.close()
    reopened = open_rift(settings)  # start-up loads the text again
    try:
        assert all(r.text is not None for r in reopened.engine()._keyword["default"].snapshot.rows)
        for query in QUERIES:
            assert hit_payloads(reopened, query, "hybrid") == hit_payloads(sqlite, query, "hybrid"), query
    finally:
        reopened.close()


def test_a_collection_past_the_copy_limit_reads_new_chunk_text_from_sqlite(pair) -> None:
    app = pair("grown", exact_search_max_chunks=5)
    app.add_documents("default", corpus()[:4])
    app.add_documents("default", corpus()[4:])
    rows = app.engine()._keyword["default"].snapshot.rows
    assert any(r.text is None for r in rows)  # rows added past the limit hold no text
    top = app.search("default", TEXTS[-1], k=1, mode="keyword").outcome.hits[0]
    assert top.text == TEXTS[-1]


def test_rows_tied_at_the_cut_are_kept_in_row_order_as_the_keyword_side_keeps_them() -> None:
    """argpartition kept an arbitrary few of the rows tied at the depth's cut: 300 copies of one text gave rows
    296-299 and 0 at depth 5, while BM25 gave rows 0-4, so both sides' identical scores were logged as blind
    spots on each side."""
    vectors = np.ones((300, 4), np.float32) / 2
    query = np.ones(4, np.float32) / 2
    assert [r for r, _ in top_rows(vectors, query, None, 5)] == [0, 1, 2, 3, 4]
    rng = np.random.default_rng(1)
    for _ in range(50):  # scores with many ties: the stable brute force, at every depth
        vectors = rng.integers(0, 3, (120, 4)).astype(np.float32)
        query = np.ones(4, np.float32)
        expected = np.argsort(-(vectors @ query), kind="stable").tolist()
        depth = int(rng.integers(1, 120))
        assert [r for r, _ in top_rows(vectors, query, None, depth)] == expected[:depth]
