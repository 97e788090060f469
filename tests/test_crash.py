"""SIGKILL `rift serve` in the middle of writes and a model re-embed, restart, and check nothing acknowledged
is lost and nothing half-written is visible.

Checks after each restart: every acknowledged document is found in keyword and vector mode; every stored
document is one whole version (all `_rift_n` chunks, one content hash, the hash its documents row names);
Chroma, SQLite and the keyword snapshot hold the same chunk ids; the big in-flight batch is all there or not
at all; the disagreement log passes `PRAGMA integrity_check` and holds every acknowledged search."""

from __future__ import annotations

import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
import textwrap
from contextlib import suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import chromadb
import pytest
from chromadb.api.client import SharedSystemClient
from chromadb.config import Settings as ChromaSettings
from mcp import Client

from server.config import Settings
from server.service import Rift
from tests.support.helpers import docs, index_state, make_settings, open_rift, sqlite_rows
from tests.support.processes import RiftServer, start_rift, stop
from tests.support.tiny_model import build_tiny_model

REPO = Path(__file__).resolve().parents[1]


def token(i: int) -> str:
    return f"zq{i}x"  # one bm25 token no other document contains


def doc_text(i: int, version: int, long: bool) -> str:
    body = f"Entry {token(i)} version {version}. The river report mentions gravel and sand."
    if long:  # several chunks: a torn write would show up as a document with too few chunks
        body += " " + " ".join(f"Line {j}: the cat sat on the mat by the sea." for j in range(25))
    return body


@dataclass
class Ledger:
    """What the client was told: acknowledged versions per document and acknowledged search ids."""

    acked: dict[str, int] = field(default_factory=dict)
    sent: dict[str, int] = field(default_factory=dict)
    queries: list[str] = field(default_factory=list)
    batch: list[str] = field(default_factory=list)  # new documents in the in-flight batch killed mid-way
    batch_updates: dict[str, int] = field(default_factory=dict)  # acknowledged documents it re-versions
    kills: int = 0


async def tool(client: Client, name: str, **args: Any) -> dict[str, Any]:
    result = await client.call_tool(name, args)
    text = result.content[0].text  # type: ignore[union-attr]
    assert not result.is_error, text
    return json.loads(text)


async def write_then_kill(
    server: RiftServer, ledger: Ledger, first: int, acks: int, seed: int, kill_at: str
) -> None:
    """`acks` acknowledged single-document writes (new ones, updates, searches between), then a large batch
    add that is SIGKILLed part-way: at its first progress notification (embedding under way) or at its last
    (embedding done: the Chroma upsert and the SQLite commit are running)."""
    rng = random.Random(seed)
    embedding_started, embedding_done = anyio.Event(), anyio.Event()

    async def progress(done: float, total: float | None, _message: str | None) -> None:
        embedding_started.set()
        if total is not None and done >= total:
            embedding_done.set()

    async def session() -> None:
        async with Client(server.url) as client:
            for n in range(acks):
                update = ledger.acked and n % 4 == 3  # every 4th write replaces an acknowledged document
                doc_id = rng.choice(sorted(ledger.acked)) if update else f"d{first + n}"
                i = int(doc_id[1:])
                version = ledger.sent.get(doc_id, 0) + 1
                ledger.sent[doc_id] = version
                doc = {
                    "id": doc_id,
                    "text": doc_text(i, version, long=i % 5 == 0),
                    "metadata": {"v": version},
                }
                await tool(client, "add_documents", documents=[doc])
                ledger.acked[doc_id] = version
                if n % 3 == 0:
                    found = await tool(client, "hybrid_search", query=f"{token(i)} river", k=3)
                    ledger.queries.append(found["query_id"])
            # The batch: new long documents plus new versions of acknowledged ones (so a kill after the
            # commit leaves replaced chunks to remove: the journal's roll-forward).
            ledger.batch = [f"b{first}-{j}" for j in range(10)]
            docs = [
                {"id": b, "text": doc_text(10_000 + first + j, 1, long=True)}
                for j, b in enumerate(ledger.batch)
            ]
            ledger.batch_updates = {}
            for doc_id in sorted(ledger.acked)[-10:]:
                version = ledger.sent[doc_id] + 1
                ledger.sent[doc_id] = version
                ledger.batch_updates[doc_id] = version
                text = doc_text(int(doc_id[1:]), version, long=True)
                docs.append({"id": doc_id, "text": text, "metadata": {"v": version}})
            await client.call_tool("add_documents", {"documents": docs}, progress_callback=progress)

    async def guarded() -> None:
        with suppress(Exception):  # the dead server's connection errors; the ledger says what was acked
            await session()

    async with anyio.create_task_group() as tg:
        tg.start_soon(guarded)
        with anyio.fail_after(240):
            await (embedding_started if kill_at == "embedding" else embedding_done).wait()
        await anyio.sleep({"embedding": 0, "upsert": 0.1, "commit": 0.25}[kill_at])
        server.proc.send_signal(signal.SIGKILL)
        server.proc.wait(10)
        ledger.kills += 1
        await anyio.sleep(0.5)
        tg.cancel_scope.cancel()
    assert len(ledger.acked) >= acks * 3 // 4  # the session ran to the batch (updates reuse ids)


