"""rift against a real Chroma server (`chroma run`), and several rift processes sharing one.

The core flows run through the MCP tools on both backends; the sharing tests start two rift apps with their
own data dirs on one server and check each sees the other's writes, in both retrieval modes."""

from __future__ import annotations

import io
import json
import logging
import os
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from mcp import Client

from server.app import create_server
from server.config import Settings
from server.engine.chunking import document_chunking
from server.engine.shared import CHANGES, HEADS
from server.engine.versions import content_hash
from server.errors import NotFoundError, RiftError
from server.service import Rift
from tests.support.helpers import docs, ids, index_state, make_settings, open_rift
from tests.support.processes import ChromaServer, chroma_binary, chroma_server, start_rift, stop

pytestmark = pytest.mark.skipif(chroma_binary() is None, reason="the chroma CLI is not installed")

LONG = " ".join(f"Part {i} of the field manual covers the river crossing and gravel." for i in range(14))


@pytest.fixture(scope="module")
def chroma(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ChromaServer]:
    with chroma_server(tmp_path_factory.mktemp("chroma-server") / "db") as server:
        yield server


def http_overrides(chroma: ChromaServer, **extra: Any) -> dict[str, Any]:
    return {
        "vector_backend": "http",
        "chroma_host": chroma.host,
        "chroma_port": chroma.port,
        "chroma_sync_ms": 0,
        **extra,
    }


@pytest.fixture(params=["embedded", "http"])
def backend(request: pytest.FixtureRequest, tmp_path: Path, tiny_model_path: Path) -> Settings:
    overrides: dict[str, Any] = {}
    if request.param == "http":
        chroma: ChromaServer = request.getfixturevalue("chroma")
        chroma.wipe()
        overrides = http_overrides(chroma)
    return make_settings(tmp_path / "data", tiny_model_path, **overrides)


async def call(client: Client, tool: str, **args: Any) -> dict[str, Any]:
    result = await client.call_tool(tool, args)
    text = result.content[0].text  # type: ignore[union-attr]
    assert not result.is_error, text
    return json.loads(text)


def hit_ids(result: dict[str, Any]) -> list[str]:
    return [h["doc_id"] for h in result["hits"]]


# --- the same tool flows on both backends ---------------------------------------------------------------------


@pytest.mark.anyio
async def test_add_search_filter_delete(backend: Settings) -> None:
    async with Client(create_server(backend)) as client:
        added = await call(
            client,
            "add_documents",
            documents=[
                {"id": "cat", "text": "the cat sat on the mat", "metadata": {"kind": "pet", "year": 2020}},
                {"id": "fish", "text": "a blue fish in the sea", "metadata": {"kind": "pet", "year": 2024}},
                {"id": "manual", "text": LONG, "metadata": {"kind": "doc", "year": 2022}},
            ],
        )
        assert added["added"] == 3
        assert hit_ids(await call(client, "hybrid_search", query="cat mat"))[0] == "cat"
        assert hit_ids(await call(client, "hybrid_search", query="fish sea", mode="keyword")) == ["fish"]
        vector = await call(client, "hybrid_search", query="a blue fish in the sea", mode="vector", k=1)
        assert hit_ids(vector) == ["fish"]
        filtered = await call(
            client, "hybrid_search", query="river gravel sea cat", filters={"year": {"$gte": 2022}}
        )
        assert sorted(hit_ids(filtered)) == ["fish", "manual"]
        only_pets = await call(client, "hybrid_search", query="river gravel", filters={"kind": "pet"})
        assert "manual" not in hit_ids(only_pets)
        deleted = await call(client, "delete_documents", ids=["fish", "ghost"])
        assert deleted["deleted"] == ["fish"] and deleted["not_found"] == ["ghost"]
        for mode in ("hybrid", "vector", "keyword"):
            found = await call(client, "hybrid_search", query="a blue fish in the sea", mode=mode)
            assert "fish" not in hit_ids(found)
        stats = await call(client, "stats")
        assert stats["vector_backend"] == backend.vector_backend
        (coll,) = stats["collections"]
        assert coll["documents"] == 2 and coll["chunks"] > 2


@pytest.mark.anyio
async def test_update_replaces_every_chunk_and_survives_restart(backend: Settings) -> None:
    async with Client(create_server(backend)) as client:
        await call(
            client, "add_documents", documents=[{"id": "manual", "text": LONG}, {"id": "x", "text": "cat"}]
        )
        await call(client, "add_documents", documents=[{"id": "manual", "text": "now only about snow"}])
    app = open_rift(backend)
    try:
        state = index_state(app)
        assert state["chroma"] == state["keyword"] == state["sqlite"]
        assert {c.split("::")[0] for c in state["chroma"]} == {"manual", "x"}
        assert len([c for c in state["chroma"] if c.startswith("manual::")]) == 1
        assert app.repair_report["added_from_chroma"] == app.repair_report["removed_missing"] == 0
        assert ids(app.search("default", "snow", mode="keyword").outcome.hits) == ["manual"]
        assert app.search("default", "gravel crossing", mode="keyword").outcome.hits == []
        assert ids(app.search("default", "now only about snow", mode="vector", k=1).outcome.hits) == [
            "manual"
        ]
    finally:
        app.close()
    if backend.vector_backend == "http":
        assert not backend.chroma_dir.exists()  # the vectors live on the server, not in the data dir


def test_partial_or_superseded_versions_are_never_shown(backend: Settings) -> None:
    """A version missing a chunk (a writer died half-way) stays invisible; of two whole versions the newer
    one (its chunks' _rift_ts) is shown."""
    app = open_rift(backend)
    try:
        app.add_documents("default", docs(("manual", LONG), ("cat", "the cat sat on the mat")))
        engine = app.engine()
        record = engine.state.collection("default")
        old_chunks = engine.state.document_chunks("default", "manual")
        # A newer version of "manual" whose write stopped after 2 of its 3 chunks.
        newer = engine._chunk_rows([("manual", "snow " * 150, {}, "f" * 64)])
        assert len(newer) >= 3
        vecs = engine.embedder.encode_documents([r.text for r in newer])
        engine.vectors.upsert(
            record.chroma_name,
            [r.chunk_id for r in newer[:2]],
            vecs[:2],
            [r.text for r in newer[:2]],
            [r.metadata for r in newer[:2]],
        )
        assert engine._reconcile("default", record.chroma_name) == (0, 0)
        assert [r.chunk_id for r in engine.state.document_chunks("default", "manual")] == [
            r.chunk_id for r in old_chunks
        ]
        # The rest lands: the newer version is whole and newer, so it wins; the old one is dropped.
        engine.vectors.upsert(
            record.chroma_name,
            [r.chunk_id for r in newer[2:]],
            vecs[2:],
            [r.text for r in newer[2:]],
            [r.metadata for r in newer[2:]],
        )
        added, removed = engine._reconcile("default", record.chroma_name)
        assert (added, removed) == (len(newer), len(old_chunks))
        assert {r.chunk_id for r in engine.state.document_chunks("default", "manual")} == {
            r.chunk_id for r in newer
        }
        text, _, n, _ = engine.get_document("default", "manual")
        assert n == len(newer) and "snow" in text and "gravel" not in text
    finally:
        app.close()


# --- several rift processes on one Chroma server --------------------------------------------------------------


@pytest.fixture
def pair(chroma: ChromaServer, tmp_path: Path, tiny_model_path: Path) -> Iterator[tuple[Rift, Rift]]:
    chroma.wipe()
    apps = [
        open_rift(make_settings(tmp_path / name, tiny_model_path, **http_overrides(chroma)))
        for name in ("a", "b")
    ]
    yield apps[0], apps[1]
    for app in apps:
        app.close()


def assert_same_index(*apps: Rift) -> None:
    states = [index_state(app) for app in apps]
    for state in states:
        assert state["chroma"] == state["keyword"] == state["sqlite"]
    assert all(s["chroma"] == states[0]["chroma"] for s in states)


def assert_both_read(a: Rift, b: Rift, text: str) -> None:
    """Both processes, caught up, read `text` for document "x" and hold the same index."""
    for app in (a, b):
        app.engine().shared.sync(force=True)
        assert app.engine().get_document("default", "x")[0] == text
    assert_same_index(a, b)


def test_two_rift_processes_see_each_others_writes(pair: tuple[Rift, Rift]) -> None:
    a, b = pair
    a.add_documents("default", docs(("cat", "the cat sat on the mat"), ("manual", LONG)))
    for mode, query in (("keyword", "cat mat"), ("vector", "the cat sat on the mat"), ("hybrid", "cat mat")):
        assert ids(b.search("default", query, k=1, mode=mode).outcome.hits) == ["cat"]
    assert ids(b.search("default", "gravel crossing", mode="keyword").outcome.hits) == ["manual"]

    b.add_documents("default", docs(("fish", "a blue fish in the sea")))
    assert ids(a.search("default", "fish sea", mode="keyword").outcome.hits) == ["fish"]
    assert ids(a.search("default", "a blue fish in the sea", k=1, mode="vector").outcome.hits) == ["fish"]

    # b replaces a's document, a deletes b's: each side sees the other's latest version only.
    b.add_documents("default", docs(("manual", "snow on the mountain pass")))
    a.delete_documents("default", ["fish"])
    for app in (a, b):
        for mode in ("keyword", "vector", "hybrid"):
            found = ids(app.search("default", "a blue fish in the sea", k=10, mode=mode).outcome.hits)
            assert "fish" not in found
        assert ids(app.search("default", "snow mountain", mode="keyword").outcome.hits) == ["manual"]
        assert app.search("default", "gravel crossing", mode="keyword").outcome.hits == []
        text, _, chunks, _ = app.engine().get_document("default", "manual")
        assert text == "snow on the mountain pass" and chunks == 1
    assert_same_index(a, b)
    assert [c["documents"] for c in a.stats()["collections"]] == [2]
    assert [c["documents"] for c in b.stats()["collections"]] == [2]

    # A collection created by one process appears in the other; deleting it removes it there too.
    a.add_documents("notes", docs(("n1", "python code on a server")))
    assert ids(b.search("notes", "python server", mode="keyword").outcome.hits) == ["n1"]
    a.engine().delete_collection("notes")
    b.engine().shared.sync(force=True)
    assert "notes" not in b.engine().collection_names()

    # The query logs stay per process.
    assert a.stats()["queries"]["logged_queries"] > 0 and b.stats()["queries"]["logged_queries"] > 0


def test_a_start_on_a_server_never_drops_a_collection_a_write_made(
    pair: tuple[Rift, Rift], tmp_path: Path, tiny_model_path: Path, chroma: ChromaServer
) -> None:
    """Alone on its store, a start drops an empty collection that a write made and was killed in before its
    commit (tests/test_recovery.py). On a server another process may have asked for it or be writing into it:
    a write marks nothing there, and a mark left from before the move only goes."""
    a, b = pair
    assert a.engine().create_collection("fresh", implicit=True)
    assert a.engine().state.setting_keys("created_by_write:") == []
    b.engine().shared.sync(force=True)
    assert "fresh" in b.engine().collection_names()
    b.engine().create_collection("fresh")  # b asks for it: it stays, empty
    a.engine().state.put_setting("created_by_write:fresh", "1")  # as a kill before the move to the server leaves
    a.close()
    again = open_rift(make_settings(tmp_path / "a", tiny_model_path, **http_overrides(chroma)))
    try:
        assert "fresh" in again.engine().collection_names()
        assert again.engine().state.setting_keys("created_by_write:") == []
        b.engine().shared.sync(force=True)
        assert "fresh" in b.engine().collection_names()
    finally:
        again.close()

def test_conflicting_writes_of_one_document_converge(pair: tuple[Rift, Rift], monkeypatch) -> None:
    """Two processes write the same id without seeing each other's write first: the later one wins in
    Chroma and in both keyword indices."""
    a, b = pair
    a.add_documents("default", docs(("doc", LONG)))
    b.engine().shared.sync(force=True)
    # b misses a's next write (as if both wrote at the same moment), then writes its own version.
    monkeypatch.setattr(b.engine().shared, "sync", lambda force=False: False)
    a.add_documents("default", docs(("doc", "version from a about the sea")))
    time.sleep(0.01)
    b.add_documents("default", docs(("doc", "version from b about snow")))
    monkeypatch.undo()
    for app in (a, b):
        app.engine().shared.sync(force=True)
        text, _, _, _ = app.engine().get_document("default", "doc")
        assert text == "version from b about snow"
        assert ids(app.search("default", "snow", mode="keyword").outcome.hits) == ["doc"]
        assert app.search("default", "sea gravel", mode="keyword").outcome.hits == []
    assert_same_index(a, b)
    assert len(index_state(a)["chroma"]) == 1


def slow_follower_pair(chroma: ChromaServer, tmp_path: Path, model: Path) -> tuple[Rift, Rift]:
    """a checks other writers before every search; b at most once a minute."""
    chroma.wipe()
    a = open_rift(make_settings(tmp_path / "a", model, **http_overrides(chroma)))
    b = open_rift(make_settings(tmp_path / "b", model, **http_overrides(chroma, chroma_sync_ms=60_000)))
    return a, b


def test_reads_follow_other_writers_within_the_sync_interval(
    chroma: ChromaServer, tmp_path: Path, tiny_model_path: Path
) -> None:
    a, b = slow_follower_pair(chroma, tmp_path, tiny_model_path)
    try:
        a.add_documents("default", docs(("cat", "the cat sat on the mat")))
        b.engine().shared.sync(force=True)
        a.add_documents("default", docs(("dog", "a dog on the road")))
        # Within the interval b answers from its last view (no request to the server)...
        assert b.search("default", "dog road", mode="keyword").outcome.hits == []
        checks = b.engine().shared.stats["checks"]
        assert b.search("default", "dog road", mode="keyword").outcome.hits == []
        assert b.engine().shared.stats["checks"] == checks
        # ...and a write, which always checks first, brings it up to date.
        b.add_documents("default", docs(("fish", "a blue fish")))
        assert ids(b.search("default", "dog road", mode="keyword").outcome.hits) == ["dog"]
    finally:
        a.close()
        b.close()


@pytest.mark.slow
@pytest.mark.anyio
async def test_rift_serve_processes_share_one_chroma_server(
    chroma: ChromaServer, tmp_path: Path, tiny_model_path: Path
) -> None:
    """Two real `rift serve` processes (streamable HTTP) on one Chroma server."""
    chroma.wipe()
    env = {
        "RIFT_VECTOR_BACKEND": "http",
        "RIFT_CHROMA_HOST": chroma.host,
        "RIFT_CHROMA_PORT": str(chroma.port),
        "RIFT_CHROMA_SYNC_MS": "0",
    }
    servers = [start_rift(tmp_path / name, tiny_model_path, env) for name in ("a", "b")]
    try:
        async with Client(servers[0].url) as a, Client(servers[1].url) as b:
            await call(a, "add_documents", documents=[{"id": "cat", "text": "the cat sat on the mat"}])
            await call(b, "add_documents", documents=[{"id": "fish", "text": "a blue fish in the sea"}])
            for client in (a, b):
                for mode in ("keyword", "vector"):
                    assert hit_ids(
                        await call(client, "hybrid_search", query="the cat sat on the mat", k=1, mode=mode)
                    ) == ["cat"]
                    assert hit_ids(
                        await call(client, "hybrid_search", query="a blue fish in the sea", k=1, mode=mode)
                    ) == ["fish"]
            await call(b, "delete_documents", ids=["cat"])
            found = await call(a, "hybrid_search", query="the cat sat on the mat", k=5)
            assert "cat" not in hit_ids(found)
            assert (await call(a, "stats"))["collections"][0]["documents"] == 1
    finally:
        for server in servers:
            assert stop(server.proc) in (0, -15)
    for server in servers:
        assert "Traceback" not in server.log.read_text()


def test_tenant_and_database_keep_deployments_apart(
    chroma: ChromaServer, tmp_path: Path, tiny_model_path: Path
) -> None:
    import chromadb
    from chromadb.config import Settings as ChromaSettings

    chroma.wipe()
    admin = chromadb.AdminClient(
        ChromaSettings(
            chroma_api_impl="chromadb.api.fastapi.FastAPI",
            chroma_server_host=chroma.host,
            chroma_server_http_port=chroma.port,
            anonymized_telemetry=False,
        )
    )
    database = f"team-{tmp_path.name[-12:].replace('_', '-')}"
    admin.create_database(database)
    app = open_rift(
        make_settings(tmp_path / "a", tiny_model_path, **http_overrides(chroma, chroma_database=database))
    )
    try:
        app.add_documents("default", docs(("cat", "the cat sat on the mat")))
        assert ids(app.search("default", "cat", mode="keyword").outcome.hits) == ["cat"]
    finally:
        app.close()
    theirs = chromadb.HttpClient(host=chroma.host, port=chroma.port, database=database)
    assert any(c.name.startswith("rift-default-") for c in theirs.list_collections())
    assert not any(c.name.startswith("rift-default-") for c in chroma.client().list_collections())
    # A database the server does not have is named at once (the server answered), not waited for.
    missing = make_settings(tmp_path / "b", tiny_model_path, **http_overrides(chroma, chroma_database="nope"))
    started = time.monotonic()
    failing = Rift(missing).start(background=True)
    try:
        with pytest.raises(RiftError, match=r"refused rift's connection: Database \[nope\] not found"):
            failing.engine(timeout=120)
    finally:
        failing.close()
    assert time.monotonic() - started < 30


def test_following_a_write_costs_its_size_not_the_collections(pair: tuple[Rift, Rift], monkeypatch) -> None:
    a, b = pair
    a.add_documents("default", docs(*((f"d{i}", f"the cat {i} sat on the mat") for i in range(30))))
    a.add_documents("notes", docs(("n0", "python code")))
    b.engine().shared.sync(force=True)
    full = b.engine().shared.stats["full_repairs"]

    def no_listing(*_args):
        raise AssertionError("a routine sync listed every chunk id")

    monkeypatch.setattr(b.engine().vectors, "all_ids", no_listing)
    a.add_documents("default", docs(("fish", "a blue fish in the sea"), ("d3", "now about snow")))
    a.delete_documents("default", ["d4"])
    assert ids(b.search("default", "fish sea", mode="keyword").outcome.hits) == ["fish"]
    assert ids(b.search("default", "snow", mode="keyword").outcome.hits) == ["d3"]
    assert "d4" not in ids(b.search("default", "the cat 4 sat on the mat", k=30, mode="vector").outcome.hits)
    assert b.engine().shared.stats["full_repairs"] == full
    # Nor when a also writes another collection in between: sequence numbers run per collection.
    for i in range(3):
        a.add_documents("default", docs((f"y{i}", "a dog on the road")))
        a.add_documents("notes", docs((f"m{i}", f"snow on mountain {i}")))
        b.engine().shared.sync(force=True)
    assert ids(b.search("notes", "snow mountain 2", k=1, mode="keyword").outcome.hits) == ["m2"]
    assert b.engine().shared.stats["full_repairs"] == full
    monkeypatch.undo()
    assert_same_index(a, b)

    # A gap in the change records (pruned, or a reader far behind) falls back to a full repair.
    a.add_documents("default", docs(("late", "the late train")))
    b.engine().shared._coll(CHANGES).delete(where={"writer": a.engine().shared.writer})
    assert ids(b.search("default", "late train", mode="keyword").outcome.hits) == ["late"]
    assert b.engine().shared.stats["full_repairs"] == full + 1
    assert_same_index(a, b)


