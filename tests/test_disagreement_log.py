"""The disagreement log: one durable record per hybrid search, with both ranked lists, the overlap and the
blind spots, for a corpus where the two retrievers provably disagree."""

from __future__ import annotations

import json
import shutil
import sqlite3
from pathlib import Path

import pytest

from server.errors import RiftError
from server.learning.disagreement import summarize
from server.learning.query_log import SCHEMA, QueryLog
from tests.support.helpers import docs, make_settings, open_rift, sqlite_pages, sqlite_rows

QUERY = "quantum gluon plasma"
# BERT lower-cases and strips accents, so "vec" embeds exactly like QUERY (cosine 1: vector rank 1), while
# bm25s sees other words ("quántum" is not "quantum"), so "vec" never reaches the keyword list.
VEC = "quántum glúon plásma"
# The only document sharing QUERY's words: keyword rank 1, and its vectors are not identical to the query's.
KW = "gluon plasma measurements at the collider facility and the quantum detector"
FILLERS = [
    "the cat sat on the mat",
    "a blue fish in the sea",
    "bread milk and coffee for breakfast",
    "the old house by the river",
    "python code running on a server",
    "red apple green banana",
]
CORPUS = [("vec", VEC), ("kw", KW), *[(f"f{i}", t) for i, t in enumerate(FILLERS)]]


@pytest.fixture
def logged(tmp_path: Path, tiny_model_path: Path):
    settings = make_settings(tmp_path / "data", tiny_model_path)
    app = open_rift(settings)
    app.add_documents("sci", docs(*CORPUS))
    yield app
    app.close()


def test_record_of_a_query_where_the_retrievers_disagree(logged) -> None:
    response = logged.search("sci", QUERY, k=1)
    assert response.logged and response.query_id
    record = logged.log.get(response.query_id)
    assert record is not None
    assert (record.query, record.collection, record.k) == (QUERY, "sci", 1)
    assert record.model_version == logged.engine().embedder.version == str(logged.settings.model)

    # Vector list: every document (depth 100 > corpus), best first, with ids, chunk ids and cosine scores.
    vector_docs = [d for d, _, _ in record.vector]
    assert sorted(vector_docs) == sorted(d for d, _ in CORPUS)
    assert vector_docs[0] == "vec" and record.vector[0][2] == pytest.approx(1.0, abs=1e-4)
    scores = [s for _, _, s in record.vector]
    assert scores == sorted(scores, reverse=True) and scores[1] < 0.9999
    assert all(c.startswith(f"{d}::") for d, c, _ in record.vector)
    # Keyword list: only "kw" shares the query's words.
    assert [(d, c.split("::")[0]) for d, c, _ in record.keyword] == [("kw", "kw")]
    assert record.keyword[0][2] > 0

    # Blind spots against the k=1 the caller saw: the keyword side never returned "vec" or the fillers, and
    # the vector side's top-1 is not "kw".
    v_top5 = vector_docs[:5]
    assert record.keyword_blind == ["kw"]
    assert record.vector_blind == [d for d in v_top5 if d != "kw"] and record.vector_blind[0] == "vec"
    assert record.overlap == pytest.approx((1 if "kw" in v_top5 else 0) / 5)
    # "kw" is on both lists, "vec" only on one: RRF puts "kw" first.
    assert record.fused == ["kw"] == [h.doc_id for h in response.outcome.hits]

    # The same summary went back to the caller.
    d = response.disagreement
    assert (d.overlap, d.vector_blind_spots, d.keyword_blind_spots) == (
        record.overlap,
        record.vector_blind,
        record.keyword_blind,
    )
    ((mode, filters, top, source),) = sqlite_rows(
        logged.settings.log_db,
        f"SELECT mode, filters, top, source FROM queries WHERE query_id = '{response.query_id}'",
    )
    assert (mode, filters, top, source) == ("hybrid", None, 5, "mcp")
    # Log write time is measured and reported with the search's timings.
    assert response.outcome.timings_ms["log_ms"] >= 0


