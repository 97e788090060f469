"""The `rift` command line. `rift serve` speaks MCP on stdio (default) or streamable HTTP; the other
commands work on the same data dir directly (stop the server first: the data dir is locked while it runs)."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import sys
from collections.abc import Collection, Iterable
from typing import Any

import click
from pydantic import ValidationError

from server.cli_values import collection_name, json_filters
from server.config import Settings, default_config_file, read_config_file
from server.errors import DataDirLockedError, RiftError


def _setup_logging(verbose: bool) -> None:
    # stderr only: on stdio, stdout is the MCP channel.
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING,
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )


def load_settings(data_dir: str | None, model: str | None = None, **extra: Any) -> Settings:
    overrides: dict[str, Any] = {k: v for k, v in extra.items() if v is not None}
    if data_dir is not None and not data_dir.strip():  # ("$UNSET_VAR"): never the default store by accident
        raise click.BadParameter("is empty; name a folder, or leave the option out", param_hint="--data-dir")
    if data_dir:
        overrides["data_dir"] = data_dir
    if model:
        overrides["model"] = model
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        raise click.ClickException(f"invalid settings: {settings_error(exc, overrides)}") from None
    except Exception as exc:
        raise click.ClickException(f"invalid settings: {exc}") from None


def _setting_source(name: str, given: Iterable[str]) -> str:
    """Where a setting's value came from, in the precedence Settings reads them: the command line, the
    environment, the config file; "" when none of them names it (a default, or a validator's other setting)."""
    if name in given:
        return " (from the command line)"
    env = f"RIFT_{name.upper()}"
    if os.environ.get(env):  # an empty variable counts as unset (env_ignore_empty)
        return f" (from {env})"
    try:
        source = default_config_file()
        if source is not None and name in read_config_file(source):
            return f" (config file {source})"
    except (OSError, ValueError):
        pass
    return ""


def settings_error(exc: ValidationError, given: Iterable[str] = ()) -> str:
    """One line naming each bad setting, why, and where its value came from (`given`: the settings the
    command line set), never the value it was given (it may be a token)."""
    import difflib

    parts = []
    for err in exc.errors(include_url=False, include_input=False, include_context=False):
        where = ".".join(str(p) for p in err["loc"])
        message = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":  # only a config file can name a key Settings does not have
            near = difflib.get_close_matches(where, sorted(Settings.model_fields), n=1)
            hint = f" (did you mean {near[0]!r}?)" if near else " (settings are top-level keys, no [tables])"
            source = default_config_file()
            parts.append(
                f"{'config file ' + str(source) if source else 'settings'}: unknown setting {where!r}{hint}"
            )
            continue
        source = _setting_source(str(err["loc"][0]), set(given)) if err["loc"] else ""
        parts.append(f"{where}: {message}{source}" if where else message)
    return "; ".join(parts)


def open_rift(settings: Settings, must_exist: bool = False, reembed: bool | None = None):
    """`must_exist`: for commands that only read, a data dir that is not there is a typo, not a new store.
    `reembed` (default: not `must_exist`): whether a configured model other than the collections' re-embeds
    the store with it; False refuses to start instead."""
    from server.service import Rift

    check_store(settings, must_exist)
    if reembed is None:  # commands that only read (or manage model versions) never re-embed for another model
        reembed = not must_exist
    try:
        return Rift(settings).start(background=False, reembed=reembed)
    except DataDirLockedError as exc:
        raise click.ClickException(str(exc)) from None
    except RiftError as exc:
        raise click.ClickException(str(exc)) from None
    except KeyboardInterrupt:  # (start-up's repairs are journaled: the next start finishes them)
        click.echo("interrupted while starting", err=True)
        sys.exit(130)


def no_store(settings: Settings) -> click.ClickException:
    return click.ClickException(
        f"no rift data folder at {settings.data_dir}; check --data-dir or RIFT_DATA_DIR "
        "(rift add or rift serve create one)"
    )


def check_store(settings: Settings, must_exist: bool) -> None:
    """A ClickException when the data dir cannot be rift's (a file; a folder of other files) or, `must_exist`,
    is not one yet."""
    # A folder without rift's state (a notes folder given by mistake, a typo'd mkdir, a mount point not
    # mounted) is no store either: a command that only reads must not write a new store into it. An empty
    # one may become one where a command creates (add, import, serve).
    folder = settings.data_dir
    try:
        folder.stat()
    except FileNotFoundError:
        pass
    except OSError as exc:  # a folder above it that this user may not search, a file where a folder should be
        raise click.ClickException(
            f"data_dir {folder} cannot be used as rift's data folder: {exc.strerror or exc}"
        ) from None
    if folder.exists() and not folder.is_dir():
        raise click.ClickException(f"data_dir {folder} is a file, not a folder; check --data-dir or RIFT_DATA_DIR")
    try:
        foreign = must_exist and folder.is_dir() and not settings.state_db.exists()
    except OSError:  # unreadable: start-up names the problem
        foreign = False
    if foreign and settings.chroma_dir.is_dir():
        raise click.ClickException(
            f"the rift data folder {folder} has lost {settings.state_db.name} (its chroma folder is there); "
            "start `rift serve` (or `rift add`) once, which rebuilds it from the stored chunks"
        )
    if must_exist and (not folder.exists() or foreign):
        raise no_store(settings)


def emit(payload: Any) -> None:
    click.echo(json.dumps(payload, indent=2, ensure_ascii=False, default=str))


def echo_table(rows: list[list[str]], right: Collection[int] = ()) -> None:
    """`rows` (a header first) as aligned columns: each column padded to its widest cell, to the right for the
    columns in `right` (numbers), but the last, which is printed as it is (a free-text column)."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
    for row in rows:
        cells = [c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in enumerate(zip(row[:-1], widths, strict=True))]
        click.echo("  ".join([*cells, row[-1]]).rstrip())


class _Commands(click.Group):
    """The command group; a Chroma server that stops answering during a command is one line, not a
    traceback (start-up's own checks already say so; a server that fails later reached the user raw)."""

    def invoke(self, ctx: click.Context) -> Any:
        from server.engine.vector_store import chroma_server_problem
        from server.errors import disk_full_problem

        try:
            return super().invoke(ctx)
        except click.ClickException:  # already one line for the user (and may echo user text)
            raise
        except KeyboardInterrupt:  # (click's own answer is "Aborted!" and exit 1; commands that wrote say what)
            click.echo("\ninterrupted", err=True)
            sys.exit(130)
        except Exception as exc:
            problem = chroma_server_problem(exc, then="run the command again once it answers")
            problem = problem or disk_full_problem(exc)
            if problem is None:
                raise
            raise click.ClickException(problem) from None


@click.group(cls=_Commands)
@click.version_option(package_name="rift-mcp", prog_name="rift")
@click.option("-v", "--verbose", is_flag=True, help="Log progress to stderr.")
def main(verbose: bool) -> None:
    """rift: hybrid retrieval for agents that learns from their own searches."""
    _setup_logging(verbose)
    _utf8_stdout()
    if click.get_current_context().invoked_subcommand != "serve":  # (serve closes its own: close_on_terminate)
        _terminate_as_interrupt()


def _terminate_as_interrupt() -> None:
    """SIGTERM (systemd's, docker's or supervisord's stop) takes Ctrl-C's path: the command stops between two
    Python steps, so a write into Chroma in hand finishes, says what is stored and closes the store. Its default
    action killed the process mid-write: `rift watch` then left no note, and once a truncated HNSW file that
    no command could open again (found by helper BL). A second SIGTERM kills, as before."""

    def interrupt(signum: int, _frame: object) -> None:
        signal.signal(signum, signal.SIG_DFL)
        raise KeyboardInterrupt

    with contextlib.suppress(ValueError):  # (not the main thread: an embedding caller keeps its own handling)
        signal.signal(signal.SIGTERM, interrupt)


def _utf8_stdout() -> None:
    """Output in UTF-8 whatever the locale, as `rift export` writes: in a legacy one (a Windows console
    redirected to a file, an ISO-8859 locale) a document's "😀" or a file named "文档.txt" failed the command
    after its work was done. stderr keeps its encoding, escaping what it cannot show."""
    encoding = (getattr(sys.stdout, "encoding", None) or "").lower().replace("-", "").replace("_", "")
    if encoding != "utf8" and hasattr(sys.stdout, "reconfigure"):
        sys.stdout.reconfigure(encoding="utf-8")
    if hasattr(sys.stderr, "reconfigure"):
        sys.stderr.reconfigure(errors="backslashreplace")


@main.command()
@click.option(
    "--transport", type=click.Choice(["stdio", "streamable-http"]), default="stdio", show_default=True
)
@click.option("--host", default=None, help="HTTP bind address (default 127.0.0.1, RIFT_HTTP_HOST).")
@click.option("--port", type=click.IntRange(1, 65535), default=None, help="HTTP port (default 8765, RIFT_HTTP_PORT).")
@click.option("--data-dir", default=None, help="Data directory (default: the XDG data dir, RIFT_DATA_DIR).")
def serve(transport: str, host: str | None, port: int | None, data_dir: str | None) -> None:
    """Run the MCP server. Its model comes from RIFT_MODEL or the config file, like every other command's;
    `rift reindex --model` switches models without downtime."""
    from server.app import close_on_terminate, create_server
    from server.service import DataDirLock

    if transport == "stdio" and (host is not None or port is not None):
        raise click.UsageError("--host and --port apply to --transport streamable-http only")
    settings = load_settings(data_dir, http_host=host, http_port=port)
    # Fail fast, before the protocol starts, if another server holds the data dir; and hold it from here on,
    # so nothing gets in between this check and the server's start-up.
    try:
        lock = DataDirLock(settings)
        lock.acquire()
    except (DataDirLockedError, RiftError) as exc:  # locked elsewhere, or a data dir that cannot be made
        raise click.ClickException(str(exc)) from None
    server = create_server(settings, lock=lock)
    if transport == "stdio":
        close_on_terminate()  # (uvicorn handles SIGTERM for the HTTP transport: it shuts the lifespan down)
        server.run("stdio")
        # The client closed stdin, and the lifespan has closed rift (the log written, a retrain checkpointed).
        # What is left is the interpreter's teardown: 3-4 s of garbage-collecting torch's and Chroma's objects,
        # past the 2 s an MCP client waits before it sends SIGTERM (found by helper BG). Exit now, as the
        # SIGTERM path does.
        logging.shutdown()
        with contextlib.suppress(Exception):
            sys.stdout.flush()
            sys.stderr.flush()
        os._exit(0)
    from server.http import run_http

    try:
        run_http(server, settings)
    except ValueError as exc:  # e.g. a public bind without a token: a message, not a traceback
        raise click.ClickException(str(exc)) from None


@main.command("config")
@click.option("--data-dir", default=None)
@click.option("--markdown", is_flag=True, help="Print every setting with its default and meaning as a table.")
def show_config(data_dir: str | None, markdown: bool) -> None:
    """Print the effective settings (defaults < TOML < environment < flags) as JSON."""
    if markdown:
        click.echo(settings_table())
        return
    shown = load_settings(data_dir).model_dump(mode="json")
    for secret in ("http_token", "chroma_auth_token"):  # set or not, never their value in a terminal
        if shown.get(secret):
            shown[secret] = "***"
    emit(shown)


def settings_table() -> str:
    rows = ["| setting | env var | default | meaning |", "|---|---|---|---|"]
    for name, field in Settings.model_fields.items():
        if name == "data_dir":
            default = "(XDG data dir)"  # the machine's own path would make the table differ per machine
        elif field.default_factory is not None:
            default = json.dumps(field.default_factory())
        else:
            default = json.dumps(field.default)
        meaning = (field.description or "").replace("|", "\\|")
        rows.append(f"| `{name}` | `RIFT_{name.upper()}` | `{default}` | {meaning} |")
    return "\n".join(rows)


@main.command()
@click.option("--collection", default=None, callback=collection_name)
@click.option("--json", "as_json", is_flag=True, help="Print the statistics as JSON (what the stats tool returns).")
@click.option("--data-dir", default=None)
def stats(collection: str | None, as_json: bool, data_dir: str | None) -> None:
    """Print the model, the collections, how the two retrievers disagree and the learning status (--json:
    every figure, as JSON)."""
    rift = open_rift(load_settings(data_dir), must_exist=True)
    try:
        payload = rift.stats(collection)
        if as_json:
            emit(payload)
        else:
            _print_stats(payload)
    except RiftError as exc:
        raise click.ClickException(str(exc)) from None
    finally:
        rift.close()


def _print_stats(payload: dict[str, Any]) -> None:
    from server.cli_stats import stats_text
    from server.ingest.sync import printable_text

    head, rows, tail = stats_text(payload)
    for line in head:
        click.echo(printable_text(line))
    click.echo()
    echo_table([[printable_text(c) for c in row] for row in rows], right={1, 2, 3, 4, 5, 6, 7})
    click.echo()
    for line in tail:
        click.echo(printable_text(line))


def _snippet_chars(value: int) -> int:
    from server.service import MIN_SNIPPET_CHARS

    if 0 < value < MIN_SNIPPET_CHARS:
        raise click.BadParameter(f"0 (whole chunks) or at least {MIN_SNIPPET_CHARS}", param_hint="--max-chars")
    return value


@main.command()
@click.argument("query")
@click.option("-k", default=10, show_default=True, type=click.IntRange(1), help="Hits, up to the setting max_k.")
@click.option("--collection", default="default", show_default=True, callback=collection_name)
@click.option(
    "--mode", type=click.Choice(["hybrid", "vector", "keyword"]), default="hybrid", show_default=True
)
@click.option("--filters", default=None, help="JSON metadata filter.")
@click.option(
    "--max-chars",
    default=300,
    show_default=True,
    type=click.IntRange(0),
    callback=lambda _ctx, _param, value: _snippet_chars(value),
    help="Each hit's text at most this long (20 or more): the part of its chunk with the most query words "
    "(0: whole chunks).",
)
@click.option("--json", "as_json", is_flag=True, help="Print the hits as JSON (with their query_id and spans).")
@click.option("--data-dir", default=None)
def search(
    query: str,
    k: int,
    collection: str,
    mode: str,
    filters: str | None,
    max_chars: int,
    as_json: bool,
    data_dir: str | None,
) -> None:
    """Search a collection from the shell (logged like an MCP search, source 'cli'); --json for scripts."""
    parsed = json_filters(filters)
    settings = load_settings(data_dir)
    if k > settings.max_k:  # (before the model loads, as every option out of range)
        raise click.BadParameter(f"{k} is more than the setting max_k ({settings.max_k})", param_hint="'-k'")
    rift = open_rift(settings, must_exist=True)
    try:
        response = rift.search(collection, query, k, mode, parsed, source="cli", max_chars=max_chars or None)
        if not as_json:
            _print_hits(response)
            return
        emit(
            {
                "query_id": response.query_id,
                "hits": [
                    {
                        "doc_id": h.doc_id,
                        "score": round(h.score, 5),
                        "vector_rank": h.vector_rank,
                        "keyword_rank": h.keyword_rank,
                        "start": h.start,
                        "end": h.end,
                        "text": h.text,
                        "truncated": h.truncated,
                    }
                    for h in response.outcome.hits
                ],
                **({"warnings": response.outcome.warnings} if response.outcome.warnings else {}),
            }
        )
    except (RiftError, json.JSONDecodeError) as exc:
        raise click.ClickException(str(exc)) from None
    finally:
        rift.close()


def _print_hits(response: Any) -> None:
    """The hits for a reader: a line per hit (rank, doc_id, where in the document when its chunk says: heading,
    symbol, page; the fused score and each side's rank), its text indented below, and last the query_id of a
    logged search (the MCP tools feedback and get_document take it); warnings go to stderr. Texts pass through
    printable_text, so a stored document cannot colour the terminal."""
    from server.ingest.sync import printable_text

    for warning in response.outcome.warnings:
        click.echo(f"warning: {printable_text(warning)}", err=True)
    hits = response.outcome.hits
    if not hits:
        click.echo("no hits", err=True)
    for rank, hit in enumerate(hits, 1):
        sides = ", ".join(
            f"{side} #{r}" for side, r in (("vector", hit.vector_rank), ("keyword", hit.keyword_rank)) if r
        )
        where = [str(hit.metadata[key]) for key in ("heading", "symbol") if hit.metadata.get(key)]
        if hit.metadata.get("page"):
            where.append(f"p. {hit.metadata['page']}")
        place = printable_text(f" › {', '.join(where)}") if where else ""
        click.echo(f"{rank}. {printable_text(hit.doc_id)}{place}  (score {hit.score:.4f}{'; ' + sides if sides else ''})")
        lines = [printable_text(line.strip()) for line in hit.text.splitlines() if line.strip()]
        if lines and hit.truncated:
            lines[-1] += " …"
        for line in lines:
            click.echo(f"   {line}")
    if response.query_id:  # (only hybrid searches are logged)
        click.echo(f"query_id {response.query_id}")


@main.command()
@click.option("--collection", default=None, callback=collection_name, help="Only this collection (default: every one).")
@click.option("--json", "as_json", is_flag=True, help="Print each collection's count of documents rewritten as JSON.")
@click.option("--data-dir", default=None)
def rechunk(collection: str | None, as_json: bool, data_dir: str | None) -> None:
    """Split stored documents again for the current chunk settings (and chunker version), embedding only the
    chunks that changed. A local store does this at every start; with a shared Chroma server start-up only
    warns (every process would do it at once): run this once, then in each other process (which then finds
    the documents done and rewrites nothing)."""
    rift = open_rift(load_settings(data_dir), must_exist=True)
    try:
        engine = rift.engine()
        names = engine.collection_names()
        if collection and collection not in names:
            raise RiftError(f"unknown collection {collection!r}")
        names = [collection] if collection else names
        done = {}
        for name in names:
            click.echo(f"rechunk: {name}", err=True)
            done[name] = engine.rechunk_if_changed(name)
        if as_json:
            emit({"rechunked": done})
            return
        for name, rewritten in done.items():
            plural = "" if rewritten == 1 else "s"
            click.echo(f"{name}: {rewritten:,} document{plural} split again" if rewritten else f"{name}: nothing to do")
    except RiftError as exc:
        raise click.ClickException(str(exc)) from None
    finally:
        rift.close()


from server.bench.cli import bench  # noqa: E402  (registered last: keeps the core CLI readable)

main.add_command(bench)

from server.ingest import cli as ingest_cli  # noqa: E402

main.add_command(ingest_cli.add)
main.add_command(ingest_cli.watch)

from server.ingest.docs_cli import COMMANDS as DOCUMENT_COMMANDS  # noqa: E402

for _command in DOCUMENT_COMMANDS:
    main.add_command(_command)

from server.learning.cli import COMMANDS as LEARNING_COMMANDS  # noqa: E402

for _command in LEARNING_COMMANDS:
    main.add_command(_command)


if __name__ == "__main__":
    main()
