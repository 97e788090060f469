"""Every core tool through an in-process MCP client, as an agent sees it: the listing (schemas with bounds,
titles, descriptions, annotations), structured output, round trips, and a clear is_error for each bad input
with nothing half-written behind it."""

from __future__ import annotations

import json
import math
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import jsonschema
import pytest
from mcp import Client
from mcp.server.mcpserver.exceptions import ToolError
from mcp.shared.exceptions import MCPError
from mcp.types import INVALID_PARAMS

from server.app import create_server
from server.config import Settings
from tests.support.helpers import make_settings

pytestmark = pytest.mark.anyio

CORE = {"add_documents", "hybrid_search", "delete_documents", "stats"}
LONG = " ".join(f"Part {i} of the manual covers the pump valve and its seal." for i in range(30))


@asynccontextmanager
async def connect(settings: Settings) -> AsyncIterator[Client]:
    async with Client(create_server(settings), raise_exceptions=False) as client:
        yield client


@pytest.fixture
def cfg(tmp_path: Path, tiny_model_path: Path) -> Settings:
    return make_settings(tmp_path / "data", tiny_model_path, max_document_chars=2000, embed_batch_size=2)


class Session:
    """Calls tools and checks each successful result against the tool's advertised output schema."""

    def __init__(self, client: Client, schemas: dict[str, dict[str, Any]]) -> None:
        self.client = client
        self.schemas = schemas

    async def ok(self, name: str, args: dict[str, Any] | None = None, **kw: Any) -> dict[str, Any]:
        result = await self.client.call_tool(name, args or {}, **kw)
        assert not result.is_error, result.content
        data = result.structured_content
        assert data is not None
        jsonschema.validate(data, self.schemas[name])
        # The text content carries the same payload for clients that ignore structured output, as compact JSON
        # (the SDK's indented JSON was about 30 % whitespace, paid for in the agent's context).
        assert json.loads(result.content[0].text) == data
        assert result.content[0].text == json.dumps(data, ensure_ascii=False, separators=(",", ":"))
        return data

    async def error(self, name: str, args: dict[str, Any]) -> str:
        result = await self.client.call_tool(name, args)
        assert result.is_error, (name, args, result.structured_content)
        text = " ".join(getattr(c, "text", "") for c in result.content)
        assert "Traceback" not in text and text.strip()
        return text


@asynccontextmanager
async def session(settings: Settings) -> AsyncIterator[Session]:
    async with connect(settings) as client:
        listing = await client.list_tools()
        yield Session(client, {t.name: t.output_schema for t in listing.tools})


async def test_tools_list_schemas_and_annotations(cfg: Settings) -> None:
    async with connect(cfg) as client:
        tools = {t.name: t for t in (await client.list_tools()).tools}
    assert set(tools) >= CORE
    expected_hints = {  # read_only, destructive, idempotent
        "add_documents": (False, True, True),  # re-adding an id replaces its text
        "hybrid_search": (True, False, True),
        "delete_documents": (False, True, False),
        "stats": (True, False, True),
    }
    # Not "additive only" either (MCP's destructiveHint false): add_paths prunes, update_metadata removes keys.
    assert tools["add_paths"].annotations.destructive_hint and tools["update_metadata"].annotations.destructive_hint
    # Nor retrain and rollback: another model serves, and versions past learn_keep_versions / learn_keep_weights
    # lose their vectors and weights (a client that auto-approves non-destructive tools must ask first).
    assert all(tools[name].annotations.destructive_hint for name in ("retrain", "rollback"))
    for name in CORE:
        tool = tools[name]
        assert tool.title and tool.annotations is not None and tool.annotations.title == tool.title
        assert tool.description and len(tool.description) > 80  # tells an agent when to use it
        a = tool.annotations
        assert (a.read_only_hint, a.destructive_hint, a.idempotent_hint) == expected_hints[name], name
        assert a.open_world_hint is False
        assert tool.output_schema and tool.output_schema.get("type") == "object"

    search = tools["hybrid_search"].input_schema["properties"]
    # k's maximum is the configured max_k (test_bounds_that_are_settings_are_published_as_configured).
    assert (search["k"]["minimum"], search["k"]["maximum"], search["k"]["default"]) == (1, 100, 10)
    assert (search["query"]["minLength"], search["query"]["maxLength"]) == (1, 8192)
    assert search["mode"]["enum"] == ["hybrid", "vector", "keyword"]
    assert search["collection"]["default"] == "default" and "filters" in search
    assert tools["hybrid_search"].input_schema["required"] == ["query"]

    add = tools["add_documents"].input_schema
    assert add["properties"]["documents"]["minItems"] == 1 and add["required"] == ["documents"]
    doc = add["$defs"]["DocumentIn"]
    assert doc["required"] == ["text"] and doc["properties"]["text"]["type"] == "string"
    meta_types = doc["properties"]["metadata"]["anyOf"][0]["additionalProperties"]["anyOf"]
    assert sorted(t["type"] for t in meta_types) == ["boolean", "integer", "number", "string"]

    delete = tools["delete_documents"].input_schema
    ids_schema = next(a for a in delete["properties"]["ids"]["anyOf"] if a.get("type") == "array")
    assert ids_schema["minItems"] == 1 and "filters" in delete["properties"] and "required" not in delete
    # A client can see that unknown arguments are refused (server/app.py `_refuse_unknown_arguments`).
    assert all(t.input_schema.get("additionalProperties") is False for t in tools.values())
    assert doc.get("additionalProperties") is False
    # The published bounds are the ones the server enforces (a value the schema allows is not refused).
    retrain = tools["retrain"].input_schema["properties"]
    bounds = {
        name: next(a for a in retrain[name]["anyOf"] if a.get("type") != "null")
        for name in ("epochs", "learning_rate", "min_triples")
    }
    assert (bounds["epochs"]["minimum"], bounds["epochs"]["maximum"]) == (0.01, 20)
    assert (bounds["learning_rate"]["minimum"], bounds["learning_rate"]["maximum"]) == (1e-8, 1e-3)
    assert (bounds["min_triples"]["minimum"], bounds["min_triples"]["maximum"]) == (1, 10_000_000)
    hit = tools["hybrid_search"].output_schema["$defs"]["SearchHit"]["properties"]
    assert {"doc_id", "chunk_id", "text", "metadata", "score", "vector_rank", "keyword_rank", "start", "end"} <= set(hit)
    assert {"vector_score", "keyword_score"} <= set(hit)