def test_lists_are_logged_to_the_candidate_depth_and_survive_restart(tmp_path: Path, tiny_model_path) -> None:
    settings = make_settings(tmp_path / "data", tiny_model_path, candidate_depth=3)
    app = open_rift(settings)
    app.add_documents("sci", docs(*CORPUS))
    flt = {"kind": {"$ne": "x"}}
    response = app.search("sci", QUERY, k=2, filters=flt, source="cli")
    app.close()

    log = QueryLog(settings.log_db)  # a fresh connection, as after a restart
    try:
        record = log.get(response.query_id)
        assert record is not None and len(record.vector) == 3 and record.vector[0][0] == "vec"
        assert [d for d, _, _ in record.keyword] == ["kw"]
        assert record.model_version == str(settings.model)
    finally:
        log.close()
    ((filters, source),) = sqlite_rows(
        settings.log_db, f"SELECT filters, source FROM queries WHERE query_id = '{response.query_id}'"
    )
    assert json.loads(filters) == flt and source == "cli"


def test_agreeing_top_hit_has_no_keyword_blind_spot(logged) -> None:
    # The query is f0's exact text: vector rank 1 (cosine 1) and the only keyword match.
    response = logged.search("sci", FILLERS[0], k=1)
    record = logged.log.get(response.query_id)
    vector_docs = [d for d, _, _ in record.vector]
    assert vector_docs[0] == "f0" and [d for d, _, _ in record.keyword] == ["f0"]
    assert record.keyword_blind == [] and record.vector_blind == vector_docs[1:5]
    assert record.overlap == pytest.approx(1 / 5) and record.fused == ["f0"]


def test_only_hybrid_searches_are_logged_and_stats_report_rates(logged) -> None:
    # Before any compared search the means and shares are unknown, not 0.0 ("the two sides never agree").
    empty = logged.stats("sci")["queries"]
    assert empty["logged_queries"] == 0 and empty["mean_top_overlap"] is None
    assert empty["share_with_vector_blind_spots"] is None and empty["mean_keyword_blind_spots"] is None
    logged.search("sci", QUERY, k=1)
    logged.search("sci", QUERY, k=1, mode="vector")
    logged.search("sci", QUERY, k=1, mode="keyword")
    logged.search("sci", "the cat sat on the mat", k=10)
    stats = logged.stats("sci")
    queries = stats["queries"]
    assert queries["logged_queries"] == 2
    assert queries["share_with_keyword_blind_spots"] == pytest.approx(0.5)  # QUERY k=1; k=10 sees all
    assert queries["share_with_vector_blind_spots"] == pytest.approx(1.0)
    assert 0 <= queries["mean_top_overlap"] <= 1
    assert stats["collections"][0]["queries"]["logged_queries"] == 2
    assert stats["logging_enabled"] is True


def test_stats_count_each_collections_feedback_and_a_deleted_collection_leaves_no_log(logged) -> None:
    logged.add_documents("other", docs(("o1", "the cat sat on the mat")))
    sci = logged.search("sci", QUERY)
    other = logged.search("other", "cat mat")
    logged.log.add_feedback(sci.query_id, "kw", True)
    logged.log.record_fetch(sci.query_id, "kw")
    assert logged.stats("sci")["queries"]["feedback_labels"] == 1
    assert logged.stats("other")["queries"]["feedback_labels"] == 0
    logged.delete_collection("sci")
    assert logged.log.get(sci.query_id) is None and logged.log.fetches(sci.query_id) == []
    assert logged.log.feedback_map() == {}
    assert logged.log.get(other.query_id) is not None
    assert logged.stats()["queries"]["logged_queries"] == 1


def test_a_search_still_running_when_its_collection_is_deleted_is_not_logged(logged, monkeypatch) -> None:
    engine = logged.engine()
    real = engine.search

    def deleted_meanwhile(collection, *args, **kwargs):
        outcome = real(collection, *args, **kwargs)
        logged.delete_collection(collection)  # between the search and its log record
        return outcome

    monkeypatch.setattr(engine, "search", deleted_meanwhile)
    response = logged.search("sci", QUERY)
    assert response.outcome.hits and not response.logged and response.query_id is None
    monkeypatch.undo()
    assert logged.stats()["queries"]["logged_queries"] == 0
    # A new collection of the same name logs again; a failed deletion forgets nothing.
    logged.add_documents("sci", docs(*CORPUS))
    again = logged.search("sci", QUERY)
    assert again.logged and logged.log.get(again.query_id) is not None
    with pytest.raises(RuntimeError), logged.log.forgetting("sci"):
        raise RuntimeError("the deletion failed")
    assert logged.log.get(again.query_id) is not None and logged.search("sci", QUERY).logged


