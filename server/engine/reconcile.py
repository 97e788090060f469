"""Bring rift's SQLite chunk rows (the keyword side's durable form) in line with the chunks stored in Chroma.

Chroma is the source of truth, but it can hold more than one version of a document at a time: while a writer
is between "upsert the new chunks" and "delete the old ones", after a writer crashed half-way, or when two rift
processes sharing one Chroma server wrote the same document id at once. So the repair works per document:
among the versions whose every chunk is present (`_rift_n` of them), the newest (`_rift_ts`) is made visible;
a version missing any chunk is never shown. Nothing is written to Chroma here: the writer that left an
incomplete or superseded version cleans it up itself (its journal), so a reader can never delete data that a
recovering writer still needs.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from server.engine.filters import RESERVED_PREFIX
from server.engine.keyword_index import KeywordTokenizer
from server.engine.state_store import ChunkRow, StateStore
from server.engine.vector_store import VectorStore
from server.engine.versions import exact_metadata

log = logging.getLogger(__name__)

CHUNK_KEYS = "_rift_ckeys"  # comma-separated metadata keys a chunk has beyond its document's (e.g. heading)
GAP_BEFORE = "_rift_gap"  # the document's text between the previous chunk (or its start) and this chunk
GAP_AFTER = "_rift_tail"  # on the last chunk: the document's text after it
# Longer gaps are cut (a repair then rebuilds them shorter); they are rarely more than "\n\n".
MAX_GAP_CHARS = 512
# When a repair stops trying to make documents' floats exact (each try hashes a whole document, up to
# versions.MAX_COMBINATIONS tries per chunking): after GIVE_UP_AFTER documents that match no version hash
# while they outnumber those that do MISS_RATIO to one (another chunking), and in any case after MAX_MISSES.
# A document past that keeps its floats as read: a file's sync reads it again, nothing is lost.
GIVE_UP_AFTER = 20
MISS_RATIO = 4
MAX_MISSES = 1000


@dataclass
class Delta:
    """What a repair changed in rift's own state (and so in the keyword index)."""

    removed: list[str] = field(default_factory=list)
    added: list[ChunkRow] = field(default_factory=list)
    put_docs: list[tuple[str, str, str, dict[str, Any]]] = field(default_factory=list)
    removed_docs: list[str] = field(default_factory=list)
    # Documents of `put_docs` whose text differs from the version rift held before (another process rewrote them).
    replaced_docs: list[str] = field(default_factory=list)

    @property
    def empty(self) -> bool:
        return not (self.removed or self.added or self.put_docs or self.removed_docs)

    @property
    def texts_gone(self) -> list[str]:
        """The documents whose text rift held left its state: deleted, or replaced by other text."""
        return [*self.removed_docs, *self.replaced_docs]


@dataclass
class _Version:
    present: set[str] = field(default_factory=set)  # chunk ids in rift's state that Chroma also has
    absent: set[str] = field(default_factory=set)  # chunk ids in rift's state that Chroma lacks
    fetched: list[tuple[str, str, dict[str, Any]]] = field(default_factory=list)  # (id, text, meta) new to us
    expected: int | None = None  # _rift_n of the fetched chunks
    ts: float | None = None  # _rift_ts of the fetched chunks

    @property
    def in_state(self) -> bool:
        return bool(self.present or self.absent)

    def complete(self) -> bool:
        if self.absent:
            return False
        total = len(self.present) + len(self.fetched)
        if not self.fetched:
            return total > 0  # rift only commits whole versions, so a version fully in its state is whole
        return total == (self.expected if self.expected is not None else total)


def _number(meta: Mapping[str, Any], key: str, default: float) -> float:
    value = meta.get(key, default)
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else default


def join_chunks(parts: Sequence[ChunkRow]) -> tuple[str, dict[str, tuple[int, int]]]:
    """A document's text rebuilt from its chunks: exact slices at known offsets, and the text between them as
    stored with each chunk (chunks written before rift stored it: one space; a gap over MAX_GAP_CHARS: cut).
    Also where each chunk now lies in that text (chunk id -> start, end): it differs from the offsets the chunk
    was written with wherever a gap was cut or guessed, and hits point agents there."""
    text, covered = "", 0  # `covered`: end of the text so far, in the original document's offsets
    placed: dict[str, tuple[int, int]] = {}
    ordered = sorted(parts, key=lambda r: r.chunk_index)
    for r in ordered:
        start = int(r.metadata.get("_rift_start", covered))
        if start >= covered:
            gap = r.metadata.get(GAP_BEFORE)
            if not isinstance(gap, str):
                gap = " " if text and start > covered else ""
            at = len(text) + len(gap)
            text += gap + r.text
        else:  # overlaps what is joined (or lies inside it)
            at = len(text) - (covered - start)
            text += r.text[covered - start :]
        placed[r.chunk_id] = (at, at + len(r.text))
        covered = max(covered, start + len(r.text))
    tail = ordered[-1].metadata.get(GAP_AFTER) if ordered else None
    return (text + tail if isinstance(tail, str) else text), placed


