"""Engine behaviour through the `Rift` app object: persistence, upsert/delete consistency in both indices,
filters inside both retrievers, grouping, per-side ranks and the data-dir lock."""

from __future__ import annotations

import contextlib
import io
import sqlite3
import threading
import time
import unicodedata
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import bm25s
import numpy as np
import pytest

from server.errors import DataDirLockedError, NotFoundError, RiftError
from tests.support.helpers import docs, ids, index_state, make_settings, open_rift, sqlite_pages, sqlite_rows
from tests.support.processes import wait_until

LONG = " ".join(
    f"Sentence {i} talks about the river and the {w} near the old city." for i, w in enumerate(["sea"] * 30)
)


@pytest.fixture
def rift_factory(tmp_path: Path, tiny_model_path: Path):
    opened = []

    def factory(**overrides: Any):
        app = open_rift(make_settings(tmp_path / "data", tiny_model_path, **overrides))
        opened.append(app)
        return app

    yield factory
    for app in opened:
        app.close()


def test_persistence_across_restart(rift_factory) -> None:
    first = rift_factory()
    first.add_documents(
        "default",
        docs(("long", LONG), ("cat", "the cat sat on the mat"), ("fish", "a blue fish in the sea")),
    )
    first.add_documents("other", docs(("x", "python code on a server")))
    before = first.stats()
    first.close()

    second = rift_factory()
    assert second.repair_report["journal"] == 0
    assert second.repair_report["added_from_chroma"] == 0
    after = second.stats()
    assert [(c["name"], c["documents"], c["chunks"]) for c in after["collections"]] == [
        (c["name"], c["documents"], c["chunks"]) for c in before["collections"]
    ]
    assert ids(second.search("default", "cat", mode="keyword").outcome.hits) == ["cat"]
    assert ids(second.search("default", "the cat sat on the mat", k=1, mode="vector").outcome.hits) == ["cat"]
    assert ids(second.search("other", "python server", mode="hybrid").outcome.hits) == ["x"]
    text, _, n_chunks, _ = second.engine().get_document("default", "long")
    assert text == LONG and n_chunks > 1


def test_one_model_folder_under_another_spelling_is_the_same_model(
    tmp_path: Path, tiny_model_path: Path, monkeypatch
) -> None:
    monkeypatch.chdir(tiny_model_path.parent)
    spelled = [tiny_model_path.name, f"./{tiny_model_path.name}/", f"{tiny_model_path}/", str(tiny_model_path)]
    # A folder is named by its absolute path, however it is written.
    assert {make_settings(tmp_path / "d", Path(name)).model for name in spelled} == {str(tiny_model_path)}
    # A store from before that, which recorded the relative name: other spellings adopt it, re-embed nothing.
    old = make_settings(tmp_path / "data", tiny_model_path)
    old.model = tiny_model_path.name
    first = open_rift(old)
    first.add_documents("default", docs(("cat", "the cat sat on the mat")))
    first.close()
    for name in spelled[1:]:
        again = open_rift(make_settings(tmp_path / "data", Path(name)))
        try:
            assert again.settings.model == tiny_model_path.name
            assert again.engine().state.collection("default").model_version == tiny_model_path.name
            assert again.learning.registry.all() == [] or all(
                v.status != "retired" for v in again.learning.registry.all()
            )
            assert ids(again.search("default", "cat mat").outcome.hits) == ["cat"]
        finally:
            again.close()


def test_upsert_replaces_every_chunk_in_both_indices(rift) -> None:
    (status,) = rift.add_documents("default", docs(("doc", LONG)))
    assert status.status == "added" and status.chunks > 3
    old = index_state(rift)
    assert old["chroma"] == old["keyword"] == old["sqlite"] and len(old["chroma"]) == status.chunks

    (status,) = rift.add_documents("default", docs(("doc", "a short note about a green tree")))
    assert status.status == "updated" and status.chunks == 1
    new = index_state(rift)
    assert new["chroma"] == new["keyword"] == new["sqlite"]
    assert len(new["chroma"]) == 1 and not new["chroma"] & old["chroma"]

    # Neither side can still find the old text.
    assert rift.search("default", "river city", mode="keyword").outcome.hits == []
    found = rift.search("default", LONG[:200], k=10, mode="vector", group_by_document=False).outcome
    assert [c.chunk_id for c in found.vector] == list(new["chroma"])
    assert rift.stats("default")["collections"][0]["chunks"] == 1


def test_unchanged_content_is_skipped_and_metadata_change_updates(rift) -> None:
    rift.add_documents("default", docs(("a", "the cat sat"), ("b", "the dog ran")))
    before = index_state(rift)
    statuses = rift.add_documents("default", docs(("a", "the cat sat"), ("b", "the dog ran")))
    assert [(s.status, s.chunks) for s in statuses] == [("unchanged", 0), ("unchanged", 0)]
    assert index_state(rift) == before

    statuses = rift.add_documents("default", docs(("a", "the cat sat", {"lang": "en"})))
    assert statuses[0].status == "updated"
    (hit,) = rift.search("default", "cat", mode="keyword").outcome.hits
    assert hit.metadata == {"lang": "en"}


def test_a_failed_first_write_leaves_no_empty_collection_behind(rift, monkeypatch) -> None:
    rift.add_documents("default", docs(("cat", "the cat sat on the mat")))
    engine = rift.engine()

    def fails(texts, progress=None):
        raise RuntimeError("cancelled")  # as a cancelled request's progress report raises

    monkeypatch.setattr(engine.embedder, "encode_documents", fails)
    for collection in ("fresh", "default"):
        with pytest.raises(RuntimeError):
            rift.add_documents(collection, docs(("dog", "the dog barked")))
    # The collection this write made is gone again; one that already held documents keeps them.
    assert engine.collection_names() == ["default"]
    assert ids(rift.search("default", "cat mat").outcome.hits) == ["cat"]
    monkeypatch.undo()
    (status,) = rift.add_documents("fresh", docs(("dog", "the dog barked")))
    assert status.status == "added" and sorted(engine.collection_names()) == ["default", "fresh"]


@pytest.mark.parametrize("write", ["update", "metadata", "delete", "delete_collection"])
def test_re_chunking_never_undoes_a_write_that_lands_while_it_runs(rift, monkeypatch, write: str) -> None:
    """Re-chunking (after a model with another sequence limit starts serving) rewrites every document from
    its stored text while writes go on; a write landing between its read and its write-back must stand."""
    rift.add_documents("default", docs(("a", LONG), ("b", "the cat sat on the mat"), ("c", "the dog ran")))
    engine = rift.engine()
    engine.state.put_setting("chunking:default", "v0 tokens=16 overlap=0")  # as a model change leaves it
    user = {
        "update": lambda: rift.add_documents("default", docs(("b", "the user's new text"))),
        "metadata": lambda: rift.update_metadata("default", ["b"], {"owner": "ann"}, []),
        "delete": lambda: rift.delete_documents("default", ["b"]),
        "delete_collection": lambda: rift.delete_collection("default"),
    }[write]
    threads: list[threading.Thread] = []
    read = engine.state.document

    def read_then_race(collection: str, doc_id: str) -> Any:
        found = read(collection, doc_id)
        if doc_id == "c" and not threads:  # the user's write arrives once re-chunking has read "b" too
            threads.append(threading.Thread(target=user))
            threads[0].start()
            threads[0].join(0.5)  # it finishes here unless the re-chunk holds the write lock
        return found

    monkeypatch.setattr(engine.state, "document", read_then_race)
    engine.rechunk_if_changed("default")
    threads[0].join(30)
    monkeypatch.undo()
    if write == "delete_collection":
        assert engine.collection_names() == []
        return
    stored = engine.state.document("default", "b")
    if write == "delete":
        assert stored is None
    elif write == "update":
        assert stored is not None and stored[1] == "the user's new text"
    else:
        assert stored is not None and stored[2] == {"owner": "ann"}
    assert engine.state.document("default", "a") is not None
    state = index_state(rift)
    assert state["chroma"] == state["keyword"] == state["sqlite"]


def test_a_write_cancelled_after_its_last_progress_report_stores_nothing(rift) -> None:
    """A client may cancel after the last progress report (all chunks embedded): the write reports that
    progress again before it writes Chroma, where a cancelled call's report raises; nothing is stored."""
    stop_at = 2
    rift.add_documents("default", docs(("cat", "the cat sat on the mat")))
    engine = rift.engine()
    before = index_state(rift)
    seen: list[tuple[int, int]] = []

    def report(done: int, total: int) -> None:
        seen.append((done, total))
        if done == total and seen.count((done, total)) == stop_at:
            raise RuntimeError("cancelled")  # what a cancelled request's report raises

    with pytest.raises(RuntimeError, match="cancelled"):
        engine.add_documents("default", docs(("dog", "the dog barked"), ("long", LONG)), report)
    assert index_state(rift) == before
    assert engine.state.counts("default") == (1, len(before["sqlite"]))
    assert ids(rift.search("default", "dog barked", mode="keyword").outcome.hits) == []

def test_a_rewrite_keeps_the_vectors_of_chunks_whose_text_it_already_had(rift, monkeypatch) -> None:
    rift.add_documents("default", docs(("long", LONG), ("cat", "the cat sat on the mat")))
    engine = rift.engine()
    before = {r.text: r.chunk_id for r in engine.state.document_chunks("default", "long")}
    assert len(before) > 2
    chroma = engine.state.collection("default").chroma_name
    vector_of = dict(
        zip(before, engine.vectors.embeddings_matrix(chroma, list(before.values())), strict=True)
    )
    encoded: list[str] = []
    real = engine.embedder.encode_documents

    def counting(texts, progress=None):
        encoded.extend(texts)
        return real(texts, progress)

    monkeypatch.setattr(engine.embedder, "encode_documents", counting)
    # Only the metadata changes (a touched file): nothing is embedded again, the metadata is new everywhere.
    (status,) = rift.add_documents("default", docs(("long", LONG, {"lang": "en"})))
    assert status.status == "updated" and encoded == []
    hits = rift.search("default", "river sea city", filters={"lang": "en"}).outcome.hits
    assert [h.doc_id for h in hits] == ["long"]
    record = engine.state.collection("default")
    after = engine.state.document_chunks("default", "long")
    old_vectors = engine.vectors.embeddings_matrix(record.chroma_name, [before[r.text] for r in after])
    assert old_vectors is None  # the old chunks are gone ...
    new_vectors = engine.vectors.embeddings_matrix(record.chroma_name, [r.chunk_id for r in after])
    for row, vector in zip(after, new_vectors, strict=True):  # ... their vectors carried over
        assert np.allclose(vector, vector_of[row.text], atol=1e-5)
    # One sentence more at the end: only the chunks whose text changed are embedded.
    rift.add_documents("default", docs(("long", LONG + " A new closing sentence.", {"lang": "en"})))
    assert 0 < len(encoded) < len(after)
    # Chunks with the same text (a repetitive document) share one stored vector.
    rift.add_documents("default", docs(("rep", "alpha beta gamma delta. " * 80)))
    texts = [r.text for r in engine.state.document_chunks("default", "rep")]
    assert len(set(texts)) < len(texts)
    encoded.clear()
    rift.add_documents("default", docs(("rep", "alpha beta gamma delta. " * 80, {"lang": "en"})))
    assert encoded == []
    # A renamed or copied file is a new id with texts the collection holds: nothing is embedded either.
    original = engine.state.document_chunks("default", "long")
    (status,) = rift.add_documents("default", docs(("long-renamed", LONG + " A new closing sentence.")))
    assert status.status == "added" and status.chunks == len(original) and encoded == []
    rift.delete_documents("default", ["long"])
    renamed = engine.state.document_chunks("default", "long-renamed")
    vectors = engine.vectors.embeddings_matrix(record.chroma_name, [r.chunk_id for r in renamed])
    assert vectors is not None and np.allclose(vectors, np.asarray(real([r.text for r in renamed])), atol=1e-5)
    assert [h.doc_id for h in rift.search("default", "a new closing sentence").outcome.hits][:1] == [
        "long-renamed"
    ]


def test_default_id_is_a_content_hash(rift) -> None:
    (a,) = rift.add_documents("default", docs((None, "the same text")))  # type: ignore[arg-type]
    (b,) = rift.add_documents("default", docs((None, "the same text")))  # type: ignore[arg-type]
    assert a.id == b.id and len(a.id) == 32 and b.status == "unchanged"


def test_delete_removes_every_chunk_from_both_indices(rift) -> None:
    rift.add_documents("default", docs(("long", LONG), ("keep", "the river is wide")))
    deleted, missing = rift.delete_documents("default", ["long", "nope", "long"])
    assert deleted == ["long"] and missing == ["nope"]
    state = index_state(rift)
    assert state["chroma"] == state["keyword"] == state["sqlite"]
    assert {c.split("::")[0] for c in state["chroma"]} == {"keep"}
    assert ids(rift.search("default", "river city sea", mode="hybrid").outcome.hits) == ["keep"]
    with pytest.raises(NotFoundError):
        rift.engine().get_document("default", "long")


