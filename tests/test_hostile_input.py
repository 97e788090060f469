"""Property-based hostile input over every MCP tool, through the in-process client.

Arguments come from each tool's advertised input schema, mixed with hostile values: random Unicode (NUL, lone
surrogates, RTL and zero-width marks), strings past every limit, deeply nested objects, wrong types, extreme
numbers (k included), unknown keys, and filters with unknown operators. Every call must end in a result or an
is_error whose text gives a reason (the SDK's bare "Error executing tool X" means an unexpected exception);
the server must keep answering; a rejected call must leave the index exactly as it was (SQLite rows, Chroma
ids, the query log)."""

from __future__ import annotations

import json
import os
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import chromadb
import pytest
from anyio.from_thread import BlockingPortal, start_blocking_portal
from chromadb.config import Settings as ChromaSettings
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from mcp import Client

from server.app import create_server
from server.config import Settings
from server.engine.engine import DocumentInput
from server.errors import RiftError
from server.service import Rift
from tests.support.helpers import make_settings, open_rift
from tools._common import UNEXPECTED

# RIFT_FUZZ_SCALE=20 multiplies every example count, for a longer hunt than the suite's.
SCALE = max(1, int(os.environ.get("RIFT_FUZZ_SCALE", "1")))
PROFILE = settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    database=None,
)

# --- hostile values ---------------------------------------------------------------------------------------------

SPECIAL = ["\x00", "\ud800", "\udfff", "\u202e", "\u200f", "\u200b", "\ufeff", "\uffff", "\U0001f642", "\n", "$",
           "::", "\\", "'", '"', "%s", "{}", " ", "cat", "sea", "default", "$eq", "_rift_doc"]  # fmt: skip
any_char = st.characters(codec=None, exclude_categories=())  # surrogates (Cs) included
small_text = st.one_of(
    st.text(any_char, max_size=12),
    st.lists(st.sampled_from(SPECIAL), min_size=1, max_size=6).map("".join),
)
huge_text = st.sampled_from([8_193, 65_537, 1_000_001]).map(lambda n: "x" * n)
hostile_text = st.one_of(small_text, small_text, huge_text)
extreme_int = st.one_of(
    st.integers(-3, 3),
    st.sampled_from([0, -1, 101, 10_001, 2**31, 2**63, -(2**63) - 1, 10**30]),
    st.integers(-(2**70), 2**70),
)
extreme_float = st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.sampled_from([1e308, -0.0, 0.5]))
scalar = st.one_of(st.none(), st.booleans(), extreme_int, extreme_float, hostile_text)


def deep(depth: int, as_list: bool) -> Any:
    value: Any = "bottom"
    for _ in range(depth):
        value = [value] if as_list else {"a": value}
    return value


deeply_nested = st.builds(deep, st.integers(20, 300), st.booleans())
hostile = st.one_of(
    scalar,
    deeply_nested,
    st.recursive(
        scalar,
        lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(small_text, inner, max_size=4)),
        max_leaves=10,
    ),
)

KNOWN_OPS = ["$eq", "$ne", "$gt", "$gte", "$lt", "$lte", "$in", "$nin"]
ODD_OPS = ["$regex", "$contains", "$not", "$nor", "$exists", "$", "", "$AND", "$where", "$prefix", "eq"]
field_name = st.one_of(st.sampled_from(["kind", "year", "tag", "_rift_doc", "$and"]), small_text)
filters: st.SearchStrategy[Any] = st.recursive(
    st.one_of(
        st.dictionaries(field_name, scalar, min_size=1, max_size=2),
        st.builds(
            lambda f, op, v: {f: {op: v}},
            field_name,
            st.sampled_from(KNOWN_OPS + ODD_OPS),
            st.one_of(scalar, st.lists(scalar, max_size=3)),
        ),
    ),
    lambda inner: st.builds(
        lambda op, children: {op: children},
        st.sampled_from(["$and", "$or", "$not", "$nor"]),
        st.one_of(st.lists(inner, max_size=3), inner, scalar),
    ),
    max_leaves=6,
)

# --- arguments from a tool's input schema ------------------------------------------------------------------------


