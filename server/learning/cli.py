"""`rift retrain`, `rift models`, `rift rollback`, `rift reindex`: the learning tools from the shell.

They open the data dir directly (stop the server first: it holds the data dir's lock), run the same background
job the MCP tools start, report progress on stderr and print the outcome on stdout for a reader (`rift models`:
a table), or with --json the final status as the MCP tools return it."""

from __future__ import annotations

import sys
import time
from typing import Any, get_args

import click

from server.config import RETRAIN_BOUNDS, LearnStrategy
from server.errors import RiftError

REJECTED_EXIT = 3  # `rift retrain`: the job ran, the gate kept the serving model


def _wait(learning: Any, started: dict[str, Any]) -> dict[str, Any]:
    job_id = started["job_id"]
    last = ""
    while True:
        snap = learning.status(job_id)
        done, total = snap["progress"]["done"], snap["progress"]["total"]
        line = f"{snap['kind']}: {snap['phase']}" + (f" {done}/{total}" if total else "")
        if line != last:
            click.echo(line, err=True)
            last = line
        if snap["status"] != "running":
            return snap
        time.sleep(0.5)


def _run(data_dir: str | None, fn: Any, emit: Any = None, **settings: Any) -> None:
    """Run `fn(learning)` on the data dir's store and print its result (`emit`, default JSON on stdout)."""
    from server.cli import emit as emit_json
    from server.cli import load_settings, open_rift

    # Every learning command reads an existing store: a data dir that is not there is a typo.
    rift = open_rift(load_settings(data_dir, **settings), must_exist=True)
    try:
        result = fn(rift.learning)
        (emit or emit_json)(result)
        if isinstance(result, dict) and result.get("status") in ("failed", "cancelled"):
            if result.get("error"):  # the reason, where a person reads (stdout has the whole JSON)
                click.echo(f"{result.get('kind', 'job')} {result['status']}: {result['error']}", err=True)
            sys.exit(1)
        if isinstance(result, dict) and result.get("status") == "rejected":
            # Not a failure, but no new model either: a script's `rift retrain && …` must not read it as one.
            reason = ((result.get("result") or {}).get("gate") or {}).get("reason") or "see the gate's numbers"
            click.echo(f"the gate rejected the candidate ({reason}); the serving model is unchanged", err=True)
            sys.exit(REJECTED_EXIT)
    except RiftError as exc:
        raise click.ClickException(str(exc)) from None
    except KeyboardInterrupt:
        job = rift.learning.jobs.stop(60, resumable=False)  # Ctrl-C on a command means: cancel it
        if job is not None and job.status == "succeeded":  # it was switching models: that cannot be cut short
            click.echo(
                f"interrupted while the {job.kind} job was switching models; it finished first, and "
                f"{(job.result or {}).get('version', 'the new version')} serves (rift rollback returns to the "
                "previous one)",
                err=True,
            )
        else:
            click.echo("interrupted; the job was cancelled and the serving model is unchanged", err=True)
        sys.exit(130)  # (as every command stopped by Ctrl-C)
    finally:
        rift.close()


@click.command()
@click.option(
    "--strategy",
    type=click.Choice(get_args(LearnStrategy)),
    default=None,
)
@click.option(
    "--epochs", type=click.FloatRange(*RETRAIN_BOUNDS["epochs"]), default=None, help="(default: setting learn_epochs)"
)
@click.option(
    "--lr",
    "learning_rate",
    type=click.FloatRange(*RETRAIN_BOUNDS["learning_rate"]),
    default=None,
    help="Learning rate (default: setting learn_learning_rate).",
)
@click.option(
    "--batch-size",
    type=click.IntRange(*map(int, RETRAIN_BOUNDS["batch_size"])),
    default=None,
    help="(default: setting learn_batch_size)",
)
@click.option(
    "--min-triples",
    type=click.IntRange(*map(int, RETRAIN_BOUNDS["min_triples"])),
    default=None,
    help="Refuse to train on fewer triples (default: setting learn_min_triples).",
)
@click.option(
    "--merge-base",
    type=click.FloatRange(0, 1),
    default=None,
    help="Move the trained weights back towards the serving model's by this share (WiSE-FT).",
)
@click.option(
    "--searches",
    type=click.Choice(["new", "all"]),
    default=None,
    help="new: only searches the serving fine-tune did not train on; all: the whole log again "
    "(default: setting learn_searches).",
)
@click.option("--dry-run", is_flag=True, help="Only show the triples that would be mined.")
@click.option("--json", "as_json", is_flag=True, help="Print the job's final status (or the dry run's answer) as JSON.")
@click.option("--data-dir", default=None)
def retrain(
    strategy: str | None,
    epochs: float | None,
    learning_rate: float | None,
    batch_size: int | None,
    min_triples: int | None,
    merge_base: float | None,
    searches: str | None,
    dry_run: bool,
    as_json: bool,
    data_dir: str | None,
) -> None:
    """Fine-tune the model on the search log, gate it, and serve it if it is no worse (--json: the job's final
    status, as retrain_status returns it)."""

    def go(learning: Any) -> dict[str, Any]:
        started = learning.retrain(
            strategy=strategy,
            epochs=epochs,
            learning_rate=learning_rate,
            batch_size=batch_size,
            min_triples=min_triples,
            merge_base=merge_base,
            searches=searches,
            dry_run=dry_run,
            source="cli",
        )
        return started if dry_run else _wait(learning, started)

    _run(data_dir, go, emit=None if as_json else _print_dry_run if dry_run else _print_job)