def check_whole_versions(app: Rift, ledger: Ledger) -> dict[str, Any]:
    engine = app.engine()
    assert engine.state.journal_pending() == []
    state = index_state(app)
    assert state["chroma"] == state["keyword"] == state["sqlite"], "the two sides disagree on chunks"
    record = engine.state.collection("default")
    chunks = engine.vectors.get(record.chroma_name, sorted(state["chroma"]))
    by_doc: dict[str, list[dict[str, Any]]] = {}
    for _, _, meta in chunks:
        by_doc.setdefault(meta["_rift_doc"], []).append(meta)
    documents = {d for d, _ in engine.state.list_documents("default", 100_000, 0)}
    assert documents == set(by_doc), "a document row without chunks, or chunks without a document row"
    for doc_id, metas in by_doc.items():
        hashes = {m["_rift_hash"] for m in metas}
        assert len(hashes) == 1, f"{doc_id} mixes chunks of {len(hashes)} versions"
        assert sorted(m["_rift_idx"] for m in metas) == list(range(metas[0]["_rift_n"])), f"{doc_id} is torn"
        stored_hash, _, _, _ = engine.state.document("default", doc_id)
        assert stored_hash == hashes.pop()
    # The in-flight batch is one transaction: all of it or none of it.
    landed = {b for b in ledger.batch if b in by_doc}
    assert landed in (set(), set(ledger.batch)), f"{len(landed)} of {len(ledger.batch)} batch documents"
    versions = {engine.get_document("default", d)[1]["v"] == v for d, v in ledger.batch_updates.items()}
    assert versions <= {bool(landed)}, "the batch's updates landed apart from its new documents"
    # Every acknowledged document shows its acknowledged version, or a newer one that was in flight.
    for doc_id, version in ledger.acked.items():
        _, meta, _, _ = engine.get_document("default", doc_id)
        assert version <= meta["v"] <= ledger.sent[doc_id], doc_id
        i = int(doc_id[1:])
        hits = app.search("default", token(i), k=1, mode="keyword").outcome.hits
        assert [h.doc_id for h in hits] == [doc_id]
        first_chunk = engine.state.document_chunks("default", doc_id)[0].text
        hits = app.search("default", first_chunk, k=3, mode="vector").outcome.hits
        assert doc_id in [h.doc_id for h in hits]
    return {"documents": len(by_doc), "chunks": len(chunks), "batch_landed": bool(landed)}