def test_logging_can_be_turned_off(tmp_path: Path, tiny_model_path: Path) -> None:
    settings = make_settings(tmp_path / "data", tiny_model_path, log_queries=False)
    app = open_rift(settings)
    try:
        app.add_documents("sci", docs(*CORPUS))
        response = app.search("sci", QUERY, k=1)
        assert not response.logged and response.query_id is None
        assert response.disagreement is not None  # still summarised for the caller
        assert "log_ms" not in response.outcome.timings_ms
        stats = app.stats()
        assert stats["logging_enabled"] is False and stats["queries"]["logged_queries"] == 0
        with pytest.raises(RiftError, match="feedback needs the query log, and it is off"):
            app.learning.feedback("abc", "cat", True)  # names the setting, not an "unknown query_id"
    finally:
        app.close()
    assert sqlite_rows(settings.log_db, "SELECT COUNT(*) FROM queries") == [(0,)]


def test_summarize_compares_top_with_the_other_sides_top_k() -> None:
    d = summarize(["a", "b", "c", "d", "e", "f"], ["c", "x", "a", "y"], k=2, top=5)
    assert d.top == 5
    assert d.overlap == pytest.approx(2 / 5)  # {a, c}
    assert d.vector_blind_spots == ["a", "b", "d", "e"]  # not in keyword top-2 (c, x)
    assert d.keyword_blind_spots == ["c", "x", "y"]  # not in vector top-2 (a, b)
    small = summarize(["a", "b"], ["b", "a"], k=10)
    assert small.overlap == 1.0 and small.vector_blind_spots == small.keyword_blind_spots == []
    assert summarize([], [], k=3).overlap == 0.0


def test_chunk_level_search_summarises_per_document(tmp_path: Path, tiny_model_path: Path) -> None:
    settings = make_settings(tmp_path / "data", tiny_model_path)
    app = open_rift(settings)
    try:
        long = " ".join(f"Gluon plasma note {i} from the collider." for i in range(20))
        app.add_documents("sci", docs(("long", long), *CORPUS))
        response = app.search("sci", QUERY, k=3, group_by_document=False)
        assert len({c.chunk_id for c in response.outcome.keyword}) > 2  # chunks of "long" and "kw"
        d = response.disagreement
        for spots in (d.vector_blind_spots, d.keyword_blind_spots):
            assert len(spots) == len(set(spots))
        # The log holds document rankings too (mining reads ranks as document ranks), each document once.
        logged = app.log.get(response.query_id)
        for ranked in ([d for d, _c, _s in logged.vector], [d for d, _c, _s in logged.keyword], logged.fused):
            assert ranked and len(ranked) == len(set(ranked))
        assert logged.fused == list(dict.fromkeys(h.doc_id for h in response.outcome.hits))
    finally:
        app.close()


def _record(log: QueryLog, query_id: str) -> None:
    vector = [("a", "a::h::0", 0.9), ("b", "b::h::0", 0.5)]
    keyword = [("b", "b::h::0", 7.0)]
    log.record(
        query_id,
        "q " + query_id,
        "c",
        "m",
        "hybrid",
        10,
        None,
        vector,
        keyword,
        ["b", "a"],
        5,
        0.5,
        ["a"],
        [],
    )


def test_records_are_readable_and_bounded_when_the_writer_thread_falls_behind(
    tmp_path: Path, monkeypatch
) -> None:
    """The writer runs at idle priority, so a busy CPU can starve it: a reader then writes the pending records
    itself, and a search does so once MAX_PENDING wait, so nothing is lost and memory stays bounded."""
    import server.learning.query_log as query_log

    log = QueryLog(tmp_path / "log.sqlite")
    with log._cond:  # stop the writer thread, as if starved for good
        log._closed = True
        log._cond.notify_all()
    log._writer.join(timeout=10)
    assert not log._writer.is_alive()
    monkeypatch.setattr(query_log, "MAX_PENDING", 3)
    for i in range(5):
        _record(log, f"id{i}")
    # The third record wrote the first three from the search's own thread; two still wait.
    assert sqlite_rows(tmp_path / "log.sqlite", "SELECT COUNT(*) FROM queries") == [(3,)]
    assert len(log._pending) == 2
    got = log.get("id4")  # a read writes what is pending first
    assert got is not None and got.vector == [("a", "a::h::0", 0.9), ("b", "b::h::0", 0.5)]
    assert [q.query_id for q in log.iter_queries("c")] == [f"id{i}" for i in range(5)]
    log.close()


