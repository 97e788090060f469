"""Chroma and the keyword side stay consistent across failures: a write that fails is undone at once, a
process killed between the Chroma write and the SQLite commit is repaired at start-up (journal roll-back or
roll-forward), and a lost or damaged state database is rebuilt from Chroma's stored chunks."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from server.config import Settings
from server.engine.state_store import StateStore
from server.errors import RiftError
from server.ingest.security import PathPolicy
from server.ingest.sync import sync_paths
from server.service import Rift
from tests.support.helpers import docs, ids, index_state, make_settings, open_rift, sqlite_rows, write_notes

OLD = " ".join(f"Line {i}: the old river report mentions gravel and sand." for i in range(12))
NEW = "the new report is about snow on the mountain"


@pytest.fixture
def cfg(tmp_path: Path, tiny_model_path: Path) -> Settings:
    return make_settings(tmp_path / "data", tiny_model_path)


def seed(settings: Settings) -> dict[str, set[str]]:
    app = open_rift(settings)
    try:
        app.add_documents("default", docs(("doc", OLD), ("other", "a blue fish in the sea")))
        return index_state(app)
    finally:
        app.close()


def consistent(state: dict[str, set[str]]) -> set[str]:
    assert state["chroma"] == state["keyword"] == state["sqlite"]
    return state["chroma"]


def lose_state_db(cfg: Settings) -> None:
    """Delete rift's state database (and its WAL files), as a lost or damaged one would be moved aside."""
    for suffix in ("", "-wal", "-shm"):
        cfg.state_db.with_name(cfg.state_db.name + suffix).unlink(missing_ok=True)


def test_closing_waits_for_a_write_in_flight(cfg: Settings, monkeypatch) -> None:
    """A SIGTERM mid-call closes rift while a worker thread writes: the write finishes before the state
    database closes (it closed under the commit, losing the write with a traceback on stderr)."""
    import threading
    import time

    seed(cfg)
    app = open_rift(cfg)
    real = StateStore.apply
    committing = threading.Event()

    def slow(self: StateStore, *args: Any, **kwargs: Any) -> Any:
        committing.set()
        time.sleep(0.5)
        return real(self, *args, **kwargs)

    monkeypatch.setattr(StateStore, "apply", slow)
    results: list[Any] = []
    writer = threading.Thread(
        target=lambda: results.append(app.add_documents("default", docs(("third", "brand new doc"))))
    )
    writer.start()
    assert committing.wait(30)
    app.close()
    writer.join(30)
    monkeypatch.undo()
    assert [s.status for s in results[0]] == ["added"]
    again = open_rift(cfg)
    try:
        assert again.repair_report["journal"] == 0
        assert ids(again.search("default", "brand new doc", k=1, mode="keyword").outcome.hits) == ["third"]
        consistent(index_state(again))
    finally:
        again.close()

def _close_mid_write(app: Rift, write: Any, started: Any) -> Any:
    """Run `write` in a worker thread and close `app` (here, on the main thread: the SIGTERM handler's wait)
    once `started` is set; the write's result or exception."""
    import threading

    out: list[Any] = []

    def run() -> None:
        try:
            out.append(write())
        except Exception as exc:
            out.append(exc)

    writer = threading.Thread(target=run)
    writer.start()
    assert started.wait(30)
    app.close()
    writer.join(30)
    assert not writer.is_alive()
    return out[0]


def _tracebacks(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.exc_info]