def from_schema(schema: dict[str, Any], defs: dict[str, Any], depth: int = 0) -> st.SearchStrategy[Any]:
    """A plausible value for `schema` (often valid, sometimes at its edges), or a hostile one."""
    if "$ref" in schema:
        return from_schema(defs[schema["$ref"].split("/")[-1]], defs, depth)
    if "anyOf" in schema:
        return st.one_of([from_schema(s, defs, depth) for s in schema["anyOf"]])
    if "enum" in schema:
        return st.one_of(st.sampled_from(schema["enum"]), hostile)
    kind = schema.get("type")
    typed: st.SearchStrategy[Any]
    if kind == "string":
        typed = st.one_of(st.sampled_from(["default", "cat", "d1", "notes", "x" * 70]), hostile_text)
    elif kind == "integer":
        typed = st.one_of(st.integers(schema.get("minimum", 0), schema.get("maximum", 100)), extreme_int)
    elif kind == "number":
        typed = st.one_of(st.floats(0, 1), extreme_float, extreme_int)
    elif kind == "boolean":
        typed = st.booleans()
    elif kind == "null":
        typed = st.none()
    elif kind == "array" and depth < 3:
        items = from_schema(schema.get("items", {}), defs, depth + 1)
        typed = st.one_of(
            st.lists(items, max_size=3), st.just([]), st.lists(st.just("d1"), min_size=1001, max_size=1001)
        )
    elif kind == "object" and "properties" in schema and depth < 3:
        typed = object_args(schema, defs, depth + 1)
    elif kind == "object":
        typed = st.one_of(filters, st.dictionaries(small_text, scalar, max_size=4), deeply_nested)
    else:
        typed = hostile
    return st.one_of(typed, typed, typed, hostile)


def object_args(
    schema: dict[str, Any], defs: dict[str, Any], depth: int = 0
) -> st.SearchStrategy[dict[str, Any]]:
    props = schema.get("properties", {})
    required = set(schema.get("required", []))

    @st.composite
    def build(draw: st.DrawFn) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for name, sub in props.items():
            # Required fields are usually there, optional ones half the time.
            if draw(st.integers(0, 9)) < (9 if name in required else 5):
                out[name] = draw(from_schema(sub, defs, depth))
        if draw(st.integers(0, 9)) == 0:
            out[draw(small_text)] = draw(scalar)  # an argument no tool has
        return out

    return build()


def tool_args(name: str, schema: dict[str, Any]) -> st.SearchStrategy[dict[str, Any]]:
    args = object_args(schema, schema.get("$defs", {}))
    if name == "retrain":
        # Keep retrain refused (settings ask for more triples than exist) so no training job races the checks.
        args = args.map(lambda a: {k: v for k, v in a.items() if k != "min_triples"})
    return args


# --- the server under test ------------------------------------------------------------------------------------


class Harness:
    def __init__(self, portal: BlockingPortal, client: Client, settings: Settings) -> None:
        self.portal = portal
        self.client = client
        self.settings = settings
        self.schemas: dict[str, dict[str, Any]] = {}

    def call(self, name: str, args: dict[str, Any]) -> tuple[bool, str]:
        result = self.portal.call(self.client.call_tool, name, args)
        text = " ".join(getattr(c, "text", "") for c in result.content)
        return bool(result.is_error), text

    def snapshot(self) -> dict[str, Any]:
        """Everything a rejected call must leave alone."""
        # The query log is written by a writer thread: stats reads it, which first lands an earlier search's
        # pending record (else it could land between two snapshots and look like the rejected call's doing).
        self.call("stats", {})
        conn = sqlite3.connect(str(self.settings.state_db))
        try:
            out: dict[str, Any] = {
                "collections": conn.execute(
                    "SELECT name, chroma_name, model_version FROM collections"
                ).fetchall(),
                "chunks": sorted(
                    conn.execute("SELECT collection, chunk_id, doc_hash FROM chunks").fetchall()
                ),
                "documents": sorted(
                    conn.execute("SELECT collection, doc_id, doc_hash FROM documents").fetchall()
                ),
            }
        finally:
            conn.close()
        log = sqlite3.connect(str(self.settings.log_db))
        try:
            out["logged"] = log.execute("SELECT COUNT(*) FROM queries").fetchone()
            out["feedback"] = log.execute("SELECT COUNT(*) FROM feedback").fetchone()
        finally:
            log.close()
        chroma = chromadb.PersistentClient(
            path=str(self.settings.chroma_dir), settings=ChromaSettings(anonymized_telemetry=False)
        )
        out["chroma"] = {
            name: sorted(chroma.get_collection(name).get(include=[])["ids"])
            for _, name, _ in out["collections"]
        }
        return out

    def check(self, name: str, args: dict[str, Any]) -> bool:
        """One call: a result or a reasoned error, the server still up, and nothing changed if rejected."""
        before = self.snapshot()
        try:
            is_error, text = self.call(name, args)
        except (UnicodeEncodeError, ValueError) as exc:
            # The client itself refuses some input: text with lone surrogates cannot be encoded as UTF-8, and
            # pydantic stops serializing past depth 255 (the transports' JSON parsers reject both as well).
            assert isinstance(exc, UnicodeEncodeError) or "serialization depth" in str(exc), exc
            assert self.snapshot() == before
            return True
        if is_error:
            prefix = f"Error executing tool {name}"
            assert text.strip() and text.strip() != prefix, (
                f"{name} failed without a reason for {args!r:.500}"
            )
            if text.startswith(prefix):
                assert text[len(prefix) :].startswith(": ") and text[len(prefix) + 2 :].strip()
            assert "Traceback" not in text and UNEXPECTED not in text, text
            assert self.snapshot() == before, f"rejected {name} call changed the index: {args!r:.500}"
        else:
            json.loads(text)
        alive, listing = self.call("list_collections", {})
        assert not alive, listing
        return is_error