def test_delete_by_filter_removes_the_matching_documents_a_page_at_a_time(rift_factory) -> None:
    """An agent retiring a folder's documents, or everything tagged obsolete, needs no list of ids: a call
    deletes up to max_documents_per_call of the documents that match, and says how many still do."""
    app = rift_factory(max_documents_per_call=2)
    notes = [(f"n{i}", f"the river note {i}", {"source": f"/home/me/old/n{i}.md"}) for i in range(3)]
    keep = [("k0", "the river kept", {"source": "/home/me/older/k0.md"}), ("k1", "the river too", {"tag": "x"})]
    for pair in (notes[:2], [notes[2], keep[0]], keep[1:]):
        app.add_documents("default", docs(*pair))
    where = {"source": {"$prefix": "/home/me/old"}}
    assert app.delete_matching("default", where) == (["n0", "n1"], 1)
    assert app.delete_matching("default", where) == (["n2"], 0)
    assert app.delete_matching("default", where) == ([], 0)
    state = index_state(app)
    assert state["chroma"] == state["keyword"] == state["sqlite"]
    assert {c.split("::")[0] for c in state["sqlite"]} == {"k0", "k1"}
    assert sorted(ids(app.search("default", "river note", k=10).outcome.hits)) == ["k0", "k1"]
    # A field no document has is refused: $ne would match every document without it (a typo, or a chunk's
    # own key such as a Markdown heading, which is not document metadata).
    app.add_documents("default", docs(("md", "# Intro\n\nthe cat sat on the mat\n", {"file_type": "markdown"})))
    assert app.search("default", "cat", filters={"heading": "Intro"}).outcome.hits  # a chunk key in search
    for bad, message in [
        ({}, "at least one condition"),
        (None, "at least one condition"),
        ({"tag": {"$regex": "x"}}, r"\$regex"),
        ({"heading": {"$ne": "Intro"}}, "'heading', which no document in 'default' has"),
        ({"$or": [{"tag": "x"}, {"tga": {"$nin": ["y"]}}]}, "'tga', which no document"),
    ]:
        with pytest.raises(RiftError, match=message):
            app.delete_matching("default", bad)
    with pytest.raises(NotFoundError, match="unknown collection"):
        app.delete_matching("nope", {"tag": "x"})
    assert {c.split("::")[0] for c in index_state(app)["sqlite"]} == {"k0", "k1", "md"}
    # Listing and export by such a filter found nothing without a word: an empty answer read as "there are none".
    from server.ingest.jsonl import export_documents, read_only_state
    from server.ingest.manage import list_documents

    unknown = "no document matches: filters name 'heading', which no document in 'default' has"
    with pytest.raises(RiftError, match=unknown):
        list_documents(app.engine(), "default", {"heading": "Intro"})
    conn = read_only_state(app.settings.state_db)
    try:
        with pytest.raises(RiftError, match=unknown):
            export_documents(conn, "default", {"heading": "Intro"}, io.StringIO())
        assert export_documents(conn, "default", {"tag": "y"}, io.StringIO()) == 0  # a known field: none match
    finally:
        conn.close()
    assert list_documents(app.engine(), "default", {"tag": "y"})[0] == 0
    assert list_documents(app.engine(), "default", {"$or": [{"tag": "x"}, {"heading": "Intro"}]})[0] == 1
    # Only where the unknown field is why nothing matched: not a $ne / $nin on it (which every document meets),
    # nor an $or one of whose branches could match.
    assert list_documents(app.engine(), "default", {"$and": [{"tag": "y"}, {"reviewed": {"$ne": True}}]})[0] == 0
    assert list_documents(app.engine(), "default", {"$or": [{"tag": "y"}, {"status": "z"}]})[0] == 0
    with pytest.raises(RiftError, match="filters name 'status', which no document"):
        list_documents(app.engine(), "default", {"$and": [{"tag": "x"}, {"status": "z"}]})


# --- filters ---------------------------------------------------------------------------------------------

CORPUS = [
    ("d0", {"lang": "en", "year": 2018, "score": 0.5, "draft": False}),
    ("d1", {"lang": "en", "year": 2020, "score": 1.5, "draft": True}),
    ("d2", {"lang": "de", "year": 2021, "score": 2.5, "draft": False}),
    ("d3", {"lang": "fr", "year": 2022, "score": 3.5}),
    ("d4", {"lang": "de", "year": 2019, "draft": True}),
    ("d5", {"year": 2023, "score": 0.0}),
    ("d6", {"lang": "en", "year": 2024, "score": 9.0, "draft": False}),
]

Pred = Callable[[dict[str, Any]], bool]
FILTERS: list[tuple[dict[str, Any], Pred]] = [
    ({"lang": "en"}, lambda m: m.get("lang") == "en"),
    ({"lang": {"$eq": "de"}}, lambda m: m.get("lang") == "de"),
    ({"lang": {"$ne": "en"}}, lambda m: m.get("lang") != "en"),
    ({"lang": {"$in": ["de", "fr"]}}, lambda m: m.get("lang") in ("de", "fr")),
    ({"lang": {"$nin": ["de", "fr"]}}, lambda m: m.get("lang") not in ("de", "fr")),
    ({"year": {"$gte": 2021}}, lambda m: m["year"] >= 2021),
    ({"year": {"$gt": 2019, "$lt": 2022}}, lambda m: 2019 < m["year"] < 2022),
    ({"score": {"$lte": 1.5}}, lambda m: "score" in m and m["score"] <= 1.5),
    ({"draft": True}, lambda m: m.get("draft") is True),
    ({"lang": "en", "year": {"$gte": 2020}}, lambda m: m.get("lang") == "en" and m["year"] >= 2020),
    (
        {"$or": [{"lang": "fr"}, {"year": {"$lt": 2019}}]},
        lambda m: m.get("lang") == "fr" or m["year"] < 2019,
    ),
    (
        {"$and": [{"lang": {"$in": ["en", "de"]}}, {"$or": [{"draft": True}, {"score": {"$gt": 5}}]}]},
        lambda m: m.get("lang") in ("en", "de") and (m.get("draft") is True or m.get("score", 0) > 5),
    ),
    ({"lang": "xx"}, lambda m: False),
]


@pytest.fixture
def filtered(rift):
    rift.add_documents(
        "default",
        docs(*[(d, f"the river report number {i} about water", m) for i, (d, m) in enumerate(CORPUS)]),
    )
    return rift


@pytest.mark.parametrize("mode", ["vector", "keyword", "hybrid"])
def test_filters_apply_inside_each_retriever(filtered, mode: str) -> None:
    for raw, pred in FILTERS:
        expected = {d for d, m in CORPUS if pred(m)}
        outcome = filtered.search("default", "river water", k=100, mode=mode, filters=raw).outcome
        assert set(ids(outcome.hits)) == expected, (mode, raw)
        if mode == "hybrid":  # both candidate lists were filtered, not just the fused one
            assert {c.doc_id for c in outcome.vector} == expected, raw
            assert {c.doc_id for c in outcome.keyword} == expected, raw
        for hit in outcome.hits:
            assert pred(hit.metadata), (raw, hit.metadata)


def test_filter_errors_name_the_field_or_operator(filtered) -> None:
    cases = [
        ({"year": {"$between": [1, 2]}}, "$between"),
        ({"year": {"$gt": "2020"}}, "filters.year.$gt"),
        ({"lang": {"$in": []}}, "filters.lang.$in"),
        ({"lang": ["en"]}, "filters.lang"),
        ({"$or": {}}, "filters.$or"),
        ({"$not": [{"a": 1}]}, "$not"),
        ({"lang": None}, "filters.lang"),
    ]
    for raw, needle in cases:
        with pytest.raises(RiftError) as err:
            filtered.search("default", "river", filters=raw)
        assert needle in str(err.value), (raw, str(err.value))


def test_selective_filter_is_a_prefilter_without_recall_loss(rift_factory) -> None:
    # Each retriever only takes 3 candidates; a post-filter over them would find nothing.
    app = rift_factory(candidate_depth=3)
    texts = [f"river {'water ' * (i % 5)}bank number {i} " + "tree " * i for i in range(20)]
    app.add_documents("default", docs(*[(f"d{i}", t, {"n": i}) for i, t in enumerate(texts)]))
    unfiltered = app.search("default", "river water bank", k=3, mode="hybrid").outcome
    seen = {c.doc_id for c in unfiltered.vector} | {c.doc_id for c in unfiltered.keyword}
    assert len(seen) <= 6
    wanted = [f"d{i}" for i in range(20) if f"d{i}" not in seen][-2:]
    flt = {"n": {"$in": [int(d[1:]) for d in wanted]}}
    for mode in ("vector", "keyword"):
        got = app.search("default", "river water bank", k=3, mode=mode, filters=flt).outcome
        assert set(ids(got.hits)) == set(wanted), mode
    hybrid = app.search("default", "river water bank", k=3, mode="hybrid", filters=flt).outcome
    assert set(ids(hybrid.hits)) == set(wanted)
    assert all(h.vector_rank is not None and h.keyword_rank is not None for h in hybrid.hits)


# --- grouping and per-side ranks ---------------------------------------------------------------------------


def test_one_hit_per_document_unless_asked(rift) -> None:
    rift.add_documents("default", docs(("long", LONG), ("short", "the river and the sea")))
    grouped = rift.search("default", "river sea city", k=10).outcome.hits
    assert sorted(ids(grouped)) == ["long", "short"]
    chunks = rift.search("default", "river sea city", k=10, group_by_document=False).outcome.hits
    assert ids(chunks).count("long") > 1
    assert len({h.chunk_id for h in chunks}) == len(chunks)
    # Each side ranks chunks too, so ranks are per chunk here.
    assert all(h.keyword_rank is not None for h in chunks)


@pytest.mark.parametrize("exact_limit", [0, 10_000])  # hits hydrated from SQLite, or from the in-memory copy
def test_a_hit_says_where_its_chunk_lies_in_the_document(rift_factory, exact_limit: int) -> None:
    """An agent reads around a hit with get_document(offset=...) instead of fetching the whole text."""
    app = rift_factory(exact_search_max_chunks=exact_limit)
    app.add_documents("default", docs(("long", "  " + LONG), ("short", "the river and the sea")))
    text = app.engine().get_document("default", "long")[0]
    for mode in ("hybrid", "vector", "keyword"):
        hits = app.search("default", "river sea city", k=50, mode=mode, group_by_document=False).outcome.hits
        assert len(hits) > 3
        for h in hits:
            whole = text if h.doc_id == "long" else "the river and the sea"
            assert h.start is not None and h.end is not None and whole[h.start : h.end] == h.text
    assert {h.start for h in hits if h.doc_id == "long"} > {2}  # later chunks start later


@pytest.mark.parametrize("mode", ["hybrid", "vector", "keyword"])
def test_a_long_document_does_not_crowd_out_the_others(rift_factory, mode: str) -> None:
    # The candidate depth counts chunks: one document with more matching chunks than the depth used to fill
    # each side's list, and grouping then returned it alone.
    app = rift_factory(candidate_depth=8)
    app.add_documents(
        "default", docs(("long", LONG), *[(f"s{i}", f"the river and the sea {i}") for i in range(4)])
    )
    assert len(app.engine().state.document_chunks("default", "long")) > 8
    hits = app.search("default", "river sea city", k=5, mode=mode).outcome.hits
    assert sorted(ids(hits)) == ["long", "s0", "s1", "s2", "s3"]


def test_a_documents_own_metadata_wins_over_a_key_the_splitter_adds(rift) -> None:
    # A Markdown splitter labels chunks with their "heading"; a document that has its own keeps it, and a
    # filter on it finds the same document in both retrievers as in list_documents.
    meta = {"file_type": "markdown", "heading": "mine"}
    rift.add_documents("default", docs(("md", "# Intro\n\nthe cat sat on the mat\n", meta)))
    for mode in ("hybrid", "vector", "keyword"):
        hits = rift.search("default", "cat mat", mode=mode, filters={"heading": "mine"}).outcome.hits
        assert ids(hits) == ["md"] and hits[0].metadata["heading"] == "mine", mode
    assert rift.engine().get_document("default", "md")[1]["heading"] == "mine"


def test_keyword_matching_normalises_unicode(rift) -> None:
    # Decomposed accents (macOS file names) and a PDF's ligatures match what a user types.
    decomposed = unicodedata.normalize("NFD", "un café résumé")
    rift.add_documents(
        "default", docs(("nfd", decomposed), ("lig", "the \ufb01nance of \ufb02ows"), ("x", "tea"))
    )
    for query, expected in (("café résumé", "nfd"), ("finance flows", "lig")):
        assert ids(rift.search("default", query, mode="keyword").outcome.hits) == [expected], query