def reconcile_with_chroma(
    vectors: VectorStore,
    state: StateStore,
    tokenizer: KeywordTokenizer,
    collection: str,
    chroma_name: str,
    log_level: int = logging.WARNING,
    doc_ids: Sequence[str] | None = None,
    drop_orphans: bool = True,
    in_chroma: set[str] | None = None,
    chunkings: Sequence[str] = (),
) -> Delta:
    """Repair `collection`'s rows in `state` from Chroma's collection `chroma_name` (all of it, or only the
    documents `doc_ids`); return what changed. `drop_orphans`: forget documents left with no chunk (with a
    shared Chroma server: another process deleted them). `in_chroma`: every chunk id Chroma holds (of
    `doc_ids`' documents, if given), when the caller has just listed them. Following another process's
    writes is routine, not a repair: the shared sync passes the documents it wrote and logs at DEBUG.
    `chunkings`: the chunking signatures the collection's documents may have been hashed with, by which their
    float metadata is read back exactly (versions.exact_metadata)."""
    if doc_ids is None:
        in_chroma = in_chroma if in_chroma is not None else set(vectors.all_ids(chroma_name))
    elif in_chroma is None:
        in_chroma = set()
        for start in range(0, len(doc_ids), 500):
            where = {"_rift_doc": {"$in": list(doc_ids[start : start + 500])}}
            in_chroma.update(i for i, _ in vectors.where_ids(chroma_name, where))
    keys = state.chunk_keys(collection, doc_ids)
    if in_chroma == keys.keys():
        return Delta()  # the common case: one id listing and one SQLite scan
    missing = sorted(in_chroma - keys.keys())
    versions: dict[str, dict[str, _Version]] = {}
    for chunk_id, (doc_id, doc_hash) in keys.items():
        version = versions.setdefault(doc_id, {}).setdefault(doc_hash, _Version())
        (version.present if chunk_id in in_chroma else version.absent).add(chunk_id)
    for chunk_id, text, meta in vectors.get(chroma_name, missing) if missing else []:
        meta = dict(meta or {})
        doc_id = str(meta.get("_rift_doc", chunk_id))
        version = versions.setdefault(doc_id, {}).setdefault(str(meta.get("_rift_hash", "")), _Version())
        version.fetched.append((chunk_id, text or "", meta))
        version.expected = int(_number(meta, "_rift_n", 0)) or None
        version.ts = _number(meta, "_rift_ts", 0.0)

    delta = Delta()
    found = misses = 0  # documents whose float metadata was (or was not) read back exactly
    for doc_id, by_hash in versions.items():
        chosen = _choose(state, collection, doc_id, by_hash)
        for doc_hash, version in by_hash.items():
            if doc_hash != chosen:
                delta.removed.extend(sorted(version.present | version.absent))
        if chosen is None or by_hash[chosen].in_state:
            continue
        fetched = sorted(by_hash[chosen].fetched, key=lambda f: _number(f[2], "_rift_idx", 0))
        tokens = tokenizer.tokenize([text for _, text, _ in fetched])
        rows = [
            ChunkRow(chunk_id, doc_id, chosen, int(_number(meta, "_rift_idx", 0)), text, tuple(toks), meta)
            for (chunk_id, text, meta), toks in zip(fetched, tokens, strict=True)
        ]
        joined, placed = join_chunks(rows)
        rows = [  # where the chunks lie in the rebuilt text, which the stored offsets may no longer match
            replace(r, metadata={**r.metadata, "_rift_start": at, "_rift_end": end})
            for r in rows
            for at, end in [placed[r.chunk_id]]
        ]
        own = set(str(rows[0].metadata.get(CHUNK_KEYS, "")).split(","))  # e.g. a Markdown chunk's heading
        user_meta = {
            k: v for k, v in rows[0].metadata.items() if not k.startswith(RESERVED_PREFIX) and k not in own
        }
        exact = exact_metadata(joined, user_meta, chosen, chunkings)
        if any(isinstance(v, float) for v in user_meta.values()):  # (only those tell whether tries succeed)
            found += exact is not None
            misses += exact is None
        if (misses >= GIVE_UP_AFTER and misses > MISS_RATIO * found) or misses >= MAX_MISSES:
            chunkings = ()
        if exact is not None and exact is not user_meta:  # (the chunks carry the document's keys too)
            user_meta = exact
            rows = [replace(r, metadata={**r.metadata, **exact}) for r in rows]
        delta.added.extend(rows)
        delta.put_docs.append((doc_id, chosen, joined, user_meta))
        if any(v.in_state for v in by_hash.values()):  # a version held before: did its text change?
            before = state.document(collection, doc_id)
            if before is not None and before[1] != joined:
                delta.replaced_docs.append(doc_id)

    if not delta.empty:
        log.log(
            log_level,
            "repairing %s from Chroma: %d chunks added, %d chunk rows dropped",
            collection,
            len(delta.added),
            len(delta.removed),
        )
        state.apply(collection, delta.removed, delta.added, put_docs=delta.put_docs)
        if drop_orphans and doc_ids is None:
            delta.removed_docs = state.orphan_documents(collection)
        elif drop_orphans:
            with_chunks = {d for d, _ in state.chunk_keys(collection, doc_ids).values()}
            delta.removed_docs = sorted(state.doc_hashes(collection, doc_ids).keys() - with_chunks)
        if delta.removed_docs:
            state.apply(collection, [], [], remove_docs=delta.removed_docs)
    return delta


def _choose(state: StateStore, collection: str, doc_id: str, by_hash: dict[str, _Version]) -> str | None:
    """The hash of the version to show: the newest complete one, rift's current one on a tie; None if no
    version is complete."""
    complete = [h for h, v in by_hash.items() if v.complete()]
    if len(complete) <= 1:
        return complete[0] if complete else None

    def ts(doc_hash: str) -> float:
        version = by_hash[doc_hash]
        if version.ts is None:  # only known from rift's own state: read its chunks' metadata
            rows = state.document_chunks(collection, doc_id)
            version.ts = max((_number(r.metadata, "_rift_ts", 0.0) for r in rows), default=0.0)
        return version.ts

    return max(complete, key=lambda h: (ts(h), by_hash[h].in_state, h))
