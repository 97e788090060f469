"""The corpus-management MCP tools through an in-process client: add_paths (and each security refusal),
get_document recording fetches, list_documents, and the collection tools."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
from mcp import Client

from server.app import create_server
from server.config import Settings
from server.learning.query_log import QueryLog
from tests.support.corpus import build_corpus
from tests.support.helpers import ChromaLostAtBatch, write_notes

pytestmark = pytest.mark.anyio


@pytest.fixture
def root(tmp_path: Path) -> Path:
    build_corpus(tmp_path / "root", tmp_path / "outside")
    return tmp_path / "root"


def make_settings(tmp_path: Path, model: Path, roots: list[Path]) -> Settings:
    return Settings(
        data_dir=tmp_path / "data", model=str(model), chunk_tokens=48, chunk_overlap=8, allowed_roots=roots
    )


async def ok(client: Client, tool: str, **args: Any) -> dict[str, Any]:
    result = await client.call_tool(tool, args)
    assert not result.is_error, result.content
    return result.structured_content


async def refused(client: Client, tool: str, **args: Any) -> str:
    result = await client.call_tool(tool, args)
    assert result.is_error, result.structured_content
    text = result.content[0].text
    assert "Traceback" not in text
    return text


async def test_add_paths_is_refused_until_allowed_roots_are_set(
    tmp_path: Path, tiny_model_path: Path, root: Path
):
    async with Client(create_server(make_settings(tmp_path, tiny_model_path, []))) as client:
        message = await refused(client, "add_paths", paths=[str(root / "docs")])
    assert "allowed_roots" in message and "RIFT_ALLOWED_ROOTS" in message


async def test_each_path_trick_is_refused_with_a_clear_error(
    tmp_path: Path, tiny_model_path: Path, root: Path
):
    outside = tmp_path / "outside"
    os.symlink(outside, root / "escape")  # a folder symlink inside the root that leads out of it
    async with Client(create_server(make_settings(tmp_path, tiny_model_path, [root]))) as client:
        message = await refused(client, "add_paths", paths=[str(outside)])
        assert "outside the allowed roots" in message and str(root) in message
        message = await refused(client, "add_paths", paths=[str(root / "escape")])
        assert "symlink" in message and "outside the allowed roots" in message
        message = await refused(
            client, "add_paths", paths=[str(root / "docs" / "notes" / "linked-secret.txt")]
        )
        assert "symlink" in message
        message = await refused(client, "add_paths", paths=[f"{root}/docs/../../outside"])
        assert "'..'" in message
        message = await refused(client, "add_paths", paths=[f"{root}/docs/../docs"])  # even inside the root
        assert "'..'" in message
        message = await refused(client, "add_paths", paths=["docs"])
        assert "absolute path" in message
        message = await refused(client, "add_paths", paths=[str(root / "missing")])
        assert "does not exist" in message
        # Outside the roots the answer is the same whether a path exists or not: no probing the disk.
        message = await refused(client, "add_paths", paths=[str(outside.parent / "no-such-file")])
        assert "outside the allowed roots" in message and "does not exist" not in message
        message = await refused(client, "add_paths", paths=[str(root / "docs")], collection="bad name!")
        assert "collection" in message
        # A refusal reads nothing: one bad path fails the whole call before any file is ingested.
        message = await refused(client, "add_paths", paths=[str(root / "docs"), str(outside)])
        assert "paths[1]" in message
        listed = await ok(client, "list_collections")
    assert listed["collections"] == []


async def test_add_search_fetch_and_list(tmp_path: Path, tiny_model_path: Path, root: Path):
    docs = root / "docs"
    settings = make_settings(tmp_path, tiny_model_path, [root])
    async with Client(create_server(settings)) as client:
        added = await ok(client, "add_paths", paths=[str(docs)], collection="kb")
        assert added["added"] == 6 and added["skipped"] >= 4 and not added["truncated"]
        reasons = {Path(f["path"]).name: f["reason"] for f in added["files"] if f["status"] == "skipped"}
        assert reasons["photo.png"].startswith("binary file")
        assert "outside the allowed roots" in reasons["linked-secret.txt"]

        found = await ok(client, "hybrid_search", query="saguaro pleated stems", collection="kb", k=3)
        hit = found["hits"][0]
        assert hit["doc_id"] == str(docs / "botany.html")
        assert hit["metadata"]["file_type"] == "html" and hit["metadata"]["title"] == "Desert Botany"
        assert not any(key.startswith("_rift_") for key in hit["metadata"])
        # File sync's bookkeeping is left out of hits (90 bytes each an agent has no use for), and so is source,
        # the doc_id again; get_document shows them, below.
        assert not {"sha256", "extractor", "source"} & set(hit["metadata"])

        doc = await ok(
            client, "get_document", doc_id=hit["doc_id"], collection="kb", query_id=found["query_id"]
        )
        assert "Saguaro cacti store water" in doc["text"] and doc["fetch_recorded"]
        assert doc["metadata"]["source"] == str(docs / "botany.html") and not doc["truncated"]
        assert len(doc["metadata"]["sha256"]) == 64 and doc["metadata"]["extractor"]
        shown = {k: v for k, v in doc["metadata"].items() if k not in ("sha256", "extractor", "source")}
        assert hit["metadata"] == shown
        window = await ok(
            client, "get_document", doc_id=hit["doc_id"], collection="kb", offset=2, max_chars=5
        )
        assert window["text"] == doc["text"][2:7] and window["truncated"] and not window["fetch_recorded"]
        length = len(doc["text"])
        last = await ok(client, "get_document", doc_id=hit["doc_id"], collection="kb", offset=length)
        assert last["text"] == "" and not last["truncated"]  # a reader paging on stops at the end
        message = await refused(client, "get_document", doc_id=hit["doc_id"], collection="kb", offset=length + 1)
        assert f"offset {length + 1} is past the end of document" in message and f"has {length} characters" in message
        # A read of a document that search never ranked is returned but not recorded as its usage signal.
        pdf_only = await ok(
            client, "hybrid_search", query="saguaro", collection="kb", filters={"file_type": "pdf"}
        )
        assert hit["doc_id"] not in [h["doc_id"] for h in pdf_only["hits"]]
        unranked = await ok(
            client, "get_document", doc_id=hit["doc_id"], collection="kb", query_id=pdf_only["query_id"]
        )
        assert unranked["text"] == doc["text"] and not unranked["fetch_recorded"]
        # ... and says so: the agent passed a query_id and would otherwise take the read as recorded.
        assert len(unranked["warnings"]) == 1 and "was not among query" in unranked["warnings"][0]
        assert "not recorded" in unranked["warnings"][0]

        # A query_id of a form hybrid_search never returns is the caller's mistake (a doc_id or the query
        # passed instead) and is refused; one of the right form that is not in the log (pruned past
        # log_max_queries, or its collection deleted since) still returns the document, saying why the read
        # was not recorded: refusing it cost the agent the document it came for (found by helper AZ).
        message = await refused(
            client, "get_document", doc_id=hit["doc_id"], collection="kb", query_id="nope"
        )
        assert "'nope' is not one hybrid_search returns" in message
        gone = await ok(client, "get_document", doc_id=hit["doc_id"], collection="kb", query_id="0" * 32)
        assert gone["text"] == doc["text"] and not gone["fetch_recorded"]
        assert len(gone["warnings"]) == 1 and "is not in the query log" in gone["warnings"][0]
        assert "log_max_queries" in gone["warnings"][0] and "not recorded" in gone["warnings"][0]
        assert doc["warnings"] == [] and window["warnings"] == []
        await ok(client, "create_collection", collection="other")
        message = await refused(
            client, "get_document", doc_id=hit["doc_id"], collection="other", query_id=found["query_id"]
        )
        assert "searched collection 'kb'" in message
        message = await refused(client, "get_document", doc_id=str(docs / "nothing.md"), collection="kb")
        assert "no document" in message

        pdfs = await ok(client, "list_documents", collection="kb", filters={"file_type": "pdf"})
        assert [d["doc_id"] for d in pdfs["documents"]] == [str(docs / "aurora.pdf")]
        assert pdfs["documents"][0]["metadata"]["title"] == "Aurora Observations"
        notes = await ok(
            client, "list_documents", collection="kb", filters={"source": {"$prefix": str(docs / "notes")}}
        )
        assert [d["doc_id"] for d in notes["documents"]] == [str(docs / "notes" / "walrus.txt")]
        page1 = await ok(client, "list_documents", collection="kb", limit=4)
        page2 = await ok(client, "list_documents", collection="kb", limit=4, offset=page1["next_offset"])
        assert page1["total"] == 6 and page2["next_offset"] is None
        ids = [d["doc_id"] for d in page1["documents"] + page2["documents"]]
        assert ids == sorted(ids) and len(set(ids)) == 6
        after = await ok(client, "list_documents", collection="kb", limit=4, after=page1["next_after"])
        assert after["documents"] == page2["documents"] and after["offset"] == 4 and after["next_after"] is None
        message = await refused(
            client, "list_documents", collection="kb", filters={"source": {"$prefix": "rel"}}
        )
        assert "absolute path" in message

    log = QueryLog(settings.log_db)
    try:
        assert [(q, d) for q, d, _ in log.fetches()] == [(found["query_id"], str(docs / "botany.html"))]
    finally:
        log.close()


async def test_collection_tools(tmp_path: Path, tiny_model_path: Path, root: Path):
    async with Client(create_server(make_settings(tmp_path, tiny_model_path, [root]))) as client:
        assert (await ok(client, "create_collection", collection="alpha"))["created"] is True
        assert (await ok(client, "create_collection", collection="alpha"))["created"] is False
        await ok(client, "add_paths", paths=[str(root / "docs" / "notes")], collection="beta")
        listed = {c["name"]: c for c in (await ok(client, "list_collections"))["collections"]}
        assert listed["alpha"]["documents"] == 0 and listed["beta"]["documents"] == 1
        assert listed["beta"]["chunks"] >= 1

        dropped = await ok(client, "delete_collection", collection="beta")
        assert dropped["deleted_documents"] == 1 and dropped["deleted_chunks"] >= 1
        names = [c["name"] for c in (await ok(client, "list_collections"))["collections"]]
        assert names == ["alpha"]
        message = await refused(client, "delete_collection", collection="beta")
        assert "unknown collection 'beta'" in message and "alpha" in message
        message = await refused(client, "create_collection", collection="no spaces")
        assert "collection must be" in message

        tools = {t.name: t for t in (await client.list_tools()).tools}
        assert tools["delete_collection"].annotations.destructive_hint is True
        assert tools["list_documents"].annotations.read_only_hint is True
        assert tools["add_paths"].annotations.destructive_hint is True  # prune removes documents
        schema = json.dumps(tools["add_paths"].input_schema)
        assert "prune" in schema and "glob" in schema and "recursive" in schema
        # A list of globs, as the CLI takes: any of them matches.
        listed = await ok(
            client, "add_paths", paths=[str(root / "docs")], collection="globs", glob=["*.md", "*.txt"]
        )
        kinds = {Path(f["path"]).suffix for f in listed["files"] if f["status"] == "added"}
        assert kinds and kinds <= {".md", ".txt"}
        message = await refused(client, "hybrid_search", query="\u200b\u200e", collection="alpha")
        assert "invisible characters" in message


async def test_a_file_name_that_is_not_utf8_does_not_fail_the_call(tmp_path: Path, tiny_model_path: Path):
    folder = tmp_path / "latin"
    folder.mkdir()
    (folder / "good.md").write_text("# Good\n\nplain note\n")
    with open(os.path.join(os.fsencode(folder), b"caf\xe9.md"), "wb") as handle:  # Latin-1 name
        handle.write(b"# Cafe\n\nnote\n")
    async with Client(create_server(make_settings(tmp_path, tiny_model_path, [folder]))) as client:
        report = await ok(client, "add_paths", paths=[str(folder)], collection="latin")
        files = {Path(f["path"]).name: f for f in report["files"]}
        assert files["good.md"]["status"] == "added"
        # Its reason names the problem (it said "file metadata.source is not valid Unicode").
        assert files["caf\ufffd.md"]["status"] == "skipped"
        assert files["caf\ufffd.md"]["reason"].startswith("its path is not valid UTF-8"), files
        json.dumps(report)  # plain UTF-8 all through


async def test_a_chroma_server_lost_part_way_says_what_add_paths_stored(
    tmp_path: Path, tiny_model_path: Path, monkeypatch
):
    """A Chroma server that went down after some batches committed answered only with its error: an agent
    read that nothing was stored (the audit saw 352 of 600 files stored)."""
    folder = write_notes(tmp_path / "notes")
    lost = ChromaLostAtBatch(monkeypatch)
    async with Client(create_server(make_settings(tmp_path, tiny_model_path, [folder]))) as client:
        message = await refused(client, "add_paths", paths=[str(folder)], collection="notes")
        assert "cannot reach the Chroma server at http://chroma.internal:8000 (" in message, message
        assert "the files before the failure are stored (2 added): run add_paths again" in message, message
        assert "unchanged files are skipped" in message
        assert (await ok(client, "list_documents", collection="notes"))["total"] == 2
        lost.restore()
        again = await ok(client, "add_paths", paths=[str(folder)], collection="notes")
        assert (again["added"], again["unchanged"]) == (3, 2), again
        # The unchanged files are counted, not listed one by one in the agent's context.
        assert sorted(f["status"] for f in again["files"]) == ["added"] * 3 and not again["truncated"]
        # Nothing stored before the failure: the error alone, as before.
        lost.flushes[:] = [1]  # the next batch is the failing one
        lost.lose_again()
        (folder / "note0.md").write_text("# Note 0\n\nRewritten.\n")
        message = await refused(client, "add_paths", paths=[str(folder)], collection="notes")
        assert "cannot reach the Chroma server" in message and "stored" not in message, message


def test_reasons_quoting_undecodable_file_names_still_serialize() -> None:
    from server.ingest.sync import printable

    # A skip reason can quote a symlink's target whose name is not UTF-8 (a surrogate escape in Python).
    assert printable("symlink leads outside the allowed roots (to /x/caf\udce9.md)").endswith(
        "caf\ufffd.md)"
    )
    assert printable("lone \ud800 surrogate") == "lone ? surrogate"