async def test_add_search_delete_round_trip(cfg: Settings) -> None:
    async with session(cfg) as s:
        added = await s.ok(
            "add_documents",
            {
                "documents": [
                    {"id": "pump", "text": LONG, "metadata": {"kind": "manual", "year": 2024, "sha256": "x"}},
                    {
                        "id": "cat",
                        "text": "the cat sat on the mat",
                        "metadata": {"kind": "story", "ok": True},
                    },
                    {"text": "an anonymous note about coffee and milk", "metadata": {"score": 0.5}},
                ],
                "collection": "docs",
            },
        )
        assert (added["added"], added["updated"], added["unchanged"]) == (3, 0, 0)
        statuses = {d["id"]: d for d in added["documents"]}
        assert statuses["pump"]["chunks"] > 1 and statuses["cat"]["chunks"] == 1
        anon = next(i for i in statuses if i not in ("pump", "cat"))
        assert len(anon) == 32  # content-hash id

        found = await s.ok("hybrid_search", {"query": "pump valve seal", "collection": "docs", "k": 2})
        assert found["query_id"] and found["mode"] == "hybrid" and found["disagreement"]["top"] == 5
        assert found["disagreement"]["compared"] and 0 <= found["disagreement"]["overlap"] <= 1
        top = found["hits"][0]
        # (a text document's own "sha256" key is its metadata, shown: only a file's sync bookkeeping is not)
        assert top["doc_id"] == "pump" and top["metadata"] == {"kind": "manual", "year": 2024, "sha256": "x"}
        assert top["keyword_rank"] == 1 and top["vector_rank"] is not None and "pump" in top["text"]
        assert top["keyword_score"] > 0 and -1 <= top["vector_score"] <= 1
        assert top["chunk_id"].startswith("pump::")
        around = await s.ok(  # read around the hit, not the whole document
            "get_document",
            {"doc_id": "pump", "collection": "docs", "offset": top["start"], "max_chars": top["end"] - top["start"]},
        )
        assert around["text"] == top["text"] and around["truncated"] == (top["end"] < around["total_chars"])
        assert {"embed_ms", "vector_ms", "keyword_ms", "fusion_ms", "log_ms"} <= set(found["timings_ms"])

        filtered = await s.ok(
            "hybrid_search", {"query": "cat pump", "collection": "docs", "filters": {"kind": "story"}}
        )
        assert [h["doc_id"] for h in filtered["hits"]] == ["cat"] and filtered["warnings"] == []
        # A filter nothing can match says why, rather than an empty list that reads as "nothing relevant".
        typo = await s.ok("hybrid_search", {"query": "cat", "collection": "docs", "filters": {"knd": "story"}})
        assert typo["hits"] == [] and typo["warnings"] == [
            "nothing can match: filters name 'knd', which no chunk in 'docs' has in its metadata"
        ]
        value = await s.ok("hybrid_search", {"query": "cat", "collection": "docs", "filters": {"kind": "novel"}})
        assert value["hits"] == [] and value["warnings"][0].startswith('no chunk in \'docs\' has kind "novel"; its values')
        assert value["query_id"] is not None  # (logged as any search: the vector side ran)
        vector = await s.ok("hybrid_search", {"query": "cat", "collection": "docs", "mode": "vector"})
        assert vector["query_id"] is None and vector["disagreement"] is None and len(vector["hits"]) == 3
        stopwords = await s.ok("hybrid_search", {"query": "the and of it", "collection": "docs"})
        assert stopwords["hits"] and stopwords["disagreement"]["compared"] is False
        assert stopwords["disagreement"]["overlap"] is None and stopwords["warnings"] == []
        # Keyword mode finds nothing for it, and says why rather than returning an empty list without a word.
        unsearchable = await s.ok("hybrid_search", {"query": "the and of it", "collection": "docs", "mode": "keyword"})
        assert unsearchable["hits"] == []
        assert unsearchable["warnings"] == [
            "the query has no keyword terms (only stopwords or symbols), so keyword mode finds nothing: "
            "search in hybrid or vector mode"
        ]
        keyword = await s.ok("hybrid_search", {"query": "cat", "collection": "docs", "mode": "keyword"})
        assert keyword["hits"] and keyword["warnings"] == []

        deleted = await s.ok("delete_documents", {"ids": ["pump", "ghost"], "collection": "docs"})
        assert deleted == {"collection": "docs", "deleted": ["pump"], "not_found": ["ghost"], "remaining": 0}
        by_filter = await s.ok("delete_documents", {"filters": {"kind": "story"}, "collection": "docs"})
        assert by_filter == {"collection": "docs", "deleted": ["cat"], "not_found": [], "remaining": 0}
        cat = {"id": "cat", "text": "the cat sat on the mat", "metadata": {"kind": "story", "ok": True}}
        await s.ok("add_documents", {"collection": "docs", "documents": [cat]})
        after = await s.ok("hybrid_search", {"query": "pump valve seal", "collection": "docs"})
        assert "pump" not in [h["doc_id"] for h in after["hits"]]

        stats = await s.ok("stats", {"collection": "docs"})
        (coll,) = stats["collections"]
        assert (coll["name"], coll["documents"], coll["chunks"]) == ("docs", 2, 2)
        assert stats["model"] == cfg.model and stats["dimension"] == 32
        assert stats["queries"]["logged_queries"] == 6  # the hybrid searches
        assert stats["queries"]["queries_without_keyword_terms"] == 1
        assert set(stats["index_bytes"]) >= {"chroma", "state_sqlite", "query_log_sqlite"}


