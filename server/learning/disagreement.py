"""Where the vector and keyword rankings disagree for one query: the raw signal rift learns from."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Disagreement:
    top: int  # how many of each list's head are compared
    overlap: float  # |V_top ∩ K_top| / min(top, longer head), in [0, 1]
    vector_blind_spots: list[str]  # in vector top, absent from keyword top-k: the keyword side missed them
    keyword_blind_spots: list[str]  # in keyword top, absent from vector top-k: the vector side missed them
    # False when the query had no keyword terms (only stopwords or symbols): the keyword side did not search,
    # so there is nothing to disagree with (overlap 0, no blind spots), and the log's rates leave it out.
    compared: bool = True


def not_compared(top: int = 5) -> Disagreement:
    """A search whose keyword side had no terms to look for."""
    return Disagreement(top=top, overlap=0.0, vector_blind_spots=[], keyword_blind_spots=[], compared=False)


def summarize(vector: Sequence[str], keyword: Sequence[str], k: int, top: int = 5) -> Disagreement:
    """`vector`/`keyword` are ranked document ids. Blind spots compare one side's top `top` with the other
    side's top `k` (the k the caller asked for), so a blind spot is a document the other side would not have
    shown the caller."""
    v_top, k_top = list(vector[:top]), list(keyword[:top])
    v_k, k_k = set(vector[:k]), set(keyword[:k])
    # Normalise by what could overlap, so a tiny collection is not read as disagreement.
    possible = max(1, min(top, max(len(v_top), len(k_top))))
    overlap = len(set(v_top) & set(k_top)) / possible
    return Disagreement(
        top=top,
        overlap=overlap,
        vector_blind_spots=[d for d in v_top if d not in k_k],
        keyword_blind_spots=[d for d in k_top if d not in v_k],
    )
