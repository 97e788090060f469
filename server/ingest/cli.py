"""`rift add` and `rift watch`: the command-line side of file ingestion. The CLI reads whatever its user can
(allowed_roots only limits the MCP server); like the other commands it needs the data dir to itself."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import click

from server.cli_values import collection_name
from server.errors import RiftError, user_message

if TYPE_CHECKING:  # the engine loads only when a command runs, so `rift --help` and `rift serve` stay quick
    from server.ingest.sync import SyncReport


def _print_report(
    report: SyncReport, as_json: bool, verbose: bool = True, skipped_before: dict[str, str | None] | None = None
) -> None:
    """Print a sync's per-file lines and its summary. `skipped_before` (for `rift watch`, whose every sync
    walks the whole folder): files skipped last time with the same reason are not listed again; it is updated."""
    from server.ingest.sync import printable, printable_text

    if as_json:
        payload = {
            "collection": report.collection,
            **report.counts(),
            "files": [
                {k: printable(v) if isinstance(v, str) else v for k, v in f.__dict__.items()} for f in report.files
            ],
        }
        click.echo(json.dumps(payload, indent=2, ensure_ascii=False))
        return
    repeated: dict[str, str | None] = {}
    if skipped_before is not None:
        now = {f.path: f.reason for f in report.files if f.status == "skipped"}
        repeated = {path: reason for path, reason in now.items() if skipped_before.get(path, "") == reason}
        skipped_before.clear()
        skipped_before.update(now)
    for f in report.files:
        if (f.status == "unchanged" and not verbose) or (f.status == "skipped" and f.path in repeated):
            continue
        detail = f" ({f.chunks} chunks)" if f.chunks else ""
        detail += f": {f.reason}" if f.reason else ""
        click.echo(printable_text(f"{f.status:<9} {f.path}{detail}"))
    summary = ", ".join(f"{n} {s}" for s, n in report.counts().items() if n)
    click.echo(f"{report.collection}: {summary or 'nothing to do'}", err=True)


@click.command("add")
# With --prune a path may be gone; an unreadable file is the sync's to report (skipped, with the rest stored), not
# a usage error that stores nothing (click.Path's default readable=True refused it before anything ran).
@click.argument("paths", nargs=-1, required=True, type=click.Path(readable=False))
@click.option("--collection", default="default", show_default=True, callback=collection_name)
@click.option(
    "--glob", "glob", multiple=True, help="Only files matching this gitignore-style pattern (repeatable)."
)
@click.option(
    "--prune",
    is_flag=True,
    help="Remove documents of files that are gone from the folders (or of a folder that is gone).",
)
@click.option("--no-recursive", is_flag=True, help="Do not descend into sub-folders.")
@click.option("--json", "as_json", is_flag=True, help="Print the per-file report as JSON.")
@click.option("--data-dir", default=None)
def add(
    paths: tuple[str, ...],
    collection: str,
    glob: tuple[str, ...],
    prune: bool,
    no_recursive: bool,
    as_json: bool,
    data_dir: str | None,
) -> None:
    """Ingest files and folders (Markdown, text, PDF, HTML, reStructuredText, code); run again to sync."""
    from server.cli import load_settings, open_rift
    from server.ingest.security import PathPolicy
    from server.ingest.sync import MAX_PATHS, SyncReport, sync_paths
    from server.ingest.walker import compile_glob

    try:  # before the model loads: a typo fails at once (--collection was checked as it was parsed)
        compile_glob(list(glob) or None)
    except RiftError as exc:
        raise click.ClickException(str(exc)) from None
    if not prune:  # a typo in the 150th path fails before the first 100 are stored (with --prune, a path
        for i, raw in enumerate(paths):  # that is gone may name a synced folder, which sync decides)
            try:
                os.lstat(raw)
            except (FileNotFoundError, NotADirectoryError):
                raise click.ClickException(f"paths[{i}] {raw!r} does not exist") from None
            except OSError:
                pass  # (a folder on the way that cannot be searched: the sync names the reason, not "does not exist")
    # The files named, resolved, by index: a folder in one group leaves those named in another to that group,
    # as it does those named in its own (a .gitignore of the folder neither lists nor prunes them).
    named: dict[int, Path] = {}
    if len(paths) > MAX_PATHS:
        for i, raw in enumerate(paths):
            try:
                path = PathPolicy.unrestricted().check(raw, f"paths[{i}]")
            except RiftError:
                continue  # gone (with --prune) or unreadable: its own group says so
            if path.is_file():
                named[i] = path
    rift = open_rift(load_settings(data_dir))
    # One report for every group, filled as batches commit: a failure or Ctrl-C can still say what is stored.
    report = SyncReport(collection)
    try:
        # A shell glob (notes/*.md) can name more paths than one sync call takes: sync them in groups.
        for start in range(0, len(paths), MAX_PATHS):
            sync_paths(
                rift.engine(),
                collection,
                list(paths[start : start + MAX_PATHS]),
                PathPolicy.unrestricted(),
                recursive=not no_recursive,
                glob=list(glob) or None,
                prune=prune,
                first_index=start,
                report=report,
                named_elsewhere={path for i, path in named.items() if not start <= i < start + MAX_PATHS},
            )
        _print_report(report, as_json, verbose=False)
    except Exception as exc:
        from server.engine.vector_store import chroma_server_problem

        # (A Chroma server that stops answering is a known problem too, not a bug: its batches before are listed.)
        problem = user_message(exc) or chroma_server_problem(exc, then="run the same command again once it answers")
        if report.files:  # the batches before the failing one are stored: say which
            _print_report(report, as_json, verbose=False)
        if problem is None:
            raise
        counts = report.counts()
        if counts["added"] or counts["updated"] or counts["removed"]:
            problem += f"; before the failure, {_stored(report)}"
        raise click.ClickException(problem) from None
    except KeyboardInterrupt:
        click.echo(f"\ninterrupted: {_stored(report)}; run the same command again to finish", err=True)
        sys.exit(130)
    finally:
        rift.close()
    refused = _skipped_named(paths, report)
    if refused:  # (a folder's skipped files are its business; a file named by hand was meant to be stored)
        raise click.ClickException(
            f"not stored, though named: {'; '.join(refused[:5])}{' ...' if len(refused) > 5 else ''}"
        )


def _skipped_named(paths: tuple[str, ...], report: SyncReport) -> list[str]:
    """The files named on the command line (not found in a folder) that the sync skipped, with why."""
    from server.ingest.sync import printable_text

    named = {os.path.realpath(p) for p in paths if os.path.isfile(p)}
    return [
        printable_text(f"{f.path}: {f.reason}")
        for f in report.files
        if f.status == "skipped" and os.path.realpath(f.path) in named
    ]


def _stored(report: SyncReport) -> str:
    """What an interrupted sync had committed, for the line that says so (its report holds only those)."""
    counts = report.counts()
    written = counts["added"] + counts["updated"]
    if not written and not counts["removed"]:
        return "nothing was stored"
    parts = [f"{written} file(s) stored"] if written else []
    if counts["removed"]:
        parts.append(f"{counts['removed']} removed")
    return ", ".join(parts) + " (unchanged ones are skipped by their size and mtime next time)"


@click.command("watch")
@click.argument("path", type=click.Path(exists=True, file_okay=False))
@click.option("--collection", default="default", show_default=True, callback=collection_name)
@click.option(
    "--glob", "glob", multiple=True, help="Only files matching this gitignore-style pattern (repeatable)."
)
@click.option("--no-prune", is_flag=True, help="Keep documents of deleted files.")
@click.option("--debounce-ms", default=1000, show_default=True, type=click.IntRange(50, 60_000))
@click.option("--poll", is_flag=True, help="Poll instead of using OS notifications (network drives).")
@click.option("--data-dir", default=None)
def watch(
    path: str,
    collection: str,
    glob: tuple[str, ...],
    no_prune: bool,
    debounce_ms: int,
    poll: bool,
    data_dir: str | None,
) -> None:
    """Keep a collection in sync with a folder until interrupted (Ctrl-C)."""
    from server.cli import load_settings, open_rift
    from server.ingest.walker import compile_glob
    from server.ingest.watch import watch_folder

    try:  # fail now, not on every change while watching (--collection was checked as it was parsed)
        compile_glob(list(glob) or None)
    except RiftError as exc:
        raise click.ClickException(str(exc)) from None
    settings = load_settings(data_dir)
    rift = open_rift(settings)
    click.echo(f"watching {path} -> collection {collection!r} (Ctrl-C to stop)", err=True)
    skipped: dict[str, str | None] = {}  # each sync lists a skipped file only when new or its reason changed
    try:
        watch_folder(
            rift.engine(),
            click.format_filename(path),
            collection,
            glob=list(glob) or None,
            prune=not no_prune,
            debounce_ms=debounce_ms,
            force_polling=poll or None,
            ignore_under=[settings.data_dir],
            on_sync=lambda report: _print_report(report, False, verbose=False, skipped_before=skipped),
        )
        # Returned: between syncs, watchfiles takes Ctrl-C (or SIGTERM, made one) itself and the watch ends.
        sys.exit(130)  # (as every command stopped by Ctrl-C)
    except (RiftError, NotADirectoryError) as exc:
        raise click.ClickException(str(exc)) from None
    except KeyboardInterrupt:  # (in the middle of a sync)
        click.echo(
            "\nstopped in the middle of a sync: what it stored stays; the next `rift watch` or `rift add` of the "
            "folder finishes it",
            err=True,
        )
        sys.exit(130)
    finally:
        rift.close()