def test_a_write_in_flight_at_close_stops_at_a_safe_point(cfg: Settings, monkeypatch, caplog) -> None:
    """A close (SIGTERM, Ctrl-C, stdin's EOF, Rift.close) while a write embeds: the write stops between two
    embedding batches, says so in one line and stores nothing. It ran on past the close's wait instead and met
    the closed stores: sqlite3's 'Cannot operate on a closed database' or chromadb's AttributeError to the
    caller, with tracebacks in the log, and an empty collection left behind."""
    import threading
    import time

    import numpy as np

    from server.engine.embedder import Embedder
    from server.errors import ShuttingDown

    seed(cfg)
    app = open_rift(cfg)
    embedding = threading.Event()

    def slow(self: Embedder, texts: Any, progress: Any = None) -> Any:  # 10 batches of 0.3 s
        for done in range(1, 11):
            embedding.set()
            time.sleep(0.3)
            if progress is not None:
                progress(done * len(texts) // 10, len(texts))
        return np.ones((len(texts), self.dimension), dtype=np.float32)

    monkeypatch.setattr(Embedder, "encode_documents", slow)
    new = docs(*[(f"n{i}", f"note {i} about the harbour") for i in range(20)])
    result = _close_mid_write(app, lambda: app.add_documents("fresh", new), embedding)
    monkeypatch.undo()
    assert isinstance(result, ShuttingDown), repr(result)
    assert "nothing of it is stored" in str(result) or "before storing anything" in str(result)
    assert _tracebacks(caplog) == []
    again = open_rift(cfg)
    try:
        assert again.repair_report["journal"] == 0  # stopped before it wrote anything
        assert "fresh" not in again.engine().collection_names()  # (the write made it: it goes too)
        consistent(index_state(again))
    finally:
        again.close()


def test_a_close_that_cannot_wait_for_a_commit_leaves_one_line_and_a_consistent_store(
    cfg: Settings, monkeypatch, caplog
) -> None:
    """A commit whose Chroma upsert outlasts the close's wait (1 s in a SIGTERM handler) has its stores closed
    under it: the caller gets ShuttingDown and the log one line, not chromadb's AttributeError and the chained
    tracebacks of a failed rollback; the next start removes what it put into Chroma."""
    import threading
    import time

    from server.engine.vector_store import VectorStore
    from server.errors import ShuttingDown

    before = seed(cfg)
    app = open_rift(cfg)
    real = VectorStore.upsert
    upserting = threading.Event()

    def slow(self: VectorStore, *args: Any, **kwargs: Any) -> Any:
        upserting.set()
        time.sleep(1.5)
        return real(self, *args, **kwargs)

    monkeypatch.setattr(VectorStore, "upsert", slow)
    result = _close_mid_write(app, lambda: app.add_documents("default", docs(("third", "brand new doc"))), upserting)
    monkeypatch.undo()
    assert isinstance(result, ShuttingDown), repr(result)
    assert _tracebacks(caplog) == []
    assert any("next start removes" in r.getMessage() for r in caplog.records)
    again = open_rift(cfg)
    try:
        assert again.repair_report["journal"] == 1
        assert consistent(index_state(again)) == consistent(before)
    finally:
        again.close()


def test_failed_sqlite_commit_is_rolled_back_at_once(cfg: Settings, monkeypatch) -> None:
    before = seed(cfg)
    app = open_rift(cfg)
    try:
        stats = app.stats()

        def broken(*_args, **_kwargs):
            raise RuntimeError("disk full")

        monkeypatch.setattr(StateStore, "apply", broken)
        with pytest.raises(RuntimeError, match="disk full"):
            app.add_documents("default", docs(("doc", NEW), ("third", "brand new doc")))
        monkeypatch.undo()
        assert index_state(app) == before
        assert app.engine().state.journal_pending() == []
        assert app.stats()["collections"] == stats["collections"]
        assert ids(app.search("default", "gravel sand", mode="keyword").outcome.hits) == ["doc"]
        assert app.search("default", "snow mountain", mode="keyword").outcome.hits == []
    finally:
        app.close()


CRASH = """
import os, sys
from server.config import Settings
from server.engine.engine import DocumentInput
from server.service import Rift
import server.engine.state_store as state_store
import server.engine.vector_store as vector_store

settings = Settings(data_dir=sys.argv[1], model=sys.argv[2], chunk_tokens=48, chunk_overlap=8)
app = Rift(settings).start(background=False)
where = sys.argv[3]
if where == "before-commit":      # Chroma has the new chunks, SQLite never committed
    state_store.StateStore.apply = lambda *a, **k: os._exit(17)
else:                              # SQLite committed, the replaced chunks are still in Chroma
    vector_store.VectorStore.delete = lambda *a, **k: os._exit(17)
app.add_documents("default", [DocumentInput(text={new!r}, id="doc")])
"""


def crash_during_update(settings: Settings, where: str) -> None:
    script = textwrap.dedent(CRASH.format(new=NEW))
    proc = subprocess.run(
        [sys.executable, "-c", script, str(settings.data_dir), settings.model, where],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=Path(__file__).resolve().parents[1],
    )
    assert proc.returncode == 17, proc.stderr[-2000:]


@pytest.mark.parametrize("where", ["before-commit", "after-commit"])
def test_killed_mid_write_is_repaired_at_start_up(cfg: Settings, where: str) -> None:
    before = seed(cfg)
    crash_during_update(cfg, where)
    (pending,) = sqlite_rows(cfg.state_db, "SELECT phase FROM journal")
    assert pending[0] == ("write-new" if where == "before-commit" else "delete-old")

    app = open_rift(cfg)
    try:
        assert app.repair_report["journal"] == 1
        assert app.engine().state.journal_pending() == []
        chunks = consistent(index_state(app))
        doc_chunks = {c for c in chunks if c.startswith("doc::")}
        text, _, _, _ = app.engine().get_document("default", "doc")
        if where == "before-commit":  # rolled back: the old version, whole
            assert chunks == before["chroma"] and text == OLD
            assert ids(app.search("default", "gravel sand", mode="keyword").outcome.hits) == ["doc"]
            assert app.search("default", "snow mountain", mode="keyword").outcome.hits == []
        else:  # rolled forward: only the new version
            assert len(doc_chunks) == 1 and not doc_chunks & before["chroma"] and text == NEW
            assert ids(app.search("default", "snow mountain", mode="keyword").outcome.hits) == ["doc"]
            assert app.search("default", "gravel sand", mode="keyword").outcome.hits == []
        assert ids(app.search("default", "fish sea", mode="hybrid", k=1).outcome.hits) == ["other"]
    finally:
        app.close()


FIRST_WRITE_CRASH = """
import os, sys
from server.config import Settings
from server.engine.engine import DocumentInput, Engine
from server.engine.state_store import StateStore
from server.engine.vector_store import VectorStore
from server.ingest.security import PathPolicy
from server.ingest.sync import sync_paths
from server.service import Rift

settings = Settings(data_dir=sys.argv[1], model=sys.argv[2], chunk_tokens=48, chunk_overlap=8)
app = Rift(settings).start(background=False)
where, how = sys.argv[3], sys.argv[4]
die = lambda *a, **k: os._exit(17)
if where == "made-in-chroma":   # the Chroma collection is made; the state has no row for it yet
    StateStore.put_collection = die
elif where == "embedding":      # the collection is made; its first documents are being embedded
    Engine._embed_reusing = die
elif where == "before-commit":  # Chroma has the new chunks; SQLite never committed them
    StateStore.apply = die
else:                           # "after-commit": SQLite committed; the cleanup after it never ran
    VectorStore.delete = die
if how == "add":
    app.add_documents("fresh", [DocumentInput(text="the heron nests by the reservoir", id="n1")])
else:
    sync_paths(app.engine(), "fresh", [sys.argv[5]], PathPolicy.unrestricted())
"""


def crash_first_write(settings: Settings, where: str, how: str, folder: Path) -> None:
    """Kill a process during the first write to collection "fresh", which that write creates."""
    proc = subprocess.run(
        [sys.executable, "-c", FIRST_WRITE_CRASH, str(settings.data_dir), settings.model, where, how, str(folder)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=Path(__file__).resolve().parents[1],
    )
    assert proc.returncode == 17, proc.stderr[-2000:]


def chroma_names_of(app: Rift, collection: str) -> list[str]:
    return [n for n, _ in app.engine().vectors.list_collections() if n.startswith(f"rift-{collection}-")]


@pytest.mark.parametrize("how", ["add", "sync"])
@pytest.mark.parametrize("where", ["made-in-chroma", "embedding", "before-commit"])
def test_a_collection_made_by_a_write_killed_before_its_commit_is_gone_at_the_next_start(
    cfg: Settings, tmp_path: Path, where: str, how: str
) -> None:
    """A write (add_documents, a file sync) into a collection that does not exist creates it; killed before it
    committed anything, the next start showed an empty collection nobody asked for (or adopted its empty Chroma
    collection). It is removed whole: state row, Chroma collection, chunking setting."""
    before = seed(cfg)
    crash_first_write(cfg, where, how, write_notes(tmp_path / "notes", 2))
    app = open_rift(cfg)
    try:
        engine = app.engine()
        assert engine.collection_names() == ["default"] and chroma_names_of(app, "fresh") == []
        assert engine.state.setting("chunking:fresh") is None
        assert app.repair_report["adopted_from_chroma"] == []
        assert consistent(index_state(app)) == before["chroma"]
        assert engine.state.setting_keys("created_by_write:") == []
        (status,) = app.add_documents("fresh", docs(("n1", "the heron nests by the reservoir")))
        assert status.status == "added"
        assert ids(app.search("fresh", "heron reservoir", mode="keyword").outcome.hits) == ["n1"]
    finally:
        app.close()
    app = open_rift(cfg)  # committed: it stays
    try:
        assert app.engine().collection_names() == ["default", "fresh"]
    finally:
        app.close()


@pytest.mark.parametrize("how", ["add", "sync"])
def test_a_collection_whose_first_write_committed_stays_after_a_kill(
    cfg: Settings, tmp_path: Path, how: str
) -> None:
    seed(cfg)
    crash_first_write(cfg, "after-commit", how, write_notes(tmp_path / "notes", 2))
    app = open_rift(cfg)
    try:
        assert app.engine().collection_names() == ["default", "fresh"]
        assert app.stats("fresh")["collections"][0]["documents"] == (1 if how == "add" else 2)
        assert app.engine().state.setting_keys("created_by_write:") == []
    finally:
        app.close()


def test_an_explicitly_created_empty_collection_stays(cfg: Settings, tmp_path: Path) -> None:
    """Empty collections made on purpose stay: by create_collection, by a later create_collection of one a
    write made (it was marked as made by that write), and by a file sync that finished with nothing to store."""
    seed(cfg)
    app = open_rift(cfg)
    try:
        engine = app.engine()
        assert engine.create_collection("asked")
        assert engine.create_collection("adopted", implicit=True)
        assert not engine.create_collection("adopted")  # asked for now: no longer the write's
        assert engine.create_collection("unfinished", implicit=True)  # as a write killed after it leaves it
        empty = tmp_path / "empty"
        empty.mkdir()
        sync_paths(engine, "synced", [str(empty)], PathPolicy.unrestricted())
        assert engine.collection_names() == ["adopted", "asked", "default", "synced", "unfinished"]
    finally:
        app.close()
    app = open_rift(cfg)
    try:
        assert app.engine().collection_names() == ["adopted", "asked", "default", "synced"]
        assert chroma_names_of(app, "unfinished") == []
    finally:
        app.close()


def test_a_marked_collection_holding_documents_is_never_dropped(cfg: Settings) -> None:
    """The start-up drop removes only what holds nothing: a marked collection with a document stays (and loses
    its mark), whatever left the mark behind."""
    seed(cfg)
    app = open_rift(cfg)
    try:
        app.engine().state.put_setting("created_by_write:default", "1")
    finally:
        app.close()
    app = open_rift(cfg)
    try:
        assert app.engine().collection_names() == ["default"]
        assert app.stats("default")["collections"][0]["documents"] == 2
        assert app.engine().state.setting_keys("created_by_write:") == []
    finally:
        app.close()


def sync_meanwhile(monkeypatch, what: Callable[[], None]) -> None:
    """Makes a file sync run `what` (another caller's call, as from a second thread) when its first batch is
    about to be written, then fail as a full disk would, before committing anything."""
    import server.ingest.sync as sync

    real = sync._Sync.flush

    def flush(run: Any) -> None:
        if run.batch:
            what()
            raise OSError(28, "No space left on device")
        real(run)

    monkeypatch.setattr(sync._Sync, "flush", flush)


@pytest.mark.parametrize("how", ["asked", "deleted-and-asked"])
def test_a_failed_sync_never_drops_a_collection_asked_for_while_it_ran(
    cfg: Settings, tmp_path: Path, monkeypatch, how: str
) -> None:
    """A sync (not under the write lock: it reads files between its batches) made collection "fresh"; while it
    ran the user asked for "fresh" (create_collection said it exists), or deleted and made it again; the sync
    then failed before its commit. Its clean-up dropped the empty collection the user had asked for: it only
    drops one that is still the write's."""
    app = open_rift(cfg)
    try:
        engine = app.engine()

        def ask() -> None:
            if how == "deleted-and-asked":
                app.delete_collection("fresh")
                assert engine.create_collection("fresh")
            else:
                assert not engine.create_collection("fresh")

        sync_meanwhile(monkeypatch, ask)
        with pytest.raises(OSError):
            sync_paths(engine, "fresh", [str(write_notes(tmp_path / "notes", 2))], PathPolicy.unrestricted())
        assert "fresh" in engine.collection_names()
    finally:
        app.close()
    app = open_rift(cfg)
    try:
        assert "fresh" in app.engine().collection_names()
    finally:
        app.close()


SYNC_KILLED_AFTER_ANOTHER_FINISHED = """
import os, sys
from typing import Any
import server.ingest.sync as sync
from server.config import Settings
from server.ingest.security import PathPolicy
from server.ingest.sync import sync_paths
from server.service import Rift

settings = Settings(data_dir=sys.argv[1], model=sys.argv[2], chunk_tokens=48, chunk_overlap=8)
app = Rift(settings).start(background=False)
real = sync._Sync.flush

def flush(run: Any) -> None:
    if run.batch:  # sync A reads its files; another caller's sync of an empty folder into "fresh" finishes
        sync_paths(app.engine(), "fresh", [sys.argv[4]], PathPolicy.unrestricted())
        os._exit(17)
    real(run)

sync._Sync.flush = flush
sync_paths(app.engine(), "fresh", [sys.argv[3]], PathPolicy.unrestricted())
"""


def test_a_collection_another_finished_sync_wrote_into_stays_after_a_kill(cfg: Settings, tmp_path: Path) -> None:
    """Sync A made "fresh"; sync B into "fresh" (an empty folder) finished and told its caller so; A was killed
    before its commit. The next start dropped "fresh" as A's unfinished create: a finished sync keeps the
    collection it synced into, even empty, whichever call made it."""
    seed(cfg)
    empty = tmp_path / "empty"
    empty.mkdir()
    notes = write_notes(tmp_path / "notes", 2)
    proc = subprocess.run(
        [sys.executable, "-c", SYNC_KILLED_AFTER_ANOTHER_FINISHED, str(cfg.data_dir), cfg.model, str(notes), str(empty)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=Path(__file__).resolve().parents[1],
    )
    assert proc.returncode == 17, proc.stderr[-2000:]
    app = open_rift(cfg)
    try:
        assert app.engine().collection_names() == ["default", "fresh"]
        assert app.engine().state.setting_keys("created_by_write:") == []
    finally:
        app.close()


def test_lost_chunk_rows_are_rebuilt_from_chroma(cfg: Settings) -> None:
    before = seed(cfg)
    sqlite_rows(cfg.state_db, "SELECT 1")  # the db exists
    import sqlite3

    conn = sqlite3.connect(str(cfg.state_db))
    conn.execute("DELETE FROM chunks")
    conn.commit()
    conn.close()

    app = open_rift(cfg)
    try:
        assert app.repair_report["added_from_chroma"] == len(before["chroma"])
        assert consistent(index_state(app)) == before["chroma"]
        assert ids(app.search("default", "gravel sand", mode="keyword").outcome.hits) == ["doc"]
        assert ids(app.search("default", "fish sea", mode="keyword").outcome.hits) == ["other"]
    finally:
        app.close()


def rewrite_in_old_layout(settings: Settings) -> None:
    """Move every chunk's text from its metadata back to a Chroma document, as earlier versions of rift stored it."""
    import chromadb

    client = chromadb.PersistentClient(path=str(settings.chroma_dir))
    for coll in client.list_collections():
        coll = client.get_collection(coll if isinstance(coll, str) else coll.name)
        page = coll.get(include=["embeddings", "metadatas"])
        if not page["ids"]:
            continue
        metas = [dict(m) for m in page["metadatas"]]
        texts = [m.pop("_rift_text") for m in metas]
        coll.delete(ids=page["ids"])
        coll.add(ids=page["ids"], embeddings=page["embeddings"], metadatas=metas, documents=texts)


@pytest.mark.parametrize("layout", ["current", "texts as chroma documents"])
def test_deleted_state_database_is_rebuilt_from_chroma(cfg: Settings, layout: str) -> None:
    before = seed(cfg)
    if layout != "current":
        rewrite_in_old_layout(cfg)
    lose_state_db(cfg)

    app = open_rift(cfg)
    try:
        assert app.repair_report["adopted_from_chroma"] == ["default"]
        assert consistent(index_state(app)) == before["chroma"]
        assert app.stats("default")["collections"][0]["documents"] == 2
        text, _, n_chunks, _ = app.engine().get_document("default", "doc")
        assert text == OLD and n_chunks > 1  # rebuilt from the chunks' offsets
        assert ids(app.search("default", "gravel sand", mode="keyword").outcome.hits) == ["doc"]
        # Content hashes survived too: re-adding the same text is still a no-op.
        (status,) = app.add_documents("default", docs(("doc", OLD)))
        assert status.status == "unchanged"
    finally:
        app.close()


def test_chunks_chroma_lost_are_embedded_again_from_the_stored_text(cfg: Settings) -> None:
    """Alone on its store, rift deletes a chunk from Chroma only after committing its removal: a committed
    chunk Chroma lacks was lost there (a removed `chroma` folder), and the document's text is still in
    rift's state. It is embedded again, never dropped; a command that only reads says so instead."""
    seed(cfg)
    app = open_rift(cfg)
    engine = app.engine()
    record = engine.state.collection("default")
    before = index_state(app)
    gone = sorted(c for c in engine.vectors.all_ids(record.chroma_name) if c.startswith("other::"))
    engine.vectors.delete(record.chroma_name, gone)  # Chroma lost them behind rift's back
    app.close()

    with pytest.raises(
        RiftError, match=r"Chroma has lost \d+ chunks \(1 documents\) of collection 'default'"
    ):
        Rift(cfg).start(background=False, reembed=False)
    app = open_rift(cfg)
    try:
        assert app.repair_report["restored_to_chroma"] == {"default": len(gone)}
        assert app.repair_report["removed_missing"] == 0
        assert index_state(app) == before and consistent(before)
        assert [h.doc_id for h in app.search("default", "fish sea", mode="keyword").outcome.hits][:1] == [
            "other"
        ]
        assert app.stats("default")["collections"][0]["documents"] == 2
    finally:
        app.close()
    # The whole Chroma folder gone: every document comes back from rift's state.
    shutil.rmtree(cfg.chroma_dir)
    app = open_rift(cfg)
    try:
        assert index_state(app) == before and app.stats("default")["collections"][0]["documents"] == 2
        # labelled as rift labels its collections, so losing the state database later can still adopt it
        (meta,) = [m for _, m in app.engine().vectors.list_collections()]
        assert meta["rift:collection"] == "default"
    finally:
        app.close()


def test_collections_from_earlier_versions_get_the_raised_search_ef(cfg: Settings) -> None:
    import chromadb

    from server.engine.vector_store import HNSW_SEARCH_EF

    seed(cfg)
    client = chromadb.PersistentClient(path=str(cfg.chroma_dir))
    (name,) = [c if isinstance(c, str) else c.name for c in client.list_collections()]
    client.get_collection(name).modify(configuration={"hnsw": {"ef_search": 100}})  # as rift 0.1 made them
    del client

    app = open_rift(cfg)
    try:
        record = app.engine().state.collection("default")
        coll = app.engine().vectors.client.get_collection(record.chroma_name)
        assert coll.configuration["hnsw"]["ef_search"] == HNSW_SEARCH_EF
        assert ids(app.search("default", "gravel sand", mode="vector", k=1).outcome.hits) in (
            ["doc"],
            ["other"],
        )
    finally:
        app.close()


def test_raising_search_ef_outlasts_a_briefly_locked_chroma_database(caplog: pytest.LogCaptureFixture) -> None:
    """Embedded Chroma's collection update can meet "database is locked" while Chroma's own background work
    writes (CI met it once: the collection kept ef 100). A few quick retries get the update through."""
    from server.engine.vector_store import HNSW_SEARCH_EF, _raise_search_ef

    class Collection:
        name = "c"

        def __init__(self, failures: int, message: str) -> None:
            self.configuration = {"hnsw": {"ef_search": 100}}
            self.failures, self.message, self.calls = failures, message, 0

        def modify(self, configuration: dict[str, Any]) -> None:
            self.calls += 1
            if self.calls <= self.failures:
                raise RuntimeError(self.message)
            self.configuration = configuration

    locked = "Database error: error returned from database: (code: 5) database is locked"
    briefly = Collection(2, locked)
    _raise_search_ef(briefly)
    assert briefly.configuration["hnsw"]["ef_search"] == HNSW_SEARCH_EF and briefly.calls == 3

    # Another error is not retried, and one that lasts is given up on: the collection still works, with a warning.
    for coll, calls in ((Collection(1, "no such collection"), 1), (Collection(99, locked), 6)):
        caplog.clear()
        _raise_search_ef(coll)
        assert coll.configuration["hnsw"]["ef_search"] == 100 and coll.calls == calls
        assert "could not raise ef_search" in caplog.text


def test_rebuilt_documents_keep_their_own_metadata_not_their_chunks(cfg: Settings) -> None:
    note = "# Setup\n\nInstall the river tools.\n\n## Linux\n\n" + "Run the gravel script. " * 40
    meta = {"file_type": "markdown", "author": "ana"}
    app = open_rift(cfg)
    try:
        app.add_documents("default", docs(("note", note, meta)))
        chunks = app.engine().state.document_chunks("default", "note")
        assert any("heading" in c.metadata for c in chunks)  # the splitter gave chunks their heading
        _, before, _, _ = app.engine().get_document("default", "note")
    finally:
        app.close()
    lose_state_db(cfg)

    app = open_rift(cfg)
    try:
        text, after, _, _ = app.engine().get_document("default", "note")
        assert after == before == meta
        assert text == note  # the text between sections is stored with the chunks
    finally:
        app.close()


def test_a_rebuilt_float_one_ulp_off_does_not_re_cut_the_collection(cfg: Settings) -> None:
    """Chroma stores some floats 1 ULP off (this one comes back as ...511). Rebuilt from Chroma, the first
    document's hash then matched no chunking, so the collection read as cut by another process and every
    document was split and embedded again."""
    app = open_rift(cfg)
    try:
        app.add_documents(
            "default", docs(("a", "a blue fish in the sea", {"score": 9373.711634780513}), ("b", "the river"))
        )
    finally:
        app.close()
    lose_state_db(cfg)
    app = open_rift(cfg)
    try:
        assert app.repair_report["adopted_from_chroma"] == ["default"]
        assert not app.repair_report.get("rechunked"), app.repair_report
        assert ids(app.search("default", "river", mode="keyword").outcome.hits) == ["b"]
    finally:
        app.close()


def test_hits_of_a_rebuilt_document_point_into_the_rebuilt_text(cfg: Settings) -> None:
    """A gap between sections over MAX_GAP_CHARS is stored cut, so the text rebuilt from Chroma is shorter than
    the one written: the hits' offsets must be those of the rebuilt text, which get_document returns."""
    one = " ".join(f"Line {i}: the old river report mentions gravel and sand." for i in range(8))
    two = " ".join(f"Part {i}: the blue fish swims in the sea today." for i in range(8))
    text = "# One\n" + one + "\n" + " " * 700 + "\n# Two\n" + two
    app = open_rift(cfg)
    try:
        app.add_documents("default", docs(("doc", text, {"file_type": "markdown"})))
    finally:
        app.close()
    lose_state_db(cfg)
    app = open_rift(cfg)
    try:
        stored = app.engine().get_document("default", "doc")[0]
        assert len(stored) < len(text)
        hits = app.search("default", "blue fish sea", k=50, group_by_document=False).outcome.hits
        assert len(hits) > 1 and {h.start for h in hits} != {0}
        assert all(stored[h.start : h.end] == h.text for h in hits)
    finally:
        app.close()


def test_join_chunks_restores_the_text_between_chunks_and_reads_older_chunks() -> None:
    from server.engine.reconcile import join_chunks
    from server.engine.state_store import ChunkRow

    def row(i: int, text: str, start: int, **meta: Any) -> ChunkRow:
        return ChunkRow(f"c{i}", "d", "h", i, text, (), {"_rift_start": start, **meta})

    doc = "  alpha beta\n\n\tgamma delta  \n"
    stored = [
        row(0, "alpha beta", 2, _rift_gap="  "),
        row(1, "beta\n\n\tgamma", 8),  # overlaps the first chunk: nothing between them
        row(2, "delta", 21, _rift_gap=" ", _rift_tail="  \n"),
    ]
    text, placed = join_chunks(stored)
    assert text == doc and placed == {"c0": (2, 12), "c1": (8, 20), "c2": (21, 26)}
    # Written before the gaps were stored: gaps become one space, the ends are dropped; the chunks lie where
    # the rebuilt text has them, not at the offsets they were written with.
    older = [row(0, "alpha beta", 2), row(1, "gamma delta", 15)]
    text, placed = join_chunks(older)
    assert text == "alpha beta gamma delta" and placed == {"c0": (0, 10), "c1": (11, 22)}
    assert all(text[a:b] == r.text for r in older for a, b in [placed[r.chunk_id]])
    # A chunk inside the text already joined lies where it was.
    inside = [row(0, "abcdef", 0), row(1, "cd", 2), row(2, "efgh", 4)]
    text, placed = join_chunks(inside)
    assert text == "abcdefgh" and placed == {"c0": (0, 6), "c1": (2, 4), "c2": (4, 8)}
    # A gap over MAX_GAP_CHARS is stored cut: the chunks after it move up by what was cut.
    cut = [row(0, "one", 0), row(1, "two", 3 + 700, _rift_gap=" " * 512)]
    text, placed = join_chunks(cut)
    assert placed["c1"] == (515, 518) and text[515:518] == "two"


@pytest.mark.parametrize("retry", ["fails", "works"])
def test_a_pending_delete_spares_chunks_a_later_write_made_live_again(cfg: Settings, monkeypatch, retry: str) -> None:
    """Chunk ids are content hashes. v1 -> v2 leaves v1's chunks journalled for deletion when Chroma's delete
    fails; the next write tries that delete again first ("works"). Where that fails too, writing v1 back
    makes those ids live again, and start-up must not delete them."""
    from server.engine.vector_store import VectorStore

    seed(cfg)
    app = open_rift(cfg)
    try:
        real = VectorStore.delete
        failed: list[int] = []

        def flaky(self, name, chunk_ids):  # noqa: ANN001 - VectorStore.delete's signature
            if chunk_ids and len(failed) < (2 if retry == "fails" else 1):
                failed.append(len(chunk_ids))
                raise RuntimeError("transient: disk I/O error")
            return real(self, name, chunk_ids)

        monkeypatch.setattr(VectorStore, "delete", flaky)
        app.add_documents("default", docs(("doc", NEW)))  # acknowledged; v1's chunks stay journalled
        assert failed and app.engine().state.journal_pending()
        app.add_documents("default", docs(("doc", OLD)))  # v1 again: the journalled ids are live again
        monkeypatch.undo()
        assert bool(app.engine().state.journal_pending()) == (retry == "fails")
        before = consistent(index_state(app))
    finally:
        app.close()
    app = open_rift(cfg)
    try:
        assert app.repair_report["journal"] == (1 if retry == "fails" else 0)
        assert app.repair_report["removed_missing"] == 0
        assert consistent(index_state(app)) == before
        assert app.engine().get_document("default", "doc")[0] == OLD
        assert ids(app.search("default", "gravel sand", mode="keyword").outcome.hits) == ["doc"]
    finally:
        app.close()


def test_a_deletion_cut_off_before_its_searches_left_the_log_forgets_them_at_the_next_start(
    cfg: Settings, monkeypatch
) -> None:
    """The deletion commits in rift's state, then its searches leave the query log (another database). Killed in
    between (played by a forget that fails), the searches and feedback stayed, and a later collection of the
    same name showed them in stats and trained on them (helper DD)."""
    from server.learning.query_log import QueryLog

    seed(cfg)
    app = open_rift(cfg)
    try:
        app.add_documents("tmp", docs(("t1", "a secret note about zebras"), ("t2", "another note about lions")))
        logged = app.search("tmp", "secret zebras")
        kept = app.search("default", "gravel sand")
        app.learning.feedback(logged.query_id, "t1", True)

        def killed(*args: Any, **kwargs: Any) -> int:
            raise RuntimeError("killed before the query log was cleaned")

        monkeypatch.setattr(QueryLog, "forget_collection", killed)
        with pytest.raises(RuntimeError, match="killed"):
            app.delete_collection("tmp")
        monkeypatch.undo()
        assert app.log.get(logged.query_id) is not None  # (what a kill at that point leaves)
    finally:
        app.close()
    app = open_rift(cfg)
    try:
        assert app.log.get(logged.query_id) is None and app.log.feedback_map() == {}
        assert app.log.get(kept.query_id) is not None  # (a collection that is still there keeps its searches)
        app.add_documents("tmp", docs(("t1", "a secret note about zebras")))
        assert app.stats("tmp")["queries"]["logged_queries"] == 0
    finally:
        app.close()


def test_a_deleted_collection_stays_deleted_when_chroma_fails_to_drop_it(cfg: Settings, monkeypatch) -> None:
    """The drop is noted in the transaction that forgets the collection, so a crash or a Chroma error
    before it finishes is finished at the next start: never adopted back as an orphan with its documents."""
    seed(cfg)
    app = open_rift(cfg)
    try:
        app.add_documents("notes", docs(("n1", "python code on a server")))
        engine = app.engine()
        chroma = engine.state.collection("notes").chroma_name
        # an unfinished write's journal entry on it, which recovery must not use to create it again
        engine.state.journal_begin(chroma, ["n1::x::0"], [])

        def fails(name):
            raise RuntimeError("simulated Chroma failure")

        monkeypatch.setattr(engine.vectors._client, "delete_collection", fails)
        app.delete_collection("notes")
        monkeypatch.undo()
        assert engine.collection_names() == ["default"] and list(engine.state.pending_drops()) == [chroma]
    finally:
        app.close()
    app = open_rift(cfg)
    try:
        engine = app.engine()
        assert engine.collection_names() == ["default"] and app.repair_report["adopted_from_chroma"] == []
        assert engine.state.pending_drops() == {} and not engine.vectors.exists(chroma)
        assert app.stats("default")["collections"][0]["documents"] == 2
        # Made again under the same name after a failed drop: it starts empty, not with the deleted chunks.
        monkeypatch.setattr(engine.vectors._client, "delete_collection", fails)
        app.delete_collection("default")
        monkeypatch.undo()
        app.add_documents("default", docs(("new", "a brand new document")))
        assert engine.state.pending_drops() == {}
        assert (
            index_state(app)["chroma"] == index_state(app)["sqlite"]
            and app.stats()["collections"][0]["documents"] == 1
        )
    finally:
        app.close()
    app = open_rift(cfg)
    try:
        assert ids(app.search("default", "brand new document", mode="keyword").outcome.hits) == ["new"]
        assert app.stats()["collections"][0]["documents"] == 1
    finally:
        app.close()


def test_damaged_files_are_named_and_a_damaged_query_log_is_set_aside(cfg: Settings) -> None:
    seed(cfg)
    garbage = bytes(range(256)) * 16
    cfg.log_db.write_bytes(garbage)  # learning data only: moved aside, the server starts with a new log
    app = open_rift(cfg)
    try:
        assert app.stats("default")["collections"][0]["documents"] == 2
        assert [p.name for p in cfg.data_dir.glob("querylog.sqlite.damaged-*")]
    finally:
        app.close()
    registry = cfg.models_dir / "registry.json"
    kept = json.loads(registry.read_text())
    registry.write_text('{"versions": [')
    with pytest.raises(RiftError, match=rf"the model registry {registry} is damaged \(JSONDecodeError"):
        open_rift(cfg)
    # A hand edit of one field: start-up failed on "'<' not supported between instances of 'float' and 'str'".
    for field, value in (("created_at", "yesterday"), ("location", None), ("status", "live")):
        entry = {**kept["versions"][0], field: value}
        registry.write_text(json.dumps({"versions": [entry]}))
        with pytest.raises(RiftError, match=rf"the model registry {registry} is damaged \(TypeError: version .*{field}"):
            open_rift(cfg)
    registry.unlink()
    for suffix in ("-wal", "-shm"):
        Path(f"{cfg.state_db}{suffix}").unlink(missing_ok=True)
    cfg.state_db.write_bytes(garbage)
    with pytest.raises(RiftError, match=rf"state database {cfg.state_db} is damaged .*move it aside"):
        open_rift(cfg)


def test_a_damaged_hnsw_file_is_named_with_what_to_do(cfg: Settings) -> None:
    """A kill while Chroma rewrote an HNSW segment's index_metadata.pickle in place left it cut short, and every
    command then failed with Chroma's "Error constructing hnsw segment reader ... Error deserializing pickle
    file" and nothing on what to do (found by helper BL); moving the folder aside re-embeds from the state."""
    app = open_rift(cfg)
    try:  # enough vectors for Chroma to write its HNSW files (past its sync threshold)
        for batch in range(3):
            app.add_documents("default", docs(*[(f"d{i}", f"note {i} on topic {i % 37}") for i in range(batch * 400, (batch + 1) * 400)]))
    finally:
        app.close()
    from chromadb.api.client import SharedSystemClient

    [pickle] = cfg.chroma_dir.rglob("index_metadata.pickle")
    pickle.write_bytes(pickle.read_bytes()[: pickle.stat().st_size // 2])
    SharedSystemClient.clear_system_cache()  # (as a new process: Chroma keeps a store's segments per process)
    with pytest.raises(RiftError, match=rf"Chroma's store {cfg.chroma_dir} is damaged \(.*pickle.*move the folder"):
        open_rift(cfg)
    cfg.chroma_dir.rename(cfg.chroma_dir.with_name("chroma.kept"))
    SharedSystemClient.clear_system_cache()
    app = open_rift(cfg)
    try:
        assert ids(app.search("default", "note 5 on topic 5", k=1, mode="vector").outcome.hits) == ["d5"]
    finally:
        app.close()


def test_chromas_compaction_failure_after_a_kill_is_named_as_a_damaged_store(cfg: Settings, monkeypatch) -> None:
    """A SIGKILL during a bulk write left embedded Chroma unable to apply its log ("Error in compaction: Failed
    to apply logs to the hnsw segment writer": every read of that collection fails); rift failed to start with
    Chroma's words alone (helper DD). Moving the folder aside re-embeds from the state, as above. A full disk
    can fail a compaction too (helper DH): then the disk is named first."""
    import collections

    import server.engine.vector_store as vector_store
    from server.engine.vector_store import damaged_store

    for words in (
        "Error in compaction: Failed to apply logs to the hnsw segment writer",
        "Error sending backfill request to compactor: ...",
    ):
        problem = damaged_store(cfg.chroma_dir, RuntimeError(words))
        assert problem is not None and "move the folder aside" in str(problem) and words in str(problem)
    assert damaged_store(cfg.chroma_dir, RuntimeError("Collection [x] does not exist")) is None
    usage = collections.namedtuple("usage", "total used free")
    monkeypatch.setattr(vector_store.shutil, "disk_usage", lambda path: usage(10 << 30, 10 << 30, 5 << 20))
    low = str(damaged_store(cfg.chroma_dir, RuntimeError("Failed to apply logs to the hnsw segment writer")))
    assert "its disk has 5 MB free: free some space and start again; if it still fails" in low, low
    full = OSError(28, "No space left on device")
    wrapped = RuntimeError("Error in compaction: Failed to apply logs to the hnsw segment writer")
    wrapped.__cause__ = full
    assert damaged_store(cfg.chroma_dir, wrapped) is None  # (the full disk's own message says it)


def test_a_database_that_cannot_be_opened_is_named_and_left_in_place(cfg: Settings) -> None:
    """Unreadable is not damaged: a query log that could not be opened (permissions, a lock) was moved aside
    as damaged and a new one started, sidelining the learning data even from `rift stats`; an unreadable
    state database was called damaged, with advice to move it aside. (A folder in the file's place gives the
    same SQLite error as a file this user may not read; root reads any file.)"""
    seed(cfg)
    for db in (cfg.log_db, cfg.state_db):
        kept = db.with_name(db.name + ".kept")
        db.rename(kept)
        db.mkdir()
        with pytest.raises(RiftError, match=rf"cannot open .* {db} \(unable to open database file\).*leave it in"):
            open_rift(cfg)
        assert db.is_dir() and not list(cfg.data_dir.glob("*.damaged-*"))
        db.rmdir()
        kept.rename(db)
    app = open_rift(cfg)
    try:
        assert app.stats("default")["collections"][0]["documents"] == 2
    finally:
        app.close()


def test_a_database_that_cannot_be_opened_on_a_full_disk_names_the_disk(
    cfg: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With no space left SQLite cannot create a database's -wal / -shm files and says only "disk I/O error":
    that read as a permission problem. (The unopenable file is simulated as above; the disk reads full.)"""
    import shutil

    import server.service

    seed(cfg)
    db = cfg.log_db
    kept = db.with_name(db.name + ".kept")
    db.rename(kept)
    db.mkdir()
    monkeypatch.setattr(server.service.shutil, "disk_usage", lambda _: shutil._ntuple_diskusage(10**9, 10**9, 0))
    with pytest.raises(RiftError, match=rf"cannot open the query log {db} .*the disk holding it is full \(0 bytes"):
        open_rift(cfg)
    monkeypatch.undo()
    db.rmdir()
    kept.rename(db)
    open_rift(cfg).close()


def test_a_document_left_without_chunks_is_split_again(cfg: Settings) -> None:
    """A repair cut short (in an earlier version) could leave a document listed with no chunk: never found,
    and re-adding it was a no-op. Start-up writes it again from its stored text, and so does a re-add."""
    seed(cfg)
    for fix_by_readd in (False, True):
        app = open_rift(cfg)
        engine = app.engine()
        record = engine.state.collection("default")
        gone = [c for c in engine.state.chunk_ids("default") if c.startswith("other::")]
        engine.vectors.delete(record.chroma_name, gone)
        engine.state.apply("default", gone, [])  # the chunks left both stores; the document row stayed
        if fix_by_readd:
            (status,) = app.add_documents("default", docs(("other", "a blue fish in the sea")))
            assert status.status == "updated" and status.chunks == 1
        app.close()
        app = open_rift(cfg)
        try:
            assert ids(app.search("default", "blue fish sea", mode="keyword").outcome.hits)[:1] == ["other"]
            assert consistent(index_state(app))
        finally:
            app.close()


def test_a_close_while_the_model_loads_does_not_wait_for_it_and_the_load_writes_nothing(
    cfg: Settings, monkeypatch
) -> None:
    """Loading the model writes nothing, so close() frees the data dir at once instead of waiting for the load
    (up to 60 s); the load, once done, gives up before anything it would write next (the serving model in the
    registry, Chroma), and the next start finds the store as it was."""
    import threading
    import time

    from server.engine import embedder
    from server.service import DataDirLock

    loading, release = threading.Event(), threading.Event()
    load = embedder.Embedder.__init__

    def slow(self: Any, *args: Any, **kwargs: Any) -> None:
        loading.set()
        release.wait(30)
        load(self, *args, **kwargs)

    monkeypatch.setattr(embedder.Embedder, "__init__", slow)
    app = Rift(cfg).start(background=True)
    try:
        assert loading.wait(30)
        started = time.monotonic()
        app.close()
        assert time.monotonic() - started < 2
        lock = DataDirLock(cfg)
        lock.acquire()  # free, while the first app still loads
        lock.release()
    finally:
        release.set()
    with pytest.raises(RiftError, match="closed while loading the model"):
        app.engine(timeout=30)
    assert not (cfg.models_dir / "registry.json").exists() and not cfg.chroma_dir.exists()
    monkeypatch.setattr(embedder.Embedder, "__init__", load)
    again = open_rift(cfg)
    try:
        again.add_documents("default", docs(("a", "the cat sat on the mat")))
        assert ids(again.search("default", "cat").outcome.hits) == ["a"]
    finally:
        again.close()


def test_float_metadata_read_back_from_chroma_is_made_exact_by_its_version_hash() -> None:
    import math

    from server.engine.versions import MAX_ULPS, content_hash, exact_metadata, same_float

    written = {"mtime": 1796442811.1965353, "score": 0.1 + 0.2, "name": "a.md", "size": 12}
    doc_hash = content_hash("text", written, "v1 tokens=48")
    off = {**written, "mtime": 1796442811.196535, "score": math.nextafter(written["score"], 0.0)}
    assert exact_metadata("text", off, doc_hash, ("v1 tokens=48", "")) == written
    assert exact_metadata("text", written, doc_hash, ("v1 tokens=48",)) == written  # (came back exact)
    assert exact_metadata("text", off, doc_hash, ("other chunking",)) is None  # hashes to no version
    far = {**written, "mtime": written["mtime"] + (MAX_ULPS + 1) * 2.4e-7}
    assert exact_metadata("text", far, doc_hash, ("v1 tokens=48",)) is None
    # Many floats: the fewest ULPs moved are tried first, so the one that drifted is found (9 ** 6 in all).
    many = {f"f{i}": 1.5 + i for i in range(5)} | {"mtime": written["mtime"]}
    drifted = {**many, "mtime": 1796442811.196535, "f3": math.nextafter(4.5, 5)}
    assert exact_metadata("text", drifted, content_hash("text", many), ("",)) == many
    # ... within MAX_COMBINATIONS tries: every float off by MAX_ULPS is past them.
    def far_off(v: float) -> float:
        for _ in range(MAX_ULPS):
            v = math.nextafter(v, math.inf)
        return v

    assert exact_metadata("text", {k: far_off(v) for k, v in many.items()}, content_hash("text", many), ("",)) is None
    # One float alone drifted as far as MAX_ULPS is found whichever key it is.
    for key in many:
        one = {**many, key: far_off(many[key])}
        assert exact_metadata("text", one, content_hash("text", many), ("",)) == many, key
    assert exact_metadata("text", {"n": 1}, "x", ()) == {"n": 1}  # no float: nothing to make exact
    # A stamp read back is the one written when it lies within MAX_ULPS of it (the undo of a failed write).
    stamp = written["mtime"]
    assert same_float(stamp, stamp) and same_float(1796442811.196535, stamp)
    assert not same_float(stamp + (MAX_ULPS + 1) * math.ulp(stamp), stamp)
    assert not same_float(True, 1.0) and not same_float("1.0", 1.0) and not same_float(None, 1.0)
    assert not same_float(stamp, None)


def test_a_repair_stops_trying_to_make_floats_exact_when_most_documents_match_no_version(monkeypatch) -> None:
    """Each try hashes a whole document: once one document matched, every later one written under another
    chunking cost 81 hashes per chunking (helper AJ: 100,000 documents, minutes of start-up). The repair
    gives up when misses outnumber matches, and in any case after MAX_MISSES."""
    import math

    import server.engine.versions as versions
    from server.engine.reconcile import GIVE_UP_AFTER, MISS_RATIO, reconcile_with_chroma

    class Tokens:
        def tokenize(self, texts):
            return [[] for _ in texts]

    class State:
        def chunk_keys(self, _c, _ids):
            return {}

        def orphan_documents(self, _c):
            return []

        def apply(self, *_args, **_kwargs) -> None:
            pass

    class Store:
        def __init__(self, chunks):
            self.chunks = chunks

        def get(self, _name, _ids):
            return self.chunks

    def chunks(count: int, matching: set[int]) -> list:
        out = []
        for d in range(count):
            text = f"document {d} about the river"
            meta = {"mtime": 1796442811.1965353 + d, "weight": 0.5, "rating": 4.25}
            doc_hash = versions.content_hash(text, meta, "current" if d in matching else "other")
            drifted = {**meta, "mtime": math.nextafter(meta["mtime"], 0)}
            reserved = {"_rift_doc": f"d{d}", "_rift_hash": doc_hash, "_rift_n": 1, "_rift_idx": 0, "_rift_ts": 1.0}
            out.append((f"c{d}", text, {**drifted, **reserved}))
        return out

    hashes = 0
    real = versions.content_hash

    def counted(*args, **kwargs):
        nonlocal hashes
        hashes += 1
        return real(*args, **kwargs)

    def repair(count: int, matching: set[int]) -> tuple[int, int]:
        nonlocal hashes
        fetched = chunks(count, matching)
        hashes = 0
        monkeypatch.setattr(versions, "content_hash", counted)
        try:
            delta = reconcile_with_chroma(
                Store(fetched), State(), Tokens(), "files", "x", in_chroma={c for c, _, _ in fetched},
                chunkings=("current", ""),
            )
        finally:
            monkeypatch.setattr(versions, "content_hash", real)
        exact = sum(meta["mtime"] == 1796442811.1965353 + int(d[1:]) for d, _h, _t, meta in delta.put_docs)
        return exact, hashes

    # A three-float document is made exact (the front matter's numbers never drifted, the mtime did).
    assert repair(3, {0, 1, 2})[0] == 3
    # The first matches, the rest were written under another chunking: the tries stop after a few dozen.
    exact, tried = repair(300, {0})
    assert exact == 1
    per_miss = 2 * versions.MAX_COMBINATIONS  # (two chunkings)
    assert tried <= (MISS_RATIO + 2) * (GIVE_UP_AFTER + 1) * per_miss + 300 * 2


def test_a_lost_state_database_of_an_older_chunker_still_re_cuts_its_code(cfg: Settings, monkeypatch) -> None:
    """A plain document hashes the same under chunker versions 1 and 2 (document_chunking): rebuilt from Chroma,
    the collection's chunking was read off the first sampled document that matched, a plain one, so a Python
    file cut by version 1 was never cut again."""
    from dataclasses import replace

    from server.engine import chunking
    from server.engine import engine as engine_module
    from server.ingest import splitters

    body = "\n".join(f"        x{i} = compute(value_{i}, other_{i}) + {i}" for i in range(30))
    code = f"class E:\n    def run(self):\n{body}\n        return x0\n"
    texts = (("a", "the cat sat on the mat", {}), ("code", code, {"file_type": "python"}))
    monkeypatch.setattr(chunking, "CHUNKER_VERSION", 1)
    monkeypatch.setattr(engine_module, "CHUNKER_VERSION", 1)
    old = {k: replace(v, since=1, lines=False) for k, v in splitters.SPLITTERS.items()}
    monkeypatch.setattr(splitters, "SPLITTERS", old)
    monkeypatch.setattr(splitters, "_glue_small", lambda groups, tokens, max_tokens: groups)
    app = open_rift(cfg)
    try:
        app.add_documents("default", docs(*texts))
    finally:
        app.close()
    monkeypatch.undo()
    lose_state_db(cfg)
    app = open_rift(cfg)
    try:
        assert app.repair_report["adopted_from_chroma"] == ["default"]
        assert app.repair_report["rechunked"] == {"default": 1}  # the Python file alone
    finally:
        app.close()


WRITE_ELSEWHERE = """
import sys
from server.config import Settings
from server.engine.engine import DocumentInput
from server.service import Rift

settings = Settings(data_dir=sys.argv[1], model=sys.argv[2], chunk_tokens=48, chunk_overlap=8)
app = Rift(settings).start(background=False)
app.delete_documents("default", ["x0", "x2"])
app.add_documents("default", [DocumentInput(text=f"yankee {i} apples text", id=f"y{i}") for i in range(4)])
app.close()
"""


def test_reopening_in_the_same_process_sees_what_another_process_wrote(tmp_path: Path, tiny_model_path: Path) -> None:
    """Embedded Chroma keeps one System per path for the whole process, and a client made later for that path
    reuses it: rift closed and opened again in one process (a library user, the tests) searched the vectors
    as this process last saw them, missing what another process added meanwhile. Closing rift now closes
    its Chroma client, and the next open reads the store afresh. Another data dir open meanwhile in this
    process is left alone, and reopening after a same-process close still works."""
    cfg = make_settings(tmp_path / "data", tiny_model_path, exact_search_max_chunks=0)  # (Chroma's own search)
    other = open_rift(make_settings(tmp_path / "other", tiny_model_path, exact_search_max_chunks=0))
    try:
        other.add_documents("default", docs(("o", "oscar apples orchard")))
        app = open_rift(cfg)
        try:
            app.add_documents("default", docs(*[(f"x{i}", f"xray {i} apples words") for i in range(4)]))
            assert sorted(ids(app.search("default", "apples", k=20, mode="vector").outcome.hits)) == [
                "x0", "x1", "x2", "x3"
            ]
        finally:
            app.close()
        proc = subprocess.run(
            [sys.executable, "-c", textwrap.dedent(WRITE_ELSEWHERE), str(cfg.data_dir), cfg.model],
            capture_output=True,
            text=True,
            timeout=120,
            cwd=Path(__file__).resolve().parents[1],
        )
        assert proc.returncode == 0, proc.stderr[-2000:]
        expected = ["x1", "x3", "y0", "y1", "y2", "y3"]
        for _ in range(2):  # written elsewhere, then closed and opened again here
            app = open_rift(cfg)
            try:
                assert sorted(ids(app.search("default", "apples", k=20, mode="vector").outcome.hits)) == expected
                assert {c.rsplit("::", 2)[0] for c in consistent(index_state(app))} == set(expected)
            finally:
                app.close()
        # the other data dir's rift, open all along, still reads and writes its store
        other.add_documents("default", docs(("p", "papa apples pears")))
        assert sorted(ids(other.search("default", "apples", k=20, mode="vector").outcome.hits)) == ["o", "p"]
    finally:
        other.close()


def test_a_closed_rift_says_it_is_closed(tmp_path: Path, tiny_model_path: Path) -> None:
    """A library's Rift used after close(): a hybrid search answered from the in-memory indexes with a
    query_id its closed query log never recorded, and the other calls failed with a closed SQLite database or,
    since close() closes the Chroma client, chromadb's "'RustBindingsAPI' object has no attribute 'bindings'".
    Each now says rift is closed, also through a store reference kept from before."""
    cfg = make_settings(tmp_path / "data", tiny_model_path, exact_search_max_chunks=0)  # (Chroma's own search)
    app = open_rift(cfg)
    app.add_documents("default", docs(("a", "alpha apples words"), ("b", "bravo pears words")))
    vectors = app.engine().vectors
    chroma_name = app.engine().state.collection("default").chroma_name
    app.close()
    calls = {
        "hybrid search": lambda: app.search("default", "apples"),
        "vector search": lambda: app.search("default", "apples", mode="vector"),
        "keyword search": lambda: app.search("default", "apples", mode="keyword"),
        "add": lambda: app.add_documents("default", docs(("c", "charlie plums"))),
        "stats": lambda: app.stats(),
        "retrain": lambda: app.learning.retrain(dry_run=True),
        "kept store": lambda: vectors.all_ids(chroma_name),
    }
    for name, call in calls.items():
        with pytest.raises(RiftError, match="closed") as caught:
            call()
        assert "bindings" not in str(caught.value), name
    app.close()  # (again: nothing to do)
    app = open_rift(cfg)  # and the data dir opens again in this process
    try:
        assert sorted(ids(app.search("default", "words", mode="vector").outcome.hits)) == ["a", "b"]
    finally:
        app.close()
