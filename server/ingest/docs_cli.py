"""`rift list`, `rift get`, `rift delete`: the stored documents from the shell, as the MCP tools
list_documents, get_document and delete_documents see them; `rift export` and `rift import`: a collection as
JSON Lines; `rift collections`. `rift list`, `rift get` and `rift collections` print for a reader (--json for
scripts), the others JSON on stdout. Like the other commands they need the data dir to themselves (stop the
server first), except `rift export`, which reads a snapshot of the committed documents."""

from __future__ import annotations

import contextlib
import gzip
import io
import json
import os
import shlex
import shutil
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any, NoReturn

import click

from server.cli_values import collection_name, json_filters
from server.errors import DataDirLockedError, RiftError, user_message


def _run(data_dir: str | None, fn: Callable[[Any], Any], emit: Callable[[Any], None] | None = None) -> None:
    """Run `fn(rift)` on the data dir's store and print its result (`emit`, default JSON on stdout)."""
    from server.cli import emit as emit_json
    from server.cli import load_settings, open_rift

    rift = open_rift(load_settings(data_dir), must_exist=True)
    try:
        (emit or emit_json)(fn(rift))
    except RiftError as exc:
        raise click.ClickException(str(exc)) from None
    finally:
        rift.close()


@click.command("list")
@click.option("--collection", default="default", show_default=True, callback=collection_name)
@click.option("--filters", default=None, help='JSON metadata filter, e.g. \'{"tag": "draft"}\'.')
@click.option("--limit", default=50, show_default=True, type=click.IntRange(1, 1000))
@click.option("--after", default=None, help="List from after this doc_id (the last one of the previous page).")
@click.option("--prefix", "id_prefix", default="", help="Only documents whose doc_id starts with this.")
@click.option("--json", "as_json", is_flag=True, help="Print the page as JSON (with next_after for the next one).")
@click.option("--data-dir", default=None)
def list_documents(
    collection: str,
    filters: str | None,
    limit: int,
    after: str | None,
    id_prefix: str,
    as_json: bool,
    data_dir: str | None,
) -> None:
    """List stored documents, ordered by id: a line per document with its metadata (--json for scripts)."""
    from server.ingest.manage import caught_up
    from server.ingest.manage import list_documents as listing

    where = json_filters(filters)

    def go(rift: Any) -> dict[str, Any]:
        engine = rift.engine()
        (total, page, offset), warnings = caught_up(listing)(engine, collection, where, limit, 0, after, id_prefix)
        more = offset + len(page) < total
        return {
            "collection": collection,
            "total": total,
            "offset": offset,  # (where this page starts, also when it was asked for --after an id)
            "documents": [{"doc_id": d, "metadata": m} for d, m in page],
            "next_after": page[-1][0] if more and page else None,
            **({"warnings": warnings} if warnings else {}),
        }

    _run(data_dir, go, None if as_json else _print_listing)


def _metadata_line(doc_id: str, metadata: dict[str, Any], width: int = 60) -> str:
    """A document's metadata in one line, `key=value, ...`, each value cut to `width` characters. Of a file's
    own keys, only its title and type: the rest (its path again, size, mtime, hash) is sync's bookkeeping,
    which --json shows."""
    from server.ingest.extract import synced_file_keys

    hidden = synced_file_keys(doc_id, metadata) - {"title", "file_type"}
    shown = []
    for key, value in metadata.items():
        if key in hidden:
            continue
        text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
        shown.append(f"{key}={text if len(text) <= width else text[: width - 1] + '…'}")
    return ", ".join(shown)


def _print_listing(listing: dict[str, Any]) -> None:
    from server.ingest.sync import printable_text

    for warning in listing.get("warnings", []):
        click.echo(f"warning: {printable_text(warning)}", err=True)
    for doc in listing["documents"]:
        meta = _metadata_line(doc["doc_id"], doc["metadata"])
        click.echo(printable_text(doc["doc_id"] + (f"  {meta}" if meta else "")))
    shown, total, name = len(listing["documents"]), listing["total"], listing["collection"]
    first = listing["offset"] + 1
    said = (
        f"no documents in {name}"
        if not shown
        else f"{total} documents in {name}"
        if shown == total
        else f"documents {first} to {first + shown - 1} of {total} in {name}"
    )
    if listing["next_after"] is not None:
        said += f"; the next page: --after {shlex.quote(printable_text(listing['next_after']))}"
    click.echo(said, err=True)


