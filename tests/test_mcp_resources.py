"""Stored documents as MCP resources, through an in-process client as Claude Desktop or VS Code use them:
listed a page per cursor across collections, read by URI (any doc_id, percent-encoded), and completed as a
user types; a bad URI or cursor gets a clear JSON-RPC error."""

from __future__ import annotations

import base64
import time
from pathlib import Path
from typing import Any
from urllib.parse import quote

import anyio
import pytest
from mcp import Client
from mcp.shared.exceptions import MCPError
from mcp.types import INTERNAL_ERROR, INVALID_PARAMS, ResourceTemplateReference

import tools.resources as resources
from server.app import create_server
from server.bench.processes import free_port
from server.config import Settings
from tests.support.helpers import docs, make_settings

pytestmark = pytest.mark.anyio

ODD_IDS = ["notes/a b.md", "../etc/passwd", "/abs/path.md", "x%y?z#w", "é ü", "a+b"]


@pytest.fixture
def cfg(tmp_path: Path, tiny_model_path: Path) -> Settings:
    return make_settings(tmp_path / "data", tiny_model_path)


async def add(client: Client, collection: str, documents: list[dict]) -> None:
    if collection != "default":
        result = await client.call_tool("create_collection", {"collection": collection})
        assert not result.is_error, result.content
    result = await client.call_tool("add_documents", {"documents": documents, "collection": collection})
    assert not result.is_error, result.content


