"""Metadata filters: validated once, then compiled for both retrievers so neither post-filters.

Grammar (a subset of Chroma's ``where``, with the same meaning on both sides):
  {"field": value}                               equality
  {"field": {"$eq"|"$ne": value}}
  {"field": {"$gt"|"$gte"|"$lt"|"$lte": number}}  numeric ranges (several ops in one dict = AND)
  {"field": {"$in"|"$nin": [value, ...]}}
  {"$and": [filter, ...]}, {"$or": [filter, ...]}
  {"source": {"$prefix": "/abs/dir"}}            the file at that absolute path or anything under it
                                                 (whole path components; only on "source")
Several top-level keys are ANDed. As in Chroma (and MongoDB), ``$ne`` and ``$nin`` also match chunks that
lack the field; ranges and equality never do.

Chroma has no prefix operator, so every chunk whose ``source`` is an absolute path also stores its ancestor
folders as ``_rift_dir_<depth>`` (see `path_keys`); ``$prefix`` compiles to equality on one of them.
"""

from __future__ import annotations

import json
import math
import operator
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import PurePath
from typing import Any

import numpy as np

from server.errors import RiftError

Scalar = str | int | float | bool
COMPARE_OPS = {"$eq", "$ne", "$gt", "$gte", "$lt", "$lte", "$in", "$nin"}
RANGE_OPS = {"$gt", "$gte", "$lt", "$lte"}
MAX_DEPTH = 8
# Chroma evaluates a filter as a tree it refuses beyond depth 1,000, and a wide $or (or an $in of mixed types,
# which becomes one) is that deep: bound what a filter may expand to, with an error that names the cause.
MAX_CONDITIONS = 400
# Chroma binds every $in / $nin value as one SQLite variable: 20,000 in one filter failed there ("too many SQL
# variables") while the in-memory path took them, so a filter means one thing on both paths up to this many.
MAX_LIST_VALUES = 10_000
# rift's own per-chunk keys (text, document, folders): never user metadata or filters
RESERVED_PREFIX = "_rift_"
PREFIX_FIELD = "source"
DIR_KEY = "_rift_dir_"


@dataclass(frozen=True)
class Cond:
    field: str
    op: str
    value: Any


@dataclass(frozen=True)
class Bool:
    op: str  # "$and" | "$or"
    children: tuple[Node, ...]


Node = Cond | Bool


# Floats from here on are refused, in filters and in stored metadata: Chroma may store a float 1 ULP off, and
# the last float below 2**63 (2**63 - 1024) then reads as 2**63, equal to 2**63 - 1 in its integer compare.
FLOAT_LIMIT = 2**63 - 1024


def _scalar(value: Any, where: str) -> Scalar:
    if isinstance(value, float) and not math.isfinite(value):
        raise RiftError(f"{where} must be a finite number")
    if isinstance(value, float) and abs(value) >= FLOAT_LIMIT:
        # Chroma compares a float operand with integer metadata as a 64-bit integer, saturating: 1e19 would
        # equal 2**63 - 1 there and not here. No such number can tell two stored values apart reliably.
        raise RiftError(f"{where} is {value:g}; numbers must lie within ±9.2e18 (64-bit integers)")
    if isinstance(value, int) and not isinstance(value, bool) and not -(2**63) <= value <= 2**63 - 1:
        raise RiftError(f"{where} is {value}; numbers must lie within ±9.2e18 (64-bit integers)")
    if isinstance(value, str) and "\x00" in value:
        # No stored value holds one (writes refuse it), and numpy's string compare would drop a trailing one.
        raise RiftError(f"{where} contains a NUL character")
    if isinstance(value, (str, int, float, bool)):
        return value
    raise RiftError(f"{where} must be a string, number or boolean, got {_JSON_NAMES.get(type(value), type(value).__name__)}")


_JSON_NAMES = {type(None): "null", dict: "object", list: "array"}  # what an agent sent, in its JSON terms