def test_words_inside_unspaced_cjk_text_are_keyword_terms(rift) -> None:
    # Chinese and Japanese put no spaces between words: each run is indexed as its characters and character
    # bigrams, so a word inside a sentence matches, and a run never swallows the Latin word next to it. Other
    # CJK texts sharing a character may follow; the one holding the word ranks first.
    rift.add_documents(
        "default",
        docs(
            ("zh", "我们研究机器学习的基础理论"),
            ("ja", "東京で機械学習の勉強会を開きます"),
            ("mix", "iPhone手机的电池"),
            ("cat", "猫。"),
            ("en", "plain english text about tea"),
        ),
    )
    cases = {"机器学习": "zh", "学习": "zh", "勉強会": "ja", "iphone": "mix", "电池": "mix", "東京": "ja"}
    for query, expected in cases.items():
        found = ids(rift.search("default", query, mode="keyword").outcome.hits)
        assert found[:1] == [expected] and "en" not in found, (query, found)
    assert ids(rift.search("default", "猫", mode="keyword").outcome.hits) == ["cat"]


def test_a_data_dir_tokenized_before_cjk_bigrams_is_re_tokenized(rift_factory) -> None:
    from server.engine.keyword_index import KeywordTokenizer

    first = rift_factory()
    first.add_documents("default", docs(("zh", "我们研究机器学习的基础理论"), ("x", "tea")))
    engine = first.engine()
    # Put the store back as the previous version left it: one token per CJK run, its old signature.
    old = KeywordTokenizer()
    engine.state.retokenize(
        lambda texts: bm25s.tokenize(
            texts, stopwords=old._stopwords, stemmer=old._stemmer, return_ids=False, show_progress=False
        )
    )
    engine.state.put_setting("keyword_tokenizer", "nfkc stemmer=english stopwords=en")
    first.close()
    again = rift_factory()
    assert again.repair_report["retokenized"] == 2
    assert ids(again.search("default", "学习", mode="keyword").outcome.hits) == ["zh"]
    again.close()


def test_a_data_dir_tokenized_before_identifier_parts_is_re_tokenized(rift_factory, monkeypatch) -> None:
    from server.engine import keyword_index

    first = rift_factory()
    first.add_documents("default", docs(("code", "def top_rows(vectors, depth):"), ("x", "tea")))
    engine = first.engine()
    # Put the store back as the previous version left it: identifiers as single terms, its old signature.
    tok = engine.tokenizer
    with monkeypatch.context() as before:
        before.setattr(keyword_index, "_words", lambda text: keyword_index._WORD.findall(text.lower()))
        engine.state.retokenize(tok.tokenize)
    engine.state.put_setting("keyword_tokenizer", tok.signature.replace("words1+marks+parts", "words1+marks"))
    first.close()
    again = rift_factory()
    assert again.repair_report["retokenized"] == 2
    assert ids(again.search("default", "top rows", mode="keyword").outcome.hits) == ["code"]
    again.close()


def test_an_import_block_does_not_outrank_the_definition_it_imports(rift_factory, monkeypatch) -> None:
    """A module's import block is often a chunk of its own, full of identifiers; their parts made it match
    "gate config" better than the class `GateConfig` (the block names it, and `MiningConfig`): an agent asking
    about the class got `from ... import` lines first. Identifiers in import statements are now terms whole
    only, and a data dir tokenized before re-tokenizes once on start."""
    from server.engine import keyword_index

    python = {"file_type": "python"}
    importer = "from server.gate import GateConfig, MiningConfig"
    definer = "class GateConfig:\n    gain = 0.0\n    loss = 0.01\n    queries = 200"
    first = rift_factory()
    first.add_documents("default", docs(("report.py", importer, python), ("gate.py", definer, python)))

    def found(app: Any, query: str) -> list[tuple[str, str]]:
        hits = app.search("default", query, mode="keyword", group_by_document=False).outcome.hits
        return [(h.doc_id, h.text) for h in hits]

    assert found(first, "gate config") == [("gate.py", definer), ("report.py", importer)]
    assert found(first, "GateConfig")[1] == ("report.py", importer)  # the whole name still finds the import
    # Put the store back as the previous version left it: import lines split too, its old signature.
    engine = first.engine()
    tok = engine.tokenizer
    with monkeypatch.context() as before:
        before.setattr(keyword_index, "_import_spans", lambda text: [])
        engine.state.retokenize(tok.tokenize)
    engine.state.put_setting("keyword_tokenizer", tok.signature.replace("parts-imports", "parts"))
    first.close()
    again = rift_factory()
    assert again.repair_report["retokenized"] == 2
    assert found(again, "gate config") == [("gate.py", definer), ("report.py", importer)]
    again.close()


def test_a_data_dir_from_before_tokenizer_signatures_says_it_re_tokenizes_before_it_does(
    rift_factory, caplog
) -> None:
    """Every call waits while a large store is re-tokenized: the first start says so first, also for a data dir
    from before signatures were recorded (found by helper BS: only the line saying it was done came); a new
    data dir has nothing to redo and says nothing."""
    import logging

    caplog.set_level(logging.WARNING, logger="server.engine.engine")
    first = rift_factory()
    assert "re-tokenizing" not in caplog.text
    first.add_documents("default", docs(("d", "running dogs jumped")))
    first.engine().state._conn.execute("DELETE FROM settings WHERE key = 'keyword_tokenizer'")
    first.close()
    again = rift_factory()
    assert "an earlier version -> " in caplog.text and "re-tokenizing the stored chunks once" in caplog.text
    assert caplog.text.index("re-tokenizing") < caplog.text.index("re-tokenized")
    again.close()


def test_a_changed_tokenizer_re_tokenizes_stored_chunks(rift_factory) -> None:
    first = rift_factory()
    first.add_documents("default", docs(("d", "running dogs jumped"), ("x", "tea and milk")))
    assert ids(first.search("default", "runs", mode="keyword").outcome.hits) == ["d"]  # stemmed: run
    first.close()
    plain = rift_factory(stemmer_language=None)  # stored tokens were stemmed: without a re-tokenize, no match
    assert plain.repair_report["retokenized"] == 2
    assert ids(plain.search("default", "running", mode="keyword").outcome.hits) == ["d"]
    assert plain.search("default", "runs", mode="keyword").outcome.hits == []
    plain.close()
    assert rift_factory(stemmer_language=None).repair_report["retokenized"] == 0  # once, not every start


def test_rank_is_null_when_a_side_did_not_return_the_document(rift) -> None:
    # BERT strips accents, so "rívér" embeds exactly like the query "river"; bm25s sees other words, so only
    # "kw" can match on the keyword side.
    fillers = [(f"f{i}", "rívér " * (i + 1) + "bánk") for i in range(8)]
    rift.add_documents("default", docs(("kw", "the river bank and the moon"), ("vec", "rívér"), *fillers))
    vector_order = ids(rift.search("default", "river", k=100, mode="vector").outcome.hits)
    assert vector_order[0] == "vec"
    k = vector_order.index("kw")  # depth = k candidates per side, so the vector side stops before "kw"
    assert k >= 2
    outcome = rift.search("default", "river", k=k, depth=k).outcome
    by_id = {h.doc_id: h for h in outcome.hits}
    assert (by_id["vec"].vector_rank, by_id["vec"].keyword_rank) == (1, None)
    assert (by_id["kw"].vector_rank, by_id["kw"].keyword_rank) == (None, 1)
    assert (
        by_id["vec"].score == pytest.approx(by_id["kw"].score) == pytest.approx(1 / (rift.settings.rrf_k + 1))
    )
    assert [c.doc_id for c in outcome.keyword] == ["kw"] and "kw" not in [c.doc_id for c in outcome.vector]
    # Each side's own score comes with its rank: the cosine of the query and the chunk, and BM25.
    assert (by_id["vec"].keyword_score, by_id["kw"].vector_score) == (None, None)
    assert by_id["kw"].keyword_score == pytest.approx(outcome.keyword[0].score) and by_id["kw"].keyword_score > 0
    embedder = rift.engine().embedder
    query, chunk = embedder.encode_query("river"), embedder.encode_documents(["rívér"])[0]
    assert by_id["vec"].vector_score == pytest.approx(float(np.dot(query, chunk)), abs=1e-4)


def test_empty_or_missing_collection(rift) -> None:
    with pytest.raises(NotFoundError, match="unknown collection 'nope'"):
        rift.search("nope", "river")
    rift.engine().create_collection("empty")
    assert rift.search("empty", "river").outcome.hits == []
    with pytest.raises(RiftError, match="collection must be 1-63 characters"):
        rift.engine().create_collection("empty\n")  # (a regex `$` matches before a final newline)


def test_a_collection_made_again_during_a_call_is_found_not_called_unknown(rift, monkeypatch) -> None:
    """A search racing a delete and an add of its collection read no record, then listed the names with the
    collection among them: "unknown collection 'col' (collections: col)"."""
    engine = rift.engine()
    engine.create_collection("col")
    state, reads = engine.state, []
    real = state.collection

    def first_read_misses(name: str):
        reads.append(name)
        return None if len(reads) == 1 else real(name)

    monkeypatch.setattr(state, "collection", first_read_misses)
    assert rift.search("col", "river").outcome.hits == []
    reads.clear()
    monkeypatch.setattr(state, "collection", lambda name: reads.append(name) or None)
    monkeypatch.setattr(engine, "collection_names", lambda: ["col"])
    with pytest.raises(NotFoundError, match="collection 'col' was deleted while this call ran"):
        rift.search("col", "river")


def test_rejected_add_writes_nothing(rift) -> None:
    rift.add_documents("default", docs(("a", "the cat sat")))
    before = (rift.stats(), index_state(rift))
    bad_batches = [
        docs(("b", "fine"), ("c", "   ")),
        docs(("b", "fine"), ("b", "dupe")),
        docs(("b", "fine"), ("c", "x", {"tags": ["a"]})),  # type: ignore[dict-item]
        docs(("b", "fine"), ("c", 5)),  # type: ignore[arg-type]
        docs(("b", "fine"), ("c", "ok", {"_rift_doc": "x"})),
        docs(("b", "fine"), ("c", "ok", {"n": 2**63})),
        docs(("b", "fine"), ("c", "ok", {"n": -(2**63) - 1})),
        [],
    ]
    for batch in bad_batches:
        with pytest.raises(RiftError):
            rift.add_documents("default", batch)
    with pytest.raises(RiftError):
        rift.add_documents("new", docs(("b", "")))
    after = (rift.stats(), index_state(rift))
    assert before[0]["collections"] == after[0]["collections"] and before[1] == after[1]
    assert rift.engine().collection_names() == ["default"]


def test_64_bit_integer_metadata_at_both_ends_is_stored_and_filterable(rift) -> None:
    rift.add_documents(
        "default", docs(("lo", "cold snow", {"n": -(2**63)}), ("hi", "warm sun", {"n": 2**63 - 1}))
    )
    for mode in ("keyword", "vector"):
        got = rift.search("default", "snow sun", mode=mode, filters={"n": {"$lt": 0}}).outcome
        assert ids(got.hits) == ["lo"], mode


@pytest.mark.parametrize("exact_limit", [40_000, 0])  # the vector side in numpy, or in Chroma
def test_integers_beyond_float_precision_filter_alike_on_both_sides(rift_factory, exact_limit: int) -> None:
    # 2**53 + 1 is not a float64: compared as floats it equals 2**53, and the sides used to disagree.
    app = rift_factory(exact_search_max_chunks=exact_limit)
    app.add_documents(
        "default", docs(("big", "warm sun", {"n": 2**53 + 1}), ("edge", "sun rays", {"n": 2**53}))
    )
    for mode in ("keyword", "vector", "hybrid"):
        got = app.search("default", "sun", mode=mode, filters={"n": {"$gt": 2**53}}).outcome
        assert ids(got.hits) == ["big"], mode
        got = app.search("default", "sun", mode=mode, filters={"n": {"$lte": 2**53}}).outcome
        assert ids(got.hits) == ["edge"], mode


@pytest.mark.parametrize("exact_limit", [40_000, 0])
def test_fractional_operands_filter_alike_on_both_sides(rift_factory, exact_limit: int) -> None:
    # Chroma cuts a fractional operand to an integer against integer metadata ({"n": 1.5} matched n = 1).
    import operator as op

    values = {"m2": -2, "zero": 0, "one": 1, "two": 2, "onef": 1.0, "f15": 1.5, "fm05": -0.5}
    app = rift_factory(exact_search_max_chunks=exact_limit)
    app.add_documents("default", docs(*[(d, f"zebra {d}", {"n": n}) for d, n in values.items()]))
    compare = {"$eq": op.eq, "$ne": op.ne, "$gt": op.gt, "$gte": op.ge, "$lt": op.lt, "$lte": op.le}
    for name, fn in compare.items():
        for operand in (1.5, 0.5, -0.5, -1.5):
            got = app.search("default", "zebra", k=10, mode="vector", filters={"n": {name: operand}}).outcome
            assert set(ids(got.hits)) == {d for d, n in values.items() if fn(n, operand)}, (name, operand)
    got = app.search("default", "zebra", k=10, mode="vector", filters={"n": {"$in": [1.5, 2]}}).outcome
    assert set(ids(got.hits)) == {"f15", "two"}


