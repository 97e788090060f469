"""The bench modules' commands (`python -m server.bench.<name>`) report rift's own errors as `rift bench`
does: one 'Error:' line (a data folder that is not BEIR, a model that does not load), not a traceback; the
analysis commands over a BEIR folder share their options and set-up (`beir_analysis`)."""

from __future__ import annotations

import functools
import json
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, ParamSpec, TypeVar

import click

from server.errors import RiftError

P = ParamSpec("P")
R = TypeVar("R")


def one_line_errors(command: Callable[P, R]) -> Callable[P, R]:
    """`command` with a RiftError (BenchError among them) raised as a click error: its message, exit 1."""

    @functools.wraps(command)
    def wrapped(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return command(*args, **kwargs)
        except RiftError as exc:
            raise click.ClickException(str(exc)) from None

    return wrapped


def beir_analysis(
    model_help: str = "Model name or folder (default: rift's).",
) -> Callable[[Callable[..., R]], Callable[..., R]]:
    """Right under `@click.command()` of an analysis command over a BEIR folder: the options they all take
    (`--data`, `--model`, `--cache-dir`, listed before the command's own), its errors in one line, and
    Hugging Face offline, logging on stderr (stdout carries the command's JSON)."""

    def decorate(command: Callable[..., R]) -> Callable[..., R]:
        @functools.wraps(command)  # (carries the command's own click options)
        def prepared(*args: Any, **kwargs: Any) -> R:
            os.environ.setdefault("HF_HUB_OFFLINE", "1")
            logging.basicConfig(level=logging.WARNING)
            return command(*args, **kwargs)

        wrapped: Callable[..., R] = one_line_errors(prepared)
        cache = click.Path(path_type=Path)
        wrapped = click.option(
            "--cache-dir", type=cache, default=Path(".bench_cache"), show_default=True, help="Corpus vectors kept here."
        )(wrapped)
        wrapped = click.option("--model", default=None, help=model_help)(wrapped)
        folder = click.Path(path_type=Path, exists=True, file_okay=False)
        return click.option("--data", type=folder, required=True, help="A BEIR folder.")(wrapped)

    return decorate


def split_analysis(run: Callable[[Path, str, str | None, Path], dict[str, Any]]) -> click.Command:
    """The command of an analysis that scores one split's queries: `beir_analysis`'s options plus `--split`,
    printing `run(data, split, model, cache_dir)` as one JSON line."""

    @click.command()
    @beir_analysis()
    @click.option("--split", required=True, help="Whose queries to score: a usage split, where tuning is honest.")
    def main(data: Path, split: str, model: str | None, cache_dir: Path) -> None:
        click.echo(json.dumps(run(data, split, model, cache_dir)))

    return main
