"""Metadata filters: validated once, then compiled for both retrievers so neither post-filters.

Grammar (a subset of Chroma's ``where``, with the same meaning on both sides):
  {"field": value}                               equality
  {"field": {"$eq"|"$ne": value}}
  {"field": {"$gt"|"$gte"|"$lt"|"$lte": number}}  numeric ranges (several ops in one dict = AND)
  {"field": {"$in"|"$nin": [value, ...]}}
  {"$and": [filter, ...]}, {"$or": [filter, ...]}
Several top-level keys are ANDed. ``$ne`` and ``$nin`` only match chunks that have the field.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from server.errors import RiftError

Scalar = str | int | float | bool
COMPARE_OPS = {"$eq", "$ne", "$gt", "$gte", "$lt", "$lte", "$in", "$nin"}
RANGE_OPS = {"$gt", "$gte", "$lt", "$lte"}
MAX_DEPTH = 8


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


def _scalar(value: Any, where: str) -> Scalar:
    if isinstance(value, float) and not math.isfinite(value):
        raise RiftError(f"filters: {where} must be a finite number")
    if isinstance(value, (str, int, float, bool)):
        return value
    raise RiftError(f"filters: {where} must be a string, number or boolean, got {type(value).__name__}")


def parse_filters(raw: Mapping[str, Any] | None) -> Node | None:
    if raw is None:
        return None
    if not isinstance(raw, Mapping):
        raise RiftError("filters must be an object")
    if not raw:
        return None
    return _parse(raw, "filters", 0)


def _parse(raw: Any, path: str, depth: int) -> Node:
    if depth > MAX_DEPTH:
        raise RiftError(f"{path}: filters nest deeper than {MAX_DEPTH} levels")
    if not isinstance(raw, Mapping) or not raw:
        raise RiftError(f"{path} must be a non-empty object")
    nodes: list[Node] = []
    for key, value in raw.items():
        if not isinstance(key, str) or not key:
            raise RiftError(f"{path}: field names must be non-empty strings")
        if key in ("$and", "$or"):
            if not isinstance(value, list) or not value:
                raise RiftError(f"{path}.{key} must be a non-empty list of filters")
            children = tuple(_parse(v, f"{path}.{key}[{i}]", depth + 1) for i, v in enumerate(value))
            nodes.append(Bool(key, children))
        elif key.startswith("$"):
            raise RiftError(f"{path}: unknown operator {key!r} (use $and/$or, or a field name)")
        elif isinstance(value, Mapping):
            if not value:
                raise RiftError(f"{path}.{key} must name at least one operator")
            for op, operand in value.items():
                nodes.append(_condition(key, op, operand, f"{path}.{key}.{op}"))
        else:
            nodes.append(Cond(key, "$eq", _scalar(value, f"{path}.{key}")))
    return nodes[0] if len(nodes) == 1 else Bool("$and", tuple(nodes))


def _condition(field: str, op: Any, operand: Any, where: str) -> Cond:
    if op not in COMPARE_OPS:
        raise RiftError(
            f"filters: unknown operator {op!r} on field {field!r}; use one of {sorted(COMPARE_OPS)}"
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
    value = list(node.value) if node.op in ("$in", "$nin") else node.value
    return {node.field: {node.op: value}}


# --- keyword side: evaluated over columnar metadata ---------------------------------------------------------


class MetadataColumns:
    """Per-field numpy columns over the keyword index's rows, built lazily and cached."""

    def __init__(self, metadatas: list[Mapping[str, Any]]) -> None:
        self._metadatas = metadatas
        self._obj: dict[str, np.ndarray] = {}
        self._num: dict[str, np.ndarray] = {}
        self.size = len(metadatas)

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

    def present(self, field: str) -> np.ndarray:
        return np.array([field in m for m in self._metadatas], dtype=bool) if self.size else np.zeros(0, bool)


def _typed_equal(col: np.ndarray, value: Scalar) -> np.ndarray:
    # Python says True == 1; Chroma does not, so compare type classes too.
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
        eq = _typed_equal(col, node.value)
        return eq if node.op == "$eq" else (~eq & columns.present(node.field))
    hit = np.zeros(columns.size, dtype=bool)
    for v in node.value:
        hit |= _typed_equal(col, v)
    return hit if node.op == "$in" else (~hit & columns.present(node.field))
