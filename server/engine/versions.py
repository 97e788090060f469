"""What a stored document version is (its content hash), and how to read a version back exactly from Chroma.

Chroma hands float metadata back a few units in the last place off (an mtime 1796442811.1965353 comes back
as 1796442811.196535). A document rebuilt from Chroma by another process, or after a lost state database,
then hashes to no version at all: its chunking reads as unknown, and a file's stored mtime never equals the
file's again. The version's hash is exact (a string), so the writer's own values are the nearby floats that
give it.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
from collections.abc import Mapping, Sequence
from typing import Any

# How far (in units in the last place) a float may come back from Chroma, and how many combinations of a
# document's floats are tried before its metadata is kept as it came.
MAX_ULPS = 4
MAX_COMBINATIONS = 81  # (two floats: each try hashes the whole text)


def content_hash(text: str, metadata: Mapping[str, Any] | None = None, chunking: str = "") -> str:
    """What a stored document version is: its text, its metadata, and how it was cut into chunks (so a change
    of chunking makes a new version, with new chunk ids, rather than new texts under the old ids)."""
    fields: dict[str, Any] = {"t": text, "m": metadata or {}}
    if chunking:
        fields["c"] = chunking
    payload = json.dumps(fields, sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()


def same_float(found: Any, written: float | None) -> bool:
    """Whether a float read back from Chroma is `written` (within MAX_ULPS of it; a bool or text never is)."""
    if written is None or isinstance(found, bool) or not isinstance(found, int | float):
        return False
    return abs(float(found) - written) <= MAX_ULPS * math.ulp(written)


def _near(value: float) -> list[float]:
    """`value` first, then the floats up to MAX_ULPS away from it, nearest first."""
    out, up, down = [value], value, value
    for _ in range(MAX_ULPS):
        up, down = math.nextafter(up, math.inf), math.nextafter(down, -math.inf)
        out += [up, down]
    return out


def exact_metadata(
    text: str, metadata: dict[str, Any], doc_hash: str, chunkings: Sequence[str]
) -> dict[str, Any] | None:
    """`metadata` as read back from Chroma, with its floats set to the writer's values: the ones with which
    the document hashes to `doc_hash` under one of `chunkings` (`metadata` itself when it has no float or
    came back exact). None when none does (another chunking, a text rebuilt inexactly) or when there are too
    many floats to try."""
    floats = [k for k, v in metadata.items() if isinstance(v, float) and math.isfinite(v)]
    if not floats:
        return metadata
    if any(content_hash(text, metadata, c) == doc_hash for c in chunkings):
        return metadata  # (came back exact)
    if 9 ** len(floats) > MAX_COMBINATIONS:
        return None
    # (The first combination is the values as read: tried above.)
    for combo in itertools.islice(itertools.product(*(_near(metadata[k]) for k in floats)), 1, None):
        candidate = {**metadata, **dict(zip(floats, combo, strict=True))}
        if any(content_hash(text, candidate, c) == doc_hash for c in chunkings):
            return candidate
    return None