def test_filters_refuse_rifts_own_keys_and_what_chroma_cannot_evaluate(rift) -> None:
    with pytest.raises(RiftError, match="'_rift_text': fields starting with '_rift_' are rift's own"):
        rift.search("default", "x", filters={"_rift_text": "x"})
    with pytest.raises(RiftError, match="expands to 999 conditions.*limit is 400"):
        rift.search("default", "x", filters={"$or": [{"n": i} for i in range(999)]})
    with pytest.raises(RiftError, match="expands to 999 conditions"):
        rift.search("default", "x", filters={"n": {"$in": [*range(998), "x"]}})


# --- lock ---------------------------------------------------------------------------------------------------


def test_second_rift_on_the_same_data_dir_is_refused(rift, settings) -> None:
    from server.service import Rift

    with pytest.raises(DataDirLockedError) as err:
        Rift(settings).start(background=False)
    message = str(err.value)
    assert str(settings.data_dir) in message and "another rift process" in message
    rift.close()
    again = Rift(settings).start(background=False)  # released on close
    again.close()


def test_a_lock_held_before_start_up_is_handed_over_and_released_on_close(settings, monkeypatch) -> None:
    """`rift serve` takes the lock before the protocol starts and hands it to the server, so no other
    process can take the data dir in between; the server's close releases it."""
    from filelock import FileLock

    from server.service import DataDirLock, Rift

    lock = DataDirLock(settings)
    lock.acquire()
    with pytest.raises(DataDirLockedError):
        DataDirLock(settings).acquire()
    app = Rift(settings, lock=lock).start(background=False)
    app.close()
    other = DataDirLock(settings)
    other.acquire()  # free again
    other.release()

    def denied(self, *args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(FileLock, "acquire", denied)
    with pytest.raises(RiftError, match=r"its lock file rift.lock cannot be written \(Permission denied\)"):
        DataDirLock(settings).acquire()


def test_close_runs_once_and_a_second_caller_waits_for_it(settings, monkeypatch) -> None:
    """stdin EOF closes the server in a worker thread; the client's SIGTERM that follows must wait for that
    close (a retrain checkpointing, the log writing) instead of closing again or exiting under it."""
    import threading
    import time

    from server.service import Rift

    app = Rift(settings).start(background=False)
    assert not app.loading
    calls: list[float] = []
    log_close = app.log.close

    def slow_close() -> None:
        calls.append(time.perf_counter())
        time.sleep(0.5)
        log_close()

    monkeypatch.setattr(app.log, "close", slow_close)
    first = threading.Thread(target=app.close)
    first.start()
    time.sleep(0.1)
    started = time.perf_counter()
    app.close()  # waits for the first
    assert time.perf_counter() - started > 0.3 and len(calls) == 1
    first.join()


def test_collection_records_follow_every_write(tmp_path) -> None:
    from server.engine.state_store import StateStore

    store = StateStore(tmp_path / "state.sqlite")
    assert store.collection("a") is None
    store.put_collection("a", "chroma_a1", "m1")
    assert store.collection("a").chroma_name == "chroma_a1"  # read once, then served from memory
    store.put_collection("a", "chroma_a2", "m2")  # a model switch
    assert (store.collection("a").chroma_name, store.collection("a").model_version) == ("chroma_a2", "m2")
    store.delete_collection("a")
    assert store.collection("a") is None
    store.close()
    reopened = StateStore(tmp_path / "state.sqlite")
    assert reopened.collection("a") is None
    reopened.close()


@pytest.mark.parametrize("exact_limit", [40_000, 0])  # the vector side in numpy, or in Chroma
def test_both_sides_of_a_search_rank_one_state_of_the_collection(rift_factory, exact_limit: int) -> None:
    # A write landing between the vector side's ranking and the keyword side's must not give one search
    # chunks of two versions of a document.
    import threading

    rift = rift_factory(exact_search_max_chunks=exact_limit)
    engine = rift.engine()
    rift.add_documents("default", docs(("x", "old words about the river"), ("y", "unrelated text")))
    tokenize, written = engine.tokenizer.tokenize, []

    def tokenize_after_a_write(texts):  # the keyword side starts only once a rewrite of x has landed
        if not written:
            written.append(True)  # first: the write tokenizes too
            writer = threading.Thread(
                target=rift.add_documents,
                args=("default", docs(("x", "new words about the river"))),
                daemon=True,
            )
            writer.start()
            writer.join(30)
        return tokenize(texts)

    engine.tokenizer.tokenize = tokenize_after_a_write
    try:
        hits = rift.search("default", "words about the river", k=5, group_by_document=False).outcome.hits
    finally:
        engine.tokenizer.tokenize = tokenize
    assert written
    texts = {h.text for h in hits if h.doc_id == "x"}
    # In memory both sides rank the snapshot the search began with; on Chroma's path the old chunk's text is
    # gone by hydration and the hit is dropped. Never both versions.
    assert texts == {"old words about the river"} if exact_limit else len(texts) <= 1
    after = rift.search("default", "words about the river", k=5, group_by_document=False).outcome.hits
    assert {h.text for h in after if h.doc_id == "x"} == {"new words about the river"}


def test_a_one_sided_search_ignores_the_fusion_weights(rift_factory) -> None:
    rift = rift_factory(vector_weight=0.0)  # weights only balance the two sides
    rift.add_documents("default", docs(("a", "the cat sat on the mat"), ("b", "dogs bark at night")))
    assert ids(rift.search("default", "the cat sat on the mat", k=1, mode="vector").outcome.hits) == ["a"]
    assert ids(rift.search("default", "dogs", mode="keyword").outcome.hits) == ["b"]
    assert ids(rift.search("default", "dogs", mode="hybrid").outcome.hits) == ["b"]  # the keyword side alone
    # No keyword terms (stopwords only): the vector side answers, its weight of 0 notwithstanding.
    stopwords = rift.search("default", "the on at", k=2).outcome
    assert stopwords.keyword == [] and len(stopwords.hits) == 2
    assert ids(stopwords.hits) == ids(rift.search("default", "the on at", k=2, mode="vector").outcome.hits)
    assert all(h.vector_rank and h.keyword_rank is None for h in stopwords.hits)


def test_a_hybrid_hit_shows_the_chunk_of_the_side_that_ranked_it_higher(rift_factory) -> None:
    rift = rift_factory()
    filler = " ".join(f"Paragraph {i} is about pumps and valves in general." for i in range(40))
    # BERT strips accents, so "gásket QẊ7781" embeds exactly like the query while bm25s sees other words: the
    # decoy is the vector side's first document, and the manual's accented paragraph its best chunk there.
    manual = (
        filler + " The gasket code QX7781 means a worn seal. " + filler + " gásket QẊ7781 gásket. " + filler
    )
    rift.add_documents("default", docs(("manual", manual), ("decoy", "gásket QẊ7781")))
    outcome = rift.search("default", "gasket QX7781", k=2).outcome
    hit = next(h for h in outcome.hits if h.doc_id == "manual")
    assert hit.keyword_rank == 1 and hit.vector_rank == 2
    by_vector = next(c for c in outcome.vector if c.doc_id == "manual")
    by_keyword = next(c for c in outcome.keyword if c.doc_id == "manual")
    assert by_vector.chunk_id != by_keyword.chunk_id
    assert hit.chunk_id == by_keyword.chunk_id and "QX7781" in hit.text  # where its words are


def test_a_model_folder_replaced_in_place_is_refused_not_searched(tmp_path: Path) -> None:
    """Vectors are labelled by the model's name; other weights under the same folder (another dimension, or
    the same dimension) must not be searched against them: start-up refuses, saying what to do."""
    import shutil

    from tests.support.tiny_model import build_tiny_model

    first = build_tiny_model(tmp_path / "first")
    folder = tmp_path / "model"
    shutil.copytree(first, folder)
    settings = make_settings(tmp_path / "data", folder)
    rift = open_rift(settings)
    rift.add_documents("notes", docs(("a", "the cat sat on the mat")))
    rift.close()

    wide = build_tiny_model(tmp_path / "wide", hidden=48)
    for other in (wide, build_tiny_model(tmp_path / "seed1", seed=1)):
        shutil.rmtree(folder)
        shutil.copytree(other, folder)
        with pytest.raises(RiftError, match=r"not the one collections 'notes' were embedded with: its weights"):
            open_rift(settings)

    shutil.rmtree(folder)
    shutil.copytree(first, folder)  # the earlier model back: it serves its vectors again
    rift = open_rift(settings)
    try:
        assert ids(rift.search("notes", "cat mat").outcome.hits) == ["a"]
    finally:
        rift.close()

    # Under a new folder the new model is a new model: start-up re-embeds with it.
    moved = make_settings(tmp_path / "data", wide)
    rift = open_rift(moved)
    try:
        assert rift.repair_report["reembedded"] == ["notes"]
        assert ids(rift.search("notes", "cat mat").outcome.hits) == ["a"]
    finally:
        rift.close()


def test_a_model_folder_moved_with_its_data_dir_keeps_its_vectors(tmp_path: Path) -> None:
    """A data dir and its model folder moved together (a new machine, a new home folder), `model` set to the
    folder's new path: the same weights are the same model, so nothing is re-embedded and read-only commands
    do not refuse the store. Other weights at a new path are another model, as before."""
    import shutil

    from server.service import Rift
    from tests.support.tiny_model import build_tiny_model

    old = build_tiny_model(tmp_path / "old")
    rift = open_rift(make_settings(tmp_path / "old" / "data", old))
    rift.add_documents("notes", docs(("a", "the cat sat on the mat"), ("b", "a dog ran in the park")))
    rift.close()
    shutil.move(tmp_path / "old", tmp_path / "new")  # the earlier path is gone
    folder = tmp_path / "new" / old.name
    moved = make_settings(tmp_path / "new" / "data", folder)
    readonly = Rift(moved).start(background=False, reembed=False)  # as `rift search` opens the store
    try:
        assert ids(readonly.search("notes", "cat mat").outcome.hits)[0] == "a"
    finally:
        readonly.close()
    for _ in range(2):  # (the second start finds the registry pointing at the new folder)
        moved = make_settings(tmp_path / "new" / "data", folder)
        rift = open_rift(moved)
        try:
            assert rift.repair_report["reembedded"] == []
            assert rift.engine().state.collection("notes").model_version == str(old)  # its name, kept
            assert rift.stats()["model"] == str(folder)
            assert rift.learning.registry.get(str(old)).location == str(folder)
            assert ids(rift.search("notes", "cat mat").outcome.hits)[0] == "a"
        finally:
            rift.close()

    other = build_tiny_model(tmp_path / "other", seed=1)  # another model's weights at a new path
    with pytest.raises(RiftError, match="configured with model .*other"):
        Rift(make_settings(tmp_path / "new" / "data", other)).start(background=False, reembed=False)
    rift = open_rift(make_settings(tmp_path / "new" / "data", other))
    try:
        assert rift.repair_report["reembedded"] == ["notes"]
        assert rift.engine().state.collection("notes").model_version == str(other)
    finally:
        rift.close()


def test_a_model_folder_renamed_in_its_move_keeps_its_known_query_prompt(tmp_path: Path) -> None:
    """A folder named after a model rift knows a query prompt for (bge) moved and renamed with its data dir:
    the same weights keep their vectors, so they keep their query prompt too; it was dropped, the stored
    vectors searched with queries embedded without it."""
    import shutil

    from tests.support.tiny_model import build_tiny_model

    built = build_tiny_model(tmp_path / "build")
    shutil.copytree(built, tmp_path / "old" / "bge-small-en-v1.5")
    rift = open_rift(make_settings(tmp_path / "old" / "data", tmp_path / "old" / "bge-small-en-v1.5"))
    try:
        rift.add_documents("notes", docs(("a", "the cat sat on the mat")))
        prompt = rift.engine().embedder.query_prompt
        assert prompt.startswith("Represent this sentence")
    finally:
        rift.close()
    shutil.move(tmp_path / "old", tmp_path / "new")
    (tmp_path / "new" / "bge-small-en-v1.5").rename(tmp_path / "new" / "model")
    rift = open_rift(make_settings(tmp_path / "new" / "data", tmp_path / "new" / "model"))
    try:
        assert rift.repair_report["reembedded"] == []
        assert rift.engine().embedder.query_prompt == prompt
    finally:
        rift.close()


def test_paging_by_the_last_id_lists_every_document_once_while_others_change(rift) -> None:
    from server.ingest.manage import list_documents

    rift.add_documents("default", docs(*[(f"d{i:02d}", f"note number {i} about tides") for i in range(20)]))
    engine = rift.engine()
    seen: list[str] = []
    total, page, start = list_documents(engine, "default", None, limit=4)
    assert (total, start) == (20, 0)
    seen += [d for d, _ in page]
    rift.delete_documents("default", ["d00"])  # an offset would now skip d04
    total, page, start = list_documents(engine, "default", None, limit=4, after=seen[-1])
    assert (total, start) == (19, 3)
    seen += [d for d, _ in page]
    rift.add_documents("default", docs(("d01a", "a late note about tides")))  # ... and now repeat one
    while True:
        total, page, start = list_documents(engine, "default", None, limit=4, after=seen[-1])
        seen += [d for d, _ in page]
        if start + len(page) >= total:
            break
    assert seen == sorted(set(seen)) and set(seen) >= {f"d{i:02d}" for i in range(20)}
    assert "d01a" not in seen  # added behind the reader, as a listing by id should leave it
    with pytest.raises(RiftError, match="either after"):
        list_documents(engine, "default", None, offset=4, after="d03")
    with pytest.raises(RiftError, match="after must be"):
        list_documents(engine, "default", None, after="")


def test_a_listing_without_filters_pages_as_a_filtered_one_does(rift) -> None:
    """Without filters a page is read from the primary key (not every document's metadata); it must list the
    same documents, in the same (code point) order, with the same totals and offsets, as a filter matching
    them all."""
    from server.ingest.manage import list_documents

    names = ["b", "a", "Z", "é", "e", "\U0001f600", "\uffff", "a b", "a/b", "ä"]
    rift.add_documents("default", docs(*[(n, f"note {i} about tides", {"n": i}) for i, n in enumerate(names)]))
    engine = rift.engine()
    everything = {"absent": {"$ne": 1}}  # matches every document (none has the key)
    for limit in (1, 3, 50):
        for offset in (0, 2, 9, 10, 11, 2**63, 10**20):  # past SQLite's integers too: an empty page, no error
            assert list_documents(engine, "default", None, limit, offset) == list_documents(
                engine, "default", everything, limit, offset
            )
        for after in [*names, "0", "\U0010ffff"]:
            assert list_documents(engine, "default", None, limit, after=after) == list_documents(
                engine, "default", everything, limit, after=after
            )
    total, page, _ = list_documents(engine, "default", None, 50)
    assert total == len(names) and [d for d, _ in page] == sorted(names)
    assert dict(page)["é"] == {"n": 3}
    for filters in (None, everything):  # what a shell makes of bytes that are not UTF-8 (`rift list --after`)
        with pytest.raises(RiftError, match="after is not valid Unicode"):
            list_documents(engine, "default", filters, 50, after="a\udcff")


def test_stats_and_listings_skip_a_collection_deleted_while_they_read(rift, monkeypatch) -> None:
    """The names are read first, then each collection: one deleted in between is not an error of the caller."""
    from server.ingest.manage import list_collections

    rift.add_documents("keep", docs(("a", "the cat sat on the mat")))
    engine = rift.engine()
    names = engine.collection_names
    monkeypatch.setattr(engine, "collection_names", lambda: [*names(), "gone"])
    assert [c["name"] for c in rift.stats()["collections"]] == ["keep"]
    assert [c["name"] for c in list_collections(engine)] == ["keep"]
    with pytest.raises(NotFoundError):
        rift.stats("gone")


def test_a_change_of_chunk_size_rechunks_stored_documents_once(rift_factory) -> None:
    """Stored documents follow chunk_tokens / chunk_overlap: after a change they are split again from their
    stored text at start-up (re-adding them would be a no-op: their content did not change)."""
    first = rift_factory(chunk_tokens=48)
    first.add_documents("default", docs(("long", LONG), ("cat", "the cat sat on the mat")))
    first.add_documents("other", docs(("x", "python code on a server")))
    chunks_before = {c["name"]: c["chunks"] for c in first.stats()["collections"]}
    first.close()

    second = rift_factory(chunk_tokens=16)
    assert second.repair_report["rechunked"] == {"default": 2, "other": 1}
    chunks_after = {c["name"]: c["chunks"] for c in second.stats()["collections"]}
    assert chunks_after["default"] > chunks_before["default"]
    state = index_state(second)
    assert state["chroma"] == state["keyword"] == state["sqlite"]  # the old chunks are gone everywhere
    engine = second.engine()
    assert all(
        len(engine.embedder.tokenizer(c.text, add_special_tokens=False)["input_ids"]) <= 16
        for c in engine.state.document_chunks("default", "long")
    )
    text, _, n_chunks, _ = engine.get_document("default", "long")
    assert text == LONG and n_chunks == chunks_after["default"] - 1
    assert ids(second.search("default", "the cat sat on the mat", k=1, mode="vector").outcome.hits) == ["cat"]
    assert second.add_documents("default", docs(("long", LONG)))[0].status == "unchanged"
    second.close()

    third = rift_factory(chunk_tokens=16)
    assert "rechunked" not in third.repair_report


def test_a_chunker_bump_rewrites_only_the_kinds_of_documents_it_cuts_differently(rift_factory, monkeypatch) -> None:
    """CHUNKER_VERSION 2 changed how code and Markdown are cut, not plain text: a store written by version 1
    re-cuts its code at the next start and keeps its plain documents' versions (chunk ids), rather than write
    every document of every collection again."""
    from server.engine import chunking
    from server.engine import engine as engine_module
    from server.ingest import splitters

    code = "def area(r):\n    return 3.14 * r * r\n"
    texts = (("plain", "the cat sat on the mat", {}), ("code", code, {"file_type": "python"}))
    # Written as version 1 wrote: every kind hashed with "v1".
    monkeypatch.setattr(chunking, "CHUNKER_VERSION", 1)
    monkeypatch.setattr(engine_module, "CHUNKER_VERSION", 1)
    monkeypatch.setattr(splitters, "SPLITTERS", {k: replace(v, since=1) for k, v in splitters.SPLITTERS.items()})
    first = rift_factory()
    first.add_documents("default", docs(*texts))
    before = {d: [c.chunk_id for c in first.engine().state.document_chunks("default", d)] for d in ("plain", "code")}
    first.close()
    monkeypatch.undo()

    second = rift_factory()
    assert second.repair_report["rechunked"] == {"default": 1}  # the code file alone
    engine = second.engine()
    after = {d: [c.chunk_id for c in engine.state.document_chunks("default", d)] for d in ("plain", "code")}
    assert after["plain"] == before["plain"] and after["code"] != before["code"]
    state = index_state(second)
    assert state["chroma"] == state["keyword"] == state["sqlite"]
    assert [s.status for s in second.add_documents("default", docs(*texts))] == ["unchanged", "unchanged"]
    second.close()
    assert "rechunked" not in rift_factory().repair_report


def test_a_store_from_before_chunking_was_hashed_recuts_its_code_once(rift_factory, monkeypatch) -> None:
    """A data dir written before chunking was part of a version's hash (chunker 1, no chunking record) was
    taken as cut by the current chunker, so its code kept chunker 1's windows (mid-line starts) for good while
    the record said chunker 2 and `rift rechunk` found nothing to do. Its code is cut again at the next start (a collection of plain documents alone is
    still taken as it is: chunker 2 cuts them as chunker 1 did)."""
    from server.engine import chunking
    from server.engine import engine as engine_module
    from server.ingest import splitters

    code = "def area(r):\n    return 3.14 * r * r\n"
    texts = (("plain", "the cat sat on the mat", {}), ("code", code, {"file_type": "python"}))
    # Written as rift wrote before the hash covered chunking: chunker 1, every version hashed without it.
    monkeypatch.setattr(chunking, "CHUNKER_VERSION", 1)
    monkeypatch.setattr(engine_module, "CHUNKER_VERSION", 1)
    monkeypatch.setattr(splitters, "SPLITTERS", {k: replace(v, since=1) for k, v in splitters.SPLITTERS.items()})
    monkeypatch.setattr(engine_module, "document_chunking", lambda chunking, metadata: "")
    first = rift_factory()
    first.add_documents("default", docs(*texts))
    first.engine().state.delete_setting("chunking:default")  # no record then
    before = [c.chunk_id for c in first.engine().state.document_chunks("default", "code")]
    first.close()
    monkeypatch.undo()

    second = rift_factory()
    assert second.repair_report["rechunked"]["default"] >= 1
    assert [c.chunk_id for c in second.engine().state.document_chunks("default", "code")] != before
    state = index_state(second)
    assert state["chroma"] == state["keyword"] == state["sqlite"]
    second.close()
    assert "rechunked" not in rift_factory().repair_report


def test_a_rechunk_cut_short_loses_nothing_and_resumes(tmp_path: Path, tiny_model_path: Path, monkeypatch) -> None:
    """Each re-chunked document is a new version (the chunking is part of its hash, so new chunk ids): a write
    that fails half-way rolls back to the old chunks intact, and the next start finishes the job. Stored
    documents are not re-validated against today's per-call or size limits."""
    import sqlite3

    from server.engine.state_store import StateStore

    rift = open_rift(make_settings(tmp_path / "data", tiny_model_path))
    rift.add_documents("default", docs(("long", LONG), ("cat", "the cat sat on the mat")))
    before = rift.engine().state.counts("default")
    rift.close()

    apply = StateStore.apply
    failed: list[bool] = []

    def full_disk(self, *args, **kwargs):
        if not failed:
            failed.append(True)
            raise sqlite3.OperationalError("database or disk is full")
        return apply(self, *args, **kwargs)

    monkeypatch.setattr(StateStore, "apply", full_disk)
    changed = make_settings(
        tmp_path / "data", tiny_model_path, chunk_tokens=16, chunk_overlap=4, max_documents_per_call=1,
        max_document_chars=10,
    )
    with pytest.raises(RiftError, match="disk is full"):
        open_rift(changed)
    monkeypatch.setattr(StateStore, "apply", apply)
    rift = open_rift(make_settings(tmp_path / "data", tiny_model_path))  # the old settings: all still there
    try:
        assert rift.engine().state.counts("default") == before
        assert rift.engine().get_document("default", "long")[0] == LONG
    finally:
        rift.close()
    rift = open_rift(changed)
    try:
        assert rift.repair_report["rechunked"] == {"default": 2}
        assert rift.engine().state.counts("default")[1] > before[1]
        state = index_state(rift)
        assert state["chroma"] == state["keyword"] == state["sqlite"]
        assert rift.engine().get_document("default", "long")[0] == LONG
    finally:
        rift.close()


def test_length_errors_name_the_setting_only_when_one_sets_the_limit(rift) -> None:
    with pytest.raises(RiftError, match=r"ids\[0\] is 600 characters; the limit is 512$"):
        rift.delete_documents("default", ["x" * 600])
    with pytest.raises(RiftError, match=r"the limit is 1,000,000 \(setting max_document_chars\)"):
        rift.add_documents("default", docs(("big", "word " * 200_001)))


def test_one_call_s_text_is_bounded_in_all_and_a_refused_call_stores_nothing(rift_factory) -> None:
    """max_chars_per_call bounds one call's memory and write-lock time: stdio has no request-size cap, and
    1,000 documents of max_document_chars each were several GB."""
    rift = rift_factory(max_chars_per_call=25)
    with pytest.raises(RiftError, match=r"documents\[0\.\.2\] hold 30 characters; the limit per call is 25 "
                       r"\(setting max_chars_per_call\): split"):
        rift.add_documents("default", docs(("a", "x" * 10), ("b", "y" * 10), ("c", "z" * 10)))
    with pytest.raises(RiftError, match=r"documents\[0\]\.text is 26 characters; the limit per call is 25"):
        rift.add_documents("default", docs(("a", "x" * 26)))
    assert "default" not in rift.engine().collection_names() or rift.engine().state.counts("default") == (0, 0)
    statuses = rift.add_documents("default", docs(("a", "x" * 10), ("b", "y" * 15)))  # exactly the limit
    assert [s.status for s in statuses] == ["added", "added"]


def test_a_larger_k_extends_the_hits_and_never_reorders_them(rift_factory) -> None:
    """Long documents fill the chunk depth with few documents. The sides were read deeper only until they
    held k documents, so at k=10 a document ranked first by vectors lacked its keyword rank (39th) and fell
    out of the top 10 it held at k=50: an agent asking for more results got a different list."""
    import random

    words = [
        "pump", "valve", "seal", "gasket", "pressure", "flow", "turbine", "bearing", "lubricant", "vibration",
        "sensor", "motor", "shaft", "coupling", "impeller", "housing", "filter", "drain", "inlet", "outlet",
        "thermal", "alarm", "torque", "calibration", "inspection",
    ]
    rnd = random.Random(7)
    rift = rift_factory()
    rift.add_documents(
        "default",
        docs(*(
            (f"d{i:02d}", " ".join(rnd.choice(words) for _ in range(rnd.choice([20, 60, 400, 900]))) + ".")
            for i in range(50)
        )),
    )
    for query in ("pump seal pressure", "turbine vibration alarm", "calibration torque shaft", "drain filter"):
        widest = ids(rift.search("default", query, k=50, source="test").outcome.hits)
        for k in (5, 10, 20):
            assert ids(rift.search("default", query, k=k, source="test").outcome.hits) == widest[:k], (query, k)


def test_a_few_long_documents_are_not_read_whole_on_every_search(rift_factory, monkeypatch) -> None:
    """Reading each side until it held max_k documents made every search of a collection with fewer documents
    than that read all of its chunks (40 long PDFs: 0.3 -> 1.7 s a search); the target is capped at the
    documents the collection holds, and past 16 times the depth only fewer than k documents read deeper."""
    from server.engine.keyword_index import KeywordIndex

    rnd = __import__("random").Random(5)
    vocab = ["pump", "valve", "seal", "flow", "motor", "shaft", "drain", "inlet", "alarm", "torque"]
    rift = rift_factory(chunk_tokens=16, chunk_overlap=0)
    rift.add_documents(
        "default",
        docs(*((f"d{i:02d}", " ".join(rnd.choice(vocab) for _ in range(400))) for i in range(12))),
    )
    assert rift.engine().state.counts("default")[1] > 200
    reads: dict[str, list[int]] = {"keyword": [], "vector": []}
    search, vector_search = KeywordIndex.search, KeywordIndex.vector_search

    def keyword_read(self, tokens, depth, *args, **kwargs):
        reads["keyword"].append(depth)
        return search(self, tokens, depth, *args, **kwargs)

    def vector_read(self, query, depth, *args, **kwargs):
        reads["vector"].append(depth)
        return vector_search(self, query, depth, *args, **kwargs)

    monkeypatch.setattr(KeywordIndex, "search", keyword_read)
    monkeypatch.setattr(KeywordIndex, "vector_search", vector_read)
    hits = rift.search("default", "pump valve seal", k=10, source="test").outcome.hits
    assert len(hits) == 10
    assert reads == {"keyword": [200], "vector": [200]}  # all 12 documents were in the first 200 chunks


def test_past_sixteen_times_the_depth_only_fewer_than_k_documents_read_deeper(rift_factory, monkeypatch) -> None:
    """A filter that passes many chunks of fewer documents than max_k: each side stops at 16 times the depth
    once it holds k documents, instead of reading every chunk the filter passes on every search."""
    from server.engine.keyword_index import KeywordIndex

    rnd = __import__("random").Random(6)
    vocab = ["pump", "valve", "seal", "flow", "motor", "shaft", "drain", "inlet", "alarm", "torque"]
    rift = rift_factory(chunk_tokens=16, chunk_overlap=0, candidate_depth=25)  # a ceiling of 400 chunks
    rift.add_documents(
        "default",
        docs(*((f"d{i:02d}", " ".join(rnd.choice(vocab) for _ in range(400)), {"n": i}) for i in range(30))),
    )
    reads: list[int] = []
    search = KeywordIndex.search

    def keyword_read(self, tokens, depth, *args, **kwargs):
        reads.append(depth)
        return search(self, tokens, depth, *args, **kwargs)

    monkeypatch.setattr(KeywordIndex, "search", keyword_read)
    out = rift.search("default", "pump", k=10, mode="keyword", filters={"n": {"$lt": 20}}, source="test")
    assert len(out.outcome.hits) == 10
    assert reads == [25, 100, 400]  # not on to every one of the ~500 chunks the filter passes


def test_a_deleted_collection_leaves_no_index_files_on_disk(rift_factory) -> None:
    """Chroma 1.x drops a deleted collection's rows but leaves its HNSW folder (with the chunk ids) on
    disk: rift removes it, and the other collections keep working, also after a restart."""
    import os

    rift = rift_factory()
    chroma_dir = rift.settings.chroma_dir

    def index_folders() -> set[str]:
        return {p for p in os.listdir(chroma_dir) if (chroma_dir / p).is_dir()}

    rift.add_documents("keep", docs(("cat", "the cat sat on the mat")))
    kept = index_folders()
    rift.add_documents("gone", docs(*((f"d{i}", f"note {i} about the river") for i in range(30))))
    assert index_folders() > kept
    rift.engine().delete_collection("gone")
    assert index_folders() == kept
    rift.add_documents("new", docs(("owl", "an owl hunts at night")))
    rift.close()
    again = rift_factory()  # (closed by the fixture)
    assert ids(again.search("keep", "the cat sat on the mat", k=1, mode="vector").outcome.hits) == ["cat"]
    assert ids(again.search("new", "an owl hunts at night", k=1, mode="vector").outcome.hits) == ["owl"]


def test_index_sizes_skip_files_removed_during_the_walk(tmp_path: Path, monkeypatch) -> None:
    # A model switch drops a collection's folder while `stats` walks the Chroma dir: that file counts 0 bytes.
    import os

    from server import service

    settings = make_settings(tmp_path / "data", tmp_path / "model")
    folder = settings.chroma_dir / "segment"
    folder.mkdir(parents=True)
    (folder / "kept.bin").write_bytes(b"x" * 10)
    (folder / "gone.bin").write_bytes(b"x" * 7)

    class VanishingOs:  # the os module, with one file gone between listing and stat
        def __getattr__(self, name: str):
            return getattr(os, name)

        @staticmethod
        def lstat(path, *args, **kwargs):
            if str(path).endswith("gone.bin"):
                raise FileNotFoundError(path)
            return os.lstat(path, *args, **kwargs)

    monkeypatch.setattr(service, "os", VanishingOs())
    assert service._index_bytes(settings)["chroma"] == 10


def test_delete_collection_counts_a_write_queued_before_it(rift) -> None:
    """The counts a delete reports are read under the write lock: a write already running when the delete was
    asked for commits first, and is counted (it reported the collection as it was before that write)."""
    import threading

    rift.add_documents("race", docs(("first", "one document to begin with")))
    embedding, release = threading.Event(), threading.Event()

    def progress(*_args) -> None:
        embedding.set()
        release.wait(10)

    writer = threading.Thread(
        target=rift.add_documents,
        args=("race", docs(*((f"d{i}", f"document number {i} about tides") for i in range(5)))),
        kwargs={"progress": progress},
    )
    writer.start()
    assert embedding.wait(30)
    result: list = []
    deleter = threading.Thread(target=lambda: result.append(rift.delete_collection("race")))
    deleter.start()
    deleter.join(0.5)
    assert deleter.is_alive()  # waiting for the write
    release.set()
    writer.join(30)
    deleter.join(30)
    assert result[0].documents == 6 and "race" not in rift.engine().collection_names()


def test_metadata_of_a_document_longer_than_a_lowered_per_call_limit_names_the_setting(rift_factory) -> None:
    """It read "update fewer at a time", which cannot help with one document."""
    first = rift_factory()
    first.add_documents("default", docs(("long", LONG), ("short", "a short note")))
    first.close()
    lowered = rift_factory(max_chars_per_call=len(LONG) - 1)
    with pytest.raises(RiftError, match="document 'long' holds .* lowered since it was stored.*raise the setting"):
        lowered.engine().update_metadata("default", ["long"], {"tag": "x"})
    with pytest.raises(RiftError, match="update fewer at a time"):
        lowered.engine().update_metadata("default", ["long", "short"], {"tag": "x"})
    lowered.engine().update_metadata("default", ["short"], {"tag": "x"})


def test_a_model_of_another_vocabulary_gets_the_documents_cut_again(tmp_path: Path, tiny_model_path: Path) -> None:
    """Chunks are cut in the tokenizer's tokens. With the same chunk size (here both models read 64 tokens), a
    switch to a model of another vocabulary kept the old chunks, which it then read only in part: here three
    times as many tokens each, so the end of every chunk was never embedded."""
    from tests.support.tiny_model import build_tiny_model

    chars_only = build_tiny_model(tmp_path / "chars", seed=1, words=False)
    data = tmp_path / "data"
    text = " ".join(["the cat sat on the mat"] * 20) + " quantum physics energy protein"
    first = open_rift(make_settings(data, tiny_model_path))
    try:
        first.add_documents("default", docs(("old", text)))
    finally:
        first.close()
    second = open_rift(make_settings(data, chars_only))
    try:
        assert second.repair_report["reembedded"] == ["default"]
        assert second.repair_report["rechunked"] == {"default": 1}
        engine = second.engine()
        budget = engine.embedder.max_chunk_tokens(engine.settings.chunk_tokens)
        lengths = [
            len(engine.embedder.tokenizer(row.text, add_special_tokens=False)["input_ids"])
            for row in engine.state.iter_chunks("default")
        ]
        assert len(lengths) > 3 and max(lengths) <= budget
    finally:
        second.close()
    again = open_rift(make_settings(data, chars_only))  # done once
    try:
        assert not again.repair_report.get("rechunked")
    finally:
        again.close()


def test_a_nearly_full_disk_refuses_writes_and_names_the_disk(rift_factory, monkeypatch) -> None:
    """Chroma's embedded store, once a write failed for want of space, failed or hung every later write until
    a restart; and SQLite's "database or disk is full" reached the agent as "a bug in rift"."""
    import shutil
    import sqlite3
    from collections import namedtuple

    from server.errors import disk_full_problem
    from tools._common import failure_message

    app = rift_factory(min_free_disk_mb=64)
    app.add_documents("default", docs(("a", "the cat sat on the mat")))
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda _path: usage(10**9, 10**9 - 5 * 2**20, 5 * 2**20))
    with pytest.raises(RiftError, match=r"has 5 MB free, less than min_free_disk_mb \(64\).*nothing was written"):
        app.add_documents("default", docs(("b", "a blue fish in the sea")))
    with pytest.raises(RiftError, match="min_free_disk_mb"):
        app.engine().update_metadata("default", ["a"], {"tag": "x"})
    from server.engine.embedder import Embedder
    from server.engine.models import resolve_model

    other = Embedder(resolve_model(app.settings.model), version="other")
    with pytest.raises(RiftError, match="min_free_disk_mb"):  # a re-embed writes a whole new collection
        app.engine().build_vectors("default", other)
    app.delete_documents("default", ["a"])  # deleting makes room: never refused
    assert app.stats()["collections"][0]["documents"] == 0
    monkeypatch.undo()
    # Errors a full disk causes elsewhere say so, however deep the cause sits.
    try:
        try:
            raise sqlite3.OperationalError("database or disk is full")
        except sqlite3.OperationalError as cause:
            raise RuntimeError("Error in compaction: Failed to apply logs to the metadata segment") from cause
    except RuntimeError as exc:
        message = failure_message(app.add_documents, exc)
    assert message.startswith("the disk holding rift's data") and "bug" not in message
    assert disk_full_problem(OSError(28, "No space left on device")) is not None
    assert disk_full_problem(ValueError("something else")) is None


