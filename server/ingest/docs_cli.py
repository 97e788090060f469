"""`rift list`, `rift get`, `rift delete`: the stored documents from the shell, as the MCP tools
list_documents, get_document and delete_documents see them. JSON on stdout; like the other commands they need
the data dir to themselves (stop the server first)."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import click

from server.errors import RiftError


def _filters(raw: str | None) -> dict[str, Any] | None:
    if raw is None:
        return None
    try:
        parsed = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise click.BadParameter(f"not JSON: {exc}", param_hint="--filters") from None
    if not isinstance(parsed, dict):
        raise click.BadParameter('a JSON object, e.g. {"tag": "draft"}', param_hint="--filters")
    return parsed


def _run(data_dir: str | None, fn: Callable[[Any], Any]) -> None:
    from server.cli import emit, load_settings, open_rift

    rift = open_rift(load_settings(data_dir), must_exist=True)
    try:
        emit(fn(rift))
    except RiftError as exc:
        raise click.ClickException(str(exc)) from None
    finally:
        rift.close()


@click.command("list")
@click.option("--collection", default="default", show_default=True)
@click.option("--filters", default=None, help='JSON metadata filter, e.g. \'{"tag": "draft"}\'.')
@click.option("--limit", default=50, show_default=True, type=click.IntRange(1, 1000))
@click.option("--after", default=None, help="List from after this doc_id (the last one of the previous page).")
@click.option("--data-dir", default=None)
def list_documents(
    collection: str, filters: str | None, limit: int, after: str | None, data_dir: str | None
) -> None:
    """List stored documents (id and metadata), ordered by id."""
    from server.ingest.manage import list_documents as listing

    where = _filters(filters)

    def go(rift: Any) -> dict[str, Any]:
        total, page, offset = listing(rift.engine(), collection, where, limit, 0, after)
        more = offset + len(page) < total
        return {
            "collection": collection,
            "total": total,
            "documents": [{"doc_id": d, "metadata": m} for d, m in page],
            "next_after": page[-1][0] if more and page else None,
        }

    _run(data_dir, go)


@click.command("get")
@click.argument("doc_id")
@click.option("--collection", default="default", show_default=True)
@click.option("--offset", default=0, show_default=True, type=click.IntRange(0))
@click.option("--max-chars", default=None, type=click.IntRange(1), help="At most this many characters.")
@click.option("--data-dir", default=None)
def get_document(
    doc_id: str, collection: str, offset: int, max_chars: int | None, data_dir: str | None
) -> None:
    """Print a stored document's text and metadata."""
    from server.ingest.manage import get_document as fetch

    def go(rift: Any) -> dict[str, Any]:
        view = fetch(rift, collection, doc_id, None, offset, max_chars)
        return {k: v for k, v in view.__dict__.items() if k != "fetch_recorded"}

    _run(data_dir, go)


@click.command("delete")
@click.argument("ids", nargs=-1)
@click.option("--collection", default="default", show_default=True)
@click.option(
    "--filters",
    default=None,
    help="Delete every document whose metadata matches this JSON filter (instead of IDS).",
)
@click.option("--data-dir", default=None)
def delete_documents(ids: tuple[str, ...], collection: str, filters: str | None, data_dir: str | None) -> None:
    """Delete documents by id, or every document matching --filters (all of them: unlike the MCP tool, it
    repeats until none is left)."""
    where = _filters(filters)
    if bool(ids) == (where is not None):
        raise click.UsageError("give document ids or --filters (one of the two)")

    def go(rift: Any) -> dict[str, Any]:
        if ids:
            deleted, missing = rift.delete_documents(collection, list(ids))
            return {"collection": collection, "deleted": deleted, "not_found": missing}
        deleted: list[str] = []
        while True:
            try:
                batch, remaining = rift.delete_matching(collection, where)
            except RiftError as exc:
                if not deleted:
                    raise
                raise RiftError(f"{exc} (after deleting {len(deleted)} documents: {', '.join(deleted)})") from None
            deleted.extend(batch)
            if not remaining or not batch:
                return {"collection": collection, "deleted": deleted, "not_found": []}

    _run(data_dir, go)


COMMANDS = [list_documents, get_document, delete_documents]
