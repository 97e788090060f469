"""Reciprocal rank fusion (Cormack et al., 2009): score(d) = sum_i w_i / (k + rank_i(d)), ranks from 1."""

from __future__ import annotations

import heapq
from collections.abc import Hashable, Sequence
from typing import Any, TypeVar

K = TypeVar("K", bound=Hashable)


def rrf(
    ranked_lists: Sequence[Sequence[K]],
    k: float = 60.0,
    weights: Sequence[float] | None = None,
    limit: int | None = None,
) -> list[tuple[K, float]]:
    """Fuse ranked lists of keys, best first (the best `limit` when given); ties keep first-seen order so
    results are deterministic."""
    if weights is None:
        weights = [1.0] * len(ranked_lists)
    if len(weights) != len(ranked_lists):
        raise ValueError("one weight per ranked list")
    scores: dict[K, float] = {}
    for ranked, weight in zip(ranked_lists, weights, strict=True):
        if weight == 0:
            continue
        for rank, key in enumerate(ranked, start=1):
            scores[key] = scores.get(key, 0.0) + weight / (k + rank)
    # Both orderings are stable, and dicts keep first-seen order: ties stay in first-seen order.
    if limit is not None and limit < len(scores):
        return heapq.nsmallest(limit, scores.items(), key=_by_score)
    return sorted(scores.items(), key=_by_score)


def _by_score(item: tuple[Any, float]) -> float:
    return -item[1]