@pytest.fixture(scope="module")
def harness(tmp_path_factory: pytest.TempPathFactory, tiny_model_path: Path) -> Iterator[Harness]:
    data = tmp_path_factory.mktemp("hostile") / "data"
    cfg = make_settings(data, tiny_model_path, learn_min_triples=10_000_000)
    with start_blocking_portal() as portal:
        client_cm = portal.wrap_async_context_manager(Client(create_server(cfg)))
        with client_cm as client:
            h = Harness(portal, client, cfg)
            tools = portal.call(client.list_tools)
            h.schemas = {t.name: t.input_schema for t in tools.tools}
            seed = [
                {
                    "id": f"d{i}",
                    "text": f"the cat {i} sat on the mat by the sea",
                    "metadata": {"kind": "pet", "year": 2000 + i},
                }
                for i in range(20)
            ]
            assert not h.call("add_documents", {"documents": seed})[0]
            assert not h.call(
                "add_documents", {"collection": "notes", "documents": [{"id": "n", "text": "python code"}]}
            )[0]
            yield h


# --- properties ------------------------------------------------------------------------------------------------


@given(data=st.data())
@settings(PROFILE, max_examples=120 * SCALE)
def test_every_tool_survives_hostile_arguments(harness: Harness, data: st.DataObject) -> None:
    name = data.draw(st.sampled_from(sorted(harness.schemas)), label="tool")
    args = data.draw(tool_args(name, harness.schemas[name]), label="args")
    harness.check(name, args)


@given(
    query=st.one_of(hostile_text, scalar),
    k=st.one_of(extreme_int, scalar),
    mode=st.one_of(st.sampled_from(["hybrid", "vector", "keyword"]), scalar),
)
@settings(PROFILE, max_examples=50 * SCALE)
def test_search_with_hostile_query_k_and_mode(harness: Harness, query: Any, k: Any, mode: Any) -> None:
    harness.check("hybrid_search", {"query": query, "k": k, "mode": mode})


@given(query=st.sampled_from(["cat", "sea mat", "python"]), where=st.one_of(filters, hostile))
@settings(PROFILE, max_examples=60 * SCALE)
def test_search_with_hostile_filters(harness: Harness, query: str, where: Any) -> None:
    for mode in ("hybrid", "keyword"):
        harness.check("hybrid_search", {"query": query, "filters": where, "mode": mode})
    harness.check("list_documents", {"filters": where})