def parse_filters(raw: Mapping[str, Any] | None) -> Node | None:
    if raw is None:
        return None
    if not isinstance(raw, Mapping):
        raise RiftError("filters must be an object")
    if not raw:
        return None
    node = _parse(raw, "filters", 0)
    size = _conditions(node)
    if size > MAX_CONDITIONS:
        raise RiftError(
            f"filters: expands to {size} conditions (each $or branch, and each value of an $in that mixes "
            f"types or holds fractional numbers); the limit is {MAX_CONDITIONS}. Put values of one type in one $in"
        )
    values = _list_values(node)
    if values > MAX_LIST_VALUES:
        raise RiftError(
            f"filters: its $in / $nin lists hold {values:,} values; the limit is {MAX_LIST_VALUES:,} in one filter"
        )
    return node


def fields_of(node: Node) -> set[str]:
    """The metadata fields a filter names (not the folder keys a $prefix on source adds)."""
    if isinstance(node, Bool):
        return set().union(*(fields_of(c) for c in node.children))
    return set() if node.field.startswith(DIR_KEY) else {node.field}


def _list_values(node: Node) -> int:
    if isinstance(node, Bool):
        return sum(_list_values(c) for c in node.children)
    return len(node.value) if node.op in ("$in", "$nin") else 0


def _conditions(node: Node) -> int:
    """How many leaf conditions `node` becomes for Chroma (see `to_chroma`)."""
    if isinstance(node, Bool):
        return sum(_conditions(c) for c in node.children)
    if node.op in ("$in", "$nin"):
        return sum(2 if _fraction(v) else 1 for v in node.value) if _expands(node.value) else 1
    return 2 if _fraction(node.value) else 1


def _parse(raw: Any, path: str, depth: int) -> Node:
    if depth > MAX_DEPTH:
        raise RiftError(f"{path}: filters nest deeper than {MAX_DEPTH} levels")
    if not isinstance(raw, Mapping) or not raw:
        raise RiftError(f"{path} must be a non-empty object")
    nodes: list[Node] = []
    for key, value in raw.items():
        if not isinstance(key, str) or not key:
            raise RiftError(f"{path}: field names must be non-empty strings")
        if "\x00" in key:
            raise RiftError(f"{path}: field name {key!r} contains a NUL character")
        if key in ("$and", "$or"):
            if not isinstance(value, list) or not value:
                raise RiftError(f"{path}.{key} must be a non-empty list of filters")
            children = tuple(_parse(v, f"{path}.{key}[{i}]", depth + 1) for i, v in enumerate(value))
            nodes.append(Bool(key, children))
        elif key.startswith("$"):
            raise RiftError(f"{path}: unknown operator {key!r} (use $and/$or, or a field name)")
        elif key.startswith(RESERVED_PREFIX):
            raise RiftError(f"{path}: {key!r}: fields starting with {RESERVED_PREFIX!r} are rift's own")
        elif key.startswith("#") or key == "chroma:document":
            # Chroma's own names (it refuses to filter on them); no stored metadata can carry them either.
            raise RiftError(
                f"{path}: {key!r}: no document has this field (names starting with '#', and "
                "'chroma:document', are reserved by Chroma)"
            )
        elif isinstance(value, Mapping):
            if not value:
                raise RiftError(f"{path}.{key} must name at least one operator")
            for op, operand in value.items():
                nodes.append(_condition(key, op, operand, f"{path}.{key}.{op}"))
        elif isinstance(value, list):
            shown = json.dumps(key, ensure_ascii=False)
            raise RiftError(
                f"{path}.{key} must be a string, number or boolean, got array; to match any of several values "
                f'write {{{shown}: {{"$in": [...]}}}}'
            )
        else:
            nodes.append(Cond(key, "$eq", _scalar(value, f"{path}.{key}")))
    return nodes[0] if len(nodes) == 1 else Bool("$and", tuple(nodes))