async def check_after_restart(client: Client, ledger: Ledger) -> bool:
    """Through the restarted server: every acknowledged document is found at its acknowledged version (or
    the killed batch's newer one), and the killed batch landed whole or not at all. Returns whether it landed."""
    versions = {}
    for doc_id in sorted(ledger.acked):
        found = await tool(client, "hybrid_search", query=token(int(doc_id[1:])), mode="keyword", k=1)
        assert [h["doc_id"] for h in found["hits"]] == [doc_id]
        versions[doc_id] = found["hits"][0]["metadata"]["v"]
        assert ledger.acked[doc_id] <= versions[doc_id] <= ledger.sent[doc_id]
    new_docs = []
    for b in ledger.batch:
        i = 10_000 + int(b.split("-")[0][1:]) + int(b.split("-")[1])
        found = await tool(client, "hybrid_search", query=token(i), mode="keyword", k=1)
        new_docs.append([h["doc_id"] for h in found["hits"]] == [b])
    updates = [versions[d] == v for d, v in ledger.batch_updates.items()]
    assert len(set(new_docs + updates)) == 1, f"torn batch: new {new_docs}, updates {updates}"
    for doc_id in ledger.batch_updates:  # the next round's ledger: the batch's outcome is now known
        ledger.acked[doc_id] = versions[doc_id]
        ledger.sent[doc_id] = versions[doc_id]
    return new_docs[0]


def check_query_log(settings: Settings, ledger: Ledger) -> None:
    conn = sqlite3.connect(str(settings.log_db))
    try:
        assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        logged = {r[0] for r in conn.execute("SELECT query_id FROM queries")}
    finally:
        conn.close()
    assert set(ledger.queries) <= logged


@pytest.mark.slow
@pytest.mark.anyio
async def test_sigkill_during_writes_loses_nothing_acknowledged(
    tmp_path: Path, tiny_model_path: Path
) -> None:
    data = tmp_path / "data"
    settings = make_settings(data, tiny_model_path)
    ledger = Ledger()
    recovered: list[bool] = []
    phases: list[list[str]] = []
    landed: list[bool] = []
    kill_points = ("embedding", "upsert", "commit")
    for round_, first in enumerate((0, 1000, 2000)):
        server = start_rift(data, tiny_model_path)
        try:
            if round_:  # the restarted server answers for everything acknowledged before the kill
                async with Client(server.url) as client:
                    landed.append(await check_after_restart(client, ledger))
                recovered.append("recovering interrupted write" in server.log.read_text())
            await write_then_kill(server, ledger, first, 16, round_, kill_points[round_])
        finally:
            stop(server.proc, signal.SIGKILL)
        phases.append([r[0] for r in sqlite_rows(settings.state_db, "SELECT phase FROM journal")])

    app = open_rift(settings)
    try:
        summary = check_whole_versions(app, ledger)
        summary["journal_repairs_at_open"] = app.repair_report["journal"]
    finally:
        app.close()
    check_query_log(settings, ledger)
    summary.update(kills=ledger.kills, acked=len(ledger.acked), searches=len(ledger.queries))
    summary["journal_after_each_kill"] = phases
    summary["batches_landed"] = [*landed, summary.pop("batch_landed")]
    summary["serve_restarts_repaired_a_write"] = recovered
    print("crash summary:", json.dumps(summary))  # shown with -s; the report quotes it


# --- a kill during a model re-embed (the retrain swap) ----------------------------------------------------------

REEMBED = """
import os, signal, sys
from server.config import Settings
from server.engine.embedder import Embedder
from server.engine.models import resolve_model
from server.engine.state_store import StateStore
from server.engine.vector_store import VectorStore
from server.service import Rift

data_dir, model_a, model_b, where = sys.argv[1:5]
settings = Settings(data_dir=data_dir, model=model_a, chunk_tokens=48, chunk_overlap=8)
app = Rift(settings).start(background=False)
engine = app.engine()
old = engine.state.collection("default").chroma_name

def die():
    sys.stderr.write("killed at " + where + "\\n")
    sys.stderr.flush()
    os.kill(os.getpid(), signal.SIGKILL)

if where == "embedding":          # half-way through embedding the new vectors
    real_upsert = VectorStore.upsert
    def upsert(self, name, ids, *args, **kw):
        real_upsert(self, name, ids[: len(ids) // 2], *(a[: len(ids) // 2] for a in args), **kw)
        die()
    VectorStore.upsert = upsert
elif where == "before-switch":    # new vectors complete, the collection record not yet switched
    StateStore.put_collection = lambda *a, **k: die()
elif where == "after-switch":     # record switched, the old vectors not yet dropped
    real_drop = VectorStore.drop
    VectorStore.drop = lambda self, name: die() if name == old else real_drop(self, name)
embedder = Embedder(resolve_model(model_b), version=model_b)
engine.reembed("default", embedder)
"""