def test_candidate_lists_in_the_older_layout_are_still_read(tmp_path: Path) -> None:
    log = QueryLog(tmp_path / "log.sqlite")
    _record(log, "new")
    log.flush()
    with log._lock:  # rewrite the lists as older versions stored them: one [doc, chunk, score] list each
        log._conn.execute(
            "UPDATE queries SET vector = ?, keyword = ? WHERE query_id = 'new'",
            (json.dumps([["a", "a::h::0", 0.9], ["b", "b::h::0", 0.5]]), json.dumps([["b", "b::h::0", 7.0]])),
        )
    got = log.get("new")
    assert got is not None
    assert got.vector == [("a", "a::h::0", 0.9), ("b", "b::h::0", 0.5)]
    assert got.keyword == [("b", "b::h::0", 7.0)]
    log.close()


def test_a_query_without_keyword_terms_is_not_counted_as_disagreement(logged) -> None:
    logged.search("sci", QUERY, k=10)  # both sides search: compared
    none = logged.search("sci", "the and of it", k=10)  # stopwords only: the keyword side has no terms
    assert none.outcome.keyword == [] and none.outcome.keyword_terms == 0
    d = none.disagreement
    assert not d.compared and d.vector_blind_spots == [] and d.keyword_blind_spots == []
    assert none.logged and none.outcome.hits  # still answered (by the vector side) and logged
    # Words no document holds: the keyword side did search and found nothing, a real disagreement.
    unmatched = logged.search("sci", "zyxwv qwerty", k=10)
    assert unmatched.disagreement.compared and unmatched.disagreement.vector_blind_spots
    queries = logged.stats("sci")["queries"]
    assert queries["logged_queries"] == 3 and queries["queries_without_keyword_terms"] == 1
    # Both compared searches have vector blind spots; counting the third would read 2/3.
    assert queries["share_with_vector_blind_spots"] == pytest.approx(1.0)
    # A filter no document matches: neither side found anything, so nothing disagreed either.
    empty = logged.search("sci", QUERY, k=10, filters={"no_such_field": "x"})
    assert empty.outcome.hits == [] and not empty.disagreement.compared and empty.logged
    queries = logged.stats("sci")["queries"]
    assert queries["queries_not_compared"] == 2 and queries["queries_without_keyword_terms"] == 1
    assert queries["mean_top_overlap"] == logged.stats("sci")["queries"]["mean_top_overlap"] > 0


def test_a_log_from_before_the_compared_column_opens_and_counts_its_rows_as_compared(tmp_path: Path) -> None:
    path = tmp_path / "log.sqlite"
    conn = sqlite3.connect(path)
    old = [line for line in SCHEMA.splitlines() if not line.strip().startswith("compared ")]
    conn.executescript("\n".join(old).replace("DEFAULT 'mcp',\n);", "DEFAULT 'mcp'\n);"))
    conn.execute(
        "INSERT INTO queries VALUES ('q1', 1.0, 'x', 'c', 'm', 'hybrid', 5, NULL, '[]', '[]', '[]', 5, 0.4, "
        "'[\"a\"]', '[]', 'mcp')"
    )
    conn.commit()
    conn.close()
    log = QueryLog(path)
    try:
        log.record("q2", "y", "c", "m", "hybrid", 5, None, [], [], [], 5, 0.0, [], [], compared=False)
        assert log.get("q1").overlap == pytest.approx(0.4) and log.get("q2") is not None
        stats = log.stats("c")
        assert stats["logged_queries"] == 2 and stats["queries_not_compared"] == 1
        assert stats["mean_top_overlap"] == pytest.approx(0.4)
        assert stats["share_with_vector_blind_spots"] == pytest.approx(1.0)
    finally:
        log.close()


