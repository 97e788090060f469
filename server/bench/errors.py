"""The bench modules' commands (`python -m server.bench.<name>`) report rift's own errors as `rift bench`
does: one 'Error:' line (a data folder that is not BEIR, a model that does not load), not a traceback."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import ParamSpec, TypeVar

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