@click.command()
@click.option(
    "--prune",
    is_flag=True,
    help="Delete the weights of rejected and failed fine-tunes (never servable); their entries stay.",
)
@click.option("--json", "as_json", is_flag=True, help="Print every version's whole record as JSON.")
@click.option("--data-dir", default=None)
def models(prune: bool, as_json: bool, data_dir: str | None) -> None:
    """List model versions, newest first: what serves, what retired, what the gate rejected and why
    (--json: every record whole, with the gate's numbers)."""
    if prune:
        _run(data_dir, lambda learning: learning.delete_unservable_weights(), emit=None if as_json else _print_pruned)
    elif as_json:
        _run(data_dir, lambda learning: {"versions": learning.models()})
    else:
        _run(data_dir, lambda learning: learning.models(), emit=_print_versions)


def version_line(v: dict[str, Any]) -> list[str]:
    """One version's columns for `rift models`: id, kind, status, when made, triples trained on, and the gate's
    verdict with its basis and reason (else the registry's note, such as a re-index's model)."""
    created = time.strftime("%Y-%m-%d %H:%M", time.localtime(v["created_at"])) if v.get("created_at") else "-"
    gate = v.get("gate") or {}
    if gate:
        said = f"{'accepted' if gate.get('accepted') else 'rejected'} ({gate.get('basis', '?')}): {gate.get('reason', '')}"
    else:
        said = v.get("note") or ""
    triples = f"{v['triples']:,}" if v.get("triples") is not None else "-"
    return [v["version"], v["kind"], v["status"], created, triples, said]


def _print_versions(versions: list[dict[str, Any]]) -> None:
    from server.cli import echo_table
    from server.ingest.sync import printable_text

    rows = [["VERSION", "KIND", "STATUS", "CREATED", "TRIPLES", "GATE"]]
    echo_table(rows + [[printable_text(c) for c in version_line(v)] for v in versions], right={4})


@click.command()
@click.argument("version", required=False)
@click.option("--json", "as_json", is_flag=True, help="Print the job's final status as JSON (what retrain_status returns).")
@click.option("--data-dir", default=None)
def rollback(version: str | None, as_json: bool, data_dir: str | None) -> None:
    """Serve VERSION again (default: the previously serving version)."""
    _run(data_dir, lambda learning: _wait(learning, learning.rollback(version)), emit=None if as_json else _print_job)


@click.command()
@click.option("--model", "model", required=True, help="A sentence-transformers hub name or a local folder.")
@click.option("--json", "as_json", is_flag=True, help="Print the job's final status as JSON (what retrain_status returns).")
@click.option("--data-dir", default=None)
def reindex(model: str, as_json: bool, data_dir: str | None) -> None:
    """Re-embed every collection with MODEL and serve it (a new dimension gets new collections)."""
    _run(data_dir, lambda learning: _wait(learning, learning.reindex(model)), emit=None if as_json else _print_job)


def _print_pruned(pruned: dict[str, Any]) -> None:
    from server.cli_stats import size

    deleted = pruned["deleted"]
    if not deleted:
        click.echo("no rejected or failed fine-tune holds weights: nothing to delete")
    else:
        names = ", ".join(f"{d['version']} ({d['status']})" for d in deleted)
        click.echo(f"deleted the weights of {names}: {size(pruned['freed_bytes'])} freed")


def _print_job(snapshot: dict[str, Any]) -> None:
    from server.ingest.sync import printable_text
    from server.learning.cli_text import job_lines

    for line in job_lines(snapshot):
        click.echo(printable_text(line))


def _print_dry_run(answer: dict[str, Any]) -> None:
    from server.ingest.sync import printable_text
    from server.learning.cli_text import dry_run_lines

    for line in dry_run_lines(answer):
        click.echo(printable_text(line))


COMMANDS = [retrain, models, rollback, reindex]