@click.command("get")
@click.argument("doc_id")
@click.option("--collection", default="default", show_default=True, callback=collection_name)
@click.option("--offset", default=0, show_default=True, type=click.IntRange(0))
@click.option("--max-chars", default=None, type=click.IntRange(1), help="At most this many characters.")
@click.option("--json", "as_json", is_flag=True, help="Print the text with its metadata and counts as JSON.")
@click.option("--data-dir", default=None)
def get_document(
    doc_id: str, collection: str, offset: int, max_chars: int | None, as_json: bool, data_dir: str | None
) -> None:
    """Print a stored document's text (on stdout; what it is, its metadata and the part shown on stderr; --json:
    all of it as JSON)."""
    from server.ingest.manage import caught_up
    from server.ingest.manage import get_document as fetch

    def go(rift: Any) -> dict[str, Any]:
        view, warnings = caught_up(fetch)(rift, collection, doc_id, None, offset, max_chars)
        shown = {k: v for k, v in view.__dict__.items() if k not in ("fetch_recorded", "warnings")}
        warnings = [*view.warnings, *warnings]
        return shown | ({"warnings": warnings} if warnings else {})

    _run(data_dir, go, None if as_json else _print_document)


def _print_document(view: dict[str, Any]) -> None:
    """The text alone on stdout (`rift get ID > copy.md`), control characters escaped but for tabs and line
    breaks; the rest, for the reader, on stderr."""
    from server.ingest.sync import printable_document, printable_text

    for warning in view.get("warnings", []):
        click.echo(f"warning: {printable_text(warning)}", err=True)
    text, total, offset = view["text"], view["total_chars"], view["offset"]
    meta = _metadata_line(view["doc_id"], view["metadata"])
    click.echo(
        printable_text(f"{view['doc_id']} in {view['collection']}: {total:,} characters, {view['chunks']} chunk(s)")
        + (f"; {printable_text(meta)}" if meta else ""),
        err=True,
    )
    click.echo(printable_document(text), nl=not text.endswith("\n"))
    if offset or view["truncated"]:
        end = offset + len(text)
        more = f"; --offset {end} for the rest" if view["truncated"] else ""
        click.echo(f"characters {offset:,} to {end:,} of {total:,}{more}", err=True)


@click.command("delete")
@click.argument("ids", nargs=-1)
@click.option("--collection", default="default", show_default=True, callback=collection_name)
@click.option(
    "--filters",
    default=None,
    help="Delete every document whose metadata matches this JSON filter (instead of IDS).",
)
@click.option("--json", "as_json", is_flag=True, help="Print what was deleted as JSON.")
@click.option("--data-dir", default=None)
def delete_documents(
    ids: tuple[str, ...], collection: str, filters: str | None, as_json: bool, data_dir: str | None
) -> None:
    """Delete documents by id, or every document matching --filters (all of them: unlike the MCP tool, it
    repeats until none is left). Prints a line per deleted document (--json: the list as JSON)."""
    where = json_filters(filters)
    if bool(ids) == (where is not None):
        raise click.UsageError("give document ids or --filters (one of the two)")

    from server.cli import emit as emit_json

    def emit(result: dict[str, Any]) -> None:
        from server.ingest.sync import printable_text

        if as_json:
            emit_json(result)
            return
        for doc_id in result["deleted"]:
            click.echo(printable_text(f"deleted   {doc_id}"))
        n = len(result["deleted"])
        click.echo(printable_text(f"{collection}: {n:,} deleted"))

    missed: list[str] = []

    def go(rift: Any) -> dict[str, Any]:
        if ids:
            deleted, missing = rift.delete_documents(collection, list(ids))
            missed.extend(missing)
            return {"collection": collection, "deleted": deleted, "not_found": missing}
        deleted: list[str] = []
        while True:
            try:
                batch, remaining = rift.delete_matching(collection, where)
            except RiftError as exc:
                if not deleted:
                    raise
                raise RiftError(f"{exc} (after deleting {len(deleted)} documents: {', '.join(deleted)})") from None
            except KeyboardInterrupt:
                # A batch is one journaled write: the next start finishes it or undoes it. What the earlier
                # batches deleted is said, rather than "Aborted!" over documents gone without a word.
                emit({"collection": collection, "deleted": deleted, "not_found": [], "interrupted": True})
                click.echo(
                    f"\ninterrupted: {len(deleted):,} document{'' if len(deleted) == 1 else 's'} deleted (listed); "
                    "the batch being deleted then is "
                    "finished or undone at the next start; run the same delete again for the rest",
                    err=True,
                )
                sys.exit(130)
            deleted.extend(batch)
            if not remaining or not batch:
                return {"collection": collection, "deleted": deleted, "not_found": []}

    _run(data_dir, go, emit)
    if missed:  # (as rm does: a script's `&& ...` must not read "deleted" for an id that was never there)
        shown = ", ".join(repr(d) for d in missed[:5]) + (" ..." if len(missed) > 5 else "")
        hint = "; a file's document id is its absolute path" if any(not os.path.isabs(d) for d in missed) else ""
        are = "is" if len(missed) == 1 else "are"
        raise click.ClickException(f"{len(missed):,} of the ids {are} not in collection {collection!r}: {shown}{hint}")