def path_keys(metadata: Mapping[str, Any]) -> dict[str, str]:
    """Ancestor folders of an absolute `source` path, keyed by depth: "/a/b/c.md" -> {_rift_dir_0: "/",
    _rift_dir_1: "/a", _rift_dir_2: "/a/b"}. Stored with each chunk so `$prefix` is an equality test."""
    source = metadata.get(PREFIX_FIELD)
    if not isinstance(source, str) or not os.path.isabs(source):
        return {}
    parents = list(reversed(PurePath(os.path.normpath(source)).parents))
    return {f"{DIR_KEY}{depth}": str(folder) for depth, folder in enumerate(parents)}


def _names_folders(node: Node) -> bool:
    if isinstance(node, Bool):
        return any(_names_folders(c) for c in node.children)
    return node.field.startswith(DIR_KEY)


def _blocking(node: Node, known: set[str]) -> set[str]:
    """Fields no document has (not in `known`) that by themselves make `node` match nothing: a condition on one
    that only a value can meet ($ne / $nin on a missing field match every document), in every branch of an $or."""
    if isinstance(node, Cond):
        blocked = not node.field.startswith(DIR_KEY) and node.field not in known and node.op not in ("$ne", "$nin")
        return {node.field} if blocked else set()
    parts = [_blocking(c, known) for c in node.children]
    if node.op == "$or" and not all(parts):
        return set()  # (a branch that can match: "none" is a real answer)
    return set().union(*parts)


# Named for both ways in: an agent's tool argument and the shell's option.
ID_PREFIX_HINT = "list_documents' id_prefix (`rift list --prefix`) lists documents by the start of their id"


def named_fields(unknown: Sequence[str]) -> str:
    """Fields no document has, quoted; an agent's guess that ids are metadata is answered with where they are."""
    named = ", ".join(map(repr, unknown))
    if set(unknown) & {"id", "doc_id", "_id"}:
        named += f" (a document's id is not metadata: {ID_PREFIX_HINT})"
    return named


def unknown_fields_problem(node: Node, known: set[str], collection: str, of_chunks: bool = False) -> str | None:
    """Why a filter matched nothing when fields no document (`of_chunks`: no chunk, as a search filters) has
    are why: a typo, or a chunk's own key in a document filter. Said, rather than an empty answer that reads as
    "there are none"."""
    unknown = sorted(_blocking(node, known))
    if not unknown:
        return None
    named = named_fields(unknown)
    if of_chunks:
        return f"nothing can match: filters name {named}, which no chunk in {collection!r} has in its metadata"
    return (
        f"no document matches: filters name {named}, which no document in {collection!r} has in its metadata "
        "(document filters read document metadata; a chunk's heading, symbol or page is not: hybrid_search "
        "filters on those)"
    )


def document_columns(metadatas: Sequence[Mapping[str, Any]], node: Node) -> MetadataColumns:
    """Documents' metadata as `node` reads it (with the folder keys of `source` when it has a $prefix): what
    list_documents shows and a delete by filter matches. The folder keys are left out when `node` does not
    read them: they were 80 % of a filtered listing's time."""
    if not _names_folders(node):
        return MetadataColumns(list(metadatas))
    by_folder: dict[str, dict[str, str]] = {}  # files in one folder share its keys: path_keys once per folder

    def folder_keys(metadata: Mapping[str, Any]) -> dict[str, str]:
        source = metadata.get(PREFIX_FIELD)
        if not isinstance(source, str) or not os.path.isabs(source):
            return {}
        path = os.path.normpath(source)
        folder = os.path.dirname(path)
        if folder == path:  # a root has no folders above it
            return path_keys(metadata)
        keys = by_folder.get(folder)
        if keys is None:
            keys = by_folder[folder] = path_keys(metadata)
        return keys

    return MetadataColumns([{**m, **folder_keys(m)} for m in metadatas])


def _prefix(field: str, operand: Any, where: str) -> Node:
    if field != PREFIX_FIELD:
        hint = f"; {ID_PREFIX_HINT}" if field in ("id", "doc_id") else ""
        raise RiftError(f"{where}: $prefix only works on {PREFIX_FIELD!r} (absolute file paths){hint}")
    if not isinstance(operand, str) or not os.path.isabs(operand) or "\x00" in operand:
        raise RiftError(f'{where} must be an absolute path, e.g. "/home/me/notes"')
    folder = PurePath(os.path.normpath(operand))
    depth_key = f"{DIR_KEY}{len(folder.parts) - 1}"
    nodes = [Cond(field, "$eq", str(folder)), Cond(depth_key, "$eq", str(folder))]
    if operand not in (str(folder), f"{folder}/"):  # (a source stored as written, "/a//b/./c.md": that file)
        nodes.append(Cond(field, "$eq", operand))
    return Bool("$or", tuple(nodes))


