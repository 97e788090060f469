"""Names from a request, as an error quotes them: a 100,000-character key or tool name must not come back whole
into an agent's context (pydantic's own "Extra inputs are not permitted" names the key in full); and a tool
call's argument errors, as rift words them rather than pydantic."""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any

from pydantic import BaseModel, ValidationError

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


def json_type(value: Any) -> str:
    """The JSON name of a value's type, as an error names what it got ("null", not "NoneType")."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list | tuple):
        return "array"
    if isinstance(value, dict):
        return "object"
    return type(value).__name__


def argument_path(loc: Iterable[Any]) -> str:
    """A pydantic error location as rift's own errors write it: documents[0].metadata.lang."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            name = str(part)
            name = name if len(name) <= MAX_QUOTED else name[:MAX_QUOTED] + "…"
            out += f".{name}" if out else name
    return out


# What a type error wanted, in JSON's words (pydantic: "a valid dictionary or instance of DocumentIn").
_WANTED = {
    "model_type": "an object",
    "model_attributes_type": "an object",
    "dict_type": "an object",
    "list_type": "an array",
    "tuple_type": "an array",
    "set_type": "an array",
    "string_type": "a string",
    "int_type": "an integer",
    "int_parsing": "an integer",
    "int_from_float": "an integer",
    "float_type": "a number",
    "float_parsing": "a number",
    "bool_type": "a boolean",
    "bool_parsing": "a boolean",
    "none_required": "null",
}
MAX_PROBLEMS = 10  # lines of one error message; the rest are counted


def _problem(error: Mapping[str, Any]) -> str:
    kind, ctx, value = error["type"], error.get("ctx") or {}, error.get("input")
    if kind in _WANTED:
        return f"must be {_WANTED[kind]}, got {json_type(value)}"
    if kind == "finite_number":  # JSON has no NaN or Infinity; Python's reader (and so the wire's) takes both
        got = "NaN" if value != value else "Infinity" if value > 0 else "-Infinity"
        return f"must be a finite number, got {got}"
    if kind == "rift_union":  # (_unions_merged)
        return f"{error['msg']}, got {json_type(value)}"
    if kind == "missing":
        return "missing (required)"
    if kind == "extra_forbidden":
        return "is not a known name"
    if kind == "literal_error":
        got = quoted(value) if isinstance(value, str) else json_type(value)
        return f"must be {ctx.get('expected')}, got {got}"
    if kind in ("too_short", "too_long"):
        least = kind == "too_short"
        bound = ctx["min_length"] if least else ctx["max_length"]
        items = "item" if bound == 1 else "items"
        got = ctx.get("actual_length")
        return f"must have at {'least' if least else 'most'} {bound:,} {items}" + (f", got {got:,}" if got is not None else "")
    if kind == "string_too_short":
        least = ctx["min_length"]
        return "must not be empty" if least == 1 else f"must have at least {least:,} characters"
    if kind == "string_too_long" and isinstance(value, str):
        return f"is {len(value):,} characters; the limit is {ctx['max_length']:,}"
    message = str(error["msg"])
    for prefix in ("Value error, ", "Assertion failed, "):  # a validator's own words
        if message.startswith(prefix):
            return message[len(prefix) :]
    # Bounds and the rest: "Input should be less than or equal to 20" -> "must be less than or equal to 20".
    message = re.sub(r"^(Input|Value|String|List|Dictionary|Object) should", "must", message)
    return re.sub(r" or instance of \w+", "", message.replace("a valid dictionary", "an object"))


def _is_member_tag(part: Any) -> bool:
    """A location part pydantic adds for one member of a union (`str`, `list[str]`, `function-after[...]`)."""
    return isinstance(part, str) and (
        part in ("str", "int", "float", "bool", "bytes") or "[" in part or part.startswith(("function-", "constrained-"))
    )


def _unions_merged(errors: list[Any]) -> list[Any]:
    """A union's errors as one: pydantic reports each member it tried (glob.str: must be a string; glob.list[str]:
    must be an array), with its type in the path. Where a member got past the outer type (an array of the wrong
    items), its own errors stand, without the tag; where none did, one error says what any member takes."""
    groups: dict[tuple[Any, ...], list[tuple[int, Any]]] = {}
    for n, error in enumerate(errors):
        loc = tuple(error["loc"])
        at = next((i for i, part in enumerate(loc) if _is_member_tag(part)), None)
        if at is not None:
            groups.setdefault(loc[:at], []).append((n, error))
    replace: dict[int, Any] = {}
    for parent, members in groups.items():
        shallow = [e.get("input") for _n, e in members if len(e["loc"]) == len(parent) + 1]
        if len({e["loc"][len(parent)] for _n, e in members}) < 2 or any(v != shallow[0] for v in shallow):
            continue  # one member, or keys of an object that look like members (each with its own value)
        deeper = [(n, e) for n, e in members if len(e["loc"]) > len(parent) + 1]
        for n, _e in members:
            replace[n] = None
        if deeper:
            for n, e in deeper:
                replace[n] = {**e, "loc": parent + tuple(e["loc"][len(parent) + 1 :])}
        elif all(e["type"] in _WANTED for _n, e in members):
            wanted = list(dict.fromkeys(_WANTED[e["type"]] for _n, e in members))
            first, error = members[0]
            joined = " or ".join(wanted) if len(wanted) < 3 else ", ".join(wanted[:-1]) + f" or {wanted[-1]}"
            replace[first] = {**error, "loc": parent, "type": "rift_union", "msg": f"must be {joined}"}
        else:
            for n, e in members:
                replace[n] = e
    return [replace.get(n, e) for n, e in enumerate(errors) if replace.get(n, e) is not None]


def describe_invalid(exc: ValidationError) -> str:
    """A tool call's argument errors, one line each, `path: problem`, for the agent that sent them: rift's path
    style (documents[0].text), JSON's type names, and no pydantic internals (error codes, Python class and type
    names, the rejected value itself, which may be long or the caller's data)."""
    lines: list[str] = []
    for error in _unions_merged(list(exc.errors(include_url=False))):
        path = argument_path(error["loc"])
        problem = _problem(error)
        # ("query is 9,000 characters; the limit is 8,192", as the engine's own checks word a length)
        line = f"{path}{' ' if problem.startswith('is ') else ': '}{problem}" if path else problem
        if line not in lines:
            lines.append(line)
    more = f"\n… and {len(lines) - MAX_PROBLEMS} more" if len(lines) > MAX_PROBLEMS else ""
    return "\n".join(lines[:MAX_PROBLEMS]) + more