@click.command("export")
@click.option("--collection", default="default", show_default=True, callback=collection_name)
@click.option("--filters", default=None, help="Only the documents whose metadata matches this JSON filter.")
@click.option(
    "--output", "-o", default="-", show_default=True, help="File to write (replaced only once it is whole); - = stdout."
)
@click.option("--data-dir", default=None)
def export_documents(collection: str, filters: str | None, output: str, data_dir: str | None) -> None:
    """Write a collection's documents as JSON Lines ({"id", "text", "metadata"} a line, by id, between a header
    line and a trailer line with their count and checksum, written last), as `rift import` reads them. Works while
    a server runs: it reads one snapshot of the committed documents."""
    from server.ingest.jsonl import descriptor_of, open_descriptor

    if not output:
        raise click.BadParameter("give a file name, or - for stdout", param_hint="--output")
    fd = descriptor_of(output) if output != "-" else None
    try:
        # A descriptor the shell opened (-o /dev/fd/3), taken before rift opens any file of its own.
        stream = open_descriptor(fd) if fd is not None else None
    except OSError as exc:
        raise click.ClickException(f"cannot write {output}: {exc.strerror or exc}") from None
    try:
        _export(collection, filters, output, stream, data_dir)
    finally:
        if stream is not None:
            with contextlib.suppress(OSError):
                stream.close()


def _export(collection: str, filters: str | None, output: str, stream: IO[str] | None, data_dir: str | None) -> None:
    from server.cli import check_store, load_settings, no_store, open_rift
    from server.ingest.jsonl import export_documents as export
    from server.ingest.jsonl import read_only_state, write_output
    from server.service import DataDirLock

    where = json_filters(filters)
    settings = load_settings(data_dir)
    check_store(settings, must_exist=True)
    if not settings.state_db.is_file():
        raise no_store(settings)
    if settings.vector_backend == "http":
        # Sharing a Chroma server, this data dir's state may be behind other processes' writes: start once to
        # catch up. A server running here catches up only when it serves a request, so say so.
        try:
            probe = DataDirLock(settings)
            probe.acquire()
            probe.release()
        except DataDirLockedError:
            click.echo(
                "exporting what this data dir's server has seen of the other processes' writes: it catches up "
                "when it next serves a request",
                err=True,
            )
        except RiftError as exc:
            click.echo(f"exporting what this data dir holds, without catching up first: {exc}", err=True)
        else:
            try:
                open_rift(settings, must_exist=True).close()
            except Exception as exc:  # (the server is down or failed mid-way, a move to it unfinished, ...): export
                # is how a store is rescued then, and state.sqlite holds every document this data dir has seen
                why = exc.message if isinstance(exc, click.ClickException) else user_message(exc) or repr(exc)
                click.echo(f"exporting what this data dir holds, without catching up first: {why}", err=True)
    try:
        conn = read_only_state(settings.state_db)
        try:
            if output == "-":
                # UTF-8 whatever the locale says (rift import reads UTF-8); stdout's text layer may not be.
                stdout = io.TextIOWrapper(click.get_binary_stream("stdout"), encoding="utf-8", newline="\n")
                try:
                    count = export(conn, collection, where, stdout)
                    stdout.flush()
                finally:
                    stdout.detach()
            elif stream is not None:
                count = export(conn, collection, where, stream)
                stream.flush()
            else:
                count = write_output(Path(output), lambda out: export(conn, collection, where, out))
        finally:
            conn.close()
    except RiftError as exc:
        raise click.ClickException(str(exc)) from None
    except BrokenPipeError:  # `rift export | head`: the reader has what it wanted
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # (no second error at exit's flush)
        sys.exit(1)
    except OSError as exc:
        raise click.ClickException(f"cannot write {output}: {exc.strerror or exc}") from None
    click.echo(f"exported {count} documents from collection {collection!r}", err=True)