def test_recovery_spares_an_identical_write_by_another_process(
    chroma: ChromaServer, tmp_path: Path, tiny_model_path: Path
) -> None:
    """Chunk ids derive from content: when a process dies mid-write and another writes the same document,
    the first one's journal roll-back at restart must not delete the other's acknowledged chunks."""
    chroma.wipe()
    settings_a = make_settings(tmp_path / "a", tiny_model_path, **http_overrides(chroma))
    a = open_rift(settings_a)
    b = open_rift(make_settings(tmp_path / "b", tiny_model_path, **http_overrides(chroma)))
    try:
        a.add_documents("default", docs(("seed", "the sea")))
        engine = a.engine()
        record = engine.state.collection("default")
        version = content_hash("the cat sat on the mat", {}, document_chunking(engine._chunking("default"), {}))
        rows = engine._chunk_rows([("x", "the cat sat on the mat", {}, version)])
        # a was killed after journaling this write (and perhaps upserting it), before committing it...
        engine.state.journal_begin(record.chroma_name, [r.chunk_id for r in rows], [])
        time.sleep(0.01)
        # ...then b writes the very same document and it is acknowledged.
        b.add_documents("default", docs(("x", "the cat sat on the mat")))
        assert {r.chunk_id for r in rows} <= set(engine.vectors.all_ids(record.chroma_name))
        a.close()
        a = open_rift(settings_a)
        assert a.repair_report["journal"] == 1
        for app in (a, b):
            assert ids(app.search("default", "cat mat", mode="keyword").outcome.hits) == ["x"]
            hits = app.search("default", "the cat sat on the mat", k=1, mode="vector").outcome.hits
            assert ids(hits) == ["x"]
    finally:
        a.close()
        b.close()


def test_a_model_switch_elsewhere_is_refused_not_mixed(pair: tuple[Rift, Rift], tmp_path: Path) -> None:
    """A retrain or model change in one process moves a collection to other vectors (the old ones kept): the
    other process can neither embed queries for them nor follow writes there, so it says so."""
    from server.engine.embedder import Embedder
    from server.engine.models import resolve_model
    from tests.support.tiny_model import build_tiny_model

    a, b = pair
    a.add_documents("default", docs(("cat", "the cat sat on the mat")))
    assert ids(b.search("default", "cat", mode="keyword").outcome.hits) == ["cat"]
    other = str(build_tiny_model(tmp_path / "other-model", hidden=48, seed=1))
    a.engine().reembed("default", Embedder(resolve_model(other), version=other), keep_old=True)
    with pytest.raises(RiftError, match="switched to model"):
        b.search("default", "cat", mode="hybrid")
    assert ids(a.search("default", "the cat sat on the mat", k=1, mode="vector").outcome.hits) == ["cat"]
    # Writes are refused too: they would land in vectors the serving process no longer reads.
    with pytest.raises(RiftError, match="switched to model"):
        b.add_documents("default", docs(("fish", "a blue fish in the sea")))
    with pytest.raises(RiftError, match="switched to model"):
        b.delete_documents("default", ["cat"])
    assert ids(a.search("default", "cat", mode="keyword").outcome.hits) == ["cat"]


@pytest.mark.parametrize("full", [False, True])
def test_a_switch_keeps_writes_of_a_process_still_on_the_old_model(
    pair: tuple[Rift, Rift], tmp_path: Path, monkeypatch, full: bool
) -> None:
    """The switching process catches up on other processes' writes before it switches, and on those a process
    still on the old model makes before it sees the switch; and it keeps serving."""
    from server.engine.embedder import Embedder
    from server.engine.models import resolve_model
    from tests.support.tiny_model import build_tiny_model

    a, b = pair
    a.add_documents("default", docs(("cat", "the cat sat on the mat"), ("dog", "a dog on the road")))
    b.add_documents("default", docs(("fish", "a blue fish in the sea")))  # a has not looked since
    other = str(build_tiny_model(tmp_path / "other-model", hidden=48, seed=1))
    a.engine().reembed("default", Embedder(resolve_model(other), version=other), keep_old=True)
    assert ids(a.search("default", "blue fish sea", mode="keyword").outcome.hits) == ["fish"]
    a.delete_documents("default", ["dog"])  # after the switch: the old vectors keep it, it must not come back
    if full:  # b's change records are gone (pruned): a copies what the old vectors got since the switch
        b.engine().shared._coll(CHANGES).delete(where={"writer": b.engine().shared.writer})
    # b writes before it has seen the switch: to the old vectors.
    shared = b.engine().shared
    monkeypatch.setattr(shared, "sync", lambda force=False: False)
    monkeypatch.setattr(shared, "check_served_here", lambda collection: None)
    b.add_documents(
        "default", docs(("eel", "an electric eel in the river"), ("cat", "the cat sleeps on the sofa"))
    )
    b.delete_documents("default", ["fish"])
    monkeypatch.undo()
    assert ids(a.search("default", "electric eel river", mode="keyword").outcome.hits) == ["eel"]
    assert ids(a.search("default", "an electric eel in the river", k=1, mode="vector").outcome.hits) == [
        "eel"
    ]
    assert a.engine().get_document("default", "cat")[0] == "the cat sleeps on the sofa"
    assert ids(a.search("default", "blue fish sea", mode="keyword").outcome.hits) == []
    assert ids(a.search("default", "dog road", mode="keyword").outcome.hits) == []
    state = index_state(a)
    assert state["chroma"] == state["keyword"] == state["sqlite"]
    a.add_documents("default", docs(("dog", "a dog on the road")))  # a serves on, reads and writes
    with pytest.raises(RiftError, match="switched to model"):
        b.search("default", "cat")


def test_a_write_undone_at_restart_is_undone_for_the_other_processes_too(
    chroma: ChromaServer, tmp_path: Path, tiny_model_path: Path
) -> None:
    chroma.wipe()
    settings_a = make_settings(tmp_path / "a", tiny_model_path, **http_overrides(chroma))
    a = open_rift(settings_a)
    b = open_rift(make_settings(tmp_path / "b", tiny_model_path, **http_overrides(chroma)))
    try:
        a.add_documents("default", docs(("x", "old text about a dog on the road")))
        engine = a.engine()
        record = engine.state.collection("default")
        version = content_hash("the cat sat on the mat", {}, document_chunking(engine._chunking("default"), {}))
        rows = engine._chunk_rows([("x", "the cat sat on the mat", {}, version)])
        old = [c for c in engine.state.chunk_ids("default") if c.startswith("x::")]
        # a dies between putting a new version into Chroma and committing it ...
        engine.state.journal_begin(record.chroma_name, [r.chunk_id for r in rows], old)
        vectors = engine.embedder.encode_documents([r.text for r in rows])
        engine.vectors.upsert(
            record.chroma_name,
            [r.chunk_id for r in rows],
            vectors,
            [r.text for r in rows],
            [r.metadata for r in rows],
        )
        a.close()
        b.engine().shared.refresh("default", record.chroma_name)  # ... b reads Chroma in full meanwhile
        assert b.engine().get_document("default", "x")[0] == "the cat sat on the mat"
        a = open_rift(settings_a)  # a's restart undoes the unfinished write, and says so
        assert a.repair_report["journal"] == 1
        assert ids(b.search("default", "cat mat", mode="keyword").outcome.hits) == []
        assert b.engine().get_document("default", "x")[0] == "old text about a dog on the road"
        assert_same_index(a, b)
    finally:
        a.close()
        b.close()


def test_document_reads_follow_other_writers(pair: tuple[Rift, Rift]) -> None:
    """get_document, list_documents and stats agree with searches: they catch up with other processes too."""
    from server.ingest.manage import get_document, list_collections, list_documents

    a, b = pair
    a.add_documents("default", docs(("cat", "the cat sat on the mat")))
    assert get_document(b, "default", "cat").text == "the cat sat on the mat"
    a.add_documents("default", docs(("cat", "the cat moved to the sofa"), ("new", "a new note")))
    assert get_document(b, "default", "cat").text == "the cat moved to the sofa"
    assert list_documents(b.engine(), "default", None)[0] == 2
    assert [c["documents"] for c in b.stats()["collections"]] == [2]
    a.add_documents("notes", docs(("n1", "python code")))
    from tools.prompts import _known

    _known(b.engine(), "notes")  # the ask prompt's check of its collection catches up too (it refused it)
    assert {c["name"] for c in list_collections(b.engine())} == {"default", "notes"}


def test_a_folder_sync_starts_from_other_processes_writes(pair: tuple[Rift, Rift], tmp_path: Path) -> None:
    """add_paths / rift watch compared the folder with this process's stale view of the collection: a document
    another process deleted read as unchanged and was never stored again, and a touched file's metadata was
    merged from stale metadata, dropping a key another process's agent had set."""
    import os

    from server.ingest.manage import get_document
    from server.ingest.security import PathPolicy
    from server.ingest.sync import sync_paths

    a, b = pair
    folder = tmp_path / "files"
    folder.mkdir()
    (folder / "x.txt").write_text("the cat sat on the mat")
    doc = str((folder / "x.txt").resolve())
    policy = PathPolicy.unrestricted()
    sync_paths(a.engine(), "files", [str(folder)], policy)
    b.delete_documents("files", [doc])
    report = sync_paths(a.engine(), "files", [str(folder)], policy)
    assert [f.status for f in report.files] == ["added"]
    assert get_document(b, "files", doc).text == "the cat sat on the mat"

    b.update_metadata("files", [doc], {"tag": "kept"}, [])
    os.utime(folder / "x.txt", (time.time() + 5, time.time() + 5))  # touched: same bytes, new mtime
    sync_paths(a.engine(), "files", [str(folder)], policy)
    assert get_document(b, "files", doc).metadata["tag"] == "kept"
    assert get_document(a, "files", doc).metadata["tag"] == "kept"


def test_a_delete_by_filter_spares_what_another_process_rewrote_meanwhile(
    pair: tuple[Rift, Rift], monkeypatch
) -> None:
    """a matches its filter on what it has synced; a document b rewrites after that (here: no longer tagged
    draft) is b's newer version, and a's delete must leave it."""
    from server.ingest.manage import list_documents

    a, b = pair
    a.add_documents("default", docs(("x", "the cat sat on the mat", {"tag": "draft"}), ("y", "a dog", {"tag": "draft"})))
    b.engine().follow_others()
    state = a.engine().state
    real = state.list_documents

    def listing(*args: Any) -> Any:
        out = real(*args)
        monkeypatch.setattr(state, "list_documents", real)
        b.update_metadata("default", ["x"], {"tag": "final"}, [])  # between a's match and its delete
        return out

    monkeypatch.setattr(state, "list_documents", listing)
    a.delete_matching("default", {"tag": "draft"})
    for app in (a, b):
        app.engine().follow_others()
        assert list_documents(app.engine(), "default", None)[1] == [("x", {"tag": "final"})]
    assert_same_index(a, b)


def test_a_store_moved_to_a_chroma_server_copies_its_vectors(
    chroma: ChromaServer, tmp_path: Path, tiny_model_path: Path, monkeypatch
) -> None:
    """Pointing an embedded data dir at a Chroma server puts its chunks there from rift's state: the vectors
    come from the embedded store the data dir still has (re-embedding 100K chunks takes hours on a CPU), and
    only chunks it lacks are embedded."""
    import numpy as np

    from server.engine.embedder import Embedder

    chroma.wipe()
    data = tmp_path / "data"
    app = open_rift(make_settings(data, tiny_model_path))
    try:
        app.add_documents("default", docs(("cat", "the cat sat on the mat"), ("dog", "a dog on the road")))
        app.add_documents("notes", docs(("n", "python code")))
        state = app.engine().state
        record = state.collection("default")
        cat, dog = (state.document_chunks("default", d)[0].chunk_id for d in ("cat", "dog"))
        local = app.engine().vectors.client.get_collection(record.chroma_name)
        before = local.get(ids=[cat], include=["embeddings"])
    finally:
        app.close()
    # The embedded store lost one chunk's vector: that one is embedded, the others copied.
    import chromadb
    from chromadb.config import Settings as ChromaSettings

    client = chromadb.PersistentClient(path=str(data / "chroma"), settings=ChromaSettings(anonymized_telemetry=False))
    client.get_collection(record.chroma_name).delete(ids=[dog])
    del client
    embedded: list[int] = []
    real = Embedder.encode_documents

    def counting(self, texts, *args, **kwargs):
        embedded.append(len(texts))
        return real(self, texts, *args, **kwargs)

    monkeypatch.setattr(Embedder, "encode_documents", counting)
    # chroma_host may be a whole URL, as Chroma's client allows (e.g. a server behind a path prefix).
    server = http_overrides(chroma, chroma_host=f"http://{chroma.host}:{chroma.port}")
    moved = open_rift(make_settings(data, tiny_model_path, **server))
    try:
        assert moved.repair_report["restored_to_chroma"] == {"default": 2, "notes": 1}
        assert moved.repair_report["copied_from_embedded_store"] == {"default": 1, "notes": 1}
        assert sum(embedded) == 1
        served = chroma.client().get_collection(record.chroma_name).get(ids=before["ids"], include=["embeddings"])
        assert np.allclose(served["embeddings"][0], before["embeddings"][0])
        assert ids(moved.search("default", "cat mat").outcome.hits)[0] == "cat"
        assert ids(moved.search("default", "dog road", mode="vector").outcome.hits)[0] == "dog"
        assert_same_index(moved)
    finally:
        moved.close()
    # Only the move itself reads the embedded store: what it holds may go stale afterwards (vectors dropped or
    # rewritten on the server only). A server that later loses its data gets every chunk embedded again.
    chroma.wipe()
    embedded.clear()
    again = open_rift(make_settings(data, tiny_model_path, **server))
    try:
        assert again.repair_report["restored_to_chroma"] == {"default": 2, "notes": 1}
        assert "copied_from_embedded_store" not in again.repair_report and sum(embedded) == 3
    finally:
        again.close()


@pytest.mark.parametrize("moved_by", ["this version", "an earlier version"])
def test_a_data_dir_back_from_a_chroma_server_brings_back_nothing_deleted_there(
    chroma: ChromaServer, tmp_path: Path, tiny_model_path: Path, moved_by: str
) -> None:
    """Set back to the embedded store after a time on a server, rift adopted what that store still held from
    before the move: a document deleted on the server came back, with the old version of one replaced there,
    and a collection deleted there came back whole. (A data dir moved by an earlier version has no marker of
    the move, only the server ids it noted.)"""
    from click.testing import CliRunner

    from server.cli import main

    chroma.wipe()
    data = tmp_path / "data"
    app = open_rift(make_settings(data, tiny_model_path))
    try:
        app.add_documents("default", docs(("keep", "a cat sat on the mat"), ("gone", "the dog ran to the river")))
        app.add_documents("default", docs(("edit", "apple banana orange")))
        app.add_documents("scratch", docs(("s", "a collection deleted on the server")))
    finally:
        app.close()
    on_server = open_rift(make_settings(data, tiny_model_path, **http_overrides(chroma)))
    try:
        on_server.delete_documents("default", ["gone"])
        on_server.add_documents("default", docs(("edit", "milk coffee tea sugar"), ("added", "quantum physics")))
        on_server.delete_collection("scratch")
        if moved_by == "an earlier version":
            on_server.engine().state.delete_setting("left_embedded_store")
    finally:
        on_server.close()
    # A command that only reads must not rewrite the store: it says what to run instead.
    refused = CliRunner().invoke(
        main, ["search", "dog river", "--data-dir", str(data)], env={"RIFT_MODEL": str(tiny_model_path)}
    )
    assert refused.exit_code == 1 and "comes back from a Chroma server" in refused.output, refused.output
    back = open_rift(make_settings(data, tiny_model_path))
    try:
        assert back.repair_report["added_from_chroma"] == 0
        assert back.repair_report["restored_to_chroma"] == {"default": 2}  # written on the server: embedded here
        assert len(back.repair_report["dropped_stale"]) == 1
        engine = back.engine()
        assert sorted(d for d, _ in engine.state.list_documents("default", -1, 0)) == ["added", "edit", "keep"]
        assert engine.collection_names() == ["default"]
        for mode in ("keyword", "vector", "hybrid"):
            for query in ("the dog ran to the river", "apple banana orange"):
                hits = back.search("default", query, mode=mode).outcome.hits
                assert {h.doc_id for h in hits} <= {"added", "edit", "keep"}
                assert [h.text for h in hits if h.doc_id == "edit"] in ([], ["milk coffee tea sugar"])
        assert ids(back.search("default", "dog river", mode="keyword").outcome.hits) == []
        assert ids(back.search("default", "milk coffee tea sugar", k=1, mode="vector").outcome.hits) == ["edit"]
        assert_same_index(back)
    finally:
        back.close()
    again = open_rift(make_settings(data, tiny_model_path))  # settled: an ordinary start now
    try:
        assert not again.repair_report.get("dropped_stale") and not again.repair_report.get("restored_to_chroma")
        assert sorted(d for d, _ in again.engine().state.list_documents("default", -1, 0)) == ["added", "edit", "keep"]
    finally:
        again.close()