def killed_at(where: str, script: str, *args: Any) -> None:
    """Run `script` in a child process with `args` and `where` as its arguments; it must SIGKILL itself there."""
    proc = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(script), *map(str, args), where],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=REPO,
        env={**os.environ, "HF_HUB_OFFLINE": "1", "RIFT_CONFIG": os.devnull},
    )
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-3000:]
    assert f"killed at {where}" in proc.stderr


@pytest.fixture(scope="module")
def second_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("tiny-bert-b"), hidden=48, seed=1)


@pytest.mark.slow
@pytest.mark.parametrize("where", ["embedding", "before-switch", "after-switch"])
def test_sigkill_during_reembed_serves_one_whole_model(
    tmp_path: Path, tiny_model_path: Path, second_model: Path, where: str
) -> None:
    settings = make_settings(tmp_path / "data", tiny_model_path)
    app = open_rift(settings)
    texts = {f"d{i}": doc_text(i, 1, long=i % 4 == 0) for i in range(30)}
    app.add_documents("default", docs(*texts.items()))
    before = index_state(app)["chroma"]
    app.close()
    SharedSystemClient.clear_system_cache()  # the child changes this Chroma dir; read it afresh afterwards

    killed_at(where, REEMBED, settings.data_dir, tiny_model_path, second_model)

    # Before any repair: the record names one model, and its Chroma collection holds every chunk, embedded
    # by that model (its dimension).
    conn = sqlite3.connect(str(settings.state_db))
    ((chroma_name, version),) = conn.execute("SELECT chroma_name, model_version FROM collections").fetchall()
    conn.close()
    expected = {str(tiny_model_path): (32, "old"), str(second_model): (48, "new")}
    dimension, serving = expected[version]
    assert serving == ("old" if where in ("embedding", "before-switch") else "new")
    client = chromadb.PersistentClient(
        path=str(settings.chroma_dir), settings=ChromaSettings(anonymized_telemetry=False)
    )
    got = client.get_collection(chroma_name).get(include=["embeddings"])
    assert set(got["ids"]) == before
    assert {len(e) for e in got["embeddings"]} == {dimension}
    del client
    SharedSystemClient.clear_system_cache()

    # Restarted on the model the record names, it serves every document from that model's vectors.
    served = open_rift(make_settings(settings.data_dir, Path(version)))
    try:
        assert served.repair_report["added_from_chroma"] == served.repair_report["removed_missing"] == 0
        assert served.repair_report["reembedded"] == []
        state = index_state(served)
        assert state["chroma"] == state["keyword"] == state["sqlite"] == before
        engine = served.engine()
        assert engine.state.collection("default").model_version == version == engine.embedder.version
        for doc_id in texts:
            first_chunk = engine.state.document_chunks("default", doc_id)[0].text
            assert doc_id in [
                h.doc_id for h in served.search("default", first_chunk, k=3, mode="vector").outcome.hits
            ]
        assert served.search("default", "gravel", k=1).outcome.model_version == version
    finally:
        served.close()


# --- a kill during a rollback's switch --------------------------------------------------------------------------