async def test_documents_are_listed_a_page_per_cursor_and_read_by_uri(
    cfg: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(resources, "LIST_PAGE", 3)
    async with Client(create_server(cfg), raise_exceptions=False) as client:
        await add(
            client,
            "default",
            [{"id": d, "text": f"text of {d}", "metadata": {"title": f"T {d}"}} for d in ODD_IDS],
        )
        await add(client, "notes", [{"id": "n1", "text": "a note"}, {"id": "n2", "text": "another"}])

        listed, cursor, pages = [], None, 0
        while True:
            page = await client.list_resources(cursor=cursor)
            listed += page.resources
            pages += 1
            cursor = page.next_cursor
            if cursor is None:
                break
        assert pages == 3  # 8 documents, 3 a page
        assert [r.uri for r in listed] == [
            *[resources.document_uri("default", d) for d in sorted(ODD_IDS)],
            resources.document_uri("notes", "n1"),
            resources.document_uri("notes", "n2"),
        ]
        first = {r.name: r for r in listed}["é ü"]
        assert first.title == "T é ü" and first.mime_type == "text/plain"
        assert first.size == len("text of é ü".encode())
        assert first.annotations is not None and first.annotations.last_modified

        for doc_id in ODD_IDS:
            read = await client.read_resource(resources.document_uri("default", doc_id))
            assert [c.text for c in read.contents] == [f"text of {doc_id}"]
        assert (await client.read_resource("rift://documents/notes/n2")).contents[0].text == "another"

        capabilities = client.server_capabilities
        assert capabilities.resources is not None and capabilities.completions is not None
        templates = (await client.list_resource_templates()).resource_templates
        assert [t.uri_template for t in templates] == [resources.DOCUMENT_TEMPLATE]


async def test_a_document_added_between_pages_is_listed_once(
    cfg: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(resources, "LIST_PAGE", 2)
    async with Client(create_server(cfg), raise_exceptions=False) as client:
        await add(client, "default", [{"id": d, "text": d} for d in ("b", "d", "f")])
        first = await client.list_resources()
        await add(client, "default", [{"id": "a", "text": "a"}, {"id": "e", "text": "e"}])
        rest = await client.list_resources(cursor=first.next_cursor)
        assert [r.name for r in first.resources + rest.resources] == ["b", "d", "e", "f"]


async def test_bad_uris_and_cursors_get_clear_errors(cfg: Settings) -> None:
    async with Client(create_server(cfg), raise_exceptions=False) as client:
        await add(client, "default", [{"id": "doc", "text": "text"}])
        with pytest.raises(MCPError, match="no document 'missing' in collection 'default'") as err:
            await client.read_resource("rift://documents/default/missing")
        assert err.value.error.code == INVALID_PARAMS
        with pytest.raises(MCPError, match="unknown collection 'nope'"):
            await client.read_resource("rift://documents/nope/doc")
        with pytest.raises(MCPError, match="collection"):  # not a collection name
            await client.read_resource("rift://documents/" + quote("a b", safe="") + "/doc")
        for outside in ("rift://other/default/doc", "rift://documents/default/a/b", "rift://documents/default/"):
            with pytest.raises(MCPError) as err:
                await client.read_resource(outside)
            assert err.value.error.code == INVALID_PARAMS
        hostile = [
            "not base64!",
            "bm90IGpzb24=",  # "not json"
            resources._encode_cursor(("a", "b"))[:-4] + "AAAA",
            base64.urlsafe_b64encode(b"[" * 100_000).decode(),  # too deep for json, and too long
            base64.urlsafe_b64encode(b"[" * 5_000).decode(),  # too deep for json
            base64.urlsafe_b64encode(b'["default", "\\ud800"]').decode(),  # a lone surrogate
            base64.urlsafe_b64encode(b'["default", 1]').decode(),
        ]
        for cursor in hostile:
            with pytest.raises(MCPError, match="invalid cursor") as err:
                await client.list_resources(cursor=cursor)
            assert err.value.error.code == INVALID_PARAMS
        # the server goes on answering
        assert [r.name for r in (await client.list_resources()).resources] == ["doc"]


async def test_percent_escapes_that_are_not_utf8_are_refused(cfg: Settings) -> None:
    """The SDK's template matching decodes a URI's escapes with errors="replace": `caf%E9` read the document
    whose id is "caf\ufffd", and another id's error quoted the mojibake (found by helper CG). Such a URI is
    refused, naming the escape; a real U+FFFD, sent as its UTF-8 escapes, still reads its document."""
    async with Client(create_server(cfg), raise_exceptions=False) as client:
        await add(client, "default", [{"id": "caf\ufffd", "text": "the replacement-char document"}])
        for uri, escape in [
            ("rift://documents/default/caf%E9", "%E9"),
            ("rift://documents/default/caf%ff", "%ff"),
            ("rift://documents/default/caf%C3", "%C3"),  # a truncated sequence
            ("rift://documents/default/a%C3%A9b%ED%A0%80", "%ED"),  # an encoded surrogate, after a good é
            ("rift://documents/caf%E9/doc", "%E9"),
        ]:
            at = uri.index(escape)
            with pytest.raises(MCPError) as err:
                await client.read_resource(uri)
            assert err.value.error.code == INVALID_PARAMS, uri
            assert err.value.error.message.startswith("uri: percent-encoding is not UTF-8"), err.value.error.message
            assert f"({escape} at character {at}:" in err.value.error.message, err.value.error.message
            assert "\ufffd" not in err.value.error.message
        read = await client.read_resource("rift://documents/default/caf%EF%BF%BD")
        assert read.contents[0].text == "the replacement-char document"


async def test_completion_of_collections_and_doc_ids(cfg: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(resources, "COMPLETION_LIMIT", 2)
    ref = ResourceTemplateReference(type="ref/resource", uri=resources.DOCUMENT_TEMPLATE)
    async with Client(create_server(cfg), raise_exceptions=False) as client:
        await add(client, "default", [{"id": d, "text": d} for d in ("ab", "abc", "abd", "b", "a\U0010ffff")])
        await add(client, "defs", [{"id": "x", "text": "x"}])

        done = (await client.complete(ref, {"name": "collection", "value": "def"})).completion
        assert (done.values, done.total, done.has_more) == (["default", "defs"], 2, False)
        done = (await client.complete(ref, {"name": "doc_id", "value": "ab"}, {"collection": "default"})).completion
        assert (done.values, done.total, done.has_more) == (["ab", "abc"], 3, True)
        done = (await client.complete(ref, {"name": "doc_id", "value": "a"}, {"collection": "default"})).completion
        assert done.total == 4
        done = (await client.complete(ref, {"name": "doc_id", "value": "x"}, {"collection": "default"})).completion
        assert (done.values, done.total) == ([], 0)
        # no collection yet: nothing to complete from, not an error
        done = (await client.complete(ref, {"name": "doc_id", "value": "a"})).completion
        assert done.values == []
        with pytest.raises(MCPError, match="unknown collection 'nope'"):
            await client.complete(ref, {"name": "doc_id", "value": "a"}, {"collection": "nope"})


async def test_writes_are_announced_to_listening_clients(cfg: Settings) -> None:
    """The server advertises resource change events (subscriptions/listen); every write tool publishes them:
    each changed or removed document's URI, and that the list changed."""
    from mcp.shared.subscriptions import ResourcesListChanged, ResourceUpdated

    watched = [resources.document_uri("default", d) for d in ("a/1", "b", "c")]
    async with Client(create_server(cfg), raise_exceptions=False) as client:
        caps = client.server_capabilities.resources
        assert caps is not None and caps.list_changed and caps.subscribe
        events: list[object] = []
        async with client.listen(resources_list_changed=True, resource_subscriptions=watched) as sub:

            async def consume() -> None:
                async for event in sub:
                    events.append(event)

            async def after(name: str, args: dict, wait: float = 5) -> list[object]:
                events.clear()
                result = await client.call_tool(name, args)
                assert not result.is_error, result.content
                with anyio.move_on_after(wait):
                    while not any(isinstance(e, ResourcesListChanged) for e in events):
                        await anyio.sleep(0.02)
                await anyio.sleep(0.1)
                return [e.uri if isinstance(e, ResourceUpdated) else "list" for e in events]

            async with anyio.create_task_group() as tg:
                tg.start_soon(consume)
                got = await after("add_documents", {"documents": [{"id": "a/1", "text": "x"}, {"id": "c", "text": "y"}]})
                assert watched[0] in got and "list" in got and watched[1] not in got
                got = await after("update_metadata", {"ids": ["a/1"], "metadata": {"tag": "t"}})
                assert watched[0] in got and "list" in got
                got = await after("delete_documents", {"ids": ["a/1"]})
                assert watched[0] in got and "list" in got
                got = await after("add_documents", {"documents": [{"id": "c", "text": "y"}]}, wait=0.5)  # unchanged
                assert got == []
                got = await after("delete_collection", {"collection": "default"})
                assert got == ["list", watched[2]]  # its documents: "c" was left
                tg.cancel_scope.cancel()


async def test_a_server_not_up_yet_is_the_servers_error_not_the_requests(
    tmp_path: Path, tiny_model_path: Path
) -> None:
    """While rift waits for its Chroma server, resource requests fail with -32603 and the reason: -32602 would
    tell the client its request was wrong (and evict its cursor), so it would not try again."""
    cfg = make_settings(tmp_path / "data", tiny_model_path, vector_backend="http", chroma_port=free_port())
    ref = ResourceTemplateReference(type="ref/resource", uri=resources.DOCUMENT_TEMPLATE)
    async with Client(create_server(cfg), raise_exceptions=False) as client:
        for request in (
            client.list_resources,
            lambda: client.read_resource("rift://documents/default/a"),
            lambda: client.complete(ref, {"name": "collection", "value": ""}),
        ):
            with pytest.raises(MCPError, match="Chroma") as err:
                await request()
            assert err.value.error.code == INTERNAL_ERROR


async def listen_while(client: Client, uris: list[str], work: Any, settle: float = 0.5) -> list[str]:
    """What a client listening for the list and `uris` hears while `work()` runs (and `settle` s after)."""
    from mcp.shared.subscriptions import ResourceUpdated

    events: list[str] = []
    async with client.listen(resources_list_changed=True, resource_subscriptions=uris) as sub:

        async def consume() -> None:
            async for event in sub:
                events.append(event.uri if isinstance(event, ResourceUpdated) else "list")

        async with anyio.create_task_group() as tg:
            tg.start_soon(consume)
            await work()
            await anyio.sleep(settle)
            tg.cancel_scope.cancel()
    return events


async def test_an_add_paths_that_fails_part_way_announces_the_files_it_stored(
    tmp_path: Path, tiny_model_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from server.engine.engine import Engine

    folder = tmp_path / "notes"
    folder.mkdir()
    for i in range(100):  # add_paths commits 32 files at a time
        (folder / f"f{i:03}.md").write_text(f"note number {i} about topic {i}")
    real, calls = Engine.add_documents, []

    def third_batch_fails(self: Engine, *args: Any, **kwargs: Any) -> Any:
        calls.append(1)
        if len(calls) == 3:
            raise OSError("the disk went away")
        return real(self, *args, **kwargs)

    monkeypatch.setattr(Engine, "add_documents", third_batch_fails)
    cfg = make_settings(tmp_path / "data", tiny_model_path, allowed_roots=[tmp_path])
    uris = [resources.document_uri("default", str(folder / f"f{i:03}.md")) for i in range(100)]
    async with Client(create_server(cfg), raise_exceptions=False) as client:

        async def work() -> None:
            assert (await client.call_tool("add_paths", {"paths": [str(folder)]})).is_error

        events = await listen_while(client, uris, work)
        stored = {r.uri for r in (await client.list_resources()).resources}
    assert len(stored) == 64 and events[0] == "list"  # the list change first
    assert set(events) - {"list"} == stored  # exactly the files stored, none of the failed batch


async def test_a_write_cancelled_as_it_commits_is_announced_in_full(
    cfg: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The cancel comes while the worker thread commits: the write lands, and the news of it is not cut short."""
    import time

    from server.engine.engine import Engine

    real = Engine._commit

    def slow_commit(self: Engine, *args: Any, **kwargs: Any) -> Any:
        time.sleep(2.0)  # (a slow Chroma upsert; the client gives up meanwhile)
        return real(self, *args, **kwargs)

    monkeypatch.setattr(Engine, "_commit", slow_commit)
    uris = [resources.document_uri("default", d) for d in ("x", "y")]
    async with Client(create_server(cfg), raise_exceptions=False) as client:
        await add(client, "default", [{"id": "seed", "text": "seed"}])  # (the model is loaded)

        async def work() -> None:
            with anyio.move_on_after(1.0):  # the client's timeout: the SDK sends notifications/cancelled
                await client.call_tool("add_documents", {"documents": [{"id": "x", "text": "a"}, {"id": "y", "text": "b"}]})

        events = await listen_while(client, uris, work, settle=3)
        assert len((await client.list_resources()).resources) == 3
    assert set(uris) | {"list"} <= set(events)


async def test_deleting_a_collection_announces_each_of_its_documents(cfg: Settings) -> None:
    watched = [resources.document_uri("notes", "n1")]
    async with Client(create_server(cfg), raise_exceptions=False) as client:
        await add(client, "notes", [{"id": "n1", "text": "a note"}, {"id": "n2", "text": "another"}])

        async def work() -> None:
            assert not (await client.call_tool("delete_collection", {"collection": "notes"})).is_error

        events = await listen_while(client, watched, work)
    assert watched[0] in events and "list" in events


async def test_a_full_last_page_ends_the_listing(cfg: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(resources, "LIST_PAGE", 3)
    async with Client(create_server(cfg), raise_exceptions=False) as client:
        await add(client, "default", [{"id": d, "text": d} for d in ("a", "b", "c")])
        await add(client, "notes", [{"id": d, "text": d} for d in ("d", "e", "f")])
        first = await client.list_resources()
        assert [r.name for r in first.resources] == ["a", "b", "c"] and first.next_cursor
        last = await client.list_resources(cursor=first.next_cursor)
        assert [r.name for r in last.resources] == ["d", "e", "f"] and last.next_cursor is None


def test_a_deleted_collections_documents_are_read_under_the_lock_that_deletes_them(rift) -> None:
    """The doc_ids delete_collection announces are those it deleted: a write that lands while the delete
    waits for the write lock is among them (they were read before the lock, and such a document was never
    announced as gone)."""
    import threading

    engine = rift.engine()
    rift.add_documents("kb", docs(("a", "the first note")))
    removed: list[str] = []
    with engine._write_lock:
        worker = threading.Thread(target=rift.delete_collection, args=("kb", removed))
        worker.start()
        time.sleep(0.3)  # the delete is waiting for the lock
        rift.add_documents("kb", docs(("late", "written while the delete waited")))
    worker.join(30)
    assert sorted(removed) == ["a", "late"] and "kb" not in engine.collection_names()
