"""Command-line values checked as click parses them: a bad one is a usage error (exit 2) at once, before a
model loads, as a bad MCP argument is refused before any work."""

from __future__ import annotations

import json
from typing import Any

import click

from server.errors import RiftError


def collection_name(_ctx: click.Context, _param: click.Parameter, value: str | None) -> str | None:
    """A --collection value, as the engine would check it (1-63 letters, digits, '_' or '-', ...)."""
    if value is None:
        return None
    from server.engine.engine import check_collection_name

    try:
        check_collection_name(value)
    except RiftError as exc:
        raise click.BadParameter(str(exc)) from None
    return value


def json_filters(raw: str | None) -> dict[str, Any] | None:
    """A --filters value: a JSON object (the search grammar checks the rest)."""
    if raw is None:
        return None
    try:
        parsed = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise click.BadParameter(f"not JSON: {exc}", param_hint="--filters") from None
    if not isinstance(parsed, dict):
        raise click.BadParameter('a JSON object, e.g. {"tag": "draft"}', param_hint="--filters")
    return parsed