async def test_a_raised_max_k_is_honoured_over_mcp(cfg: Settings) -> None:
    async with session(cfg.model_copy(update={"max_k": 500})) as s:
        docs = [{"id": f"d{i}", "text": f"note {i} about pumps and valves"} for i in range(150)]
        await s.ok("add_documents", {"documents": docs})
        found = await s.ok("hybrid_search", {"query": "pumps valves", "k": 150})
        assert len(found["hits"]) == 150
        assert "from 1 to 500" in await s.error("hybrid_search", {"query": "pumps", "k": 501})
        assert len((await s.ok("hybrid_search", {"query": "pumps", "k": 1.0}))["hits"]) <= 1  # 1.0 is an integer


async def test_bounds_that_are_settings_are_published_as_configured(cfg: Settings) -> None:
    """A schema bound that is a setting is the configured one: what the schema allows is not refused and what
    it refuses is refused, naming the setting. Deleting by id has a fixed bound, not max_documents_per_call."""
    async with session(cfg.model_copy(update={"max_k": 20, "max_documents_per_call": 5})) as s:
        listed = {t.name: t.input_schema for t in (await s.client.list_tools()).tools}
        assert listed["hybrid_search"]["properties"]["k"]["maximum"] == 20
        assert listed["add_documents"]["properties"]["documents"]["maxItems"] == 5
        assert listed["update_metadata"]["properties"]["ids"]["maxItems"] == 5
        delete_ids = next(a for a in listed["delete_documents"]["properties"]["ids"]["anyOf"] if a["type"] == "array")
        assert delete_ids["maxItems"] == 10_000
        docs = [{"id": f"d{i}", "text": f"note {i} about pumps"} for i in range(6)]
        assert "(setting max_documents_per_call)" in await s.error("add_documents", {"documents": docs})
        await s.ok("add_documents", {"documents": docs[:5]})
        await s.ok("add_documents", {"documents": docs[5:]})
        ids = [d["id"] for d in docs]
        refused = await s.error("update_metadata", {"ids": ids, "metadata": {"tag": "x"}})
        assert "ids has 6 items; the limit per call is 5 (setting max_documents_per_call)" in refused
        assert len((await s.ok("update_metadata", {"ids": ids[:5], "metadata": {"tag": "x"}}))["updated"]) == 5
        assert len((await s.ok("hybrid_search", {"query": "pumps", "k": 20}))["hits"]) == 6
        assert "from 1 to 20 (setting max_k)" in await s.error("hybrid_search", {"query": "pumps", "k": 21})
        assert sorted((await s.ok("delete_documents", {"ids": ids}))["deleted"]) == ids
        too_many = await s.error("delete_documents", {"ids": [f"x{i}" for i in range(10_001)]})
        assert "ids: must have at most 10,000 items, got 10,001" in too_many