def _condition(field: str, op: Any, operand: Any, where: str) -> Node:
    if op == "$prefix":
        return _prefix(field, operand, where)
    if op not in COMPARE_OPS:
        raise RiftError(
            f"filters: unknown operator {op!r} on field {field!r}; use one of {sorted(COMPARE_OPS | {'$prefix'})}"
        )
    if op in ("$in", "$nin"):
        if not isinstance(operand, list) or not operand:
            raise RiftError(f"{where} must be a non-empty list")
        return Cond(field, op, tuple(_scalar(v, f"{where}[{i}]") for i, v in enumerate(operand)))
    value = _scalar(operand, where)
    if op in RANGE_OPS and (isinstance(value, bool) or not isinstance(value, (int, float))):
        raise RiftError(f"{where} must be a number")
    return Cond(field, op, value)


# --- Chroma ------------------------------------------------------------------------------------------------


def to_chroma(node: Node | None) -> dict[str, Any] | None:
    if node is None:
        return None
    if isinstance(node, Bool):
        children = [to_chroma(c) for c in node.children]
        return children[0] if len(children) == 1 else {node.op: children}
    if node.op in ("$in", "$nin"):
        values = list(node.value)
        if _expands(values):
            # Chroma wants one type per list; x $in [a, b] is x == a OR x == b (and $nin the negation).
            op, join = ("$eq", "$or") if node.op == "$in" else ("$ne", "$and")
            conds = [_chroma_cond(node.field, op, v) for v in values]
            return conds[0] if len(conds) == 1 else {join: conds}  # Chroma refuses a one-item $or / $and
        return {node.field: {node.op: values}}
    return _chroma_cond(node.field, node.op, node.value)


def _fraction(value: Any) -> bool:
    return isinstance(value, float) and not value.is_integer()


def _expands(values: Sequence[Any]) -> bool:
    """Whether an $in / $nin list goes to Chroma as one condition per value: mixed types, or a fraction."""
    return len({type(v) for v in values}) > 1 or any(_fraction(v) for v in values)


# Chroma compares a fractional operand with integer metadata after cutting it to an integer (toward zero):
# {"n": 1.5} matched n = 1. Where that cut changes the answer for integers, one more condition on the cut
# value t corrects it; for float metadata the extra condition changes nothing (t lies on the true side).
_CUT_FIX = {  # (op, operand above zero) -> how to combine with the condition on t
    ("$eq", True): ("$and", "$ne"),
    ("$eq", False): ("$and", "$ne"),
    ("$ne", True): ("$or", "$eq"),
    ("$ne", False): ("$or", "$eq"),
    ("$gt", False): ("$or", "$eq"),  # -0.5: integers need n >= 0; cut, n > 0
    ("$gte", True): ("$and", "$ne"),  # 1.5: integers need n >= 2; cut, n >= 1
    ("$lt", True): ("$or", "$eq"),  # 0.5: integers need n <= 0; cut, n < 0
    ("$lte", False): ("$and", "$ne"),  # -0.5: integers need n <= -1; cut, n <= 0
}


def _chroma_cond(field: str, op: str, value: Any) -> dict[str, Any]:
    cond = {field: {op: value}}
    fix = _CUT_FIX.get((op, value > 0)) if _fraction(value) else None
    if fix is None:
        return cond
    join, extra = fix
    return {join: [cond, {field: {extra: int(value)}}]}


# --- keyword side: evaluated over columnar metadata ---------------------------------------------------------


