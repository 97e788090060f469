"""The tools/list answer as an agent pays for it in context: its size stays within a budget, the schemas carry
no pydantic boilerplate (server/app.py `_compact_schemas`), and the published output schemas still describe
what the tools return: every tool's real structured output validates against its outputSchema."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from jsonschema import Draft202012Validator
from mcp import Client

from server.app import create_server
from server.config import Settings
from tests.support.helpers import make_settings, write_notes
from tests.support.learning import corpus, queries

pytestmark = pytest.mark.anyio

# Compact JSON bytes of the whole tools/list result: 42,698 with pydantic's schemas as generated, 37,139
# compacted; 38,986 once stats' log figures were typed, retrain's dry run said whether it would train and more
# fields were described; 34,158 with the descriptions edited down (the filter grammar and the collection name
# rule said once, no restated names or types, rationale left to the README). Room for a few more sentences of
# description, not for the boilerplate or the repetition to come back.
BUDGET = 34_700


def size(value: Any) -> int:
    return len(json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode())


def subschemas(schema: Any) -> Iterator[dict[str, Any]]:
    """Every schema object in `schema` (not the maps of property names: a property may be called "title")."""
    if not isinstance(schema, dict):
        return
    yield schema
    for key, value in schema.items():
        if key in ("items", "additionalProperties", "not", "contains", "propertyNames", "if", "then", "else"):
            yield from subschemas(value)
        elif key in ("anyOf", "oneOf", "allOf", "prefixItems"):
            for branch in value:
                yield from subschemas(branch)
        elif key in ("properties", "patternProperties", "$defs", "dependentSchemas"):
            for branch in value.values():
                yield from subschemas(branch)


@pytest.fixture
def cfg(tmp_path: Path, tiny_model_path: Path) -> Settings:
    # A lenient gate so that retrain on the random tiny model serves and rollback has a version to go back to.
    return make_settings(
        tmp_path / "data", tiny_model_path, allowed_roots=[tmp_path], learn_min_triples=2, gate_tolerance=1.0
    )


async def test_tools_list_stays_within_its_budget_and_keeps_what_an_agent_reads(cfg: Settings) -> None:
    async with Client(create_server(cfg), raise_exceptions=False) as client:
        listing = await client.list_tools()
    wire = listing.model_dump(mode="json", by_alias=True, exclude_none=True)
    per_tool = {t["name"]: (size(t["inputSchema"]), size(t.get("outputSchema"))) for t in wire["tools"]}
    assert size(wire) <= BUDGET, (size(wire), per_tool)

    for tool in listing.tools:
        for output, schema in ((False, tool.input_schema), (True, tool.output_schema)):
            Draft202012Validator.check_schema(schema)
            for sub in subschemas(schema):
                assert "title" not in sub, (tool.name, sub)
                if output:
                    assert "default" not in sub and sub.get("additionalProperties") is not True, (tool.name, sub)
        assert tool.title and tool.description  # the tool's own title and description are not schema boilerplate

    tools = {t.name: t for t in listing.tools}
    # Field descriptions stay, on both sides, and so do the input's defaults and anyOf branches.
    search_in = tools["hybrid_search"].input_schema["properties"]
    assert search_in["max_chars"]["default"] is None and search_in["max_chars"]["anyOf"][0]["minimum"] == 20
    assert all(p.get("description") for p in search_in.values())
    search_out = tools["hybrid_search"].output_schema
    hit = search_out["$defs"]["SearchHit"]
    assert "get_document" in hit["properties"]["start"]["description"]
    assert "feedback" in search_out["properties"]["query_id"]["description"]
    assert set(hit["required"]) >= {"doc_id", "text", "score", "vector_score", "start"}
    # Compacting loosened nothing: a null where the field is optional, a number where a number is due.
    validator = Draft202012Validator(search_out)
    result = {
        "query_id": None, "collection": "default", "mode": "hybrid", "model_version": "base", "disagreement": None,
        "timings_ms": {"total": 1.0}, "warnings": [],
        "hits": [{
            "doc_id": "a", "chunk_id": "a::0", "text": "t", "metadata": {"k": 1}, "score": 0.1,
            "vector_score": None, "keyword_score": 2.0, "vector_rank": None, "keyword_rank": 1,
            "start": 0, "end": 1, "truncated": False,
        }],
    }
    assert validator.is_valid(result)
    for field, wrong in (("vector_score", "high"), ("vector_rank", 1.5), ("truncated", None), ("metadata", [])):
        bad = json.loads(json.dumps(result))
        bad["hits"][0][field] = wrong
        assert not validator.is_valid(bad), field
    assert not validator.is_valid({k: v for k, v in result.items() if k != "hits"})
    assert not validator.is_valid({**result, "hits": [{k: v for k, v in result["hits"][0].items() if k != "start"}]})


async def test_every_tools_real_output_validates_against_its_published_output_schema(
    cfg: Settings, tmp_path: Path
) -> None:
    outputs: dict[str, list[dict[str, Any]]] = {}
    async with Client(create_server(cfg), raise_exceptions=False) as client:
        listing = await client.list_tools()
        validators = {t.name: Draft202012Validator(t.output_schema) for t in listing.tools}

        async def ok(name: str, args: dict[str, Any] | None = None) -> dict[str, Any]:
            result = await client.call_tool(name, args or {})
            assert not result.is_error, (name, result.content)
            data = result.structured_content
            errors = [e.message for e in validators[name].iter_errors(data)]
            assert not errors, (name, errors, data)
            outputs.setdefault(name, []).append(data)
            return data

        added = await ok("add_documents", {"documents": corpus()})
        doc = added["documents"][0]["id"]
        await ok("add_paths", {"paths": [str(write_notes(tmp_path / "notes"))], "collection": "files"})
        searches = [await ok("hybrid_search", {"query": text}) for text in queries()]
        await ok("hybrid_search", {"query": queries()[0], "mode": "keyword", "max_chars": 40})
        first = searches[0]
        await ok("feedback", {"query_id": first["query_id"], "doc_id": first["hits"][0]["doc_id"], "relevant": True})
        judgments = [{"doc_id": h["doc_id"], "relevant": False} for h in first["hits"][1:3]]
        await ok("feedback", {"query_id": first["query_id"], "judgments": judgments})
        await ok("get_document", {"doc_id": first["hits"][0]["doc_id"], "query_id": first["query_id"]})
        await ok("update_metadata", {"ids": [doc], "metadata": {"tag": "checked"}})
        await ok("list_documents", {"filters": {"tag": "checked"}})
        await ok("list_documents", {"collection": "files", "limit": 2})
        await ok("create_collection", {"collection": "scratch"})
        await ok("list_collections")
        await ok("stats")
        await ok("retrain", {"dry_run": True})
        started = await ok("retrain", {"epochs": 1, "batch_size": 4})
        trained = await ok("retrain_status", {"job_id": started["job_id"], "wait_seconds": 120})
        assert trained["status"] == "succeeded", trained
        await ok("list_models")
        back = await ok("rollback")
        assert (await ok("retrain_status", {"job_id": back["job_id"], "wait_seconds": 60}))["status"] == "succeeded"
        await ok("delete_documents", {"ids": [doc, "no-such-doc"]})
        await ok("delete_documents", {"filters": {"file_type": "markdown"}, "collection": "files"})
        await ok("delete_collection", {"collection": "scratch"})
        await ok("stats")
    assert set(outputs) == set(validators), set(validators) - set(outputs)