async def test_upsert_replaces_chunks_and_unchanged_is_skipped(cfg: Settings) -> None:
    async with session(cfg) as s:
        first = await s.ok("add_documents", {"documents": [{"id": "m", "text": LONG}]})
        n_old = first["documents"][0]["chunks"]
        chunks = await s.ok("hybrid_search", {"query": "pump valve", "k": 100, "group_by_document": False})
        old_ids = {h["chunk_id"] for h in chunks["hits"]}
        assert len(old_ids) == n_old > 3

        again = await s.ok("add_documents", {"documents": [{"id": "m", "text": LONG}]})
        assert again["documents"] == [{"id": "m", "status": "unchanged", "chunks": 0}]

        short = await s.ok("add_documents", {"documents": [{"id": "m", "text": "a green tree by the road"}]})
        assert short["documents"] == [{"id": "m", "status": "updated", "chunks": 1}]
        keyword = await s.ok("hybrid_search", {"query": "pump valve seal", "mode": "keyword"})
        assert keyword["hits"] == []
        vector = await s.ok(
            "hybrid_search", {"query": LONG[:300], "k": 100, "mode": "vector", "group_by_document": False}
        )
        assert len(vector["hits"]) == 1 and vector["hits"][0]["chunk_id"] not in old_ids
        stats = await s.ok("stats")
        assert stats["collections"][0]["chunks"] == 1


async def test_update_metadata_changes_filters_without_the_text(cfg: Settings) -> None:
    """An agent retags stored documents without sending their text again; the text and its vectors stay,
    filters see the new metadata at once, and a bad call changes nothing."""
    async with session(cfg) as s:
        await s.ok(
            "add_documents",
            {"documents": [
                {"id": "a", "text": LONG, "metadata": {"tag": "draft", "year": 2020}},
                {"id": "b", "text": "a green tree by the road", "metadata": {"tag": "draft", "year": 2020}},
            ]},
        )  # fmt: skip
        before = await s.ok("hybrid_search", {"query": "pump valve", "k": 100, "group_by_document": False})
        args = {"ids": ["a"], "metadata": {"tag": "final", "reviewed": True}, "remove": ["year"]}
        assert await s.ok("update_metadata", args) == {"collection": "default", "updated": ["a"], "unchanged": []}
        assert (await s.ok("update_metadata", args))["unchanged"] == ["a"]
        doc = await s.ok("get_document", {"doc_id": "a"})
        assert doc["text"] == LONG and doc["metadata"] == {"tag": "final", "reviewed": True}
        found = await s.ok("hybrid_search", {"query": "pump valve", "filters": {"tag": "final"}})
        assert [h["doc_id"] for h in found["hits"]] == ["a"]
        found = await s.ok("hybrid_search", {"query": "pump valve tree", "filters": {"year": 2020}})
        assert [h["doc_id"] for h in found["hits"]] == ["b"]
        after = await s.ok("hybrid_search", {"query": "pump valve", "k": 100, "group_by_document": False})
        assert [h["text"] for h in after["hits"]] == [h["text"] for h in before["hits"]]

        text = await s.error("update_metadata", {"ids": ["b", "nope"], "metadata": {"tag": "x"}})
        assert "'nope'" in text and "not in collection 'default'" in text
        text = await s.error("update_metadata", {"ids": ["b"], "metadata": {"tag": "x"}, "remove": ["tag"]})
        assert "both set and removed: tag" in text
        assert "give metadata to set or keys to remove" in await s.error("update_metadata", {"ids": ["b"]})
        assert (await s.ok("get_document", {"doc_id": "b"}))["metadata"] == {"tag": "draft", "year": 2020}