class MetadataColumns:
    """Per-field numpy columns over the keyword index's rows, built lazily and cached."""

    def __init__(self, metadatas: list[Mapping[str, Any]]) -> None:
        self._metadatas = metadatas
        self._obj: dict[str, np.ndarray] = {}
        self._num: dict[str, np.ndarray] = {}
        self._wide: dict[str, bool] = {}
        self.size = len(metadatas)

    @property
    def fields(self) -> set[str]:
        """Every field some row has."""
        return {key for m in self._metadatas for key in m}

    def objects(self, field: str) -> np.ndarray:
        col = self._obj.get(field)
        if col is None:
            col = np.empty(self.size, dtype=object)
            col[:] = [m.get(field) for m in self._metadatas]
            self._obj[field] = col
        return col

    def numbers(self, field: str) -> np.ndarray:
        col = self._num.get(field)
        if col is None:
            col = np.array(
                [
                    float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else np.nan
                    for v in (m.get(field) for m in self._metadatas)
                ],
                dtype=np.float64,
            )
            self._num[field] = col
        return col

    def has_wide_ints(self, field: str) -> bool:
        """Whether a value of `field` is an integer float64 cannot hold exactly (beyond 2**53)."""
        wide = self._wide.get(field)
        if wide is None:
            wide = any(_wide_int(m.get(field)) for m in self._metadatas)
            self._wide[field] = wide
        return wide

    def present(self, field: str) -> np.ndarray:
        return np.array([field in m for m in self._metadatas], dtype=bool) if self.size else np.zeros(0, bool)


_RANGE = {"$gt": operator.gt, "$gte": operator.ge, "$lt": operator.lt, "$lte": operator.le}


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _wide_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and abs(value) > 2**53


def _as_chroma_compares(stored: Any, operand: Any) -> Any:
    """Chroma compares an integer operand with float metadata as a float: beyond 2**53, 2**53 + 1 equals
    the stored 2**53.0 there, so it must here too."""
    return float(operand) if isinstance(stored, float) and _wide_int(operand) else operand


def equal_mask(col: np.ndarray, value: Scalar) -> np.ndarray:
    """Which of a column's values a filter's {"field": value} matches (as in memory and in Chroma)."""
    # Python says True == 1; Chroma does not, so compare type classes too.
    if _wide_int(value):
        eq = np.fromiter((v == _as_chroma_compares(v, value) for v in col), bool, len(col))
    else:
        eq = col == value
    if isinstance(value, bool):
        return eq & np.fromiter((isinstance(v, bool) for v in col), bool, len(col))
    if isinstance(value, (int, float)):
        return eq & np.fromiter((not isinstance(v, bool) for v in col), bool, len(col))
    return np.asarray(eq, dtype=bool)


def mask(node: Node | None, columns: MetadataColumns) -> np.ndarray | None:
    """Boolean mask of rows that match; None when there is no filter."""
    if node is None:
        return None
    if isinstance(node, Bool):
        parts = [mask(c, columns) for c in node.children]
        out = parts[0].copy()
        for p in parts[1:]:
            out = (out & p) if node.op == "$and" else (out | p)
        return out
    if node.op in RANGE_OPS:
        if _wide_int(node.value) or columns.has_wide_ints(node.field):
            # Chroma compares int64 exactly; float64 would round 2**53 + 1 to 2**53. Python's int/float
            # comparisons are exact, so such a field is compared value by value.
            compare = _RANGE[node.op]
            return np.fromiter(
                (
                    _is_number(v) and compare(v, _as_chroma_compares(v, node.value))
                    for v in columns.objects(node.field)
                ),
                bool,
                columns.size,
            )
        nums = columns.numbers(node.field)
        with np.errstate(invalid="ignore"):
            return {
                "$gt": nums > node.value,
                "$gte": nums >= node.value,
                "$lt": nums < node.value,
                "$lte": nums <= node.value,
            }[node.op]
    col = columns.objects(node.field)
    if node.op in ("$eq", "$ne"):
        eq = equal_mask(col, node.value)
        return eq if node.op == "$eq" else ~eq
    hit = np.zeros(columns.size, dtype=bool)
    for v in node.value:
        hit |= equal_mask(col, v)
    return hit if node.op == "$in" else ~hit