def test_the_log_keeps_the_newest_searches_and_those_with_feedback(tmp_path: Path) -> None:
    """log_max_queries bounds the log (each search stores both candidate lists): the oldest searches go with
    their fetches, once the log is 2 % over; a search an agent judged goes last."""
    log = QueryLog(tmp_path / "log.sqlite", max_queries=50)
    _record(log, "judged")
    log.add_feedback("judged", "a", True)
    _record(log, "read")
    log.record_fetch("read", "a")
    for i in range(100):
        _record(log, f"id{i:03d}")
    log.flush()
    kept = [q.query_id for q in log.iter_queries()]
    assert 50 <= len(kept) <= 51 and kept[0] == "judged" and kept[-1] == "id099"
    assert "read" not in kept and log.fetches() == [] and log.feedback_map() == {"judged": {"a": True}}
    log.close()
    again = QueryLog(tmp_path / "log.sqlite", max_queries=10)  # a lower limit applies at the next start
    assert [q.query_id for q in again.iter_queries()] == ["judged", *(f"id{i:03d}" for i in range(91, 100))]
    again.close()


def test_judged_searches_never_crowd_out_new_ones_and_a_stale_count_drops_nothing(tmp_path: Path) -> None:
    """Judged searches go last only while they fill at most half the log: a log full of them dropped every new
    search at once (its feedback call then failed). A row count gone stale (a collection's searches forgotten
    meanwhile) once made the prune's LIMIT negative, which SQLite reads as no limit: the whole log went."""
    log = QueryLog(tmp_path / "log.sqlite", max_queries=10)
    for i in range(10):
        _record(log, f"judged{i}")
        log.add_feedback(f"judged{i}", "a", True)
    for i in range(8):
        _record(log, f"fresh{i}")
        log.flush()
        assert log.get(f"fresh{i}") is not None
    kept = [q.query_id for q in log.iter_queries()]  # judged ones keep half the log, the newest the rest
    assert kept == [*(f"judged{i}" for i in range(5, 10)), *(f"fresh{i}" for i in range(3, 8))]
    with log._lock:
        log._rows = 1_000  # as if another thread's delete had not been counted yet
    log._keep_within_limit()
    assert [q.query_id for q in log.iter_queries()] == kept
    log.close()


def test_chunk_ids_are_stored_once_and_read_back_whole(tmp_path: Path) -> None:
    """A chunk id repeats its document's id ("doc::hash::i"); only the rest is stored. A list whose chunk ids
    do not follow that shape is stored whole."""
    log = QueryLog(tmp_path / "log.sqlite")
    path_id = "/home/user/notes/projects/2026/very-long-folder-name/meeting-notes.md"
    log.record(
        "q1", "text", "c", "base", "hybrid", 10, None,
        [(path_id, f"{path_id}::0123456789abcdef::0", 0.9), ("b", "b::h::1", 0.5)],
        [("odd", "not-shaped", 7.0)],
        [path_id], 5, 0.2, [], [],
    )  # fmt: skip
    log.flush()
    raw = sqlite_rows(tmp_path / "log.sqlite", "SELECT vector, keyword FROM queries")[0]
    assert raw[0].count(path_id) == 1 and '"c"' in raw[1]
    got = log.get("q1")
    assert got is not None
    assert got.vector == [(path_id, f"{path_id}::0123456789abcdef::0", 0.9), ("b", "b::h::1", 0.5)]
    assert got.keyword == [("odd", "not-shaped", 7.0)]
    log.close()


def _record_large(log: QueryLog, query_id: str, collection: str = "c") -> None:
    """A search whose candidate lists name 200 documents by path (about 20 KB a record, as in real use)."""
    found = [(f"/home/u/notes/doc{i}.md", f"/home/u/notes/doc{i}.md::abcdef0123456789::0", 0.5) for i in range(200)]
    log.record(query_id, f"query {query_id}", collection, "m", "hybrid", 10, None, found, found, ["a"], 5, 0.2, [], [])