async def test_documents_are_listed_by_the_start_of_their_id(cfg: Settings) -> None:
    """Ids are not metadata, so filters cannot find 'every document under notes/': id_prefix does, with the
    same paging (offset or after) and alongside filters."""
    ids = ["notes", "notes/a", "notes/b", "notes/c", "notes0", "notez", "nou", "n\U0010ffff", "n\U0010ffffx"]
    async with session(cfg) as s:
        documents = [{"id": d, "text": f"text of {d}", "metadata": {"n": i}} for i, d in enumerate(ids)]
        documents[ids.index("nou")]["metadata"]["extra"] = 1  # a field no document under "notes" has
        await s.ok("add_documents", {"documents": documents})

        async def listed(**args: Any) -> tuple[int, list[str], dict[str, Any]]:
            page = await s.ok("list_documents", args)
            return page["total"], [d["doc_id"] for d in page["documents"]], page

        assert (await listed(id_prefix="notes/"))[:2] == (3, ["notes/a", "notes/b", "notes/c"])
        assert (await listed(id_prefix="notes"))[:2] == (5, ["notes", "notes/a", "notes/b", "notes/c", "notes0"])
        assert (await listed(id_prefix="n\U0010ffff"))[:2] == (2, ["n\U0010ffff", "n\U0010ffffx"])
        assert (await listed(id_prefix="x"))[:2] == (0, [])
        total, first, page = await listed(id_prefix="notes/", limit=2)
        assert (total, first, page["next_offset"]) == (3, ["notes/a", "notes/b"], 2)
        assert (await listed(id_prefix="notes/", after=page["next_after"]))[1] == ["notes/c"]
        assert (await listed(id_prefix="notes/", offset=2))[1] == ["notes/c"]
        # with a metadata filter: both must hold
        assert (await listed(id_prefix="notes", filters={"n": {"$gte": 3}}))[:2] == (2, ["notes/c", "notes0"])
        assert (await listed(id_prefix="notes/", filters={"n": {"$gte": 3}}, after="notes/b"))[1] == ["notes/c"]
        # a field only documents outside the prefix have matches nothing there; it is no unknown field
        assert (await listed(id_prefix="notes", filters={"extra": 1}))[:2] == (0, [])
        assert "which no document in 'default' has" in await s.error(
            "list_documents", {"id_prefix": "notes", "filters": {"nobody": 1}}
        )
        # what an agent tries first points here
        tried = await s.error("list_documents", {"filters": {"id": {"$prefix": "notes/"}}})
        assert "list_documents' id_prefix (`rift list --prefix`) lists documents by the start of their id" in tried
        tried = await s.error("delete_documents", {"filters": {"doc_id": "notes/a"}})
        assert "a document's id is not metadata: list_documents' id_prefix" in tried
        assert (await listed())[0] == len(ids)


async def test_a_long_document_is_read_a_window_at_a_time_by_default(tmp_path: Path, tiny_model_path: Path) -> None:
    """Without max_chars, get_document returns at most get_document_max_chars: one very long document must not
    fill an agent's context; it pages on with offset, and max_chars (or the setting at 0) reads it whole."""
    text = " ".join(f"word{i}" for i in range(400))  # 3,289 characters
    for cap, first in ((1000, 1000), (0, len(text))):
        settings = make_settings(tmp_path / f"data{cap}", tiny_model_path, get_document_max_chars=cap)
        async with session(settings) as s:
            await s.ok("add_documents", {"documents": [{"id": "long", "text": text}]})
            doc = await s.ok("get_document", {"doc_id": "long"})
            assert (len(doc["text"]), doc["total_chars"], doc["truncated"]) == (first, len(text), cap > 0)
            if cap:
                parts = [doc["text"]]
                while doc["truncated"]:
                    doc = await s.ok("get_document", {"doc_id": "long", "offset": doc["offset"] + len(doc["text"])})
                    parts.append(doc["text"])
                assert "".join(parts) == text and len(parts) == 4
                whole = await s.ok("get_document", {"doc_id": "long", "max_chars": 5000})
                assert whole["text"] == text and not whole["truncated"]


