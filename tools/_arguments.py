"""Names from a request, as an error quotes them: a 100,000-character key or tool name must not come back whole
into an agent's context (pydantic's own "Extra inputs are not permitted" names the key in full)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from pydantic import BaseModel

MAX_QUOTED = 100


def quoted(name: str) -> str:
    """`name` quoted, its first 100 characters only."""
    return repr(name) if len(name) <= MAX_QUOTED else repr(name[:MAX_QUOTED]) + "…"


def quoted_list(names: Iterable[str], most: int = 5) -> str:
    names = list(names)
    more = f" and {len(names) - most} more" if len(names) > most else ""
    return ", ".join(map(quoted, names[:most])) + more


def refuse_unknown_keys(model: type[BaseModel], data: Any, what: str, kind: str = "argument") -> Any:
    """`data` when every key is a field (or alias) of `model`; else a ValueError naming the unknown keys, shortened,
    and the ones `what` takes. For a before-validator of a model that forbids extra keys."""
    if not isinstance(data, dict):
        return data
    known: set[str] = set()
    for name, field in model.model_fields.items():
        known.add(name)
        known.update(a for a in (field.alias, field.validation_alias) if isinstance(a, str))
    unknown = [key for key in data if not isinstance(key, str) or key not in known]
    if unknown:
        takes = ", ".join(sorted(model.model_fields)) or "none"
        raise ValueError(f"{what} has no {kind} {quoted_list(map(str, unknown))}; it takes {takes}")
    return data