# Mostly plausible documents, so that calls get past validation and reach the stores with odd corners.
plausible_text = st.one_of(
    st.sampled_from(["the cat sat on the mat", "sea " * 40, "x", "\u202eRTL text"]), hostile_text
)
meta_key = st.one_of(
    st.sampled_from(
        ["kind", "year", "$x", "$and", "#document", "chroma:document", "_rift_doc", "", " ", "a\x00b"]
    ),
    small_text,
)
meta_value = st.one_of(st.sampled_from(["pet", 2024, 1.5, True, ""]), scalar)
document = st.fixed_dictionaries(
    {"text": plausible_text},
    optional={
        "id": st.one_of(st.sampled_from(["d1", "new-doc", "::", "a/b"]), hostile_text, scalar),
        "metadata": st.one_of(
            st.dictionaries(meta_key, meta_value, max_size=3),
            st.dictionaries(meta_key, hostile, max_size=3),
            deeply_nested,
            hostile,
        ),
    },
)


@given(
    docs=st.one_of(st.lists(document, min_size=0, max_size=3), hostile),
    collection=st.one_of(st.just("fuzz"), hostile_text),
)
@settings(PROFILE, max_examples=50 * SCALE)
@example(docs=[{"text": "the cat", "metadata": {"$x": 1}}], collection="fuzz")  # Chroma's reserved keys
@example(docs=[{"text": "the cat", "metadata": {"chroma:document": "x"}}], collection="fuzz")
def test_add_documents_with_hostile_documents(harness: Harness, docs: Any, collection: Any) -> None:
    rejected = harness.check("add_documents", {"documents": docs, "collection": collection})
    if not rejected:  # whatever was accepted reads back exactly as sent
        for doc in docs:
            if doc.get("id") is not None:
                is_error, text = harness.call("get_document", {"doc_id": doc["id"], "collection": collection})
                assert not is_error, text
                assert json.loads(text)["text"] == doc["text"]


# --- the same input straight into the app object (the CLI's path, and text the transports would refuse) --------


@pytest.fixture(scope="module")
def app(tmp_path_factory: pytest.TempPathFactory, tiny_model_path: Path) -> Iterator[Rift]:
    rift = open_rift(make_settings(tmp_path_factory.mktemp("hostile-app") / "data", tiny_model_path))
    rift.add_documents(
        "default", [DocumentInput(f"the cat {i} sat on the mat", f"d{i}", {"year": i}) for i in range(10)]
    )
    yield rift
    rift.close()


def app_state(rift: Rift) -> Any:
    engine = rift.engine()
    return [
        (name, sorted(engine.state.chunk_keys(name).items()), sorted(engine._keyword[name].chunk_ids()))
        for name in engine.collection_names()
    ]


def rejected_cleanly(rift: Rift, fn: Any, *args: Any) -> None:
    """Any failure is a RiftError with a message, and leaves the index as it was."""
    before = app_state(rift)
    try:
        fn(*args)
    except RiftError as exc:
        assert str(exc).strip()
        assert app_state(rift) == before
    rift.engine().search("default", "cat", 1)  # still serving


@given(
    query=st.one_of(st.sampled_from(["cat", "sea mat"]), hostile_text, scalar),
    k=st.one_of(st.integers(1, 20), extreme_int, scalar),
    mode=st.one_of(st.sampled_from(["hybrid", "vector", "keyword"]), scalar),
    where=st.one_of(st.none(), filters, filters, hostile),
    collection=st.one_of(st.just("default"), hostile_text, scalar),
)
@settings(PROFILE, max_examples=80 * SCALE)
def test_app_search_rejects_with_rift_errors(
    app: Rift, query: Any, k: Any, mode: Any, where: Any, collection: Any
) -> None:
    rejected_cleanly(app, app.search, collection, query, k, mode, where)


@given(
    text=st.one_of(plausible_text, scalar),
    doc_id=st.one_of(st.none(), hostile_text, scalar),
    metadata=st.one_of(
        st.none(),
        st.dictionaries(meta_key, meta_value, max_size=3),
        st.dictionaries(st.one_of(meta_key, scalar), hostile, max_size=3),
        hostile,
    ),
    ids=st.one_of(st.lists(st.one_of(hostile_text, scalar), max_size=3), hostile),
)
@example(text="the cat", doc_id=None, metadata={"#x": 1}, ids="\ud800")  # a str is not a list of ids
@settings(PROFILE, max_examples=60 * SCALE)
def test_app_writes_reject_with_rift_errors(
    app: Rift, text: Any, doc_id: Any, metadata: Any, ids: Any
) -> None:
    rejected_cleanly(app, app.add_documents, "fuzz", [DocumentInput(text, doc_id, metadata)])
    rejected_cleanly(app, app.delete_documents, "fuzz", ids)