@click.command("import")
@click.argument("file", type=click.File("rb"))
@click.option("--collection", default="default", show_default=True, callback=collection_name)
@click.option("--json", "as_json", is_flag=True, help="Print the counts (added, updated, unchanged, chunks) as JSON.")
@click.option("--data-dir", default=None)
def import_documents(file: IO[bytes], collection: str, as_json: bool, data_dir: str | None) -> None:
    """Add the documents of a JSON Lines FILE (- = stdin; gzipped too): {"id", "text", "metadata"} a line, as
    `rift export` writes them, or a BEIR corpus.jsonl ({"_id", "title", "text"}). Every line is checked before anything is
    written, and an export cut short (its trailer missing) is refused; run it again to resume an interrupted import
    (stored documents are skipped, not embedded again)."""
    with contextlib.ExitStack() as stack:
        stream: IO[bytes] = file
        if not file.seekable():  # read twice (checked, then written): keep a copy of stdin or a pipe
            stream = stack.enter_context(tempfile.TemporaryFile())
            try:
                shutil.copyfileobj(file, stream)
            except KeyboardInterrupt:
                _interrupted("nothing was stored")
            stream.seek(0)
        if stream.read(2) == b"\x1f\x8b":  # gzip (a BEIR corpus.jsonl.gz): read through it, seekable too
            stream.seek(0)
            stream = stack.enter_context(gzip.GzipFile(fileobj=stream, mode="rb"))
        else:
            stream.seek(0)
        _import(stream, collection, data_dir, as_json)


def _interrupted(stored: str) -> NoReturn:
    click.echo(f"\ninterrupted: {stored}; run the same import again to resume", err=True)
    sys.exit(130)


def _import(stream: IO[bytes], collection: str, data_dir: str | None, as_json: bool) -> None:
    from server.cli import emit, load_settings, open_rift
    from server.ingest.jsonl import ImportReport, check_file, count_documents
    from server.ingest.jsonl import import_documents as load

    interactive = sys.stderr.isatty()
    last: list[ImportReport] = []

    def progress(report: ImportReport) -> None:
        last[:] = [report]
        if interactive:
            done = report.added + report.updated + report.unchanged
            click.echo(f"\rimported {done:,}/{report.documents:,} documents", err=True, nl=False)

    settings = load_settings(data_dir)
    try:  # the file before the store: opening one may create a data dir, or re-embed it for a changed model
        checked = check_file(settings, stream)
    except RiftError as exc:
        raise click.ClickException(str(exc)) from None
    except KeyboardInterrupt:
        _interrupted("nothing was stored")
    if not checked.checked:
        click.echo(
            "warning: the file has no rift export header or trailer (an export by an older rift, or another "
            f"tool's file): a file cut short cannot be told from a whole one; {count_documents(checked.documents)} read",
            err=True,
        )
    rift = open_rift(settings)
    try:
        report = load(rift, collection, stream, progress, checked=checked.documents)
    except RiftError as exc:
        raise click.ClickException(str(exc)) from None
    except KeyboardInterrupt:
        _interrupted(f"lines up to {last[0].written_through_line} are stored" if last else "nothing was stored")
    finally:
        if interactive:
            click.echo("", err=True)
        rift.close()
    if not report.documents:
        done = f"collection {collection!r} was created, empty" if report.created_empty else "nothing was imported"
        click.echo(f"the file holds no document: {done}", err=True)
    if as_json:
        emit(report.as_dict())
    elif report.documents:
        r = report
        click.echo(
            f"{collection}: {r.documents:,} document{'' if r.documents == 1 else 's'} imported: {r.added:,} added, "
            f"{r.updated:,} updated, {r.unchanged:,} unchanged ({r.chunks:,} chunks embedded)"
        )


@click.group("collections", invoke_without_command=True)
@click.option("--json", "as_json", is_flag=True, help="Print as JSON: the listing, or the outcome of create / delete.")
@click.option("--data-dir", default=None, help="(listing: the data dir to list)")
@click.pass_context
def collections(ctx: click.Context, as_json: bool, data_dir: str | None) -> None:
    """List collections, a line each with its documents, chunks and model version (as list_collections;
    --json for scripts); `create NAME` and `delete NAME --yes` manage them."""
    if ctx.invoked_subcommand is not None:
        # (`rift collections --data-dir X delete NAME`: X, never the default store; --json before it counts too)
        ctx.obj = {"data_dir": data_dir, "json": as_json}
        return
    from server.ingest.manage import caught_up
    from server.ingest.manage import list_collections as catalog

    def go(rift: Any) -> dict[str, Any]:
        listed, warnings = caught_up(catalog)(rift.engine())
        return {"collections": listed, **({"warnings": warnings} if warnings else {})}

    _run(data_dir, go, None if as_json else _print_collections)