def test_the_log_gives_deleted_searches_disk_back(tmp_path: Path, caplog) -> None:
    """Pruning to a lower log_max_queries or forgetting a deleted collection's searches freed pages that SQLite
    kept for good: a 45 MB log with 99.9 % of its pages free stayed 45 MB (found by helper AZ). A new log uses
    incremental auto-vacuum; an older one is rewritten (VACUUM) at a start that finds most of it free, unless
    the disk lacks the room, which is logged and never fatal."""
    path = tmp_path / "log.sqlite"
    log = QueryLog(path)
    for i in range(300):
        _record_large(log, f"q{i}", "c" if i < 200 else "d")
    log.close()
    full = path.stat().st_size
    assert full > 6_000_000 and sqlite_pages(path)[0] == 2  # (2: incremental)
    log = QueryLog(path, max_queries=150)  # a lower limit, at the next start
    assert log.count() == 150 and path.stat().st_size < full * 0.6
    log.forget_collection("d")  # the 100 searches of a deleted collection, while serving
    assert log.count() == 50 and path.stat().st_size < full / 4
    log.close()
    assert path.stat().st_size < full / 4 and sqlite_pages(path)[2] < 50

    # A log from before auto-vacuum (its tables made without it): the first start that finds most of it free
    # rewrites it, which also converts it; one without the disk for that goes on as it was.
    old = tmp_path / "old.sqlite"
    conn = sqlite3.connect(str(old))
    conn.executescript(SCHEMA)
    conn.close()
    log = QueryLog(old)
    for i in range(150):
        _record_large(log, f"q{i}")
    log.close()
    assert sqlite_pages(old)[0] == 0
    full = old.stat().st_size
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(
            "server.engine.sqlite_space.shutil.disk_usage", lambda _: shutil._ntuple_diskusage(1 << 40, 1 << 40, 1 << 20)
        )
        log = QueryLog(old, max_queries=10)
        assert log.count() == 10
        log.close()
    assert "too little for the VACUUM" in caplog.text and old.stat().st_size == full and sqlite_pages(old)[0] == 0
    log = QueryLog(old, max_queries=10)
    assert log.count() == 10 and [q.query_id for q in log.iter_queries()][-1] == "q149"
    log.close()
    assert old.stat().st_size < full / 8 and sqlite_pages(old)[0] == 2


def test_a_search_that_left_the_log_is_named_as_such_and_its_document_still_read(
    tmp_path: Path, tiny_model_path: Path
) -> None:
    """A search pruned past log_max_queries, or whose collection was deleted and made again, was reported as an
    'unknown query_id' that no hybrid_search returned, and get_document with it refused to return the document
    (found by helper AZ): feedback now says the search left the log, and get_document returns the document
    with a warning instead of recording the read."""
    from server.errors import NotFoundError
    from server.ingest.manage import get_document

    app = open_rift(make_settings(tmp_path / "data", tiny_model_path, log_max_queries=10))
    try:
        app.add_documents("sci", docs(*CORPUS))
        first = app.search("sci", QUERY, k=1)
        for i in range(12):
            app.search("sci", f"{FILLERS[i % len(FILLERS)]} {i}")
        assert app.log.get(first.query_id) is None  # pruned
        with pytest.raises(NotFoundError) as refused:
            app.learning.feedback(first.query_id, "kw", True)
        message = str(refused.value)
        assert "is not in the query log" in message and "newest 10 searches (log_max_queries)" in message
        assert "nothing was recorded" in message and "unknown query_id" not in message
        view = get_document(app, "sci", "kw", first.query_id)
        assert view.text == KW and not view.fetch_recorded
        assert len(view.warnings) == 1 and "is not in the query log" in view.warnings[0]

        # Deleted and made again: the search went with the collection.
        again = app.search("sci", QUERY, k=1)
        app.delete_collection("sci")
        app.add_documents("sci", docs(*CORPUS))
        view = get_document(app, "sci", "kw", again.query_id)
        assert view.text == KW and not view.fetch_recorded and "deleted collection" in view.warnings[0]
        assert app.log.fetches() == []
        with pytest.raises(RiftError, match="not one hybrid_search returns"):
            get_document(app, "sci", "kw", "kw")  # a doc_id passed as the query_id
    finally:
        app.close()