ROLLBACK = """
import os, signal, sys
from server.config import Settings
from server.engine.engine import Engine
from server.learning.registry import Registry
from server.service import Rift

data_dir, model, target, where = sys.argv[1:5]
settings = Settings(data_dir=data_dir, model=model, chunk_tokens=48, chunk_overlap=8)
app = Rift(settings).start(background=False)

def die(*_args, **_kwargs):
    sys.stderr.write("killed at " + where + "\\n")
    sys.stderr.flush()
    os.kill(os.getpid(), signal.SIGKILL)

if where == "between-collections":  # one collection switched to the target, the other not yet
    real_switch = Engine.switch_vectors
    switched = []
    def switch_vectors(self, *args, **kwargs):
        if switched:
            die()
        switched.append(args[0])
        return real_switch(self, *args, **kwargs)
    Engine.switch_vectors = switch_vectors
elif where == "before-registry":  # every collection switched, the registry not yet naming the target serving
    Registry.set_serving = die
app.learning.rollback(target)
app.learning.jobs.wait(300)
sys.stderr.write("not killed: " + repr(app.learning.status()) + "\\n")
"""


@pytest.mark.slow
@pytest.mark.parametrize("where", ["between-collections", "before-registry"])
def test_sigkill_during_a_rollback_keeps_every_kept_versions_vectors(
    tmp_path: Path, tiny_model_path: Path, where: str
) -> None:
    """A rollback switches every collection to its target's kept vectors, then names it serving. Killed in
    between, the next start switched the collections back to the serving version and dropped the target's
    vectors: the next rollback to it embedded the whole corpus again (an hour for 100k chunks on a CPU). Now
    start-up undoes the switch and both versions keep their vectors, so that rollback embeds nothing."""
    from server.engine.embedder import Embedder
    from server.engine.engine import chroma_name_for
    from tests.support.learning import fill_two_collections

    settings = make_settings(tmp_path / "data", tiny_model_path)
    app = open_rift(settings)
    try:
        fill_two_collections(app)
        # Another version serves (a re-index to a model of another dimension: a retrain's fine-tune is the same).
        started = app.learning.reindex(str(build_tiny_model(tmp_path / "tiny16", hidden=16, seed=3)))
        app.learning.jobs.wait(120)
        assert app.learning.status(started["job_id"])["status"] == "succeeded"
        newer, base = started["version"], str(tiny_model_path)
        chunks = {name: app.engine().state.chunk_ids(name) for name in ("default", "other")}
    finally:
        app.close()
    SharedSystemClient.clear_system_cache()  # the child changes this Chroma dir; read it afresh afterwards

    killed_at(where, ROLLBACK, settings.data_dir, base, base)
    left = dict(sqlite_rows(settings.state_db, "SELECT name, model_version FROM collections"))
    assert left["default"] == base and left["other"] == (newer if where == "between-collections" else base)
    SharedSystemClient.clear_system_cache()

    app = open_rift(settings)
    try:
        engine = app.engine()
        # Undone: the registry's serving version serves every collection, none half-switched.
        assert app.learning.registry.serving().version == newer == engine.embedder.version
        assert {r.model_version for r in engine.state.collections()} == {newer}
        for name, ids in chunks.items():
            assert set(engine.vectors.all_ids(chroma_name_for(name, newer))) == ids
            # The rollback's target keeps its vectors (learn_keep_versions is 2).
            assert set(engine.vectors.all_ids(chroma_name_for(name, base))) == ids
        out = app.search("default", "quantum energy", 3)
        assert out.outcome.model_version == newer and out.outcome.hits
        assert app.search("other", "coffee tea", 1, mode="vector").outcome.hits
        encoded: list[int] = []
        real = Embedder.encode_documents

        def counting(self: Embedder, texts: Any, *args: Any, **kwargs: Any) -> Any:
            encoded.append(len(texts))
            return real(self, texts, *args, **kwargs)

        Embedder.encode_documents = counting  # type: ignore[method-assign]
        try:
            again = app.learning.rollback(base)
            app.learning.jobs.wait(120)
        finally:
            Embedder.encode_documents = real  # type: ignore[method-assign]
        assert app.learning.status(again["job_id"])["status"] == "succeeded"
        assert sum(encoded) == 0  # instant: the kept vectors are whole
        assert app.search("default", "quantum energy", 3).outcome.model_version == base
        assert {r.model_version for r in engine.state.collections()} == {base}
    finally:
        app.close()
