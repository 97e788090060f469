"""MCP prompts: the workflows a user starts from the client's menu."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from mcp import Client
from mcp.shared.exceptions import MCPError
from mcp.types import INVALID_PARAMS, PromptReference

from server.app import create_server
from server.config import Settings
from tests.support.helpers import make_settings

pytestmark = pytest.mark.anyio


@pytest.fixture
def cfg(tmp_path: Path, tiny_model_path: Path) -> Settings:
    return make_settings(tmp_path / "data", tiny_model_path)


async def test_the_prompts_name_tools_and_arguments_that_exist(cfg: Settings) -> None:
    """`ask` and `improve_search` are listed with their arguments, and every step they give an agent names a
    tool the server has, with arguments that tool takes (a renamed tool or argument fails here)."""
    async with Client(create_server(cfg), raise_exceptions=False) as client:
        listed = {p.name: p for p in (await client.list_prompts()).prompts}
        assert set(listed) == {"ask", "improve_search"}
        assert [(a.name, a.required) for a in listed["ask"].arguments or []] == [("question", True), ("collection", False)]
        tools = {t.name: set(t.input_schema.get("properties", {})) for t in (await client.list_tools()).tools}
        for name in ("notes", "default"):
            assert not (await client.call_tool("create_collection", {"collection": name})).is_error
        asked = await client.get_prompt("ask", {"question": "When does the river flood?", "collection": "notes"})
        improve = await client.get_prompt("improve_search", {})
        default = await client.get_prompt("ask", {"question": "x"})
    text = asked.messages[0].content.text  # type: ignore[union-attr]
    assert asked.messages[0].role == "user" and "Question: When does the river flood?" in text
    assert text.count('collection "notes"') == 3 and 'collection "default"' in default.messages[0].content.text  # type: ignore[union-attr]
    uses = {
        "ask": (text, {"hybrid_search": {"collection", "max_chars"}, "get_document": {"collection", "query_id", "offset", "max_chars"}, "feedback": {"query_id", "judgments"}}),
        "improve_search": (
            improve.messages[0].content.text,  # type: ignore[union-attr]
            {"stats": set(), "retrain": {"dry_run"}, "retrain_status": {"job_id", "wait_seconds"}, "list_models": set(), "rollback": set()},
        ),
    }
    for name, (body, expected) in uses.items():
        named = {word for word in re.findall(r"\b[a-z]+(?:_[a-z]+)+\b|\b[a-z]+\b", body) if word in tools}
        assert set(expected) <= named, (name, named)
        for tool, arguments in expected.items():
            assert arguments <= tools[tool], (tool, arguments - tools[tool])


async def test_a_wrong_prompt_request_is_named_as_the_clients_error(cfg: Settings) -> None:
    """The SDK answered a missing argument or an unknown prompt with "Internal server error" and ignored a
    misspelt argument: each is -32602 naming what is wrong."""
    async with Client(create_server(cfg), raise_exceptions=False) as client:
        assert not (await client.call_tool("create_collection", {"collection": "kb"})).is_error
        for name, arguments, message in [
            ("ask", {}, "prompt 'ask' needs the argument 'question'"),
            ("ask", {"question": "x", "colection": "kb"}, "prompt 'ask' has no argument 'colection'; it takes collection, question"),
            ("improve_search", {"collection": "kb"}, "prompt 'improve_search' has no argument 'collection'; it takes none"),
            ("asc", {"question": "x"}, "unknown prompt 'asc'; the prompts are ask, improve_search"),
            ("a" * 5000, {}, "unknown prompt '" + "a" * 100 + "'…; the prompts"),
            ("ask", {"question": "  "}, "question must not be empty"),
            ("ask", {"question": "x" * 9000}, "question is 9,000 characters; the limit is 8,192"),
            # What hybrid_search would refuse as its query is refused here, before the agent starts on it.
            ("ask", {"question": "why\x00"}, "question contains a NUL character"),
            ("ask", {"question": "\u200b\u200b"}, "question must not be only whitespace or invisible characters"),
            ("ask", {"question": "\ufeff \u200f"}, "question must not be only whitespace or invisible characters"),
            ("ask", {"question": "x", "collection": "no such/name"}, "collection must be 1-63 characters"),
            # A collection that does not exist is refused with the ones that do, not at the workflow's first search.
            ("ask", {"question": "x", "collection": "notes"}, "unknown collection 'notes' (collections: kb)"),
        ]:
            with pytest.raises(MCPError) as caught:
                await client.get_prompt(name, arguments)
            assert caught.value.error.code == INVALID_PARAMS and message in caught.value.error.message, (name, arguments)


async def test_the_ask_prompts_collection_is_completed(cfg: Settings) -> None:
    ref = PromptReference(type="ref/prompt", name="ask")
    async with Client(create_server(cfg), raise_exceptions=False) as client:
        for name in ("kb", "kitchen", "notes"):
            assert not (await client.call_tool("create_collection", {"collection": name})).is_error
        done = (await client.complete(ref, {"name": "collection", "value": "k"})).completion
        assert (done.values, done.total, done.has_more) == (["kb", "kitchen"], 2, False)
        done = (await client.complete(ref, {"name": "question", "value": "k"})).completion
        assert done.values == []
        other = PromptReference(type="ref/prompt", name="improve_search")
        assert (await client.complete(other, {"name": "collection", "value": "k"})).completion.values == []