def test_metadata_numbers_chroma_cannot_keep_apart_are_refused(rift_factory) -> None:
    """Chroma may store a float 1 ULP off: the last float below 2**63 read as 2**63 there, equal in its integer
    compare to 2**63 - 1, so a filter on either value matched both documents on the vector side only."""
    app = rift_factory()
    for value, expected in (
        (float(2**63 - 1024), r"metadata\.v is 9\.22337e\+18; numbers must lie within ±9\.2e18"),
        (-float(2**63 - 1024), r"metadata\.v is -9\.22337e\+18"),
        (float("inf"), r"metadata\.v must be a finite number"),
        (2**63, r"metadata\.v is out of the 64-bit integer range"),
    ):
        with pytest.raises(RiftError, match=expected):
            app.add_documents("default", docs(("a", "the cat sat on the mat", {"v": value})))
    app.add_documents("default", docs(("a", "the cat", {"v": 9.2e18}), ("b", "the mat", {"v": 2**63 - 1})))
    for value, expected in ((9.2e18, ["a"]), (2**63 - 1, ["b"])):
        for mode in ("vector", "keyword"):
            assert ids(app.search("default", "cat mat", mode=mode, filters={"v": value}).outcome.hits) == expected


def test_a_collection_deleted_and_made_again_during_a_search_is_named(rift_factory, monkeypatch) -> None:
    """Chroma's own "collection does not exist" reached the agent as "the vector store (Chroma) failed"."""
    import chromadb.errors

    app = rift_factory(exact_search_max_chunks=0)  # the vector side asks Chroma
    app.add_documents("c", docs(("d1", "the cat sat on the mat")))
    engine = app.engine()
    real = engine.vectors.query
    raced: list[bool] = []

    def query(*args: Any, **kwargs: Any) -> Any:
        if not raced:
            raced.append(True)
            app.delete_collection("c")
            app.add_documents("c", docs(("d2", "a dog in the fog")))
            raise chromadb.errors.NotFoundError("Collection [rift-c-…] does not exist")
        return real(*args, **kwargs)

    monkeypatch.setattr(engine.vectors, "query", query)
    with pytest.raises(RiftError, match="collection 'c' was deleted and created again while this search ran"):
        app.search("c", "cat", mode="vector")
    assert ids(app.search("c", "dog fog", mode="vector").outcome.hits) == ["d2"]