def test_moving_to_a_server_that_has_the_collection_already_loses_nothing(
    chroma: ChromaServer, tmp_path: Path, tiny_model_path: Path
) -> None:
    """A data dir moved to a server where another data dir's collection of that name (and model) was already,
    or moved back to a server after writes in its embedded store, took the server's copy as the truth and
    dropped its own documents from its state."""
    chroma.wipe()
    http = http_overrides(chroma)

    def documents(app: Rift) -> list[str]:
        return sorted(d for d, _ in app.engine().state.list_documents("default", -1, 0))

    for name, doc in (("a", ("a1", "alpha one")), ("b", ("b1", "beta one"))):
        app = open_rift(make_settings(tmp_path / name, tiny_model_path))
        app.add_documents("default", docs(doc))
        app.close()
    a = open_rift(make_settings(tmp_path / "a", tiny_model_path, **http))
    try:
        b = open_rift(make_settings(tmp_path / "b", tiny_model_path, **http))
        try:
            assert documents(b) == ["a1", "b1"]
            a.engine().shared.sync(force=True)  # a, serving meanwhile, follows b's move
            assert documents(a) == ["a1", "b1"]
            assert_same_index(a, b)
        finally:
            b.close()
    finally:
        a.close()
    a = open_rift(make_settings(tmp_path / "a", tiny_model_path))  # back to its embedded store for a while
    try:
        a.add_documents("default", docs(("a2", "alpha two")))
    finally:
        a.close()
    a = open_rift(make_settings(tmp_path / "a", tiny_model_path, **http))
    try:
        assert documents(a) == ["a1", "a2", "b1"]
        assert ids(a.search("default", "alpha two", k=1, mode="keyword").outcome.hits) == ["a2"]
        assert_same_index(a)
    finally:
        a.close()


def test_a_process_that_adopted_a_collection_sees_its_chunking_change(
    chroma: ChromaServer, tmp_path: Path, tiny_model_path: Path
) -> None:
    """A process that learnt of a collection from another (adopted it) recorded no chunking for it: a later
    change of chunk_tokens went unnoticed there, and `rift rechunk` in it did nothing."""
    chroma.wipe()
    http = http_overrides(chroma)
    text = "the dogs were running to the rivers " * 30
    a = open_rift(make_settings(tmp_path / "a", tiny_model_path, **http))
    try:
        a.add_documents("default", docs(("d1", text)))
    finally:
        a.close()
    b = open_rift(make_settings(tmp_path / "b", tiny_model_path, **http))
    try:
        assert not b.engine().chunking_changed("default")  # adopted, cut as this process would cut it
        before = b.stats()["collections"][0]["chunks"]
    finally:
        b.close()
    b = open_rift(make_settings(tmp_path / "b", tiny_model_path, chunk_tokens=16, chunk_overlap=4, **http))
    try:
        engine = b.engine()
        assert engine.chunking_changed("default")
        assert engine.rechunk_if_changed("default") == 1  # what `rift rechunk` runs
        assert b.stats()["collections"][0]["chunks"] > before and not engine.chunking_changed("default")
    finally:
        b.close()


@pytest.mark.parametrize("front_matter", ["", "---\nweight: 0.5\nrating: 4.25\n---\n"])
def test_a_process_that_adopted_files_reads_their_float_metadata_back_exactly(
    chroma: ChromaServer, tmp_path: Path, tiny_model_path: Path, front_matter: str
) -> None:
    """Chroma gives floats back a few units in the last place off: a process that adopted folder-synced
    documents stored mtimes no file ever had (every sync read those files again, and called them
    "metadata refreshed"), and their versions hashed to no chunking (a warning to `rift rechunk` at every
    start, which then rewrote them all). With front matter's numbers beside the mtime, three floats were too
    many to try every combination of, and the drifted mtime stayed (helper AI)."""
    from server.ingest.security import PathPolicy
    from server.ingest.sync import sync_paths

    chroma.wipe()
    http = http_overrides(chroma)
    folder = tmp_path / "notes"
    folder.mkdir()
    for i, mtime in enumerate((1796442811.1965353, 1796444066.3178165, 1796444066.3178163, 1700000000.123456789)):
        note = folder / f"note{i}.md"
        note.write_text(f"{front_matter}# Note {i}\n\nThe river floods in spring, year {i}.\n")
        os.utime(note, (mtime, mtime))
    a = open_rift(make_settings(tmp_path / "a", tiny_model_path, allowed_roots=[tmp_path], **http))
    try:
        sync_paths(a.engine(), "files", [str(folder)], PathPolicy.for_server(a.settings))
        written = {d: m for d, m in a.engine().state.list_documents("files", -1, 0)}
        assert all(m.get("rating") == 4.25 for m in written.values()) == bool(front_matter)
    finally:
        a.close()
    b = open_rift(make_settings(tmp_path / "b", tiny_model_path, allowed_roots=[tmp_path], **http))
    try:
        engine = b.engine()
        assert dict(engine.state.list_documents("files", -1, 0)) == written
        assert not engine.chunking_changed("files")
        again = sync_paths(engine, "files", [str(folder)], PathPolicy.for_server(b.settings))
        assert {(f.status, f.reason) for f in again.files} == {("unchanged", None)}
    finally:
        b.close()
    # Either process exports the same file (Chroma also gives the keys back in its own order).
    from server.ingest.jsonl import export_documents, read_only_state

    def exported(data: Path) -> str:
        out, conn = io.StringIO(), read_only_state(data / "state.sqlite")
        try:
            export_documents(conn, "files", None, out)
        finally:
            conn.close()
        return out.getvalue()

    assert exported(tmp_path / "a") == exported(tmp_path / "b")


def store_two_collections(data: Path, model: Path) -> None:
    """An embedded store to move: "default" (a1, a2) and "notes" (n1)."""
    app = open_rift(make_settings(data, model))
    try:
        app.add_documents("default", docs(("a1", "alpha one"), ("a2", "alpha two")))
        app.add_documents("notes", docs(("n1", "note one")))
    finally:
        app.close()


def test_a_move_to_a_server_that_stops_part_way_is_finished_by_the_next_start(
    chroma: ChromaServer, tmp_path: Path, tiny_model_path: Path, monkeypatch
) -> None:
    """A move cut short (a command that only reads first; a failure while putting chunks on the server) had
    noted server ids on its way, so the next start was no longer a move: it took the server's copy as the
    truth and dropped what the move had yet to put there. And a name some rift process once deleted on the
    server made a moving data dir forget its own collection of that name."""
    from click.testing import CliRunner

    from server.cli import main
    from server.engine.engine import Engine

    chroma.wipe()
    http = http_overrides(chroma)
    scratch = open_rift(make_settings(tmp_path / "other", tiny_model_path, **http))
    try:
        scratch.add_documents("notes", docs(("x", "another data dir's notes")))
        scratch.add_documents("default", docs(("b1", "beta one")))
        scratch.delete_collection("notes")  # a deletion of that name is on record
    finally:
        scratch.close()
    data = tmp_path / "data"
    store_two_collections(data, tiny_model_path)
    env = {
        "RIFT_MODEL": str(tiny_model_path),
        "RIFT_VECTOR_BACKEND": "http",
        "RIFT_CHROMA_HOST": chroma.host,
        "RIFT_CHROMA_PORT": str(chroma.port),
        "RIFT_CHUNK_TOKENS": "48",
        "RIFT_CHUNK_OVERLAP": "8",
    }
    refused = CliRunner().invoke(main, ["search", "alpha", "--data-dir", str(data)], env=env)
    assert refused.exit_code == 1 and "is moving to the Chroma server" in refused.output, refused.output
    real = Engine._upsert_rows
    calls: list[str] = []

    def failing(self, chroma_name, rows, embeddings):
        calls.append(chroma_name)
        if len(calls) == 2:
            raise RuntimeError("the server went away")
        return real(self, chroma_name, rows, embeddings)

    monkeypatch.setattr(Engine, "_upsert_rows", failing)
    with pytest.raises(RiftError, match="the server went away"):
        open_rift(make_settings(data, tiny_model_path, **http))
    monkeypatch.setattr(Engine, "_upsert_rows", real)
    moved = open_rift(make_settings(data, tiny_model_path, **http))
    try:
        state = moved.engine().state
        assert sorted(d for d, _ in state.list_documents("default", -1, 0)) == ["a1", "a2", "b1"]
        assert sorted(d for d, _ in state.list_documents("notes", -1, 0)) == ["n1"]
        assert ids(moved.search("notes", "note one", mode="keyword").outcome.hits) == ["n1"]
        assert_same_index(moved)
        assert moved.engine().state.setting_keys("moving_to_server:") == []
        assert moved.engine().state.setting("left_embedded_store") is not None
    finally:
        moved.close()


def test_a_collection_refused_in_a_move_leaves_the_other_collections_moved(
    chroma: ChromaServer, tmp_path: Path, tiny_model_path: Path
) -> None:
    """One collection refused in a move (another process had switched it to another model) kept the whole data
    dir moving: every later start put its documents back on the server, those others had deleted meanwhile
    included. And a reindex in that data dir switched the refused collection from its own state, dropping the
    other process's documents from the server."""
    from server.learning.pipeline import load_embedder
    from tests.support.tiny_model import build_tiny_model

    chroma.wipe()
    http = http_overrides(chroma)
    other_model = build_tiny_model(tmp_path / "other-model", seed=1)
    data = tmp_path / "data"
    store_two_collections(data, tiny_model_path)
    b = open_rift(make_settings(tmp_path / "b", tiny_model_path, **http))
    try:
        b.add_documents("notes", docs(("bn", "beta note")))
        b.engine().reembed("notes", load_embedder(str(other_model), str(other_model), b.settings))
    finally:
        b.close()
    a = open_rift(make_settings(data, tiny_model_path, **http))  # notes refused, default moved
    try:
        assert sorted(d for d, _ in a.engine().state.list_documents("default", -1, 0)) == ["a1", "a2"]
        with pytest.raises(RiftError, match="switched to model"):
            a.engine().build_vectors("notes", load_embedder(str(other_model), str(other_model), a.settings))
    finally:
        a.close()
    c = open_rift(make_settings(tmp_path / "c", tiny_model_path, **http))
    try:
        c.delete_documents("default", ["a1"])
    finally:
        c.close()
    a = open_rift(make_settings(data, tiny_model_path, **http))
    try:
        assert sorted(d for d, _ in a.engine().state.list_documents("default", -1, 0)) == ["a2"]
        assert a.engine().state.setting_keys("moving_to_server:") == ["notes"]
    finally:
        a.close()
    b = open_rift(make_settings(tmp_path / "b", other_model, **http))
    try:
        assert sorted(d for d, _ in b.engine().state.list_documents("notes", -1, 0)) == ["bn"]
    finally:
        b.close()
    a = open_rift(make_settings(data, tiny_model_path, **http))
    try:
        a.delete_collection("notes")  # deleted (everywhere): its move is over too
    finally:
        a.close()
    a = open_rift(make_settings(data, tiny_model_path, **http))
    try:
        assert a.engine().state.setting_keys("moving_to_server:") == []
        assert a.engine().state.setting("left_embedded_store") is not None
    finally:
        a.close()


def test_an_unreachable_chroma_server_is_named(tmp_path: Path, tiny_model_path: Path) -> None:
    import socket

    import click

    from server.cli import open_rift as cli_open_rift
    from server.engine.vector_store import ChromaUnreachable, make_client

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]  # free once closed: nothing listens there
    settings = make_settings(tmp_path / "data", tiny_model_path, vector_backend="http", chroma_port=port)
    with pytest.raises(ChromaUnreachable, match=f"cannot reach the Chroma server at 127.0.0.1:{port}"):
        make_client(settings)  # one attempt: a server keeps trying (below), a CLI command fails at once
    with pytest.raises(click.ClickException, match=f"cannot reach the Chroma server at 127.0.0.1:{port}"):
        cli_open_rift(settings)


def waiting_message(app: Rift, within: float) -> str:
    """What a tool call hears while `app` waits for its Chroma server (fails unless it says so in time)."""
    deadline = time.monotonic() + within
    while True:
        try:
            app.engine(timeout=0.5)
        except RiftError as exc:
            if "waiting for its Chroma server" in str(exc):
                return str(exc)
        assert time.monotonic() < deadline, "no word of the unreachable Chroma server: start-up hung"