def _print_collections(catalog: dict[str, Any]) -> None:
    from server.cli import echo_table
    from server.ingest.sync import printable_text

    for warning in catalog.get("warnings", []):
        click.echo(f"warning: {printable_text(warning)}", err=True)
    rows = [["COLLECTION", "DOCUMENTS", "CHUNKS", "MODEL"]]
    rows += [
        [c["name"], f"{c['documents']:,}", f"{c['chunks']:,}", printable_text(str(c["model_version"]))]
        for c in catalog["collections"]
    ]
    if len(rows) == 1:
        click.echo("no collections", err=True)
        return
    echo_table(rows, right={1, 2})


def _data_dir(data_dir: str | None) -> str | None:
    """A subcommand's --data-dir, or the one given before it (both, and different: refused)."""
    before = (click.get_current_context().obj or {}).get("data_dir")
    if data_dir is not None and before is not None and data_dir != before:
        raise click.UsageError(f"two data dirs given: --data-dir {before} and --data-dir {data_dir}")
    return data_dir if data_dir is not None else before


def _as_json(as_json: bool) -> bool:
    """A subcommand's --json, or the one given before it."""
    return as_json or bool((click.get_current_context().obj or {}).get("json"))


@collections.command("create")
@click.argument("name")
@click.option("--json", "as_json", is_flag=True, help="Print the outcome as JSON.")
@click.option("--data-dir", default=None)
def create_collection(name: str, as_json: bool, data_dir: str | None) -> None:
    """Create an empty collection (one that exists is left as it is)."""
    from server.cli import emit, load_settings, open_rift

    _check_name(name)  # (before a data dir is made or the model loads)
    # A new data dir may be made, but a wrong RIFT_MODEL must not re-embed an existing one (nothing is added).
    rift = open_rift(load_settings(_data_dir(data_dir)), must_exist=False, reembed=False)
    try:
        created = rift.engine().create_collection(name)
        if _as_json(as_json):
            emit({"collection": name, "created": created})
        else:
            click.echo(f"created collection {name!r}" if created else f"collection {name!r} exists: left as it is")
    except RiftError as exc:
        raise click.ClickException(str(exc)) from None
    finally:
        rift.close()


@collections.command("delete")
@click.argument("name")
@click.option("--yes", is_flag=True, help="Delete without asking (needed when stdin is not a terminal).")
@click.option("--json", "as_json", is_flag=True, help="Print what was deleted as JSON.")
@click.option("--data-dir", default=None)
def delete_collection(name: str, yes: bool, as_json: bool, data_dir: str | None) -> None:
    """Delete a collection with all of its documents, its logged searches and their feedback (as the
    delete_collection tool). It cannot be undone: `rift export` it first to keep a copy."""
    data_dir = _data_dir(data_dir)
    _check_name(name)
    if not yes:
        if not _asks_a_person():
            raise click.UsageError(f"deleting collection {name!r} cannot be undone: add --yes to confirm")
        _confirm_delete(name)

    def go(rift: Any) -> dict[str, Any]:
        info = rift.delete_collection(name)
        return {"collection": name, "deleted_documents": info.documents, "deleted_chunks": info.chunks}

    def said(out: dict[str, Any]) -> None:
        docs, chunks = out["deleted_documents"], out["deleted_chunks"]
        click.echo(
            f"deleted collection {name!r}: {docs:,} document{'' if docs == 1 else 's'}, "
            f"{chunks:,} chunk{'' if chunks == 1 else 's'}"
        )

    _run(data_dir, go, None if _as_json(as_json) else said)


def _asks_a_person() -> bool:
    return sys.stdin.isatty()


def _confirm_delete(name: str) -> None:
    """Ask on the terminal. "No" keeps the collection (exit 1); Ctrl-C or Ctrl-D at the prompt is an interrupt
    (130, as every command stopped by Ctrl-C) and keeps it too. click's answer to both was "Aborted!", which
    did not say whether anything was deleted."""
    try:
        sure = click.confirm(f"Delete collection {name!r} and every document in it? This cannot be undone", err=True)
    except click.Abort:  # (click turns Ctrl-C and end of input at a prompt into Abort)
        click.echo(f"\ninterrupted: collection {name!r} kept", err=True)
        sys.exit(130)
    if not sure:
        click.echo(f"collection {name!r} kept", err=True)
        sys.exit(1)


def _check_name(name: str) -> None:
    from server.engine.engine import check_collection_name

    try:
        check_collection_name(name)
    except RiftError as exc:
        raise click.BadParameter(str(exc), param_hint="NAME") from None


COMMANDS = [list_documents, get_document, delete_documents, export_documents, import_documents, collections]