def test_a_long_document_shows_the_chunk_that_holds_the_query_s_words(rift_factory) -> None:
    """Both sides rank a long document first, each by its own best chunk: the vector side's was shown (on a
    tie), often one without the query's words (the agent read an off-topic passage, and its start/end pointed
    there). Fusing the sides' chunk lists shows the chunk both found."""
    app = rift_factory()
    words = ["pelican", "walrus", "marmot", "ibex", "narwhal", "axolotl"]
    sections = [f"Section {i} on river water and the old city, with one {w} near the bridge." for i, w in enumerate(words)]
    text = " ".join(f"{s} " * 6 for s in sections)  # several chunks, each section's animal in its own
    app.add_documents("default", docs(("long", text), ("cat", "the cat sat on the mat")))
    assert app.engine().get_document("default", "long")[2] >= len(words)
    for word in words:
        [hit] = app.search("default", f"{word} river water", k=1).outcome.hits
        assert hit.doc_id == "long" and word in hit.text, (word, hit.text[:80])


def test_a_query_naming_a_definition_shows_its_chunk(rift_factory) -> None:
    """A file's callers of a name hold its words more often than its definition does: fused, a caller's chunk
    ranked first and was shown, and the agent read another part of the right file. A query that is the name
    (as written or split into words) shows the definition's first chunk; the document's ranking is unchanged."""
    app = rift_factory()
    callers = "".join(
        f"def caller_{i}(root):\n"
        + "".join(f"    step_{j} = writer_id(root) + writer_id(root) + {j}\n" for j in range(12))
        + "    return step_0\n\n\n"
        for i in range(4)
    )
    body = "".join(f"    part_{j} = root.strip() + str({j})\n" for j in range(14))
    text = f"import os\n\n\n{callers}def writer_id(root):\n    \"\"\"Name this process.\"\"\"\n{body}"
    text += "    return f'{root}-{os.getpid()}'\n\n\n" + callers.replace("caller_", "later_")
    app.add_documents("default", docs(("shared.py", text, {"file_type": "python"}), ("cat", "the cat sat on the mat")))
    engine = app.engine()
    assert engine.get_document("default", "shared.py")[2] >= 6
    defined = text.index("def writer_id")
    for query in ("writer id", "writer_id", "WriterId", "Writer ID"):
        grouped = app.search("default", query).outcome.hits
        assert grouped[0].doc_id == "shared.py"
        assert grouped[0].start <= defined < grouped[0].end, (query, grouped[0].text[:60])
        assert grouped[0].metadata["symbol"] == "writer_id"
    # Other words with the name name no definition: the fused ranking's chunk, as before.
    fused = app.search("default", "writer id step", group_by_document=False).outcome.hits
    [shown] = app.search("default", "writer id step", k=1).outcome.hits
    assert shown.chunk_id == next(h.chunk_id for h in fused if h.doc_id == "shared.py")
    # `symbol` is also an ordinary metadata key: a prose document's own (a ticker) names no definition.
    prose = " ".join(f"Revenue grew in region {i} with steady margins." for i in range(24))
    prose += " Apple ticker AAPL AAPL AAPL price target raised. " + prose
    app.add_documents("default", docs(("report", prose, {"symbol": "AAPL"})))
    fused = app.search("default", "AAPL", group_by_document=False).outcome.hits
    [shown] = app.search("default", "AAPL", k=1).outcome.hits
    assert engine.get_document("default", "report")[2] >= 3
    assert shown.chunk_id == next(h.chunk_id for h in fused if h.doc_id == "report") and "AAPL" in shown.text