def run_chroma(path: Path, port: int) -> Any:
    """`chroma run` on a given port (a server started late, or started again where one stopped)."""
    import subprocess

    return subprocess.Popen(
        [str(chroma_binary()), "run", "--path", str(path), "--host", "127.0.0.1", "--port", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        stdin=subprocess.DEVNULL,
    )


def wait_open(app: Rift, within: float) -> None:
    """Wait until `app` has started; meanwhile tool calls may only say it waits for Chroma or loads."""
    deadline = time.monotonic() + within
    while True:
        try:
            app.engine(timeout=5)
            return
        except RiftError as exc:
            assert "waiting for its Chroma server" in str(exc) or "still loading" in str(exc), exc
            assert time.monotonic() < deadline, "rift did not start once its Chroma server answered"
            time.sleep(0.5)


def test_a_server_waits_for_a_chroma_server_that_comes_up_late(tmp_path: Path, tiny_model_path: Path) -> None:
    """A server started before its Chroma server (or while it is down) keeps trying, and starts when it
    answers; tool calls meanwhile say why at once instead of hanging, and a close meanwhile is prompt."""

    from server.bench.processes import free_port

    port = free_port()
    settings = make_settings(tmp_path / "data", tiny_model_path, vector_backend="http", chroma_port=port)
    app = Rift(settings).start(background=True)
    chroma_proc = None
    try:
        said = waiting_message(app, 30)
        assert f"127.0.0.1:{port}" in said and "keeps trying" in said
        chroma_proc = run_chroma(tmp_path / "db", port)
        wait_open(app, 90)
        app.add_documents("default", docs(("cat", "the cat sat on the mat")))
        assert ids(app.search("default", "cat mat").outcome.hits) == ["cat"]
    finally:
        app.close()
        if chroma_proc is not None:
            stop(chroma_proc)

    waiting = Rift(make_settings(tmp_path / "other", tiny_model_path, vector_backend="http", chroma_port=free_port()))
    waiting.start(background=True)
    while waiting._waiting is None:
        time.sleep(0.1)
    started = time.monotonic()
    waiting.close()
    assert time.monotonic() - started < 5
    with pytest.raises(RiftError, match="closed while waiting for the Chroma server"):
        waiting.engine()


def test_a_chroma_server_lost_during_start_up_repairs_is_waited_for(
    tmp_path: Path, tiny_model_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The Chroma server answers rift's first contact, then goes away while start-up repairs: a server waits
    for it (tool calls say why) and opens once it is back, instead of failing every call until a restart."""

    from server.engine.engine import Engine

    with chroma_server(tmp_path / "db") as own:
        settings = make_settings(tmp_path / "data", tiny_model_path, **http_overrides(own))
        first = open_rift(settings)
        first.add_documents("default", docs(("cat", "the cat sat on the mat")))
        first.close()
        real_open = Engine.open
        opened: list[int] = []

        def open_after_losing_the_server(self: Engine, *args: Any, **kwargs: Any) -> Any:
            opened.append(1)
            if len(opened) == 1:
                stop(own.proc)  # gone right after the client's first contact, before the repairs
            return real_open(self, *args, **kwargs)

        monkeypatch.setattr(Engine, "open", open_after_losing_the_server)
        app = Rift(settings).start(background=True)
        again = None
        try:
            said = waiting_message(app, 60)
            assert f"cannot reach the Chroma server at http://127.0.0.1:{own.port}" in said
            again = run_chroma(own.path, own.port)
            wait_open(app, 90)
            assert len(opened) == 2
            assert ids(app.search("default", "cat mat").outcome.hits) == ["cat"]
            app.add_documents("default", docs(("dog", "a dog on the road")))
            assert ids(app.search("default", "dog road").outcome.hits)[0] == "dog"
        finally:
            app.close()
            if again is not None:
                stop(again)


def test_a_start_up_request_slower_than_the_timeout_fails_start_up_once(
    tmp_path: Path, tiny_model_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A request of start-up's repairs that times out while the server still answers its heartbeat (a slow
    read of a large collection) fails start-up with the advice, once; it is not retried for ever."""
    import httpx

    from server.engine.engine import Engine
    from server.engine.vector_store import VectorStore

    with chroma_server(tmp_path / "db") as own:
        settings = make_settings(tmp_path / "data", tiny_model_path, **http_overrides(own, chroma_timeout_s=5))
        first = open_rift(settings)
        first.add_documents("default", docs(("cat", "the cat sat on the mat")))
        first.close()
        opened: list[int] = []
        real_open = Engine.open

        def counting_open(self: Engine, *args: Any, **kwargs: Any) -> Any:
            opened.append(1)
            return real_open(self, *args, **kwargs)

        def slow_read(self: VectorStore, name: str) -> Any:
            request = httpx.Request(
                "POST", f"http://127.0.0.1:{own.port}/api/v2/get", extensions={"timeout": {"read": 5.0}}
            )
            raise httpx.ReadTimeout("timed out", request=request)

        monkeypatch.setattr(Engine, "open", counting_open)
        monkeypatch.setattr(VectorStore, "all_ids", slow_read)
        app = Rift(settings).start(background=True)
        try:
            with pytest.raises(RiftError) as failed:
                app.engine(timeout=60)
            assert "rift failed to start: the Chroma server at" in str(failed.value)
            assert "did not answer within 5 s" in str(failed.value) and "chroma_timeout_s" in str(failed.value)
            assert opened == [1]
        finally:
            app.close()


def test_a_chroma_address_that_never_answers_is_waited_for_not_hung_on(
    tmp_path: Path, tiny_model_path: Path, monkeypatch
) -> None:
    """Something accepts connections at the address but never answers (Chroma's client has no time limit):
    tool calls still learn why at once, and a close is prompt."""
    import socket

    from server.engine import vector_store

    monkeypatch.setattr(vector_store, "PROBE_TIMEOUT_S", 0.5)
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)  # connections complete in the kernel's backlog; nothing ever reads or answers
        port = silent.getsockname()[1]
        app = Rift(make_settings(tmp_path / "data", tiny_model_path, vector_backend="http", chroma_port=port))
        app.start(background=True)
        try:
            assert "timed out" in waiting_message(app, 20).lower()
        finally:
            started = time.monotonic()
            app.close()
            assert time.monotonic() - started < 5


@pytest.mark.anyio
@pytest.mark.skipif(not hasattr(signal, "SIGSTOP"), reason="needs SIGSTOP to make the Chroma server hang")
async def test_a_chroma_server_that_stops_answering_fails_calls_in_time_and_is_used_again(
    tmp_path: Path, tiny_model_path: Path
) -> None:
    """A Chroma server that hangs while rift runs (here stopped: its port still accepts connections) costs a
    call at most chroma_timeout_s instead of blocking it (and the write lock) forever. Searches still answer
    from this process's copy, keyword side only, saying why and logging nothing; a vector search and a write
    fail naming the server. Once the server answers again, the same process carries on."""
    with chroma_server(tmp_path / "own-chroma") as own:
        settings = make_settings(tmp_path / "data", tiny_model_path, **http_overrides(own, chroma_timeout_s=1, chroma_sync_ms=0))
        async with Client(create_server(settings)) as client:
            await call(client, "add_documents", documents=[{"id": "cat", "text": "the cat sat on the mat"}])
            # (chroma_sync_ms=0: every search asks the server for other processes' writes, so a keyword search
            # right after the write reaches it too, rather than skipping a check made under 250 ms ago.)
            own.proc.send_signal(signal.SIGSTOP)
            # A call blocked on the server (no time limit) is let go after 30 s: it then succeeds, and fails here.
            resume = threading.Timer(30, own.proc.send_signal, (signal.SIGCONT,))
            resume.start()
            where = f"the Chroma server at http://127.0.0.1:{own.port} did not answer within 1 s"
            try:
                started = time.monotonic()
                for mode in ("keyword", "hybrid"):
                    found = await call(client, "hybrid_search", query="cat mat", mode=mode)
                    assert hit_ids(found) == ["cat"]
                    assert found["query_id"] is None and len(found["warnings"]) == 1, found
                    assert where in found["warnings"][0] and "keyword results only" in found["warnings"][0]
                    if mode == "hybrid":
                        hit = found["hits"][0]
                        assert hit["vector_rank"] is None and hit["keyword_rank"] == 1
                        assert found["disagreement"]["compared"] is False
                stats = await call(client, "stats")
                assert where in stats["chroma_unreachable"] and stats["collections"][0]["documents"] == 1
                # Reads answer from this process's copy too, saying why.
                doc = await call(client, "get_document", doc_id="cat")
                assert doc["text"] == "the cat sat on the mat" and where in doc["warnings"][0]
                listed = await call(client, "list_documents")
                assert [d["doc_id"] for d in listed["documents"]] == ["cat"] and where in listed["warnings"][0]
                catalog = await call(client, "list_collections")
                assert catalog["collections"][0]["name"] == "default" and where in catalog["warnings"][0]
                # The first search waited for the server; the next calls within the retry interval did not ask.
                assert time.monotonic() - started < 10
                for tool, args in (
                    ("hybrid_search", {"query": "cat mat", "mode": "vector"}),
                    ("add_documents", {"documents": [{"id": "dog", "text": "a dog on the road"}]}),
                ):
                    result = await client.call_tool(tool, args)
                    text = result.content[0].text  # type: ignore[union-attr]
                    assert result.is_error and "\n" not in text, text
                    assert where in text and "chroma_timeout_s" in text
            finally:
                resume.cancel()
                own.proc.send_signal(signal.SIGCONT)
            await call(client, "add_documents", documents=[{"id": "dog", "text": "a dog on the road"}])
            found = await call(client, "hybrid_search", query="dog road", mode="hybrid")
            assert hit_ids(found)[0] == "dog" and found["warnings"] == [] and found["query_id"] is not None
            assert found["hits"][0]["vector_rank"] is not None
            assert (await call(client, "stats"))["chroma_unreachable"] is None
            assert (await call(client, "get_document", doc_id="dog"))["warnings"] == []
            assert (await call(client, "list_documents"))["warnings"] == []


def test_a_hung_chroma_server_costs_one_timeout_and_one_caller(
    tmp_path: Path, tiny_model_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A search whose vector query hangs waits chroma_timeout_s once (not again for a check after it); once
    the retry interval has passed, one caller asks the server again while the others answer at once; and a
    hybrid search of a collection empty here is not logged either."""
    import server.engine.shared as shared_mod

    monkeypatch.setattr(shared_mod, "UNREACHABLE_RETRY_S", 1.0)
    with chroma_server(tmp_path / "own-chroma") as own:
        # chroma_sync_ms=5000: the search right after a check skips it and meets the hung server in its query.
        settings = make_settings(
            tmp_path / "data", tiny_model_path, **http_overrides(own, chroma_timeout_s=1, chroma_sync_ms=5000)
        )
        rift = open_rift(settings)
        try:
            rift.add_documents("default", docs(("cat", "the cat sat on the mat"), ("dog", "a dog on the road")))
            rift.add_documents("empty", docs(("cat", "the cat sat on the mat")))
            rift.delete_documents("empty", ["cat"])
            assert rift.search("default", "cat mat", 5, "hybrid").query_id is not None
            own.proc.send_signal(signal.SIGSTOP)
            try:
                started = time.monotonic()
                response = rift.search("default", "cat mat", 5, "hybrid")
                assert time.monotonic() - started < 1.9  # one chroma_timeout_s, not two
                assert response.query_id is None and response.outcome.warnings
                assert [h.doc_id for h in response.outcome.hits] == ["cat"]
                empty = rift.search("empty", "cat mat", 5, "hybrid")
                assert empty.query_id is None and empty.outcome.vector_skipped and empty.outcome.warnings
                time.sleep(1.1)  # the retry interval has passed
                took: list[float] = []

                def search() -> None:
                    began = time.monotonic()
                    rift.search("default", "cat", 5, "keyword")
                    took.append(time.monotonic() - began)

                threads = [threading.Thread(target=search) for _ in range(4)]
                for thread in threads:
                    thread.start()
                    time.sleep(0.05)
                for thread in threads:
                    thread.join()
                took.sort()
                assert took[-1] >= 0.9 and took[-2] < 0.5, took  # one asked the hung server; three did not wait
            finally:
                own.proc.send_signal(signal.SIGCONT)
        finally:
            rift.close()


def test_a_read_that_cannot_catch_up_answers_from_here_and_says_why(
    pair: tuple[Rift, Rift], chroma: ChromaServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """However catching up with the other processes fails (a dropped connection, or a timeout after the
    heads were read), a read answers from this process's copy with a warning naming the server, and the
    next read catches up."""
    import httpx

    from server.ingest.manage import caught_up, list_documents

    a, b = pair
    a.add_documents("default", docs(("cat", "the cat sat on the mat")))
    engine = a.engine()
    listing = caught_up(list_documents)
    b.add_documents("default", docs(("dog", "a dog on the road")))
    url = f"http://{chroma.host}:{chroma.port}/api/v2/heads"

    def dropped() -> Any:
        raise httpx.RemoteProtocolError("Server disconnected", request=httpx.Request("POST", url))

    def hung(*_args: Any) -> Any:
        raise httpx.ReadTimeout("timed out", request=httpx.Request("POST", url))

    for name, failure, said in (
        ("read", dropped, "the connection to the Chroma server at"),
        ("_touched", hung, "did not answer"),
    ):
        with monkeypatch.context() as patch:
            patch.setattr(engine.shared, name, failure)
            (total, page, _), warnings = listing(engine, "default", None)
        assert [d for d, _ in page] == ["cat"] and total == 1
        (warning,) = warnings
        assert said in warning and f"{chroma.host}:{chroma.port}" in warning
    (total, page, _), warnings = listing(engine, "default", None)
    assert [d for d, _ in page] == ["cat", "dog"] and warnings == []


def test_a_chroma_server_lost_in_the_middle_of_a_search_leaves_its_keyword_side(
    chroma: ChromaServer, tmp_path: Path, tiny_model_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The server answered the check before the search but fails the vector query: a hybrid search answers
    from its keyword side (not logged), a vector search fails naming the server, and searches skip the server
    for UNREACHABLE_RETRY_S, until a call reaches it again."""
    import httpx

    import server.engine.shared as shared_mod
    from server.ingest.manage import complete_doc_ids

    chroma.wipe()
    rift = open_rift(make_settings(tmp_path / "data", tiny_model_path, **http_overrides(chroma)))
    try:
        rift.add_documents("default", docs(("cat", "the cat sat on the mat"), ("dog", "a dog on the road")))
        engine = rift.engine()
        url = f"http://{chroma.host}:{chroma.port}/api/v2/query"
        refused = httpx.ConnectError("[Errno 111] Connection refused", request=httpx.Request("POST", url))

        def down(*_a: Any, **_k: Any) -> Any:
            raise refused

        monkeypatch.setattr(engine.vectors, "query", down)
        response = rift.search("default", "cat mat", 5, "hybrid")
        assert response.query_id is None and not response.logged
        assert [h.doc_id for h in response.outcome.hits] == ["cat"]
        assert response.outcome.vector_skipped and response.outcome.hits[0].vector_rank is None
        (warning,) = response.outcome.warnings
        assert f"cannot reach the Chroma server at http://{chroma.host}:{chroma.port}" in warning
        assert not response.disagreement.compared
        with pytest.raises(RiftError, match="a vector search needs the Chroma server"):
            rift.search("default", "cat mat", 5, "vector")
        # Within the retry interval the server is not asked again, even for the check before a search.
        reads: list[int] = []
        real_read = engine.shared.read
        monkeypatch.setattr(engine.shared, "read", lambda: reads.append(1) or real_read())
        assert rift.search("default", "cat", 5, "keyword").outcome.warnings == [warning]
        assert reads == []
        # Once the interval has passed, a search asks the server again and uses it (here: it answers).
        monkeypatch.undo()
        monkeypatch.setattr(shared_mod, "UNREACHABLE_RETRY_S", 0.0)
        engine.shared.note_unreachable(refused, time.monotonic())
        time.sleep(0.01)
        # A completion never is the call that asks: it answers at once from here.
        monkeypatch.setattr(engine.shared, "read", lambda: reads.append(1) or real_read())
        assert complete_doc_ids(engine, "default", "c", 10) == (["cat"], 1) and reads == []
        response = rift.search("default", "cat mat", 5, "hybrid")
        assert reads  # the search asked
        assert response.outcome.warnings == [] and response.query_id is not None
        assert response.outcome.hits[0].vector_rank == 1
    finally:
        rift.close()


def test_a_failed_announcement_does_not_fail_the_write_and_is_paid_later(
    pair: tuple[Rift, Rift], monkeypatch
) -> None:
    a, b = pair
    a.add_documents("default", docs(("cat", "the cat sat on the mat")))
    assert ids(b.search("default", "cat", mode="keyword").outcome.hits) == ["cat"]  # b is up to date
    heads = a.engine().shared._coll(HEADS)
    real, calls = heads.upsert, []

    def flaky(*args: Any, **kwargs: Any) -> Any:
        calls.append(1)
        if len(calls) == 1:
            raise ConnectionError("network blip")
        return real(*args, **kwargs)

    monkeypatch.setattr(heads, "upsert", flaky)
    statuses = a.add_documents("default", docs(("dog", "a dog on the road")))  # committed: no error
    assert [s.status for s in statuses] == ["added"]
    assert b.search("default", "dog road", mode="keyword").outcome.hits == []  # not announced yet
    a.search("default", "cat", mode="keyword")  # a's next sync pays the announcement it owes
    assert ids(b.search("default", "dog road", mode="keyword").outcome.hits) == ["dog"]
    assert not a.engine().shared._owed


def test_a_chroma_server_lost_around_a_write_is_logged_in_one_line_not_a_traceback(
    chroma: ChromaServer, tmp_path: Path, tiny_model_path: Path, monkeypatch, caplog
) -> None:
    """The clean-ups after a commit (and a rollback) logged httpx's whole traceback when the server went away,
    which a `rift add` user saw on the terminal; the sweep also counted chunks as documents ("672 written
    documents" for 32 files)."""
    import logging

    import httpx

    chroma.wipe()
    app = open_rift(make_settings(tmp_path / "data", tiny_model_path, **http_overrides(chroma)))
    try:
        app.add_documents("default", docs(("manual", LONG)))
        request = httpx.Request("POST", "http://chroma.internal:8000/api/v2/collections")

        def refused(*args: Any, **kwargs: Any) -> Any:
            raise httpx.ConnectError("[Errno 111] Connection refused", request=request)

        vectors = app.engine().vectors
        monkeypatch.setattr(vectors, "delete", refused)
        with caplog.at_level(logging.WARNING, logger="server.engine.engine"):
            app.add_documents("default", docs(("manual", LONG.replace("gravel", "sand"))))  # committed
            monkeypatch.setattr(vectors, "upsert", refused)
            with pytest.raises(httpx.ConnectError):
                app.add_documents("default", docs(("manual", LONG.replace("gravel", "clay"))))
        logged = [r for r in caplog.records if r.name == "server.engine.engine"]
        messages = [r.getMessage() for r in logged]
        assert any(m.startswith("removing replaced chunks of write") for m in messages), messages
        assert any(m.startswith("removing other versions of 1 written document(s) failed: ") for m in messages)
        assert any(m.startswith("rollback of write") for m in messages), messages
        for record in logged:
            assert record.exc_info is None, record.getMessage()
            assert "cannot reach the Chroma server at http://chroma.internal:8000 (" in record.getMessage()
    finally:
        monkeypatch.undo()
        app.close()


def test_a_restart_follows_deletes_and_switches_made_while_down(
    chroma: ChromaServer, tmp_path: Path, tiny_model_path: Path
) -> None:
    """While b is down, a deletes one collection and switches another to a new model, dropping the old
    vectors. b's restart drops the deleted one (not re-created empty) and refuses the switched one (not served
    empty, and its old vectors not re-created), leaving a's data alone."""
    from server.engine.embedder import Embedder
    from server.engine.models import resolve_model
    from tests.support.tiny_model import build_tiny_model

    chroma.wipe()
    settings = {n: make_settings(tmp_path / n, tiny_model_path, **http_overrides(chroma)) for n in ("a", "b")}
    a, b = open_rift(settings["a"]), open_rift(settings["b"])
    try:
        a.add_documents("default", docs(("cat", "the cat sat on the mat")))
        a.add_documents("notes", docs(("n1", "python code on a server")))
        assert ids(b.search("notes", "python", mode="keyword").outcome.hits) == ["n1"]
        assert ids(b.search("default", "cat", mode="keyword").outcome.hits) == ["cat"]
        b.close()
        a.engine().delete_collection("notes")
        other = str(build_tiny_model(tmp_path / "other-model", hidden=48, seed=1))
        a.engine().reembed("default", Embedder(resolve_model(other), version=other), keep_old=False)
        chroma_before = sorted(name for name, _ in a.engine().vectors.list_collections())
        b = open_rift(settings["b"])
        assert b.repair_report["deleted_elsewhere"] == ["notes"]
        assert "notes" not in b.engine().collection_names()
        with pytest.raises(RiftError, match="switched to model"):
            b.search("default", "cat", mode="keyword")
        assert sorted(name for name, _ in b.engine().vectors.list_collections()) == chroma_before
        assert ids(a.search("default", "the cat sat on the mat", k=1, mode="vector").outcome.hits) == ["cat"]
    finally:
        a.close()
        b.close()


def test_a_copied_data_dir_is_another_writer_so_the_original_sees_its_model_switch(
    chroma: ChromaServer, tmp_path: Path, tiny_model_path: Path, caplog
) -> None:
    """A data dir copied (cp -a) to start a second process carries the writer id. Bound to the folder it was
    made in, the copy writes as a new writer: its model switch reaches the original, which refuses the
    collection as for any other process, instead of taking the switch for its own announcement and searching
    the old vectors while later writes split the collection (found by helper BU)."""
    import logging
    import shutil

    from server.engine.embedder import Embedder
    from server.engine.models import resolve_model
    from tests.support.tiny_model import build_tiny_model

    chroma.wipe()
    first = make_settings(tmp_path / "a", tiny_model_path, **http_overrides(chroma))
    a = open_rift(first)
    a.add_documents("default", docs(("cat", "the cat sat on the mat")))
    writer = a.engine().shared.writer
    a.close()
    shutil.copytree(tmp_path / "a", tmp_path / "b", symlinks=True)  # as cp -a
    with caplog.at_level(logging.WARNING, logger="server.engine.shared"):
        b = open_rift(first.model_copy(update={"data_dir": tmp_path / "b"}))
    a = open_rift(first)
    try:
        assert a.engine().shared.writer == writer != b.engine().shared.writer
        assert any("copied" in r.getMessage() and "as a new writer" in r.getMessage() for r in caplog.records)
        other = str(build_tiny_model(tmp_path / "other-model", hidden=48, seed=1))
        b.engine().reembed("default", Embedder(resolve_model(other), version=other), keep_old=True)
        with pytest.raises(RiftError, match="switched to model"):
            a.search("default", "cat", mode="hybrid")
        a.close()
        a = open_rift(first)  # and at its next start
        with pytest.raises(RiftError, match="switched to model"):
            a.search("default", "cat", mode="hybrid")
        with pytest.raises(RiftError, match="switched to model"):
            a.add_documents("default", docs(("fish", "a blue fish in the sea")))
    finally:
        a.close()
        b.close()


@pytest.mark.parametrize("switched", [False, True])
def test_a_data_dir_moved_to_another_file_system_serves_on_as_a_new_writer(
    chroma: ChromaServer, tmp_path: Path, tiny_model_path: Path, switched: bool
) -> None:
    """Moved to another file system (copied, the original removed), a data dir gets a new writer id: its own
    earlier announcements read as another process's, which neither refuses its collection (also after a model
    switch of its own, whose old vectors were kept) nor keeps it from following and being followed."""
    import shutil

    from server.engine.embedder import Embedder
    from server.engine.models import resolve_model
    from tests.support.tiny_model import build_tiny_model

    chroma.wipe()
    model = tiny_model_path
    a = open_rift(make_settings(tmp_path / "a", model, **http_overrides(chroma)))
    a.add_documents("default", docs(("cat", "the cat sat on the mat")))
    a.add_documents("default", docs(("dog", "a dog on the road")))
    if switched:
        model = build_tiny_model(tmp_path / "other-model", hidden=48, seed=1)
        a.engine().reembed("default", Embedder(resolve_model(str(model)), version=str(model)), keep_old=True)
        a.add_documents("default", docs(("eel", "an electric eel in the river")))
    writer = a.engine().shared.writer
    a.close()
    shutil.copytree(tmp_path / "a", tmp_path / "elsewhere" / "a", symlinks=True)
    shutil.rmtree(tmp_path / "a")
    moved = open_rift(make_settings(tmp_path / "elsewhere" / "a", model, **http_overrides(chroma)))
    b = open_rift(make_settings(tmp_path / "b", model, **http_overrides(chroma)))
    try:
        assert moved.engine().shared.writer != writer
        assert moved.repair_report["reembedded"] == []
        assert moved.engine().shared.problem("default") is None
        assert ids(moved.search("default", "the cat sat on the mat", k=1, mode="hybrid").outcome.hits) == ["cat"]
        _writes_reach_each_other(moved, b)
    finally:
        moved.close()
        b.close()


def _writes_reach_each_other(x: Rift, y: Rift, first_mode: str = "hybrid") -> None:
    """A document x adds is found by y once y follows, and the other way round; then both index alike."""
    x.add_documents("default", docs(("owl", "an owl hunts at night")))
    y.engine().follow_others()
    assert ids(y.search("default", "owl night", k=1, mode=first_mode).outcome.hits) == ["owl"]
    y.add_documents("default", docs(("ant", "ants carry leaves")))
    x.engine().follow_others()
    assert ids(x.search("default", "ants leaves", k=1, mode="hybrid").outcome.hits) == ["ant"]
    assert_same_index(x, y)


def test_the_writer_id_stays_with_its_folder(tmp_path: Path, caplog) -> None:
    """Kept in its folder however it is reached or moved within its file system, and after a remount that
    numbers the device anew; adopted as it is from a data dir without a home (an earlier version's); new in
    a copy."""
    import logging
    import shutil

    from server.engine.shared import WRITER_HOME, writer_id

    data = tmp_path / "data"
    made = writer_id(data)
    assert writer_id(data) == made
    (tmp_path / "link").symlink_to(data)
    assert writer_id(tmp_path / "link") == made
    data.rename(tmp_path / "renamed")
    assert writer_id(tmp_path / "renamed") == made
    (tmp_path / "renamed").rename(data)
    assert writer_id(data) == made
    home = json.loads((data / WRITER_HOME).read_text())
    (data / WRITER_HOME).write_text(json.dumps({**home, "device": home["device"] + 1}))  # a remount
    assert writer_id(data) == made
    (data / WRITER_HOME).unlink()  # an earlier version's data dir
    assert writer_id(data) == made
    assert json.loads((data / WRITER_HOME).read_text())["id"] == made
    shutil.copytree(data, tmp_path / "copy")
    with caplog.at_level(logging.WARNING, logger="server.engine.shared"):
        fresh = writer_id(tmp_path / "copy")
    assert fresh != made and writer_id(tmp_path / "copy") == fresh
    assert str(data.resolve()) in caplog.text and "as a new writer" in caplog.text
    assert writer_id(data) == made


def test_a_new_or_wiped_chroma_server_gets_the_store_uploaded_not_emptied(
    chroma: ChromaServer, tmp_path: Path, tiny_model_path: Path
) -> None:
    """rift pointed at a Chroma server that lacks its collections, with no rift process having deleted them
    there (a new server, or one whose data was lost), embeds its documents again from their stored text
    instead of forgetting them as "deleted elsewhere". A collection another process deleted still goes."""
    chroma.wipe()
    settings = {n: make_settings(tmp_path / n, tiny_model_path, **http_overrides(chroma)) for n in ("a", "b")}
    a = open_rift(settings["a"])
    try:
        a.add_documents("default", docs(("cat", "the cat sat on the mat"), ("manual", LONG)))
        a.add_documents("notes", docs(("n1", "python code on a server")))
        before = index_state(a)
    finally:
        a.close()
    chroma.wipe()  # the server's data is gone (or rift now points at a new server)
    with pytest.raises(
        RiftError, match=r"Chroma has lost \d+ chunks \(2 documents\) of collection 'default'"
    ):
        Rift(settings["a"]).start(background=False, reembed=False)  # a command that only reads
    assert not [
        n
        for n in chroma.client().list_collections()
        if str(getattr(n, "name", n)).startswith("rift-default-")
    ]
    a = open_rift(settings["a"])
    b = open_rift(settings["b"])  # a fresh process on the same server sees what a put back
    try:
        assert a.repair_report["deleted_elsewhere"] == []
        assert set(a.repair_report["restored_to_chroma"]) == {"default", "notes"}
        assert index_state(a) == before
        for app in (a, b):
            assert ids(app.search("default", "the cat sat on the mat", k=1, mode="vector").outcome.hits) == [
                "cat"
            ]
            assert ids(app.search("notes", "python server", k=1, mode="hybrid").outcome.hits) == ["n1"]
        b.close()
        a.engine().delete_collection("notes")  # deleted by a rift process: b drops it too when it restarts
        b = open_rift(settings["b"])
        assert b.repair_report["deleted_elsewhere"] == ["notes"]
        assert b.engine().collection_names() == ["default"]
    finally:
        a.close()
        b.close()


def test_a_chroma_server_wiped_while_rift_runs_loses_no_document(
    chroma: ChromaServer, tmp_path: Path, tiny_model_path: Path
) -> None:
    """The server loses its data while two processes run: they keep their documents (searches say what
    happened instead of failing on stale handles), and a restart uploads them again for both."""
    a, b = slow_follower_pair(chroma, tmp_path, tiny_model_path)
    try:
        a.add_documents(
            "default", docs(("cat", "the cat sat on the mat"), ("fish", "a blue fish in the sea"))
        )
        b.engine().shared.sync(force=True)
        assert ids(b.search("default", "cat", mode="keyword").outcome.hits) == ["cat"]
        chroma.wipe()
        for app in (a, b):
            app.engine().shared.sync(force=True)
            with pytest.raises(RiftError, match="restart"):
                app.search("default", "the cat sat on the mat", mode="vector")
            assert app.engine().state.counts("default") == (2, 2)
        settings = a.settings
        a.close()
        a = open_rift(settings)
        assert a.repair_report["restored_to_chroma"] == {"default": 2}
        b.engine().shared.sync(force=True)
        for app in (a, b):
            assert ids(app.search("default", "the cat sat on the mat", k=1, mode="vector").outcome.hits) == [
                "cat"
            ]
        a.add_documents("default", docs(("owl", "an owl hunts at night")))
        b.engine().shared.sync(force=True)
        assert ids(b.search("default", "owl night", k=1, mode="hybrid").outcome.hits) == ["owl"]
    finally:
        a.close()
        b.close()


def test_stats_names_a_collection_whose_vectors_the_server_lost(
    chroma: ChromaServer, tmp_path: Path, tiny_model_path: Path, caplog
) -> None:
    """stats showed such a collection as healthy (its counts alone), and its message read "the Chroma server no
    longer has collection 'default''s vectors ...: restart it" without saying what to restart."""
    import logging

    from tools.stats import StatsResult

    chroma.wipe()
    app = open_rift(make_settings(tmp_path / "data", tiny_model_path, **http_overrides(chroma)))
    try:
        app.add_documents("default", docs(("cat", "the cat sat on the mat")))
        app.add_documents("other", docs(("owl", "an owl hunts at night")))
        assert [c["problem"] for c in app.stats()["collections"]] == [None, None]
        chroma.wipe()  # the server loses its data
        with caplog.at_level(logging.WARNING, logger="server.engine.shared"):
            stats = StatsResult(**app.stats())  # (the tool's output model keeps the field)
        problems = {c.name: c.problem for c in stats.collections}
        assert [c.documents for c in stats.collections] == [1, 1]  # kept
        assert problems["other"] is not None and problems["other"].startswith("collection 'other': "), problems
        assert problems["default"] == (
            "collection 'default': the Chroma server no longer has its vectors (its data was lost or replaced) and "
            "no rift process deleted them; rift keeps the documents: restart rift to embed them again from their "
            "stored text"
        ), problems
        assert "''s" not in caplog.text and "collection 'default': the Chroma server no longer has its" in caplog.text
    finally:
        app.close()


def test_an_interrupted_re_upload_is_finished_by_the_next_start(
    chroma: ChromaServer, tmp_path: Path, tiny_model_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A start that embeds a lost collection again is cut short (killed, out of memory): the collection it
    made on the server is partial or empty, and the next start must finish the upload, not read that as
    "every document deleted". The same when the start was on a new model, re-embedding everything."""
    from server.engine.engine import Engine
    from tests.support.tiny_model import build_tiny_model

    chroma.wipe()
    settings = make_settings(tmp_path / "a", tiny_model_path, **http_overrides(chroma))
    a = open_rift(settings)
    a.add_documents("default", docs(("cat", "the cat sat on the mat"), ("fish", "a blue fish in the sea")))
    a.close()
    other = str(build_tiny_model(tmp_path / "other-model", hidden=48, seed=1))
    for method, config in (
        ("_embed_into", settings),
        ("build_vectors", settings.model_copy(update={"model": other})),
    ):
        chroma.wipe()

        def killed(*args: Any, **kwargs: Any) -> None:
            raise RuntimeError("killed while embedding")

        with monkeypatch.context() as patch:
            patch.setattr(Engine, method, killed)
            with pytest.raises(RiftError, match="killed"):
                open_rift(config)
        a = open_rift(settings)
        try:
            assert a.engine().state.counts("default") == (2, 2), (method, a.repair_report)
            hits = a.search("default", "the cat sat on the mat", k=1, mode="vector").outcome.hits
            assert ids(hits) == ["cat"]
        finally:
            a.close()


def test_after_a_wipe_each_process_puts_back_what_only_it_holds(
    chroma: ChromaServer, tmp_path: Path, tiny_model_path: Path
) -> None:
    """The first process to put a lost collection back (or to write to it anew) does not decide what the
    others keep: each adds the chunks the server lacks from its own state instead of reading the
    collection back without them."""
    a, b = slow_follower_pair(chroma, tmp_path, tiny_model_path)
    c = None
    try:
        a.add_documents("default", docs(("cat", "the cat sat on the mat")))
        b.engine().shared.sync(force=True)
        a.add_documents("default", docs(("owl", "an owl hunts at night")))  # b has not followed this yet
        chroma.wipe()
        settings = b.settings
        b.close()
        b = open_rift(settings)  # b restarts first and puts back what it holds: "cat"
        a.engine().shared.sync(force=True)  # a adds "owl" rather than forgetting it
        assert a.engine().state.counts("default")[0] == 2
        b.engine().shared.sync(force=True)
        assert ids(b.search("default", "owl night", k=1, mode="keyword").outcome.hits) == ["owl"]

        chroma.wipe()  # again; now a process that never had "default" writes to it first
        c = open_rift(make_settings(tmp_path / "c", tiny_model_path, **http_overrides(chroma)))
        c.add_documents("default", docs(("ant", "ants carry leaves")))
        a.engine().shared.sync(force=True)
        assert a.engine().state.counts("default")[0] == 3
        c.engine().shared.sync(force=True)
        assert ids(c.search("default", "the cat sat on the mat", k=1, mode="hybrid").outcome.hits) == ["cat"]
    finally:
        for app in (a, b, c):
            if app is not None:
                app.close()


def test_a_collection_deleted_after_a_model_switch_stays_deleted(
    chroma: ChromaServer, tmp_path: Path, tiny_model_path: Path
) -> None:
    """While b is down, a switches a collection to another model (dropping the vectors b knows) and then
    deletes it: b forgets it too, rather than taking the missing vectors for a server that lost them."""
    from server.engine.embedder import Embedder
    from server.engine.models import resolve_model
    from tests.support.tiny_model import build_tiny_model

    chroma.wipe()
    settings = {n: make_settings(tmp_path / n, tiny_model_path, **http_overrides(chroma)) for n in ("a", "b")}
    a, b = open_rift(settings["a"]), open_rift(settings["b"])
    try:
        a.add_documents("default", docs(("cat", "the cat sat on the mat")))
        assert ids(b.search("default", "cat", mode="keyword").outcome.hits) == ["cat"]
        b.close()
        other = str(build_tiny_model(tmp_path / "other-model", hidden=48, seed=1))
        a.engine().reembed("default", Embedder(resolve_model(other), version=other), keep_old=False)
        a.engine().delete_collection("default")
        b = open_rift(settings["b"])
        assert b.repair_report["deleted_elsewhere"] == ["default"]
        assert b.engine().collection_names() == [] and not b.repair_report.get("restored_to_chroma")
        a.engine().shared.sync(force=True)
        assert a.engine().collection_names() == []
    finally:
        a.close()
        b.close()


def test_a_lost_collection_serves_again_once_embedded_anew(
    chroma: ChromaServer, tmp_path: Path, tiny_model_path: Path
) -> None:
    """However a lost collection gets whole vectors again (a restart on another model, a reindex while
    running, a restart when it holds no document), it is served again, and a retrain's rankings on it are
    refused meanwhile rather than making it empty on the server."""
    from server.engine.embedder import Embedder
    from server.engine.models import resolve_model
    from tests.support.tiny_model import build_tiny_model

    chroma.wipe()
    settings = make_settings(tmp_path / "a", tiny_model_path, **http_overrides(chroma))
    other = str(build_tiny_model(tmp_path / "other-model", hidden=48, seed=1))
    a = open_rift(settings)
    try:
        a.add_documents("default", docs(("cat", "the cat sat on the mat")))
        a.add_documents("notes", docs(("n1", "python code on a server")))
        a.delete_documents("notes", ["n1"])
        chroma.wipe()
        a.engine().shared.sync(force=True)
        engine = a.engine()
        with pytest.raises(RiftError, match="restart rift to embed them again"):
            engine.vector_ranking("default", engine.embedder, "cat", 5)  # what a retrain's gate does
        engine.reembed("default", Embedder(resolve_model(other), version=other), keep_old=True)
        assert ids(a.search("default", "the cat sat on the mat", k=1, mode="vector").outcome.hits) == ["cat"]
    finally:
        a.close()
    chroma.wipe()
    a = open_rift(settings)  # back on the first model; "notes" holds no document
    try:
        assert a.repair_report["reembedded"] == ["default"]
        assert ids(a.search("default", "the cat sat on the mat", k=1, mode="vector").outcome.hits) == ["cat"]
        a.add_documents("notes", docs(("n2", "a dog on the road")))
        assert ids(a.search("notes", "dog road", k=1, mode="hybrid").outcome.hits) == ["n2"]
    finally:
        a.close()


def rift_collections(chroma: ChromaServer, collection: str) -> list[str]:
    names = (str(getattr(c, "name", c)) for c in chroma.client().list_collections())
    return sorted(n for n in names if n.startswith(f"rift-{collection}-"))


def test_deletions_win_over_putting_lost_collections_back(
    chroma: ChromaServer, tmp_path: Path, tiny_model_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A collection deleted by a rift process stays deleted however the deletion and a lost server meet: a
    delete while the server had lost it, a delete during another process's start, a re-embed of it built
    by a process that had not seen the delete yet, and a store from before ids were remembered."""
    import sqlite3

    from server.engine.embedder import Embedder
    from server.engine.models import resolve_model
    from server.engine.shared import SharedSync
    from server.errors import NotFoundError
    from tests.support.tiny_model import build_tiny_model

    a, b = slow_follower_pair(chroma, tmp_path, tiny_model_path)
    try:
        # Deleted by b while the server had lost it: a's restart does not put it back.
        a.add_documents("default", docs(("cat", "the cat sat on the mat")))
        b.engine().shared.sync(force=True)
        chroma.wipe()
        b.engine().shared.sync(force=True)
        assert b.engine().shared.lost("default")
        b.engine().delete_collection("default")
        settings = {"a": a.settings, "b": b.settings}
        a.close()
        a = open_rift(settings["a"])
        assert "default" not in a.engine().collection_names() and rift_collections(chroma, "default") == []

        # Deleted by a while b starts (after b listed the server): b does not make it again, empty.
        a.add_documents("notes", docs(("n1", "python code on a server")))
        b.engine().shared.sync(force=True)
        b.close()
        listed = SharedSync.gone_while_down

        def then_a_deletes(self: SharedSync) -> list[str]:
            found = listed(self)
            a.engine().delete_collection("notes")
            return found

        with monkeypatch.context() as patch:
            patch.setattr(SharedSync, "gone_while_down", then_a_deletes)
            b = open_rift(settings["b"])
        assert b.repair_report["deleted_elsewhere"] == ["notes"]
        assert "notes" not in b.engine().collection_names() and rift_collections(chroma, "notes") == []

        # Re-embedded by b for another model after a deleted it: the vectors b built do not stay behind.
        a.add_documents("docs", docs(("d1", "a dog on the road")))
        b.engine().shared.sync(force=True)
        a.engine().delete_collection("docs")
        other = str(build_tiny_model(tmp_path / "other-model", hidden=48, seed=1))
        with pytest.raises(NotFoundError):
            b.engine().reembed("docs", Embedder(resolve_model(other), version=other))
        assert rift_collections(chroma, "docs") == []

        # b's store predates remembered ids, and a deletes while b is down: b forgets it too.
        a.add_documents("old", docs(("o1", "an owl hunts at night")))
        b.engine().shared.sync(force=True)
        b.close()
        with sqlite3.connect(str(settings["b"].state_db)) as conn:
            conn.execute("DELETE FROM settings WHERE key LIKE 'chroma_id:%'")
        a.engine().delete_collection("old")
        b = open_rift(settings["b"])
        assert b.repair_report["deleted_elsewhere"] == ["old"] and not b.repair_report.get(
            "restored_to_chroma"
        )
        assert b.engine().collection_names() == [] and rift_collections(chroma, "old") == []
    finally:
        a.close()
        b.close()


def test_after_a_wipe_two_starts_follow_each_others_restores(
    chroma: ChromaServer, tmp_path: Path, tiny_model_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """a and b restart together after a wipe, b's restore landing while a repairs: a still reads what only b
    held. And a command that only reads, on a store whose collection another process has put back whole,
    runs instead of refusing."""
    from server.engine.shared import SharedSync

    chroma.wipe()
    sa = make_settings(tmp_path / "a", tiny_model_path, **http_overrides(chroma, chroma_sync_ms=60_000))
    sb = make_settings(tmp_path / "b", tiny_model_path, **http_overrides(chroma))
    a, b = open_rift(sa), open_rift(sb)
    a.add_documents("default", docs(("cat", "the cat sat on the mat")))
    b.engine().shared.sync(force=True)
    b.add_documents("default", docs(("owl", "an owl hunts at night")))  # a has not followed this
    a.close()
    b.close()
    chroma.wipe()
    prime, started = SharedSync.prime, []

    def b_starts_meanwhile(self: SharedSync) -> None:
        if self.engine.settings.data_dir == sa.data_dir and not started:
            started.append(open_rift(sb))  # b puts back "cat" and "owl" and announces it
        prime(self)

    with monkeypatch.context() as patch:
        patch.setattr(SharedSync, "prime", b_starts_meanwhile)
        a = open_rift(sa)
    b = started[0]
    try:
        assert ids(a.search("default", "owl night", k=1, mode="keyword").outcome.hits) == ["owl"]
    finally:
        a.close()
        b.close()
    chroma.wipe()
    b = open_rift(sb)  # puts everything back
    try:
        Rift(sa).start(background=False, reembed=False).close()  # a's store lacks nothing on the server
    finally:
        b.close()


def test_a_process_restarted_on_the_model_switched_to_elsewhere_serves_it(
    chroma: ChromaServer, tmp_path: Path, tiny_model_path: Path
) -> None:
    """a switches a collection to a model under its own version name (as a retrain's `ft-…` or a reindex's
    `rx-…`); b, restarted with a copy of that model's folder as its `model`, serves the switched vectors and
    follows a's writes, where before it refused the collection for the name."""
    import shutil

    from server.engine.embedder import Embedder
    from server.engine.models import resolve_model
    from tests.support.tiny_model import build_tiny_model

    chroma.wipe()
    settings = {n: make_settings(tmp_path / n, tiny_model_path, **http_overrides(chroma)) for n in ("a", "b")}
    a, b = open_rift(settings["a"]), open_rift(settings["b"])
    try:
        a.add_documents(
            "default", docs(("cat", "the cat sat on the mat"), ("fish", "a blue fish in the sea"))
        )
        assert ids(b.search("default", "cat", mode="keyword").outcome.hits) == ["cat"]
        other = str(build_tiny_model(tmp_path / "other-model", hidden=48, seed=1))
        a.engine().reembed("default", Embedder(resolve_model(other), version="rx-test"), keep_old=True)
        b.close()
        b = open_rift(settings["b"])  # restarted on its old model: still refused
        with pytest.raises(RiftError, match="switched to model"):
            b.search("default", "cat", mode="hybrid")  # its old vectors were kept, but nobody writes them
        a.engine().follow_others()
        assert ids(a.search("default", "the cat sat on the mat", k=1, mode="hybrid").outcome.hits) == ["cat"]
        b.close()
        copied = str(shutil.copytree(other, tmp_path / "copied-model"))  # as on another host
        b = open_rift(settings["b"].model_copy(update={"model": copied}))
        served = a.engine().state.collection("default")
        mine = b.engine().state.collection("default")
        assert mine.chroma_name == served.chroma_name and mine.model_version == copied
        assert b.repair_report["reembedded"] == []  # a's vectors are used, not re-embedded
        hits = b.search("default", "the cat sat on the mat", k=1, mode="vector").outcome.hits
        assert ids(hits) == ["cat"]
        _writes_reach_each_other(a, b, first_mode="keyword")
    finally:
        a.close()
        b.close()


def test_a_process_on_a_copy_of_the_model_in_another_folder_serves_the_shared_collection(
    chroma: ChromaServer, tmp_path: Path, tiny_model_path: Path
) -> None:
    """Hosts rarely keep a model folder at the same path: b, configured with a byte-identical copy of a's
    model, serves and writes a's collection (its vectors are those weights') instead of refusing it as
    another model's."""
    import shutil

    from tests.support.tiny_model import build_tiny_model

    chroma.wipe()
    copied = shutil.copytree(tiny_model_path, tmp_path / "elsewhere" / "model")
    a = open_rift(make_settings(tmp_path / "a", tiny_model_path, **http_overrides(chroma)))
    b = None
    try:
        a.add_documents(
            "default", docs(("cat", "the cat sat on the mat"), ("fish", "a blue fish in the sea"))
        )
        b = open_rift(make_settings(tmp_path / "b", copied, **http_overrides(chroma)))
        assert b.repair_report["reembedded"] == []
        assert ids(b.search("default", "the cat sat on the mat", k=1, mode="vector").outcome.hits) == ["cat"]
        b.add_documents("default", docs(("owl", "an owl hunts at night")))
        a.engine().follow_others()
        assert ids(a.search("default", "owl night", k=1, mode="hybrid").outcome.hits) == ["owl"]
        assert_same_index(a, b)
        b.close()
        # Other weights are another model: refused, named as served elsewhere (not switched), not re-embedded.
        other = build_tiny_model(tmp_path / "other-model", hidden=48, seed=1)
        b = open_rift(make_settings(tmp_path / "b", other, **http_overrides(chroma)))
        with pytest.raises(RiftError, match="is served with model .* by another rift process"):
            b.search("default", "cat", mode="keyword")
        assert b.repair_report["reembedded"] == []
    finally:
        a.close()
        if b is not None:
            b.close()


def test_within_the_sync_interval_new_and_deleted_collections_are_looked_up_not_failed(
    chroma: ChromaServer, tmp_path: Path, tiny_model_path: Path
) -> None:
    from server.errors import NotFoundError

    a, b = slow_follower_pair(chroma, tmp_path, tiny_model_path)
    try:
        a.add_documents("default", docs(("cat", "the cat sat on the mat")))
        b.engine().shared.sync(force=True)
        a.add_documents("notes", docs(("n1", "python code on a server")))
        # b checked moments ago, yet finds the collection a has just created
        assert ids(b.search("notes", "python server", mode="hybrid").outcome.hits) == ["n1"]
        a.engine().delete_collection("notes")
        # ...and says a deleted one is unknown, not Chroma's "Collection [uuid] does not exist"
        with pytest.raises(NotFoundError, match="unknown collection 'notes'"):
            b.search("notes", "python server", mode="vector")
        # Deleted and created again under the same name: b's vector side looks again instead of failing.
        a.add_documents("notes", docs(("n1", "python code on a server")))
        b.search("notes", "python server", mode="vector")
        a.engine().delete_collection("notes")
        a.add_documents("notes", docs(("n2", "a dog on the road")))
        # ... and answers from the new one at once (it answered [] once: its keyword view predated the sync)
        assert ids(b.search("notes", "a dog on the road", mode="vector").outcome.hits) == ["n2"]
        assert ids(b.search("notes", "a dog on the road", mode="hybrid").outcome.hits) == ["n2"]
    finally:
        a.close()
        b.close()


def test_a_vector_search_of_a_collection_made_again_empty_elsewhere_finds_nothing(
    chroma: ChromaServer, tmp_path: Path, tiny_model_path: Path
) -> None:
    """Deleted and made again, empty, by another process: the slow follower's vector search answers no hit
    (it asked Chroma for 0 results, which Chroma refuses)."""
    chroma.wipe()
    exact_off = {"exact_search_max_chunks": 0}
    a = open_rift(make_settings(tmp_path / "a", tiny_model_path, **http_overrides(chroma, **exact_off)))
    b = open_rift(
        make_settings(
            tmp_path / "b", tiny_model_path, **http_overrides(chroma, chroma_sync_ms=600_000, **exact_off)
        )
    )
    try:
        a.add_documents("default", docs(("cat", "the cat sat on the mat"), ("dog", "a dog in the fog")))
        b.engine().shared.sync(force=True)
        assert ids(b.search("default", "the cat sat", k=1, mode="vector").outcome.hits) == ["cat"]
        a.engine().delete_collection("default")
        a.engine().create_collection("default")
        assert b.search("default", "the cat sat", k=1, mode="vector").outcome.hits == []
    finally:
        a.close()
        b.close()


def test_a_chunking_change_is_done_once_by_rechunk_and_followed_elsewhere(
    chroma: ChromaServer, tmp_path: Path, tiny_model_path: Path, caplog
) -> None:
    """Sharing a Chroma server, start-up only warns about new chunk settings (every process would re-chunk
    at once); `rift rechunk` in one process splits the documents again, and another process, which has followed
    those writes, then finds nothing to rewrite."""
    chroma.wipe()
    first = [open_rift(make_settings(tmp_path / n, tiny_model_path, **http_overrides(chroma))) for n in "ab"]
    first[0].add_documents("default", docs(("manual", LONG), ("cat", "the cat sat on the mat")))
    before = first[1].engine().get_document("default", "manual")[2]
    for app in first:
        app.close()
    changed = {"chunk_tokens": 16, "chunk_overlap": 4, **http_overrides(chroma)}
    a, b = (open_rift(make_settings(tmp_path / n, tiny_model_path, **changed)) for n in "ab")
    try:
        assert "rift rechunk" in caplog.text
        assert a.engine().rechunk_if_changed("default") == 2
        b.engine().shared.sync(force=True)
        assert b.engine().get_document("default", "manual")[2] > before  # b follows the new chunks
        assert b.engine().rechunk_if_changed("default") == 0
        assert not a.engine().chunking_changed("default") and not b.engine().chunking_changed("default")
        assert ids(b.search("default", "gravel river crossing", mode="keyword").outcome.hits) == ["manual"]
        assert_same_index(a, b)
    finally:
        a.close()
        b.close()


def test_resources_and_their_completion_see_other_processes_collections(pair: tuple[Rift, Rift]) -> None:
    from server.ingest.manage import collection_names, complete_doc_ids, resource_page

    a, b = pair
    b.add_documents("default", docs(("x", "x")))
    a.add_documents("notes", docs(("n1", "python code")))  # b has not looked since
    assert collection_names(b.engine()) == ["default", "notes"]
    assert complete_doc_ids(b.engine(), "notes", "n", 10) == (["n1"], 1)
    assert [(c, e.doc_id) for c, e in resource_page(b.engine(), None, 10)[0]] == [("default", "x"), ("notes", "n1")]


def test_an_export_without_a_server_here_catches_up_with_the_others_first(
    chroma: ChromaServer, tmp_path: Path, tiny_model_path: Path, monkeypatch
) -> None:
    """Sharing a Chroma server, a data dir's state lags the other processes' writes while no server runs on it:
    `rift export` starts it once to catch up, so the file holds what the shared collection holds."""
    from click.testing import CliRunner

    from server.cli import main

    chroma.wipe()
    a = open_rift(make_settings(tmp_path / "a", tiny_model_path, **http_overrides(chroma)))
    a.add_documents("default", docs(("cat", "the cat sat on the mat")))
    a.close()
    b = open_rift(make_settings(tmp_path / "b", tiny_model_path, **http_overrides(chroma)))
    try:
        b.add_documents("default", docs(("fish", "a blue fish in the sea")))
        b.delete_documents("default", ["cat"])
        for key, value in {
            "model": tiny_model_path, "chunk_tokens": 48, "chunk_overlap": 8, **http_overrides(chroma)
        }.items():
            monkeypatch.setenv(f"RIFT_{key.upper()}", str(value))
        result = CliRunner().invoke(main, ["export", "--data-dir", str(tmp_path / "a")])
        assert result.exit_code == 0, result.output
        assert [json.loads(line)["id"] for line in result.stdout.splitlines()[1:-1]] == ["fish"]
    finally:
        b.close()
    # With the server unreachable, the data dir cannot catch up: export is how a store is rescued then, so it
    # exports what it holds, and says so (it refused, with every document in its state.sqlite).
    monkeypatch.setenv("RIFT_CHROMA_PORT", "1")
    result = CliRunner().invoke(main, ["export", "--data-dir", str(tmp_path / "b")])
    assert result.exit_code == 0, result.output
    assert [json.loads(line)["id"] for line in result.stdout.splitlines()[1:-1]] == ["fish"]
    assert "exporting what this data dir holds, without catching up first: " in result.stderr
    assert "cannot reach the Chroma server" in result.stderr


def test_a_collection_deleted_here_takes_and_names_what_others_wrote_to_it(
    chroma: ChromaServer, tmp_path: Path, tiny_model_path: Path
) -> None:
    """A delete is a write: it catches up with the other processes first, whatever the sync interval, so it
    deletes a collection made elsewhere, and the doc_ids it names (announced to listening clients) include
    the documents written elsewhere since this process last looked."""
    a, b = slow_follower_pair(chroma, tmp_path, tiny_model_path)
    try:
        a.add_documents("kb", docs(("a", "the first note")))
        b.engine().shared.sync(force=True)
        a.add_documents("kb", docs(("late", "written by the other process")))
        a.add_documents("kb2", docs(("z", "a collection made elsewhere")))
        removed: list[str] = []
        info = b.delete_collection("kb", removed)
        assert sorted(removed) == ["a", "late"] and info.documents == 2
        assert b.delete_collection("kb2").documents == 1
        a.engine().shared.sync(force=True)
        assert {"kb", "kb2"}.isdisjoint(a.engine().collection_names() + b.engine().collection_names())
    finally:
        a.close()
        b.close()


def test_a_collection_deleted_elsewhere_mid_read_stays_deleted_and_fails_no_other_read(
    pair: tuple[Rift, Rift],
) -> None:
    """Another process deletes a collection right after this one listed the server's collections, while it
    follows a write to it: a search of another collection still answers, and the deleted collection is
    neither made again (empty) on the server nor kept here."""
    a, b = pair
    a.add_documents("default", docs(("d", "a dog in the house")))
    a.add_documents("c1", docs(("x", "a cat on the mat")))
    b.engine().shared.sync(force=True)
    a.add_documents("c1", docs(("y", "another cat")))  # b has this write of c1 to follow
    vectors = b.engine().vectors
    listed = vectors.collection_ids

    def then_deleted() -> dict[str, str]:
        found = listed()
        vectors.collection_ids = listed  # (the retry lists again, unpatched)
        a.delete_collection("c1")
        return found

    vectors.collection_ids = then_deleted  # type: ignore[method-assign]
    assert ids(b.search("default", "dog", mode="keyword").outcome.hits) == ["d"]
    assert "c1" not in b.engine().collection_names()
    for app in (a, b):
        app.engine().shared.sync(force=True)
        assert app.engine().collection_names() == ["default"]
    assert not [name for name, _ in a.engine().vectors.list_collections() if name.startswith("rift-c1")]


def test_the_last_of_two_writes_of_one_document_at_once_wins_and_leaves_one_version(
    pair: tuple[Rift, Rift], monkeypatch: pytest.MonkeyPatch
) -> None:
    """a writes a document while b embeds its own version of it: b's write lands last, so its version wins
    everywhere, and a's chunks do not stay in Chroma (they took places in its answers that no search shows:
    a vector search of a one-chunk collection found nothing)."""
    a, b = pair
    a.add_documents("default", docs(("x", "the seed version")))
    b.engine().shared.sync(force=True)
    embedder = b.engine().embedder
    encode = embedder.encode_documents

    def while_embedding(texts: Any, *args: Any, **kwargs: Any) -> Any:
        monkeypatch.setattr(embedder, "encode_documents", encode)
        a.add_documents("default", docs(("x", "the alpha version about cats")))
        return encode(texts, *args, **kwargs)

    monkeypatch.setattr(embedder, "encode_documents", while_embedding)
    b.add_documents("default", docs(("x", "the beta version about dogs")))
    for app in (a, b):
        app.engine().shared.sync(force=True)
        assert app.engine().get_document("default", "x")[0] == "the beta version about dogs"
        hits = app.search("default", "the beta version about dogs", k=1, mode="vector").outcome.hits
        assert ids(hits) == ["x"]
    assert_same_index(a, b)
    assert len(index_state(a)["chroma"]) == 1


def _a_stamp_chroma_returns_off(app: Rift) -> float:
    """A time stamp (just after now) that the Chroma server hands back a few units in the last place off, as
    it does for about one float in nine."""
    probe = app.engine().vectors.client.get_or_create_collection("stamp-probe", embedding_function=None)
    try:
        tried = [time.time() + 1.0 + i * 1e-6 for i in range(400)]
        probe.upsert(ids=[str(i) for i in range(400)], embeddings=[[1.0]] * 400, metadatas=[{"t": t} for t in tried])
        got = probe.get(ids=[str(i) for i in range(400)], include=["metadatas"])
        back = {int(i): m["t"] for i, m in zip(got["ids"], got["metadatas"], strict=True)}
        return next(t for i, t in enumerate(tried) if back[i] != t)
    finally:
        app.engine().vectors.client.delete_collection("stamp-probe")


@pytest.mark.parametrize("stamp", ["exact", "off"])
def test_a_write_undone_after_reaching_chroma_is_undone_for_the_other_processes_too(
    pair: tuple[Rift, Rift], monkeypatch: pytest.MonkeyPatch, stamp: str
) -> None:
    """a's write fails after its chunks reached Chroma, while b reads the collection in full (a restart, or a
    gap in the change records): b follows the undo, rather than keep showing the version that never was.
    "off": the write's stamp comes back from Chroma a few ULPs off; the undo took its chunks for another
    process's and left them, so b (and a after a restart) showed the version that never was (helper AH)."""
    import server.engine.engine as engine_module

    a, b = pair
    a.add_documents("default", docs(("x", "the first version about a cat")))
    b.engine().shared.sync(force=True)
    chroma_name = a.engine().state.collection("default").chroma_name
    apply = a.engine().state.apply
    if stamp == "off":
        pinned = _a_stamp_chroma_returns_off(a)

        class PinnedClock:
            def __getattr__(self, name: str) -> Any:
                return getattr(time, name)

            @staticmethod
            def time() -> float:
                return pinned

        monkeypatch.setattr(engine_module, "time", PinnedClock())

    def fails_after_b_read(*args: Any, **kwargs: Any) -> Any:
        monkeypatch.setattr(a.engine().state, "apply", apply)
        monkeypatch.setattr(engine_module, "time", time)
        b.engine().shared.refresh("default", chroma_name)
        raise RuntimeError("state write failed")

    monkeypatch.setattr(a.engine().state, "apply", fails_after_b_read)
    with pytest.raises(RuntimeError, match="state write failed"):
        a.add_documents("default", docs(("x", "the second version about a dog")))
    left = a.engine().vectors.where_ids(chroma_name, {"_rift_doc": "x"})
    assert len(left) == 1  # version 1's one chunk: the undone write's are gone from Chroma
    for app in (a, b):
        app.engine().shared.sync(force=True)
        assert app.engine().get_document("default", "x")[0] == "the first version about a cat"
        assert app.search("default", "dog", mode="keyword").outcome.hits == []
    assert_same_index(a, b)
    a.engine().shared.refresh("default", chroma_name)  # a full repair, as at a restart
    assert a.engine().get_document("default", "x")[0] == "the first version about a cat"


@pytest.mark.parametrize("then", ["write", "sync"])
def test_an_undo_the_server_failed_is_finished_without_a_restart(
    pair: tuple[Rift, Rift], monkeypatch: pytest.MonkeyPatch, then: str
) -> None:
    """a's write failed and so did its undo (the Chroma server died between them): the undo waited for a's next
    start, which for a server can be weeks, and every process that read the collection meanwhile served the
    documents whose write had failed (helper DE). a now finishes it at its next write or sync once the server
    answers, and tells the others."""
    a, b = pair
    a.add_documents("default", docs(("x", "a kept note about cats")))
    chroma_name = a.engine().state.collection("default").chroma_name
    apply, delete = a.engine().state.apply, a.engine().vectors.delete

    def fails(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("state write failed")

    def unreachable(*args: Any, **kwargs: Any) -> Any:
        raise ConnectionError("the Chroma server died")

    monkeypatch.setattr(a.engine().state, "apply", fails)
    monkeypatch.setattr(a.engine().vectors, "delete", unreachable)
    with pytest.raises(RuntimeError, match="state write failed"):
        a.add_documents("default", docs(("y", "a failed write about snow")))
    monkeypatch.setattr(a.engine().state, "apply", apply)
    monkeypatch.setattr(a.engine().vectors, "delete", delete)
    b.engine().shared.refresh("default", chroma_name)  # a full read, as a process that joins now makes
    assert b.engine().state.doc_hashes("default", ["y"])  # (what Chroma holds: the failed write's chunks)
    if then == "write":
        a.add_documents("default", docs(("z", "a later write about birds")))
    else:
        # A search's sync does not wait behind a write in flight for it (that write finishes it first).
        held, release = threading.Event(), threading.Event()

        def writing() -> None:
            with a.engine()._write_lock:
                held.set()
                release.wait(30)

        writer = threading.Thread(target=writing)
        writer.start()
        held.wait(30)
        started = time.monotonic()
        a.engine().shared.sync(force=True)
        assert time.monotonic() - started < 5 and a.engine().state.journal_pending()
        release.set()
        writer.join()
        a.engine().shared.sync(force=True)
    assert not a.engine().state.journal_pending()
    assert not a.engine().vectors.where_ids(chroma_name, {"_rift_doc": "y"})
    b.engine().shared.sync(force=True)
    assert not b.engine().state.doc_hashes("default", ["y"])
    assert b.search("default", "snow", mode="keyword").outcome.hits == []
    assert_same_index(a, b)


def fail_write_and_its_undo(app: Rift, monkeypatch: pytest.MonkeyPatch, text: str, meanwhile: Any = None) -> None:
    """A write of document "y" whose commit fails (after `meanwhile()`, if given) and whose undo cannot reach
    the server: its journal entry is owed."""
    engine = app.engine()
    apply, get, delete = engine.state.apply, engine.vectors.get, engine.vectors.delete

    def unreachable(*args: Any, **kwargs: Any) -> Any:
        raise ConnectionError("the Chroma server died")

    def fails(*args: Any, **kwargs: Any) -> Any:
        if meanwhile is not None:
            meanwhile()
        monkeypatch.setattr(engine.vectors, "get", unreachable)
        monkeypatch.setattr(engine.vectors, "delete", unreachable)
        raise RuntimeError("state write failed")

    monkeypatch.setattr(engine.state, "apply", fails)
    with pytest.raises(RuntimeError, match="state write failed"):
        app.add_documents("default", docs(("y", text)))
    monkeypatch.setattr(engine.state, "apply", apply)
    monkeypatch.setattr(engine.vectors, "get", get)
    monkeypatch.setattr(engine.vectors, "delete", delete)
    assert engine.state.journal_pending()


def test_the_retry_of_a_failed_undo_spares_the_same_text_another_process_committed(
    pair: tuple[Rift, Rift], monkeypatch: pytest.MonkeyPatch
) -> None:
    """a and b write the same text of "y" at once: b stamped its version first and uploaded it after a did, then
    committed it. a's commit fails; its undo would spare b's chunks (their stamp is not a's), but it cannot reach
    the server, and its retry took every chunk stamped before a's journal entry: b's committed "y" was gone for
    every process (helper DF)."""
    import time as real_time

    import server.engine.engine as engine_module

    a, b = pair
    a.add_documents("default", docs(("x", "a kept note about cats")))
    b.engine().shared.sync(force=True)

    class Earlier:  # b's clock: it stamped its version before a did
        def __getattr__(self, name: str) -> Any:
            return getattr(real_time, name)

        def time(self) -> float:
            return real_time.time() - 5

    def b_writes() -> None:
        monkeypatch.setattr(engine_module, "time", Earlier())
        try:
            assert b.add_documents("default", docs(("y", "the same text about snow")))[0].status == "added"
        finally:
            monkeypatch.setattr(engine_module, "time", real_time)

    fail_write_and_its_undo(a, monkeypatch, "the same text about snow", meanwhile=b_writes)
    a.engine().shared.sync(force=True)  # the retry
    assert not a.engine().state.journal_pending()
    for app in (b, a):
        app.engine().shared.sync(force=True)
        assert ids(app.search("default", "snow", mode="keyword").outcome.hits) == ["y"]
    assert_same_index(a, b)


def test_a_failed_write_sent_again_while_its_undo_is_owed_leaves_nothing(
    pair: tuple[Rift, Rift], monkeypatch: pytest.MonkeyPatch
) -> None:
    """"y"'s write fails and so does its undo; its retries fail too, and "y" sent again fails as well. That
    second write took the first one's chunks for another process's (so left them to the retry) and stamped them
    anew (so the retry took them for another process's too): they stayed in Chroma, read by every process that
    looked, and stored as a document at a's next start (helper DF)."""
    a, b = pair
    a.add_documents("default", docs(("x", "a kept note about cats")))
    chroma_name = a.engine().state.collection("default").chroma_name
    fail_write_and_its_undo(a, monkeypatch, "a failed write about snow")
    engine = a.engine()
    delete, tries = engine.vectors.delete, []

    def flaky(name: str, chunk_ids: Any) -> None:  # the two retries (its sync, its commit) time out
        if chunk_ids and len(tries) < 2:
            tries.append(chunk_ids)
            raise TimeoutError("timed out")
        delete(name, chunk_ids)

    monkeypatch.setattr(engine.vectors, "delete", flaky)
    monkeypatch.setattr(engine.state, "apply", lambda *args, **kwargs: (_ for _ in ()).throw(RuntimeError("again")))
    with pytest.raises(RuntimeError, match="again"):
        a.add_documents("default", docs(("y", "a failed write about snow")))
    monkeypatch.undo()
    assert len(tries) == 2
    a.engine().shared.sync(force=True)
    assert not a.engine().state.journal_pending()
    assert not a.engine().vectors.where_ids(chroma_name, {"_rift_doc": "y"})
    b.engine().shared.refresh("default", chroma_name)  # a full read, as a process that joins now makes
    assert not b.engine().state.doc_hashes("default", ["y"])


def test_an_unknown_collection_searched_while_the_server_is_down_is_named_with_the_problem(
    chroma: ChromaServer, tmp_path: Path, tiny_model_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Within the sync interval a search of a collection this process does not know looks on the server; when
    that finds the server down, the answer names the collection and the server, not the HTTP client's error."""
    import httpx

    from server.errors import NotFoundError

    a, b = slow_follower_pair(chroma, tmp_path, tiny_model_path)
    try:
        a.add_documents("notes", docs(("n", "a note about cats")))
        b.engine().shared.sync(force=True)
        url = f"http://{chroma.host}:{chroma.port}/api/v2/heads"

        def refused() -> Any:
            raise httpx.ConnectError("[Errno 111] Connection refused", request=httpx.Request("POST", url))

        monkeypatch.setattr(b.engine().shared, "read", refused)
        with pytest.raises(NotFoundError, match="unknown collection 'nope'") as raised:
            b.search("nope", "cats", mode="keyword")
        assert f"cannot reach the Chroma server at http://{chroma.host}:{chroma.port}" in str(raised.value)
        assert ids(b.search("notes", "cats", mode="keyword").outcome.hits) == ["n"]
    finally:
        a.close()
        b.close()


def write_during_upload(late: Rift, late_text: str, first: Rift, first_text: str) -> None:
    """`late` writes document x of "default" as `late_text`; while its upload is on its way (stamped, not yet in
    Chroma), `first` writes x as `first_text`, whole."""
    vectors = late.engine().vectors
    upsert = vectors.upsert

    def lands_late(*args: Any, **kwargs: Any) -> Any:
        vectors.upsert = upsert  # type: ignore[method-assign]
        first.add_documents("default", docs(("x", first_text)))
        return upsert(*args, **kwargs)

    vectors.upsert = lands_late  # type: ignore[method-assign]
    late.add_documents("default", docs(("x", late_text)))


def test_a_version_whose_upsert_lands_after_a_newer_ones_sweep_is_removed_by_those_following(
    pair: tuple[Rift, Rift],
) -> None:
    """b stamps its version of a document, then a writes the document whole (stamp, upsert, commit, sweep)
    before b's upsert reaches Chroma: a's version is the newer, and b's chunks, which a's sweep could not see,
    are removed once b follows a's announcement of it."""
    a, b = pair
    a.add_documents("default", docs(("x", "the seed version")))
    b.engine().shared.sync(force=True)
    write_during_upload(b, "the beta version about dogs", a, "the alpha version about cats")
    assert_both_read(a, b, "the alpha version about cats")
    assert len(index_state(a)["chroma"]) == 1


def test_a_metadata_change_is_refused_when_the_text_was_written_elsewhere_after_it_read(
    pair: tuple[Rift, Rift],
) -> None:
    """a's update_metadata reads a document, then b writes a new text of it (or deletes it) before a's write
    lands: writing back the text a read would undo that, so a's call changes nothing and says why; b's text
    stays everywhere (the deleted document stays deleted). A collection deleted meanwhile is named."""
    a, b = pair
    a.add_documents("default", docs(("x", "the old text about cats"), ("z", "the text of z")))
    b.add_documents("default", docs(("y", "written by b before")))
    for app in (a, b):
        app.engine().shared.sync(force=True)
    vectors = a.engine().vectors
    stored = vectors.embeddings_matrix

    def meanwhile(write: Any) -> Any:
        def embeddings(*args: Any, **kwargs: Any) -> Any:
            vectors.embeddings_matrix = stored  # type: ignore[method-assign]
            write()
            return stored(*args, **kwargs)

        return embeddings

    vectors.embeddings_matrix = meanwhile(lambda: b.add_documents("default", docs(("x", "the new text about dogs"))))
    written = r"1 documents were written or deleted by another rift process while this call ran \('{}'\)"
    with pytest.raises(RiftError, match=written.format("x")):
        a.engine().update_metadata("default", ["x"], {"tag": "t"})
    vectors.embeddings_matrix = meanwhile(lambda: b.delete_documents("default", ["z"]))
    with pytest.raises(RiftError, match=written.format("z")):
        a.engine().update_metadata("default", ["z"], {"tag": "t"})
    for app in (a, b):
        app.engine().shared.sync(force=True)
        assert app.engine().get_document("default", "x")[:2] == ("the new text about dogs", {})
        assert ids(app.search("default", "the text of z", mode="keyword").outcome.hits) != ["z"]
    assert_same_index(a, b)
    assert len(index_state(a)["chroma"]) == 2  # x and y, one version each
    vectors.embeddings_matrix = meanwhile(lambda: b.delete_collection("default"))
    with pytest.raises(NotFoundError, match="collection 'default' was deleted by another rift process while"):
        a.engine().update_metadata("default", ["x"], {"tag": "t"})
    assert "default" not in b.engine().collection_names() + a.engine().collection_names()
    a.add_documents("default", docs(("x", "made again")))
    b.engine().shared.sync(force=True)
    older = a.engine().shared.older_versions

    def deleted_first(*args: Any) -> Any:
        b.delete_collection("default")
        return older(*args)

    a.engine().shared.older_versions = deleted_first  # type: ignore[method-assign]
    with pytest.raises(NotFoundError, match="collection 'default' was deleted by another rift process while"):
        a.delete_documents("default", ["x"])


def test_the_same_text_written_at_once_by_two_processes_stays(pair: tuple[Rift, Rift]) -> None:
    """Both write the same new text of a document; b's upload lands after a's whole write. The chunk ids
    derive from the content, so b's upload stamps a's committed chunks back to b's earlier stamp: following
    a's announcement must not take them for an older version (it deleted the document's only version)."""
    a, b = pair
    a.add_documents("default", docs(("x", "the seed version")))
    b.add_documents("default", docs(("y", "written by b before")))
    for app in (a, b):
        app.engine().shared.sync(force=True)
    write_during_upload(b, "the same new text about cats", a, "the same new text about cats")
    assert_both_read(a, b, "the same new text about cats")
    assert len(index_state(a)["chroma"]) == 2


def test_a_collection_deleted_elsewhere_just_after_it_was_adopted_here_is_forgotten(
    pair: tuple[Rift, Rift],
) -> None:
    """b adopts a collection a created, and a deletes it before b has read it: b's search of another
    collection answers, and b does not keep the deleted collection (empty) until a restart."""
    a, b = pair
    a.add_documents("default", docs(("d", "a dog in the house")))
    b.engine().shared.sync(force=True)
    a.add_documents("c2", docs(("x", "a cat on the mat")))
    shared = b.engine().shared
    refresh = shared.refresh

    def deleted_first(name: str, chroma: str, doc_ids: Any = None) -> None:
        shared.refresh = refresh  # type: ignore[method-assign]
        if name == "c2":
            a.delete_collection("c2")
        refresh(name, chroma, doc_ids)

    shared.refresh = deleted_first  # type: ignore[method-assign]
    assert ids(b.search("default", "dog", mode="keyword").outcome.hits) == ["d"]
    b.engine().shared.sync(force=True)
    assert b.engine().collection_names() == ["default"]


def test_a_re_chunk_leaves_out_a_document_written_elsewhere_after_it_read(
    pair: tuple[Rift, Rift], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A re-chunk writes documents back as it read them: one another process writes meanwhile keeps that
    process's text (the re-chunk leaves it out) instead of going back to the text read before, and one it
    deletes meanwhile stays deleted."""
    a, b = pair
    a.add_documents("default", docs(("x", "the old text about cats"), ("z", "the text of z"), ("w", "doomed")))
    b.add_documents("default", docs(("y", "written by b before")))
    for app in (a, b):
        app.engine().shared.sync(force=True)
    engine = a.engine()
    chunking = engine._chunking_of
    monkeypatch.setattr(engine, "_chunking_of", lambda embedder: chunking(embedder) + " changed")
    stored = engine.vectors.embeddings_matrix

    def meanwhile(*args: Any, **kwargs: Any) -> Any:
        monkeypatch.setattr(engine.vectors, "embeddings_matrix", stored)
        b.add_documents("default", docs(("x", "the new text about dogs")))
        b.delete_documents("default", ["w"])
        return stored(*args, **kwargs)

    monkeypatch.setattr(engine.vectors, "embeddings_matrix", meanwhile)
    assert engine.rechunk_if_changed("default") == 2  # y and z; x and w left out
    for app in (a, b):
        app.engine().shared.sync(force=True)
        assert app.engine().get_document("default", "x")[0] == "the new text about dogs"
        assert "w" not in [d for d, _ in app.engine().state.list_documents("default", -1, 0)]
    assert_same_index(a, b)
    assert len(index_state(a)["chroma"]) == 3


def test_a_version_is_removed_only_for_one_chroma_holds_whole(
    chroma: ChromaServer, tmp_path: Path, tiny_model_path: Path
) -> None:
    """b and a write the same text, d another, stamped b < d < a; a's whole write lands first, then d's, then
    b's late upload, which stamps a's chunks (the same ids) back before d's. A follower whose newest
    announcement is a's must not remove d's version while a's is no longer whole there, nor a follower
    whose newest is d's remove a's: every process ends on one version, and Chroma keeps it."""
    chroma.wipe()
    a, b, d, f = (
        open_rift(make_settings(tmp_path / name, tiny_model_path, **http_overrides(chroma))) for name in "abdf"
    )
    try:
        a.add_documents("default", docs(("x", "the seed version")))
        b.add_documents("default", docs(("yb", "b before")))
        d.add_documents("default", docs(("yd", "d before")))
        for app in (a, b, d, f):
            app.engine().shared.sync(force=True)
        go_b = threading.Event()
        b_upsert, d_upsert = b.engine().vectors.upsert, d.engine().vectors.upsert

        def b_late(*args: Any, **kwargs: Any) -> Any:
            b.engine().vectors.upsert = b_upsert  # type: ignore[method-assign]
            go_b.wait(60)
            return b_upsert(*args, **kwargs)

        def d_after_a(*args: Any, **kwargs: Any) -> Any:
            d.engine().vectors.upsert = d_upsert  # type: ignore[method-assign]
            a.add_documents("default", docs(("x", "the same new text about cats")))
            return d_upsert(*args, **kwargs)

        b.engine().vectors.upsert = b_late  # type: ignore[method-assign]
        d.engine().vectors.upsert = d_after_a  # type: ignore[method-assign]
        writer = threading.Thread(target=b.add_documents, args=("default", docs(("x", "the same new text about cats"))))
        writer.start()
        time.sleep(0.2)  # b has stamped its version and waits to upload it
        d.add_documents("default", docs(("x", "a different text about dogs")))
        go_b.set()
        writer.join()
        shown = set()
        for app in (a, f, b, d):
            app.engine().shared.sync(force=True)
        for app in (a, f, b, d):
            app.engine().shared.sync(force=True)
            shown.add(app.engine().get_document("default", "x")[0])
        assert len(shown) == 1
        assert_same_index(a, b, d, f)
        assert len([c for c in index_state(a)["chroma"] if c.startswith("x::")]) == 1
    finally:
        for app in (a, b, d, f):
            app.close()


def test_a_write_whose_collection_another_process_deletes_meanwhile_says_so(
    pair: tuple[Rift, Rift], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Chroma answers such a write "Collection [uuid] does not exist", or, while it drops the collection,
    "Missing metadata segment": the caller is told which collection went and that nothing was written."""
    import chromadb.errors

    a, b = pair
    a.add_documents("notes", docs(("n", "a note about cats")))
    b.engine().shared.sync(force=True)

    def deleted_first(method: str, error: Exception | None) -> Any:
        call = getattr(a.engine().vectors, method)

        def deleted(*args: Any, **kwargs: Any) -> Any:
            monkeypatch.setattr(a.engine().vectors, method, call)
            b.delete_collection("notes")
            if error is not None:
                raise error
            return call(*args, **kwargs)

        return deleted

    # (present: the look for chunks another process holds, before the upload; Chroma's raw error reached the
    # caller there, helper DE)
    for method in ("present", "upsert"):
        for error in (None, chromadb.errors.ChromaError("Missing field: [Missing metadata segment]")):
            monkeypatch.setattr(a.engine().vectors, method, deleted_first(method, error))
            with pytest.raises(NotFoundError, match="collection 'notes' was deleted by another rift process while"):
                a.add_documents("notes", docs(("n2", "another note")))
            a.engine().shared.sync(force=True)
            assert "notes" not in a.engine().collection_names() + b.engine().collection_names()
            a.add_documents("notes", docs(("n", "a note about cats")))  # made again by the next write
            b.engine().shared.sync(force=True)


def test_a_collection_dropped_elsewhere_as_a_write_here_sweeps_old_versions_logs_no_traceback(
    pair: tuple[Rift, Rift], monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """After its commit a write removes other versions of its documents from Chroma; a drop by another
    process under way then answers "Missing metadata segment", which was logged with a traceback as a
    failure (helper DE). It is the deletion, which the write follows."""
    import chromadb.errors

    a, b = pair
    a.add_documents("notes", docs(("n", "a note about cats")))
    b.engine().shared.sync(force=True)
    older_versions = a.engine().shared.older_versions

    def dropped_meanwhile(*args: Any, **kwargs: Any) -> Any:
        monkeypatch.setattr(a.engine().shared, "older_versions", older_versions)
        b.delete_collection("notes")
        raise chromadb.errors.ChromaError("Missing field: [Missing metadata segment]")

    monkeypatch.setattr(a.engine().shared, "older_versions", dropped_meanwhile)
    with caplog.at_level(logging.WARNING):
        a.add_documents("notes", docs(("n", "a new text about dogs")))
    assert not [r for r in caplog.records if r.exc_info or "removing other versions" in r.getMessage()]
    a.engine().shared.sync(force=True)
    assert "notes" not in a.engine().collection_names()


def add_while_b_deletes_notes(a: Rift, b: Rift, monkeypatch: pytest.MonkeyPatch, meanwhile: Any) -> None:
    """a writes to "notes" (which b follows); `meanwhile` runs after a's chunks reached Chroma, before a commits."""
    a.add_documents("notes", docs(("n", "a note about cats")))
    b.engine().shared.sync(force=True)
    state = a.engine().state
    apply = state.apply

    def meanwhile_first(*args: Any, **kwargs: Any) -> Any:
        monkeypatch.setattr(state, "apply", apply)
        meanwhile()
        return apply(*args, **kwargs)

    monkeypatch.setattr(state, "apply", meanwhile_first)
    a.add_documents("notes", docs(("n2", "another note")))


def test_a_collection_deleted_elsewhere_as_a_write_here_commits_is_followed_at_once(
    pair: tuple[Rift, Rift], monkeypatch: pytest.MonkeyPatch
) -> None:
    """b deletes the collection after a's write reached Chroma and before a announced it: a's announcement
    put its head back, so a's next sync saw nothing (its keyword side kept the collection until a restart,
    its vector side failed with Chroma's "does not exist"). The deletion wins, here at once."""
    a, b = pair
    add_while_b_deletes_notes(a, b, monkeypatch, lambda: b.delete_collection("notes"))
    for mode in ("keyword", "vector", "hybrid"):
        with pytest.raises(NotFoundError, match="unknown collection 'notes'"):
            a.search("notes", "cats", mode=mode)
    assert not [n for n, _ in a.engine().vectors.list_collections() if n.startswith("rift-notes")]


def test_a_collection_deleted_and_made_again_elsewhere_as_a_write_here_commits_is_followed_at_once(
    pair: tuple[Rift, Rift], monkeypatch: pytest.MonkeyPatch
) -> None:
    """As above, but b also makes the collection again before a looks: a's next sync follows the deletion (its
    own documents went with the old collection) and adopts the new collection, which holds b's alone."""
    a, b = pair

    def deleted_and_made_again() -> None:
        b.delete_collection("notes")
        b.add_documents("notes", docs(("m", "a new note about dogs")))

    add_while_b_deletes_notes(a, b, monkeypatch, deleted_and_made_again)
    for app in (a, b):
        app.engine().shared.sync(force=True)
        for mode in ("keyword", "vector", "hybrid"):
            assert ids(app.search("notes", "note", mode=mode).outcome.hits) == ["m"]
    states = [index_state(app, "notes") for app in (a, b)]
    assert states[0] == states[1] and states[0]["chroma"] == states[0]["keyword"] == states[0]["sqlite"]


def test_a_failed_write_leaves_the_same_text_another_process_committed(
    pair: tuple[Rift, Rift], monkeypatch: pytest.MonkeyPatch
) -> None:
    """a and b write the same new text (the same chunk ids); b commits first, then a's upload fails. a's undo
    deleted those ids, b's committed version, and the document was gone everywhere."""
    a, b = pair
    a.add_documents("default", docs(("x", "the seed version")))
    b.engine().shared.sync(force=True)
    upsert = a.engine().vectors.upsert

    def b_first_then_fails(*args: Any, **kwargs: Any) -> Any:
        monkeypatch.setattr(a.engine().vectors, "upsert", upsert)
        b.add_documents("default", docs(("x", "the same new text about cats")))
        raise TimeoutError("the upload did not go through")

    monkeypatch.setattr(a.engine().vectors, "upsert", b_first_then_fails)
    with pytest.raises(TimeoutError):
        a.add_documents("default", docs(("x", "the same new text about cats")))
    assert_both_read(a, b, "the same new text about cats")


def test_a_metadata_change_is_refused_for_a_text_stamped_before_its_read_that_landed_after(
    pair: tuple[Rift, Rift],
) -> None:
    """b stamps a new text of x and uploads slowly; a's update_metadata reads x (b has not announced yet) and
    embeds while b's upload lands and b commits: b's text is newer than the version a read, so a refuses."""
    a, b = pair
    a.add_documents("default", docs(("x", "the old text of x")))
    b.engine().shared.sync(force=True)
    go, b_done, b_stamped = threading.Event(), threading.Event(), threading.Event()
    b_upsert = b.engine().vectors.upsert

    def b_slow(*args: Any, **kwargs: Any) -> Any:
        b.engine().vectors.upsert = b_upsert  # type: ignore[method-assign]
        b_stamped.set()
        go.wait(60)
        return b_upsert(*args, **kwargs)

    b.engine().vectors.upsert = b_slow  # type: ignore[method-assign]
    writer = threading.Thread(
        target=lambda: (b.add_documents("default", docs(("x", "b's new text of x"))), b_done.set())
    )
    writer.start()
    assert b_stamped.wait(60)
    stored = a.engine().vectors.embeddings_matrix

    def while_b_lands(*args: Any, **kwargs: Any) -> Any:
        a.engine().vectors.embeddings_matrix = stored  # type: ignore[method-assign]
        go.set()
        b_done.wait(60)
        return stored(*args, **kwargs)

    a.engine().vectors.embeddings_matrix = while_b_lands  # type: ignore[method-assign]
    try:
        with pytest.raises(RiftError, match=r"written or deleted by another rift process while this call ran \('x'\)"):
            a.engine().update_metadata("default", ["x"], {"tag": "t"})
    finally:
        go.set()
        writer.join()
    for app in (a, b):
        app.engine().shared.sync(force=True)
        assert app.engine().get_document("default", "x")[:2] == ("b's new text of x", {})


@pytest.mark.parametrize("how", ["failed", "never made"])
def test_an_announcement_owed_when_the_process_stops_is_made_by_its_next_start(
    chroma: ChromaServer, tmp_path: Path, tiny_model_path: Path, how: str
) -> None:
    """a's write commits but its announcement fails, and a stops before any sync pays it; or a dies between
    the write and its announcement (here: the announcement never runs, and the close owes nothing). b kept the
    old text (whose chunks a's write had removed) until a wrote that collection again."""
    chroma.wipe()
    settings = make_settings(tmp_path / "a", tiny_model_path, **http_overrides(chroma))
    a = open_rift(settings)
    b = open_rift(make_settings(tmp_path / "b", tiny_model_path, **http_overrides(chroma)))
    try:
        a.add_documents("default", docs(("x", "the old text of x")))
        b.engine().shared.sync(force=True)
        shared = a.engine().shared
        announce = shared._announce

        def fails_once(*args: Any, **kwargs: Any) -> None:
            shared._announce = announce  # type: ignore[method-assign]
            raise ConnectionError("the server did not answer this request")

        if how == "failed":
            shared._announce = fails_once  # type: ignore[method-assign]
        else:
            shared.publish = lambda *args, **kwargs: None  # type: ignore[method-assign]
        a.add_documents("default", docs(("x", "the new text of x")))
        a.close()  # (on this thread a close does not wait on the server: the next start announces)
        a = open_rift(settings)
        assert_both_read(a, b, "the new text of x")
        assert not a.engine().state.setting_keys("owed_announcement:")  # paid, and the note gone
    finally:
        a.close()
        b.close()


def test_an_undone_delete_leaves_no_announcement_owed(pair: tuple[Rift, Rift], monkeypatch) -> None:
    a, b = pair
    a.add_documents("default", docs(("x", "the text of x")))
    state = a.engine().state

    def fails(*args: Any, **kwargs: Any) -> None:
        raise OSError("disk I/O error")

    monkeypatch.setattr(state, "apply", fails)
    with pytest.raises(OSError):
        a.engine().delete_documents("default", ["x"])
    assert not state.setting_keys("owed_announcement:")
    monkeypatch.undo()
    a.add_documents("default", docs(("y", "the text of y")))  # an announced write clears its note
    assert not state.setting_keys("owed_announcement:")
    b.engine().shared.sync(force=True)
    assert sorted(ids(b.search("default", "text of", mode="keyword").outcome.hits)) == ["x", "y"]


def test_a_committed_write_is_announced_and_not_failed_by_its_bookkeeping(pair: tuple[Rift, Rift], monkeypatch) -> None:
    """Two failures after a write has committed: clearing its owed note (a full state disk) failed the call,
    and a failure updating the keyword index left the write unannounced to the other processes."""
    import sqlite3

    a, b = pair
    state = a.engine().state
    real = state.delete_setting

    def full(key: str, prefix: bool = False) -> None:
        if key.startswith("owed_announcement:"):
            raise sqlite3.OperationalError("database or disk is full")
        real(key, prefix)

    monkeypatch.setattr(state, "delete_setting", full)
    assert [s.status for s in a.add_documents("default", docs(("x", "the text of x")))] == ["added"]
    monkeypatch.undo()
    b.engine().shared.sync(force=True)  # b follows a (a first follow repairs in full)
    index = a.engine()._keyword["default"]
    monkeypatch.setattr(index, "apply", lambda *args, **kwargs: (_ for _ in ()).throw(MemoryError()))
    with pytest.raises(MemoryError):
        a.add_documents("default", docs(("y", "the text of y")))
    b.engine().shared.sync(force=True)
    assert sorted(ids(b.search("default", "text of", mode="keyword").outcome.hits)) == ["x", "y"]


def test_an_owed_announcement_for_vectors_switched_elsewhere_is_dropped_not_made(
    chroma: ChromaServer, tmp_path: Path, tiny_model_path: Path
) -> None:
    """b stops owing an announcement; a then switches the collection to another model. b's restart is refused
    there, and must not announce the old vectors (that read as a switch back, and a restarted on the new model
    refused its own collection)."""
    from server.engine.embedder import Embedder
    from server.engine.models import resolve_model
    from tests.support.tiny_model import build_tiny_model

    chroma.wipe()
    other = str(build_tiny_model(tmp_path / "other", seed=5))
    settings_a = make_settings(tmp_path / "a", tiny_model_path, **http_overrides(chroma))
    settings_b = make_settings(tmp_path / "b", tiny_model_path, **http_overrides(chroma))
    a, b = open_rift(settings_a), open_rift(settings_b)
    try:
        a.add_documents("default", docs(("x", "the text of x")))
        b.engine().shared.sync(force=True)
        shared = b.engine().shared
        announce = shared._announce

        def fails_once(*args: Any, **kwargs: Any) -> None:
            shared._announce = announce  # type: ignore[method-assign]
            raise ConnectionError("the server did not answer this request")

        shared._announce = fails_once  # type: ignore[method-assign]
        b.add_documents("default", docs(("y", "the text of y")))
        b.close()
        a.engine().reembed("default", Embedder(resolve_model(other), version=other), keep_old=True)
        b = open_rift(settings_b)
        with pytest.raises(RiftError, match="switched to model"):
            b.search("default", "text", mode="keyword")
        a.close()
        a = open_rift(make_settings(tmp_path / "a", Path(other), **http_overrides(chroma)))
        assert "x" in ids(a.search("default", "the text of", mode="keyword").outcome.hits)  # served, not refused
    finally:
        a.close()
        b.close()


def test_a_collection_deleted_elsewhere_leaves_no_search_of_it_in_this_process_s_log(pair: tuple[Rift, Rift]) -> None:
    """Deleted here, a collection's logged searches go with it (they could train a later model); deleted by
    another process, this process's searches of it stayed in its log, feedback and all."""
    a, b = pair
    a.add_documents("notes", docs(("n1", "the river floods in spring"), ("n2", "a bridge over the river")))
    a.add_documents("kept", docs(("k1", "the river runs to the sea")))
    b.engine().shared.sync(force=True)
    searched = b.search("notes", "river floods")
    b.learning.feedback(searched.query_id, "n1", True)
    b.search("kept", "river sea")
    assert b.stats("notes")["queries"]["logged_queries"] == 1
    a.delete_collection("notes")
    b.engine().shared.sync(force=True)
    assert "notes" not in b.engine().collection_names()
    b.log.flush()
    assert b.log.get(searched.query_id) is None and searched.query_id not in b.log.feedback_map()
    assert b.stats()["queries"]["logged_queries"] == 1  # the other collection's search stays


def test_a_deletion_here_that_finds_it_deleted_elsewhere_still_drops_a_search_still_running(
    pair: tuple[Rift, Rift], monkeypatch
) -> None:
    """Deleting here found the collection deleted by the other process (its sync forgot it, and marked it), then
    failed (unknown collection) and took that mark back: a search of it still running was then logged for good."""
    a, b = pair
    a.add_documents("notes", docs(("n1", "the river floods in spring")))
    b.engine().shared.sync(force=True)
    running = b.engine().search("notes", "river floods")  # ranked before the deletions, not logged yet
    a.delete_collection("notes")
    monkeypatch.setattr(b.engine(), "follow_others", lambda *args, **kwargs: None)  # (it looked just before)
    with pytest.raises(NotFoundError):
        b.delete_collection("notes")
    logged = b.log.record(
        "late", "river floods", "notes", running.model_version, "hybrid", 5, None, [], [], [], 3, 0.0, [], [],
        collection_created=running.collection_created,
    )
    assert not logged


def test_retrain_plans_forget_a_collection_deleted_elsewhere_while_this_process_was_down(
    chroma: ChromaServer, tmp_path: Path, tiny_model_path: Path
) -> None:
    """Seen by the engine's start-up, before learning existed, the deletion reached the query log but not the
    interrupted retrain's plan; and with the name made again elsewhere, the plan kept the deleted texts."""
    from server.learning import resume

    chroma.wipe()
    settings = {name: make_settings(tmp_path / name, tiny_model_path, **http_overrides(chroma)) for name in "ab"}
    a = open_rift(settings["a"])
    try:
        a.add_documents("notes", docs(("n1", "the river floods in spring")))
        open_rift(settings["b"]).close()  # b adopts "notes", then stops
        plan = resume.ResumePlan(
            "ft-x", None, "x", "", "", {}, [["floods", "the river floods in spring", "a bridge"]], "fused", {}, [], {},
            row_collections=["notes"],
        )
        resume.save(settings["b"].models_dir, plan)
        a.delete_collection("notes")
        a.add_documents("notes", docs(("m1", "a new collection of the same name")))
    finally:
        a.close()
    b = open_rift(settings["b"])
    try:
        assert b.engine().collection_names() == ["notes"]  # (the new one)
        assert resume.pending(settings["b"].models_dir) == []  # its only rows were the deleted collection's
    finally:
        b.close()


def test_retrain_plans_forget_documents_deleted_or_rewritten_elsewhere(
    chroma: ChromaServer, tmp_path: Path, tiny_model_path: Path
) -> None:
    """Another process's deletion or rewrite of a document, followed here (while running, and at start-up for
    one made while this process was down), left its text in this process's interrupted retrain's plan."""
    from server.learning import resume

    chroma.wipe()
    settings = {name: make_settings(tmp_path / name, tiny_model_path, **http_overrides(chroma)) for name in "ab"}
    texts = {f"n{i}": f"note {i} about the river {word}" for i, word in enumerate(("floods", "bridge", "gravel",
                                                                                     "ferry", "hunter2"), 1)}
    a = open_rift(settings["a"])
    b = None
    try:
        a.add_documents("notes", docs(*texts.items()))
        b = open_rift(settings["b"])  # adopts "notes"
        picks = ["n1", "n2", "n3", "n5"]
        plan = resume.ResumePlan(
            "ft-x", None, "x", "", "", {}, [[f"q{d}", texts[d], texts["n4"]] for d in picks], "fused", {}, [], {},
            row_collections=["notes"] * len(picks), row_docs=[[d, "n4"] for d in picks],
        )
        resume.save(settings["b"].models_dir, plan)
        path = resume.plan_path(settings["b"].models_dir, plan.version)
        a.delete_documents("notes", ["n1"])
        a.add_documents("notes", docs(("n3", texts["n3"], {"tag": "same text"})))
        b.engine().follow_others(force=True)  # (what a search or a write here does first)
        assert [r[0] for r in resume.pending(settings["b"].models_dir)[0].rows] == ["qn2", "qn3", "qn5"]
        assert texts["n1"] not in path.read_text()
        b.close()
        b = None
        a.add_documents("notes", docs(("n2", "note 2 rewritten")))
        a.delete_documents("notes", ["n5"])
    finally:
        a.close()
        if b is not None:
            b.close()
    b = open_rift(settings["b"])  # follows what a did while it was down, before its learning starts
    try:
        assert b.engine().get_document("notes", "n2")[0] == "note 2 rewritten"
        [kept] = resume.pending(settings["b"].models_dir)
        assert kept.rows == [["qn3", texts["n3"], texts["n4"]]] and kept.restart
        assert "hunter2" not in path.read_text()
    finally:
        b.close()
