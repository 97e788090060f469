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
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from server.engine.chunking import document_chunking

# How far (in units in the last place) a float may come back from Chroma (measured: a time stamp at most 1,
# other floats up to 3), and how many combinations of a document's floats are tried (each float alone first,
# then fewest ULPs moved in all) before its metadata is kept as it came (each try hashes the whole text).
MAX_ULPS = 4
MAX_COMBINATIONS = 81


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
    came back exact). None when none of the MAX_COMBINATIONS nearest combinations does (another chunking, a
    text rebuilt inexactly, floats further off)."""
    floats = [k for k, v in metadata.items() if isinstance(v, float) and math.isfinite(v)]
    if not floats:
        return metadata
    if not chunkings:  # (nothing to hash against: a repair that gave up)
        return None
    chunkings = [document_chunking(c, metadata) for c in chunkings]  # (file_type is no float: the same for all)
    if any(content_hash(text, metadata, c) == doc_hash for c in chunkings):
        return metadata  # (came back exact)
    # (The first combination is the values as read: tried above.)
    tries = itertools.islice(_combinations([metadata[k] for k in floats]), 1, MAX_COMBINATIONS + 1)
    for combo in tries:
        candidate = {**metadata, **dict(zip(floats, combo, strict=True))}
        if any(content_hash(text, candidate, c) == doc_hash for c in chunkings):
            return candidate
    return None


def _combinations(values: Sequence[float]) -> Iterator[tuple[float, ...]]:
    """The values as read, then each float alone moved up to MAX_ULPS (the usual drift: one float off), then
    the rest fewest ULPs first; each combination once."""
    seen: set[tuple[float, ...]] = set()
    singles = (
        (*values[:i], near, *values[i + 1 :]) for i, value in enumerate(values) for near in _near(value)
    )
    for combo in itertools.chain([tuple(values)], singles, _fewest_ulps_first(values)):
        if combo not in seen:
            seen.add(combo)
            yield combo


def _fewest_ulps_first(values: Sequence[float]) -> Iterator[tuple[float, ...]]:
    """Every combination of `values` and their neighbours up to MAX_ULPS away, in order of the ULPs moved in
    all: most floats come back exact, so with many floats (front matter's numbers beside a file's mtime) the
    one that drifted is found among the first tries, where trying every combination would be 9 ** n."""
    options = [_near(v) for v in values]  # (option i lies (i + 1) // 2 ULPs away)

    def spend(at: int, left: int) -> Iterator[tuple[float, ...]]:
        if at == len(options):
            if left == 0:
                yield ()
            return
        for i, value in enumerate(options[at]):
            cost = (i + 1) // 2
            if cost > left:
                break
            if at == len(options) - 1 and cost != left:
                continue
            for rest in spend(at + 1, left - cost):
                yield (value, *rest)

    for total in range(MAX_ULPS * len(values) + 1):
        yield from spend(0, total)