def test_an_empty_filtered_search_blames_the_filter_only_when_it_is_why(rift_factory) -> None:
    app = rift_factory()
    app.add_documents(
        "default",
        docs(
            ("a", "bird in a tree", {"lang": "python", "version": "1.0", "source": "/x/a.md", "year": 2020}),
            ("b", "fish in the sea", {"lang": "rust", "version": 2, "flag": 1, "year": 2021, "draft": True}),
        ),
    )

    def warned(filters: dict, query: str = "zebra") -> list[str]:  # (keyword mode: "zebra" matches nothing)
        outcome = app.search("default", query, mode="keyword", filters=filters).outcome
        assert outcome.hits == []
        return outcome.warnings

    assert warned({"lang": "py"}) == ["no chunk in 'default' has lang \"py\"; its values there: python, rust"]
    assert warned({"version": 3}) == ["no chunk in 'default' has version 3"]  # (mixed types: not listed)
    assert warned({"lng": "py"}) == ["nothing can match: filters name 'lng', which no chunk in 'default' has in its metadata"]
    # Not the filter's fault: a value some chunk has, a $prefix (an $or inside), an $or with a branch that holds.
    assert warned({"version": 2}) == []
    assert warned({"source": {"$prefix": "/x"}}) == []
    assert warned({"$or": [{"lang": "py"}, {"lang": "python"}]}) == []
    assert warned({"$and": [{"lang": "python"}, {"version": 2}]}) == []
    # A value of another JSON type than the field's: it read as "no such value" ("2020" for 2020, 1 for true).
    assert warned({"flag": True}) == [
        "no chunk in 'default' has flag true: flag holds numbers, and true is a boolean (filters compare by type; "
        "write 1)"
    ]
    assert warned({"year": "2020"}) == [
        "no chunk in 'default' has year \"2020\": year holds numbers, and \"2020\" is a string (filters compare by type; "
        "write 2020)"
    ]
    assert warned({"draft": {"$in": [1, "true"]}}) == [
        "no chunk in 'default' has draft 1, \"true\": draft holds booleans, and 1 is a number (filters compare by "
        "type; write true)"
    ]
    [mixed] = warned({"version": "2"})
    assert mixed.endswith("version holds numbers and strings, and \"2\" is a string (filters compare by type; write 2)")
    assert warned({"lang": 1}) == [
        "no chunk in 'default' has lang 1: lang holds strings, and 1 is a number (filters compare by type); its "
        "values there: python, rust"
    ]
    # True and 1 are one value in a Python set: a field holding both must still say it holds both types.
    app.add_documents("default", docs(("c", "a cow in a field", {"mix": True}), ("d", "a hen", {"mix": 1})))
    assert warned({"mix": 2}) == ["no chunk in 'default' has mix 2"]  # (it holds numbers: 2 is just absent)
    assert warned({"mix": "1"}) == [
        "no chunk in 'default' has mix \"1\": mix holds booleans and numbers, and \"1\" is a string (filters compare by "
        "type; write true)"
    ]


def test_an_agents_question_words_are_no_keyword_terms_by_default(rift_factory) -> None:
    """The default stopwords (en_questions) drop what a question says about itself: with bm25s' "en" list the
    document full of "how do I ... my" outranked the one about the question's topic."""
    faq = "How do I do it? I do what I can do. How do you do yours? My way: how I do my own, as you do yours."
    corpus = docs(("faq", faq), ("reset", "Resetting a password: open the account page and choose a new one."))
    query = "how do I reset my password"
    app = rift_factory()
    app.add_documents("default", corpus)
    assert ids(app.search("default", query, mode="keyword").outcome.hits) == ["reset"]
    app.close()
    plain = rift_factory(stopwords="en")  # (the same store, re-tokenized with the old list)
    assert ids(plain.search("default", query, mode="keyword").outcome.hits)[0] == "faq"
    plain.close()


_WORDS = ["alpha", "beta", "gamma", "delta", "epsilon", "zeta", "theta", "kappa", "sigma", "river", "harbour", "lantern"]


def _filler(seed: int, words: int = 400) -> str:
    return " ".join(_WORDS[(seed * 7 + i * i) % len(_WORDS)] + str(i % 50) for i in range(words))


def _fill(app: Any) -> None:
    """A collection of 150 documents of about 3 KB (several MB of state) and a small one to keep."""
    app.add_documents("big", docs(*[(f"b{i}", _filler(i)) for i in range(150)]))
    app.add_documents("keep", docs(("cat", "the cat sat on the mat"), ("long", LONG), ("fish", "a blue fish in the sea")))


def _kept_intact(app: Any) -> None:
    state = index_state(app, "keep")
    assert state["chroma"] == state["keyword"] == state["sqlite"] and len(state["sqlite"]) > 3
    assert ids(app.search("keep", "cat", mode="keyword").outcome.hits) == ["cat"]
    assert ids(app.search("keep", "the cat sat on the mat", k=1, mode="vector").outcome.hits) == ["cat"]
    text, _, n_chunks, _ = app.engine().get_document("keep", "long")
    assert text == LONG and n_chunks > 1


def _given_back(path: Path, full: int) -> None:
    """The closed state file is incremental, mostly live pages, under an eighth of `full`, and intact."""
    mode, pages, free = sqlite_pages(path)
    assert mode == 2 and free < pages / 4 and path.stat().st_size < full / 8
    assert sqlite_rows(path, "PRAGMA integrity_check") == [("ok",)]


def test_deleted_documents_and_collections_give_their_disk_back(rift_factory) -> None:
    """Deleted rows left free pages that SQLite kept for good: adding 1,500 documents and deleting their
    collection left state.sqlite at 31.6 MB with 99.8 % of its pages free (found by helper BA). A new state
    uses incremental auto-vacuum: a large delete gives the pages back, a small one leaves them."""
    app = rift_factory(chunk_tokens=256, chunk_overlap=16)
    path = app.settings.state_db
    _fill(app)
    full = path.stat().st_size
    assert full > 3_000_000
    app.delete_documents("big", ["b0"])  # a small delete: its pages wait for the next write
    assert path.stat().st_size == full
    app.delete_documents("big", [f"b{i}" for i in range(1, 100)])  # two thirds of the file
    assert path.stat().st_size < full * 0.6
    app.delete_collection("big")
    assert path.stat().st_size < full / 8
    _kept_intact(app)
    app.close()
    _given_back(path, full)
    assert sqlite_rows(path, "PRAGMA integrity_check") == [("ok",)]
    _kept_intact(rift_factory(chunk_tokens=256, chunk_overlap=16))


def test_a_state_from_before_auto_vacuum_is_rewritten_once_at_start(rift_factory, caplog, monkeypatch) -> None:
    """A state.sqlite written by an earlier rift (no auto-vacuum) keeps a deleted collection's pages while
    serving; the first start that finds a quarter of it free rewrites it (VACUUM), which also makes it
    incremental. Without the disk for that, the start only warns, and the data is intact either way."""
    import logging
    import shutil
    import sqlite3

    caplog.set_level(logging.INFO, logger="server.engine.sqlite_space")
    app = rift_factory(chunk_tokens=256, chunk_overlap=16)
    path = app.settings.state_db
    _fill(app)
    app.close()
    conn = sqlite3.connect(str(path))
    conn.executescript("PRAGMA auto_vacuum=NONE; VACUUM")  # as an earlier rift made it
    conn.close()
    assert sqlite_pages(path)[0] == 0
    app = rift_factory(chunk_tokens=256, chunk_overlap=16)
    app.delete_collection("big")  # while serving: the file is left as it is
    full = path.stat().st_size
    assert full > 3_000_000
    app.close()
    assert path.stat().st_size == full and sqlite_pages(path)[0] == 0

    with monkeypatch.context() as mp:
        mp.setattr(
            "server.engine.sqlite_space.shutil.disk_usage", lambda _: shutil._ntuple_diskusage(1 << 40, 1 << 40, 1 << 20)
        )
        app = rift_factory(chunk_tokens=256, chunk_overlap=16)
        assert "too little for the VACUUM that gives them back" in caplog.text
        _kept_intact(app)
        app.close()
    assert path.stat().st_size == full and sqlite_pages(path)[0] == 0

    app = rift_factory(chunk_tokens=256, chunk_overlap=16)
    assert "rewriting it once (VACUUM)" in caplog.text
    _kept_intact(app)
    app.add_documents("big", docs(*[(f"b{i}", _filler(i)) for i in range(100)]))
    grown = path.stat().st_size
    app.delete_collection("big")  # now incremental: given back while serving
    assert path.stat().st_size < grown / 4
    _kept_intact(app)
    app.close()
    _given_back(path, full)


def test_an_export_reading_the_state_meanwhile_keeps_its_snapshot(tmp_path: Path) -> None:
    """`rift export` reads state.sqlite read-only, in one snapshot, while a server runs: the start-up VACUUM of
    a state from before auto-vacuum (and any later incremental one) neither waits for it nor changes what it
    reads; the file shrinks once the reader is done."""
    import sqlite3

    from server.engine.state_store import ChunkRow, StateStore
    from server.ingest.jsonl import read_only_state

    path = tmp_path / "state.sqlite"
    store = StateStore(path)
    for name in ("keep", "big"):
        store.put_collection(name, f"chroma_{name}", "m")
        n = 20 if name == "keep" else 1500
        store.apply(
            name,
            [],
            [ChunkRow(f"{name}{i}", f"d{i}", "h", 0, f"text {i} " * 300, ("text",), {}) for i in range(n)],
            put_docs=[(f"d{i}", "h", f"text {i} " * 300, {}) for i in range(n)],
        )
    store.close()
    conn = sqlite3.connect(str(path))
    conn.executescript(  # (as an earlier rift made it, with a deleted collection's pages free)
        "PRAGMA auto_vacuum=NONE; VACUUM; "
        "DELETE FROM chunks WHERE collection = 'big'; DELETE FROM documents WHERE collection = 'big'"
    )
    conn.close()
    full = path.stat().st_size
    reader = read_only_state(path)
    reader.execute("BEGIN")
    before = reader.execute("SELECT doc_id, text FROM documents ORDER BY doc_id").fetchall()
    assert len(before) == 20
    store = StateStore(path)  # rewritten: the reader's snapshot stays in the file and the WAL
    assert reader.execute("SELECT doc_id, text FROM documents ORDER BY doc_id").fetchall() == before
    reader.execute("COMMIT")
    assert reader.execute("SELECT doc_id, text FROM documents ORDER BY doc_id").fetchall() == before
    reader.close()
    assert store.counts("keep") == (20, 20) and store.document("keep", "d7")[1] == "text 7 " * 300
    store.close()
    assert path.stat().st_size < full / 8 and sqlite_pages(path)[0] == 2
    assert sqlite_rows(path, "PRAGMA integrity_check") == [("ok",)]