async def test_bad_inputs_are_clear_errors_and_write_nothing(cfg: Settings) -> None:
    async with session(cfg) as s:
        await s.ok("add_documents", {"documents": [{"id": "a", "text": "the cat sat on the mat"}]})
        before = await s.ok("stats")
        doc = {"id": "b", "text": "fine"}
        cases: list[tuple[str, dict[str, Any], list[str]]] = [
            ("hybrid_search", {"query": ""}, ["query"]),
            ("hybrid_search", {"query": "   \n\t"}, ["query"]),
            ("hybrid_search", {"query": "cat", "k": 0}, ["k", "greater than or equal to 1"]),
            ("hybrid_search", {"query": "cat", "k": 101}, ["k must be an integer from 1 to 100"]),
            ("hybrid_search", {"query": "cat", "k": "many"}, ["k"]),
            ("hybrid_search", {"query": "cat", "mode": "fuzzy"}, ["mode"]),
            ("hybrid_search", {"query": "cat", "collection": "nope"}, ["unknown collection 'nope'"]),
            ("hybrid_search", {"query": "cat", "collection": "../etc"}, ["collection"]),
            ("hybrid_search", {"query": "cat", "filters": {"year": {"$gt": "x"}}}, ["filters.year.$gt"]),
            ("add_documents", {"documents": []}, ["documents", "at least 1"]),
            ("add_documents", {"documents": [doc, {"id": "c", "text": 42}]}, ["documents[1].text: must be a string, got integer"]),
            ("add_documents", {"documents": [doc, {"id": "c", "text": None}]}, ["documents[1].text: must be a string, got null"]),
            ("add_documents", {"documents": [doc, {"id": "c", "text": "  "}]}, ["documents[1].text"]),
            (
                "add_documents",
                {"documents": [doc, {"id": "c", "text": "x" * 2001}]},
                ["documents[1].text", "2,001", "max_document_chars"],
            ),
            (
                "add_documents",
                {"documents": [doc, {"id": "c", "text": "x", "metadata": {"tags": ["a", "b"]}}]},
                ["documents[1].metadata.tags: metadata values must be a string, number or boolean, got array"],
            ),
            (
                "add_documents",
                {"documents": [doc, {"id": "c", "text": "x", "metadata": {"nested": {"a": 1}}}]},
                ["documents[1].metadata.nested", "got object"],
            ),
            (
                "add_documents",
                {"documents": [doc, {"id": "c", "text": "x", "metadata": {"gone": None}}]},
                ["documents[1].metadata.gone", "got null"],
            ),
            (
                "add_documents",
                {"documents": [doc, {"id": "c", "text": "x", "metadata": {"_rift_doc": "y"}}]},
                ["documents[1].metadata._rift_doc", "reserved"],
            ),
            (
                "add_documents",
                {"documents": [doc, {"id": "b", "text": "other"}]},
                ["documents[1].id", "duplicates documents[0]"],
            ),
            (
                "add_documents",
                {"documents": [{"text": "same"}, {"text": "same", "metadata": {"tag": "b"}}]},
                ["documents[1] has no id and the same text as documents[0]", "give them ids"],
            ),
            ("add_documents", {"documents": [doc], "collection": "bad name!"}, ["collection"]),
            ("delete_documents", {"ids": []}, ["ids"]),
            ("delete_documents", {}, ["give ids", "or filters"]),
            ("delete_documents", {"ids": ["a"], "filters": {"tag": "x"}}, ["either ids or filters, not both"]),
            ("delete_documents", {"filters": {}}, ["at least one condition", "delete_collection"]),
            ("delete_documents", {"filters": {"tag": {"$like": "x"}}}, ["$like"]),
            ("delete_documents", {"ids": ["a"], "collection": "nope"}, ["unknown collection 'nope'"]),
            ("stats", {"collection": "nope"}, ["unknown collection 'nope'"]),
            ("stats", {"collection": ""}, ["collection"]),  # "" is no name; omit it for every collection
            # A misspelt argument is named, never ignored: the typo'd collection would have deleted from default.
            (
                "delete_documents",
                {"ids": ["a"], "colection": "other"},
                ["delete_documents has no argument 'colection'"],
            ),
            ("hybrid_search", {"query": "cat", "filter": {"lang": "de"}}, ["has no argument 'filter'", "filters"]),
            # A value of the wrong JSON type is refused, not converted (k=true was one hit, relevant=1 a
            # confirmation).
            ("hybrid_search", {"query": "cat", "k": True}, ["k: must be an integer, got boolean"]),
            ("hybrid_search", {"query": "cat", "k": "5"}, ["k: must be an integer, got string"]),
            ("hybrid_search", {"query": "cat", "k": 5.5}, ["k: must be an integer, got number"]),
            ("feedback", {"query_id": "q", "doc_id": "a", "relevant": 1}, ["relevant: must be a boolean, got integer"]),
            ("get_document", {"doc_id": "a", "offset": True}, ["offset: must be an integer, got boolean"]),
            ("add_documents", {"documents": [{"id": "c", "text": "x", "meta": {"lang": "fr"}}]}, ["meta"]),
            # Argument errors as rift words its own (documents[1].text), not pydantic's text ("1 validation
            # error for add_documents arguments\ndocuments.0\n  Input should be a valid dictionary or instance
            # of DocumentIn [type=model_type, input_value=None, input_type=NoneType]").
            ("add_documents", {"documents": [None]}, ["add_documents: documents[0]: must be an object, got null"]),
            ("add_documents", {"documents": "x"}, ["documents: must be an array, got string"]),
            ("add_documents", {}, ["documents: missing (required)"]),
            (
                "add_documents",
                {"documents": [doc, None, {"id": 3}]},
                [
                    ": documents[1]: must be an object, got null\ndocuments[2].id: must be a string, got integer\n"
                    "documents[2].text: missing (required)"
                ],
            ),
            ("add_documents", {"documents": [None] * 30}, ["documents[9]: must be an object", "\n… and 20 more"]),
            ("feedback", {"query_id": "q", "judgments": [None]}, ["judgments[0]: must be an object, got null"]),
            ("hybrid_search", {"query": "cat", "mode": "fuzzy"}, ["mode: must be 'hybrid', 'vector' or 'keyword'"]),
            ("hybrid_search", {"query": "x" * 9000}, ["query is 9,000 characters; the limit is 8,192"]),
            ("hybrid_search", {"query": "cat", "filters": [1]}, ["filters: must be an object, got array"]),
            # A union's members as one error, not pydantic's one per member with its Python type in the path
            # ("glob.str: must be a string ...\nglob.list[str]: must be an array ...").
            ("add_paths", {"paths": ["/x"], "glob": 5}, [": glob: must be a string or an array, got integer"]),
            ("add_paths", {"paths": ["/x"], "glob": ["*.md", 1]}, [": glob[1]: must be a string, got integer"]),
            (
                "hybrid_search",
                {"query": "cat", "filters": {"n": {"$in": list(range(10_001))}}},
                ["10,001 values", "10,000"],
            ),
        ]
        for name, args, needles in cases:
            message = await s.error(name, args)
            for needle in needles:
                assert needle in message, (name, args, message)
            assert "errors.pydantic.dev" not in message  # no docs link per error in what the agent reads
            for internal in ("validation error", "Input should", "instance of", "[type=", "input_value", "input_type"):
                assert internal not in message, (name, args, message)
        after = await s.ok("stats")
        assert after["collections"] == before["collections"]  # no 'b', no new collection
        found = await s.ok("hybrid_search", {"query": "fine", "mode": "keyword"})
        assert found["hits"] == []