def _open_files_under(folder: Path) -> list[str]:
    """What this process has open inside `folder` (Linux's /proc; deleted files end in ' (deleted)')."""
    import os

    out = []
    for fd in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):
            target = os.readlink(f"/proc/self/fd/{fd}")
            if target.startswith(str(folder)):
                out.append(target)
    return out


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="counts open files through Linux's /proc")
def test_dropped_collections_leave_no_open_index_files_behind(rift_factory) -> None:
    """Embedded Chroma (1.5.9) keeps a dropped collection's HNSW index cached with its four files open, so
    each model swap or deleted collection held memory (~2.6 MB for a small index, the whole index for a
    large one) and, once rift deleted the folder, disk space hidden from `du`, until the process ended. After
    a drop rift lets go of them (closing and opening the store again); the store keeps serving."""
    rift = rift_factory()
    chroma_dir = rift.settings.chroma_dir.resolve()
    rift.add_documents("keep", docs(("cat", "the cat sat on the mat")))
    for cycle in range(3):
        rift.add_documents("gone", docs(*((f"d{i}", f"note {i} about the river {cycle}") for i in range(20))))
        # (a search loads its index)
        assert rift.search("gone", "note about the river", k=1, mode="vector").outcome.hits
        rift.engine().delete_collection("gone")
    assert [f for f in _open_files_under(chroma_dir) if f.endswith("(deleted)")] == []
    assert ids(rift.search("keep", "the cat sat on the mat", k=1, mode="vector").outcome.hits) == ["cat"]
    rift.add_documents("new", docs(("owl", "an owl hunts at night")))
    assert ids(rift.search("new", "an owl hunts at night", k=1, mode="vector").outcome.hits) == ["owl"]


VECTORS = np.eye(3, dtype=np.float32)


def _store_holding(folder: Path, *names: str) -> Any:
    """An embedded VectorStore in `folder` whose collections `names` hold chunks a, b, c (VECTORS' rows)."""
    from server.engine.vector_store import VectorStore, open_embedded

    store = VectorStore(open_embedded(folder), folder)
    for name in names:
        store.upsert(name, ["a", "b", "c"], VECTORS, ["x", "y", "z"], [{}, {}, {}])
    return store


def test_the_store_is_opened_again_only_once_no_call_is_in_flight(tmp_path: Path) -> None:
    """The release after a drop never closes the client under a call using it, and never makes new calls wait
    for a long one: the call in flight keeps its client, others go on meanwhile, and the last call to leave
    releases it."""
    store = _store_holding(tmp_path / "chroma", "keep-it", "drop-a")
    try:
        first = store.client
        inside, leave = threading.Event(), threading.Event()
        seen: list[Any] = []

        def call_in_flight() -> None:
            with store._using():
                inside.set()
                leave.wait(10)
                seen.append(store.client)  # (not closed under it)

        thread = threading.Thread(target=call_in_flight)
        thread.start()
        assert inside.wait(10)
        store.drop("drop-a")
        assert store.client is first and not store.exists("drop-a")
        # other calls run meanwhile, without waiting for the long one
        assert store.query("keep-it", VECTORS[1], 1)[0][0] == "b" and store.client is first
        leave.set()
        thread.join(10)
        assert seen == [first]
        assert store.client is not first  # the long call was the last to leave: it released the store
        assert store.query("keep-it", VECTORS[0], 1)[0][0] == "a"
        assert store.count("keep-it") == 3 and not store.exists("drop-a")
    finally:
        store.close()


def test_a_store_that_cannot_be_opened_again_says_why_and_still_closes(tmp_path: Path, monkeypatch) -> None:
    """A release whose reopen fails leaves calls saying why (the next one tries again); closing such a store
    raised that reason, and Rift.close then kept the data dir locked."""
    import server.engine.vector_store as vector_store
    from server.engine.vector_store import VectorStore, open_embedded

    folder = tmp_path / "chroma"
    store = _store_holding(folder, "keep-it", "drop-it")

    def no_files(path: Path) -> None:
        raise OSError(24, "Too many open files")

    monkeypatch.setattr(vector_store, "open_embedded", no_files)
    store.drop("drop-it")
    with pytest.raises(RiftError, match="cannot open Chroma's store .* again: .*Too many open files"):
        store.count("keep-it")
    store.close()  # (raised the reason above)
    monkeypatch.undo()
    again = VectorStore(open_embedded(folder), folder)
    try:
        assert again.count("keep-it") == 3 and not again.exists("drop-it")
    finally:
        again.close()


def test_calls_that_never_pause_still_let_a_dropped_index_go(tmp_path: Path, monkeypatch) -> None:
    """The release waits for a moment no call uses the store; calls overlapping without a gap postponed it for
    good (a busy server kept every dropped index). Once it has waited RELEASE_PATIENCE_S, a new call waits for
    those in flight, and the release comes first."""
    import server.engine.vector_store as vector_store

    monkeypatch.setattr(vector_store, "RELEASE_PATIENCE_S", 0.2)
    store = _store_holding(tmp_path / "chroma", "keep-it", "drop-it")
    try:
        first = store.client
        inside, leave = threading.Event(), threading.Event()

        def long_call() -> None:
            with store._using():
                inside.set()
                leave.wait(10)

        thread = threading.Thread(target=long_call)
        thread.start()
        assert inside.wait(10)
        store.drop("drop-it")
        assert store.count("keep-it") == 3 and store.client is first  # not due long yet: no wait
        time.sleep(0.3)
        threading.Timer(0.3, leave.set).start()
        started = time.monotonic()
        assert store.count("keep-it") == 3  # waited for the long call, then the release
        assert time.monotonic() - started >= 0.2 and store.client is not first
        thread.join(10)
    finally:
        store.close()


def test_a_reclaim_that_fails_after_the_commit_leaves_the_write_done(rift_factory, monkeypatch) -> None:
    """Giving free pages back after a delete's commit raised into the write (a close between the two did it:
    helper DA), which the commit then undid in Chroma though SQLite had it: the write reads as failed and the
    stores disagree. It is logged instead; the write stands."""
    from server.engine.state_store import StateStore

    rift = rift_factory()
    rift.add_documents("default", docs(*((f"d{i}", f"note {i} about the harbour") for i in range(6))))

    def closed_meanwhile(self, starting: bool = False) -> None:
        raise sqlite3.ProgrammingError("Cannot operate on a closed database.")

    monkeypatch.setattr(StateStore, "_reclaim", closed_meanwhile)
    deleted, missing = rift.delete_documents("default", ["d0", "d1"])
    assert deleted == ["d0", "d1"] and missing == []
    rift.add_documents("default", docs(("d2", "note 2, rewritten, about the river")))
    state = index_state(rift)
    assert state["sqlite"] == state["chroma"] == state["keyword"] and len(state["sqlite"]) >= 4
    assert "d0" not in {h.doc_id for h in rift.search("default", "note about the harbour", k=10).outcome.hits}


def test_an_upsert_hears_a_stop_after_at_most_a_thousand_rows(tmp_path: Path) -> None:
    """A write is told to stop (rift closing) only between two Chroma upserts; at Chroma's own cap (5,461 rows
    embedded) one took 5-6 s, so a SIGTERM waited for it. Upserts of WRITE_BATCH rows are as fast in all."""
    from server.engine.vector_store import WRITE_BATCH, VectorStore, open_embedded
    from server.errors import ShuttingDown

    store = VectorStore(open_embedded(tmp_path / "chroma"), tmp_path / "chroma")
    try:
        assert store.max_batch > 2 * WRITE_BATCH
        rows = 2 * WRITE_BATCH + 500
        vectors = np.random.default_rng(0).standard_normal((rows, 8)).astype(np.float32)
        ids = [f"c{i}" for i in range(rows)]
        asked: list[int] = []

        def stop() -> bool:
            asked.append(store.count("notes"))
            return len(asked) == 2

        with pytest.raises(ShuttingDown, match=f"stopped after {2 * WRITE_BATCH} of {rows} chunks"):
            store.upsert("notes", ids, vectors, ["x"] * rows, [{}] * rows, stop=stop)
        assert asked == [WRITE_BATCH, 2 * WRITE_BATCH]  # asked between each two upserts, not once per 5,461
        assert store.count("notes") == 2 * WRITE_BATCH
    finally:
        store.close()


def test_a_query_waiting_for_the_model_goes_before_the_next_batch_of_documents(tiny_model_path: Path) -> None:
    """The model runs one encode at a time, behind a lock that is not fair: the thread encoding a long
    add_documents took it back at once after each batch, and a search waited two batches or more (with MiniLM
    on a busy 2-core machine: helper DU). Here the searching thread wakes late, as on a busy CPU (it polls for
    the lock); it still goes right after the batch in hand, where it went after all 10."""
    from server.engine.embedder import Embedder
    from server.engine.models import resolve_model

    embedder = Embedder(resolve_model(str(tiny_model_path)), version="tiny", batch_size=1)  # 4 texts a batch
    order: list[str] = []
    query_waits = threading.Event()
    real_encode = embedder.model.encode

    def encode(texts: list[str], **kwargs: Any) -> Any:
        order.append("query" if texts == ["where"] else "documents")
        if len(order) == 1:  # the first batch holds the model: a search starts, and the batch ends once it waits
            searching.start()
            assert query_waits.wait(10)
        time.sleep(0.02)
        return real_encode(texts, **kwargs)

    class LateWaking:
        """The model's lock; a thread other than the writer's only tries it every 20 ms."""

        def __init__(self) -> None:
            self.inner = threading.Lock()
            self.writer = threading.get_ident()

        def acquire(self) -> bool:
            if threading.get_ident() == self.writer:
                return self.inner.acquire()
            while not self.inner.acquire(blocking=False):
                query_waits.set()
                time.sleep(0.02)
            return True

        def release(self) -> None:
            self.inner.release()

        def __enter__(self) -> None:
            self.acquire()

        def __exit__(self, *exc: object) -> None:
            self.release()

    embedder.model.encode = encode
    embedder._turns.lock = LateWaking()  # type: ignore[assignment]
    searching = threading.Thread(target=lambda: embedder.encode_query("where"))
    vectors = embedder.encode_documents([f"text {n}" for n in range(40)])  # 10 batches
    searching.join(10)
    assert vectors.shape[0] == 40 and not searching.is_alive()
    assert order.index("query") == 1, order  # (was last: after all 10 batches)


def test_a_query_waits_for_one_model_batch_of_documents_not_for_a_progress_step(
    tiny_model_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """add_documents reports progress every 4 model batches, and encoded those 4 in one call holding the model,
    so a search waited for all 4 (about 11 s with MiniLM on a busy 2-core machine). Documents now go to the
    model one batch at a time: a search that waits goes in after the batch in hand, and progress stays per 4."""
    from server.engine import embedder as embedder_module
    from server.engine import model_turns
    from server.engine.models import resolve_model

    monkeypatch.setattr(model_turns, "QUERY_TURN_S", 30.0)  # (so a late-waking search thread still goes)
    embedder = embedder_module.Embedder(resolve_model(str(tiny_model_path)), version="tiny", batch_size=2)
    calls: list[tuple[str, int]] = []
    real_encode = embedder.model.encode

    def encode(texts: list[str], **kwargs: Any) -> Any:
        calls.append(("query" if texts == ["where"] else "documents", len(texts)))
        if len(calls) == 1:  # the first documents hold the model: a search starts and waits for it
            searching.start()
            wait_until(lambda: embedder._turns.queries_waiting == 1, 10, "the search waiting for the model")
        return real_encode(texts, **kwargs)

    monkeypatch.setattr(embedder.model, "encode", encode)
    searching = threading.Thread(target=lambda: embedder.encode_query("where"))
    progress: list[tuple[int, int]] = []
    texts = [f"text number {n} " * (1 + n % 3) for n in range(20)]
    vectors = embedder.encode_documents(texts, lambda done, total: progress.append((done, total)))
    searching.join(10)
    assert not searching.is_alive()
    documents_before = sum(n for _, n in calls[: calls.index(("query", 1))])
    assert documents_before == 2, calls  # one model batch (was 8: a whole progress step)
    assert all(n <= 2 for kind, n in calls if kind == "documents"), calls
    assert progress == [(8, 20), (16, 20), (20, 20)]
    monkeypatch.undo()  # the vectors, in the texts' order, are those of one encode of them all
    whole = embedder.model.encode(texts, prompt="", batch_size=2, normalize_embeddings=True)
    assert np.allclose(vectors, whole, atol=1e-6)