@pytest.mark.parametrize(
    ("name", "args", "expected"),
    [
        ("retrain", {"epochs": math.nan}, "epochs: must be a finite number, got NaN"),
        ("retrain", {"learning_rate": math.inf}, "learning_rate: must be a finite number, got Infinity"),
        ("retrain", {"merge_base": math.nan}, "merge_base: must be a finite number, got NaN"),
        ("retrain_status", {"wait_seconds": math.nan}, "wait_seconds: must be a finite number, got NaN"),
        ("retrain_status", {"wait_seconds": -math.inf}, "wait_seconds: must be a finite number, got -Infinity"),
    ],
)
async def test_nan_or_infinity_in_a_number_argument_is_named_as_such(
    cfg: Settings, name: str, args: dict[str, Any], expected: str
) -> None:
    """A raw NaN (which Python's JSON reader, and so the wire, accepts) was refused as "Input should be less
    than or equal to 20". The in-process client sends NaN as null, so the server is called directly; the raw
    wire is checked in tests/test_stdio_server.py."""
    server = create_server(cfg)  # validation comes before the tool's body: no session, no model
    with pytest.raises(ToolError) as caught:
        await server.call_tool(name, args)
    assert str(caught.value) == f"Error executing tool {name}: {expected}"


async def test_unknown_names_are_quoted_short_and_an_unknown_tool_is_a_protocol_error(cfg: Settings) -> None:
    """A 100,000-character unknown argument or field name came back whole in the error (100 KB of an agent's
    context), and an unknown tool was a tool result (isError) quoting its name whole, where MCP makes it a
    protocol error, as rift answers an unknown prompt or resource."""
    long = "x" * 100_000
    async with session(cfg) as s:
        with pytest.raises(MCPError) as caught:
            await s.client.call_tool("n" * 5000, {})
        error = caught.value.error
        assert error.code == INVALID_PARAMS and len(error.message) < 1000, len(error.message)
        assert error.message.startswith("unknown tool '" + "n" * 100 + "'…; the tools are add_documents, ")
        for name, args, needle in [
            ("stats", {long: 1}, "stats has no argument '" + "x" * 100 + "'…; it takes collection"),
            ("add_documents", {"documents": [{"text": "t", long: 1}]}, "a document has no field '"),
            (
                "feedback",
                {"query_id": "q", "judgments": [{"doc_id": "a", "relevant": True, long: 1}]},
                "a judgment has no field '",
            ),
        ]:
            message = await s.error(name, args)
            assert len(message) < 2000, (name, len(message))  # (checked first: pytest's report of a 100 KB miss)
            assert needle in message, (name, message)
        assert (await s.ok("stats"))["collections"] == []  # and the server goes on serving


async def test_large_add_streams_progress(cfg: Settings) -> None:
    updates: list[tuple[float, float | None, str | None]] = []

    async def on_progress(progress: float, total: float | None, message: str | None) -> None:
        updates.append((progress, total, message))

    async with session(cfg) as s:
        documents = [{"id": f"d{i}", "text": f"note {i} about the river and the sea"} for i in range(40)]
        result = await s.ok("add_documents", {"documents": documents}, progress_callback=on_progress)
    assert result["added"] == 40
    # embed_batch_size=2 -> one notification per 8 chunks.
    assert len(updates) == 5
    assert [u[0] for u in updates] == [8, 16, 24, 32, 40] and {u[1] for u in updates} == {40}
    assert updates[-1][2] == "embedding chunks: 40/40"


async def test_a_model_that_cannot_load_is_reported_by_every_tool(tmp_path: Path) -> None:
    broken = Settings(data_dir=tmp_path / "data", model=str(tmp_path / "no-such-model"))
    async with connect(broken) as client:
        listing = await client.list_tools()  # the listing does not need the model
        assert {t.name for t in listing.tools} >= CORE
        result = await client.call_tool("stats", {})
        assert result.is_error and "rift failed to start" in result.content[0].text


async def test_queued_writes_leave_worker_threads_for_searches(cfg: Settings, monkeypatch) -> None:
    """Writes run one at a time under the engine's write lock. Fifty queued writes must not take every worker
    thread (anyio's pool has 40): a search during them is answered at once."""
    import threading

    import anyio

    from server.service import Rift
    from tools._common import WRITE_THREADS

    release, entered = threading.Event(), []
    real = Rift.add_documents

    def held_add(self: Rift, *args: Any, **kwargs: Any) -> Any:
        entered.append(1)
        release.wait(60)
        return real(self, *args, **kwargs)

    async with session(cfg) as s:
        await s.ok("add_documents", {"documents": [{"id": "seed", "text": "pump valve seal"}]})
        monkeypatch.setattr(Rift, "add_documents", held_add)
        added: list[int] = []

        async def add(i: int) -> None:
            added.append(
                (await s.ok("add_documents", {"documents": [{"id": f"w{i}", "text": f"note {i}"}]}))["added"]
            )

        try:
            async with anyio.create_task_group() as tg:
                for i in range(50):
                    tg.start_soon(add, i)
                await anyio.sleep(0.3)
                with anyio.fail_after(20):
                    found = await s.ok("hybrid_search", {"query": "pump"})
                assert [h["doc_id"] for h in found["hits"]] == ["seed"]
                assert len(entered) <= WRITE_THREADS  # the others queue without a thread
                release.set()
        finally:
            release.set()
    assert added == [1] * 50


async def test_chroma_errors_reach_the_client_with_their_cause() -> None:
    """A Chroma (or its HTTP client's) error becomes an is_error naming it; another exception, a bug, too."""
    from chromadb.errors import NotFoundError as ChromaNotFound
    from mcp.server.mcpserver.exceptions import ToolError

    from tools._common import call

    def gone() -> None:
        raise ChromaNotFound("Collection [x] does not exist.")

    def refused() -> None:
        raise ConnectionRefusedError(111, "Connection refused")

    with pytest.raises(ToolError, match=r"\(Chroma\) failed: NotFoundError: Collection \[x\] does not exist\.$"):
        await call(gone)  # (an embedded Chroma error: no hint about a server)
    with pytest.raises(ToolError, match=r"Connection refused.*check that the Chroma server is up"):
        await call(refused)

    def bug() -> None:
        raise KeyError("x")

    # Other exceptions are bugs: the client gets their cause and the log the traceback, not a bare message.
    with pytest.raises(ToolError, match=r"^rift failed unexpectedly: KeyError: 'x' \(a bug in rift"):
        await call(bug)


async def test_a_chroma_server_that_cannot_be_reached_or_does_not_answer_is_named_with_what_to_do() -> None:
    """An HTTP client error reaching a Chroma server: one line naming the server's address, the time limit it
    ran out of and what to do, not the bare exception."""
    import httpx
    from mcp.server.mcpserver.exceptions import ToolError

    from tools._common import call

    url = "http://chroma.internal:8000/api/v2/tenants/default_tenant/databases/default_database/collections"
    request = httpx.Request("POST", url, extensions={"timeout": httpx.Timeout(7).as_dict()})

    def silent() -> None:
        raise httpx.ReadTimeout("timed out", request=request)

    def refused() -> None:
        raise httpx.ConnectError("[Errno 111] Connection refused", request=request)

    def cut() -> None:
        raise httpx.RemoteProtocolError("Server disconnected without sending a response.", request=request)

    at = "the Chroma server at http://chroma.internal:8000"
    timed_out = rf"^{at} did not answer within 7 s \(ReadTimeout: timed out\): .*chroma_timeout_s.*once it answers$"
    with pytest.raises(ToolError, match=timed_out):
        await call(silent)
    with pytest.raises(ToolError, match=rf"^cannot reach {at} \(ConnectError: .*\): start it \(`chroma run`\)"):
        await call(refused)
    with pytest.raises(ToolError, match=rf"^the connection to {at} failed \(RemoteProtocolError: Server disc"):
        await call(cut)


async def test_a_cancelled_request_stops_its_worker_at_the_next_progress_report() -> None:
    """notifications/cancelled cancels the request's task; the worker thread running its write learns of it
    at its next progress report and stops (before the write commits) instead of running on."""
    import time

    from tools._common import progress_reporter

    class Ctx:
        async def report_progress(self, done: int, total: int, message: str) -> None:
            return None

    report = progress_reporter(Ctx(), "embedding chunks")  # type: ignore[arg-type]
    steps: list[int] = []

    def work() -> None:
        for i in range(500):
            report(i, 500)
            steps.append(i)
            time.sleep(0.01)

    with anyio.move_on_after(0.3):
        await anyio.to_thread.run_sync(work)
    assert 0 < len(steps) < 200


async def test_the_same_progress_again_only_checks_for_cancellation() -> None:
    """A write reports its last progress again before it commits, to stop there if cancelled: MCP progress
    must increase, so the repeat sends no notification."""
    from tools._common import progress_reporter

    sent: list[tuple[int, int]] = []

    class Ctx:
        async def report_progress(self, done: int, total: int, message: str) -> None:
            sent.append((done, total))

    report = progress_reporter(Ctx(), "embedding chunks")  # type: ignore[arg-type]

    def work() -> None:
        for done in (1, 2, 2, 2):
            report(done, 2)

    await anyio.to_thread.run_sync(work)
    assert sent == [(1, 2), (2, 2)]
