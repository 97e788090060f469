"""The engine: keeps Chroma (vectors) and bm25s (keywords) consistent and answers hybrid searches.

Write protocol (one writer at a time; searches never block):
  1. journal the chunk ids to write and to remove            (phase 'write-new')
  2. upsert the new chunks into Chroma
  3. in one SQLite transaction: swap chunk rows and documents, journal -> 'delete-old'
  4. publish a new keyword snapshot                         (the change becomes visible)
  5. delete the old chunks from Chroma, clear the journal
A crash before 3 rolls back (new chunks removed from Chroma); after 3 it rolls forward (old ones removed).
Search results only name chunks that are live in the keyword snapshot, so a half-done write is never visible.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import re
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from server.config import Settings
from server.engine.chunking import chunk_text
from server.engine.embedder import Embedder
from server.engine.filters import Node, parse_filters, to_chroma
from server.engine.fusion import rrf
from server.engine.keyword_index import KeywordIndex, KeywordRow, KeywordTokenizer
from server.engine.state_store import ChunkRow, StateStore
from server.engine.vector_store import VectorStore
from server.errors import NotFoundError, RiftError

log = logging.getLogger(__name__)

Mode = Literal["hybrid", "vector", "keyword"]
RESERVED_PREFIX = "_rift_"
COLLECTION_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,62}$")
MAX_QUERY_CHARS = 8192
MAX_ID_CHARS = 512


@dataclass
class DocumentInput:
    text: Any
    id: Any = None
    metadata: Any = None


@dataclass(frozen=True)
class DocumentStatus:
    id: str
    status: Literal["added", "updated", "unchanged"]
    chunks: int


@dataclass(frozen=True)
class Candidate:
    doc_id: str
    chunk_id: str
    score: float


@dataclass(frozen=True)
class Hit:
    doc_id: str
    chunk_id: str
    text: str
    metadata: dict[str, Any]
    score: float
    vector_rank: int | None
    keyword_rank: int | None


@dataclass
class SearchOutcome:
    collection: str
    query: str
    mode: Mode
    k: int
    hits: list[Hit]
    vector: list[Candidate]  # ranked, one entry per document when grouped
    keyword: list[Candidate]
    model_version: str
    timings_ms: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class CollectionInfo:
    name: str
    documents: int
    chunks: int
    model_version: str
    chroma_name: str
    keyword_rebuild_ms: float


def content_hash(text: str, metadata: Mapping[str, Any] | None = None) -> str:
    payload = json.dumps({"t": text, "m": metadata or {}}, sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()


def default_doc_id(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:32]


def chroma_name_for(collection: str, model_version: str) -> str:
    return f"rift-{collection}-{hashlib.sha256(model_version.encode()).hexdigest()[:10]}"


def check_text(value: Any, where: str, limit: int) -> str:
    if not isinstance(value, str):
        raise RiftError(f"{where} must be a string, got {type(value).__name__}")
    if not value.strip():
        raise RiftError(f"{where} must not be empty or whitespace")
    if len(value) > limit:
        raise RiftError(f"{where} is {len(value):,} characters; the limit is {limit:,} (max_document_chars)")
    if "\x00" in value:
        raise RiftError(f"{where} contains a NUL character")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise RiftError(f"{where} is not valid Unicode (lone surrogate at position {exc.start})") from None
    return value


def check_metadata(value: Any, where: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise RiftError(f"{where} must be an object of str/int/float/bool values")
    out: dict[str, Any] = {}
    for key, item in value.items():
        if not isinstance(key, str) or not key.strip():
            raise RiftError(f"{where} keys must be non-empty strings")
        if key.startswith(RESERVED_PREFIX):
            raise RiftError(f"{where}.{key}: keys starting with {RESERVED_PREFIX!r} are reserved")
        try:
            key.encode("utf-8")
        except UnicodeEncodeError:
            raise RiftError(f"{where} has a key that is not valid Unicode") from None
        if isinstance(item, str):
            if len(item) > 65_536:
                raise RiftError(f"{where}.{key} is longer than 65,536 characters")
            if "\x00" in item:
                raise RiftError(f"{where}.{key} contains a NUL character")
            try:
                item.encode("utf-8")
            except UnicodeEncodeError:
                raise RiftError(f"{where}.{key} is not valid Unicode") from None
        elif isinstance(item, float) and not math.isfinite(item):
            raise RiftError(f"{where}.{key} must be a finite number")
        elif isinstance(item, bool | int) and not isinstance(item, bool) and abs(item) > 2**63 - 1:
            raise RiftError(f"{where}.{key} is out of the 64-bit integer range")
        elif not isinstance(item, str | int | float | bool):
            raise RiftError(f"{where}.{key} must be a string, number or boolean, got {type(item).__name__}")
        out[key] = item
    return out


def check_collection_name(name: Any) -> str:
    if not isinstance(name, str) or not COLLECTION_NAME.match(name):
        raise RiftError(
            "collection must be 1-63 characters of letters, digits, '_' or '-', starting with a letter or digit"
        )
    return name


def _group(candidates: list[Candidate], by_document: bool) -> list[Candidate]:
    if not by_document:
        return candidates
    seen: set[str] = set()
    out = []
    for c in candidates:
        if c.doc_id not in seen:
            seen.add(c.doc_id)
            out.append(c)
    return out


class Engine:
    def __init__(
        self, settings: Settings, embedder: Embedder, vectors: VectorStore, state: StateStore
    ) -> None:
        self.settings = settings
        self.embedder = embedder
        self.vectors = vectors
        self.state = state
        self.tokenizer = KeywordTokenizer(settings.stemmer_language, settings.stopwords)
        self._keyword: dict[str, KeywordIndex] = {}
        self._rebuild_ms: dict[str, float] = {}
        self._write_lock = threading.RLock()

    # --- start-up ------------------------------------------------------------------------------------------

    def open(self) -> dict[str, Any]:
        """Finish interrupted writes, reconcile with Chroma, build keyword indices, re-embed collections
        made by another model. Returns what was repaired."""
        report: dict[str, Any] = {
            "journal": 0,
            "added_from_chroma": 0,
            "removed_missing": 0,
            "reembedded": [],
        }
        with self._write_lock:
            for entry in self.state.journal_pending():
                ids = entry.new_ids if entry.phase == "write-new" else entry.old_ids
                log.warning(
                    "recovering interrupted write %s (%s, %d chunks)", entry.id, entry.phase, len(ids)
                )
                self.vectors.delete(entry.chroma_name, ids)
                self.state.journal_clear(entry.id)
                report["journal"] += 1
            for record in self.state.collections():
                added, removed = self._reconcile(record.name, record.chroma_name)
                report["added_from_chroma"] += added
                report["removed_missing"] += removed
                self._load_keyword(record.name)
                if record.model_version != self.embedder.version:
                    self.reembed(record.name, self.embedder)
                    report["reembedded"].append(record.name)
        return report

    def _reconcile(self, collection: str, chroma_name: str) -> tuple[int, int]:
        """Make SQLite's chunk rows match Chroma's stored chunks (Chroma is the source of truth)."""
        self.vectors.ensure(chroma_name, self.embedder.dimension)
        in_chroma = set(self.vectors.all_ids(chroma_name))
        in_state = self.state.chunk_ids(collection)
        missing = sorted(in_chroma - in_state)
        extra = sorted(in_state - in_chroma)
        rows: list[ChunkRow] = []
        docs: dict[str, tuple[str, str, str, dict[str, Any]]] = {}
        if missing:
            got = self.vectors.get(chroma_name, missing)
            tokens = self.tokenizer.tokenize([t for _, t, _ in got])
            for (cid, text, meta), toks in zip(got, tokens, strict=True):
                meta = dict(meta or {})
                doc_id = str(meta.get("_rift_doc", cid))
                doc_hash = str(meta.get("_rift_hash", ""))
                rows.append(
                    ChunkRow(cid, doc_id, doc_hash, int(meta.get("_rift_idx", 0)), text, tuple(toks), meta)
                )
            present = self.state.doc_hashes(collection, sorted({r.doc_id for r in rows}))
            for r in sorted(rows, key=lambda r: (r.doc_id, r.chunk_index)):
                if r.doc_id not in present and r.doc_id not in docs:
                    user_meta = {k: v for k, v in r.metadata.items() if not k.startswith(RESERVED_PREFIX)}
                    docs[r.doc_id] = (r.doc_id, r.doc_hash, r.text, user_meta)
        if missing or extra:
            log.warning(
                "repairing %s: %d chunks from Chroma, %d stale rows", collection, len(missing), len(extra)
            )
            self.state.apply(collection, extra, rows, put_docs=list(docs.values()))
            orphans = self.state.orphan_documents(collection)
            if orphans:
                self.state.apply(collection, [], [], remove_docs=orphans)
        return len(missing), len(extra)

    def _load_keyword(self, collection: str) -> None:
        rows = [
            KeywordRow(r.chunk_id, r.doc_id, r.tokens, r.metadata) for r in self.state.iter_chunks(collection)
        ]
        index = KeywordIndex(rows)
        self._keyword[collection] = index
        self._rebuild_ms[collection] = index.snapshot.build_seconds * 1000

    # --- collections ---------------------------------------------------------------------------------------

    def collection_names(self) -> list[str]:
        return [c.name for c in self.state.collections()]

    def _record(self, collection: str):
        check_collection_name(collection)
        record = self.state.collection(collection)
        if record is None:
            known = ", ".join(self.collection_names()) or "none yet"
            raise NotFoundError(f"unknown collection {collection!r} (collections: {known})")
        return record

    def create_collection(self, collection: str) -> bool:
        check_collection_name(collection)
        with self._write_lock:
            if self.state.collection(collection) is not None:
                return False
            chroma_name = chroma_name_for(collection, self.embedder.version)
            self.vectors.ensure(chroma_name, self.embedder.dimension)
            self.state.put_collection(collection, chroma_name, self.embedder.version)
            self._keyword[collection] = KeywordIndex()
            return True

    def delete_collection(self, collection: str) -> None:
        with self._write_lock:
            record = self._record(collection)
            self.state.delete_collection(collection)
            self._keyword.pop(collection, None)
            self.vectors.drop(record.chroma_name)

    def info(self, collection: str) -> CollectionInfo:
        record = self._record(collection)
        docs, chunks = self.state.counts(collection)
        return CollectionInfo(
            collection,
            docs,
            chunks,
            record.model_version,
            record.chroma_name,
            self._rebuild_ms.get(collection, 0.0),
        )

    # --- writes --------------------------------------------------------------------------------------------

    def validate_documents(self, documents: Sequence[DocumentInput]) -> list[tuple[str, str, dict[str, Any]]]:
        if not documents:
            raise RiftError("documents must contain at least one document")
        if len(documents) > self.settings.max_documents_per_call:
            raise RiftError(
                f"documents has {len(documents)} items; the limit per call is "
                f"{self.settings.max_documents_per_call} (max_documents_per_call)"
            )
        out: list[tuple[str, str, dict[str, Any]]] = []
        seen: dict[str, int] = {}
        for i, doc in enumerate(documents):
            text = check_text(doc.text, f"documents[{i}].text", self.settings.max_document_chars)
            meta = check_metadata(doc.metadata, f"documents[{i}].metadata")
            if doc.id is None:
                doc_id = default_doc_id(text)
            else:
                if not isinstance(doc.id, str) or not doc.id.strip() or len(doc.id) > MAX_ID_CHARS:
                    raise RiftError(
                        f"documents[{i}].id must be a non-empty string of at most {MAX_ID_CHARS} chars"
                    )
                check_text(doc.id, f"documents[{i}].id", MAX_ID_CHARS)
                doc_id = doc.id
            if doc_id in seen:
                raise RiftError(
                    f"documents[{i}].id {doc_id!r} duplicates documents[{seen[doc_id]}] in this call"
                )
            seen[doc_id] = i
            out.append((doc_id, text, meta))
        return out

    def add_documents(
        self,
        collection: str,
        documents: Sequence[DocumentInput],
        progress: Callable[[int, int], None] | None = None,
    ) -> list[DocumentStatus]:
        check_collection_name(collection)
        docs = self.validate_documents(documents)
        with self._write_lock:
            self.create_collection(collection)
            record = self._record(collection)
            existing = self.state.doc_hashes(collection, [d for d, _, _ in docs])
            statuses: dict[str, DocumentStatus] = {}
            changed: list[tuple[str, str, dict[str, Any], str]] = []
            for doc_id, text, meta in docs:
                doc_hash = content_hash(text, meta)
                if existing.get(doc_id) == doc_hash:
                    statuses[doc_id] = DocumentStatus(doc_id, "unchanged", 0)
                else:
                    changed.append((doc_id, text, meta, doc_hash))
            rows = self._chunk_rows(changed)
            if rows:
                embeddings = self.embedder.encode_documents([r.text for r in rows], progress)
                old_ids = self.state.chunk_ids_of_docs(collection, [c[0] for c in changed])
                new_ids = [r.chunk_id for r in rows]
                stale = sorted(set(old_ids) - set(new_ids))
                self._commit(
                    collection,
                    record.chroma_name,
                    rows,
                    embeddings,
                    stale,
                    put_docs=[(d, h, t, m) for d, t, m, h in changed],
                )
            per_doc: dict[str, int] = {}
            for r in rows:
                per_doc[r.doc_id] = per_doc.get(r.doc_id, 0) + 1
            for doc_id, _, _, _ in changed:
                status = "updated" if doc_id in existing else "added"
                statuses[doc_id] = DocumentStatus(doc_id, status, per_doc.get(doc_id, 0))
        return [statuses[d] for d, _, _ in docs]

    def _chunk_rows(self, changed: list[tuple[str, str, dict[str, Any], str]]) -> list[ChunkRow]:
        if not changed:
            return []
        max_tokens = self.embedder.max_chunk_tokens(self.settings.chunk_tokens)
        pieces: list[tuple[str, str, dict[str, Any], int, int, str, int, int]] = []
        for doc_id, text, meta, doc_hash in changed:
            chunks = chunk_text(text, self.embedder.tokenizer, max_tokens, self.settings.chunk_overlap)
            for i, ch in enumerate(chunks):
                pieces.append((doc_id, doc_hash, meta, i, len(chunks), ch.text, ch.start, ch.end))
        tokens = self.tokenizer.tokenize([p[5] for p in pieces])
        rows = []
        for (doc_id, doc_hash, meta, i, n, text, start, end), toks in zip(pieces, tokens, strict=True):
            full_meta = {
                **meta,
                "_rift_doc": doc_id,
                "_rift_hash": doc_hash,
                "_rift_idx": i,
                "_rift_n": n,
                "_rift_start": start,
                "_rift_end": end,
            }
            chunk_id = f"{doc_id}::{doc_hash[:16]}::{i}"
            rows.append(ChunkRow(chunk_id, doc_id, doc_hash, i, text, tuple(toks), full_meta))
        return rows

    def _commit(
        self,
        collection: str,
        chroma_name: str,
        rows: Sequence[ChunkRow],
        embeddings: Any,
        stale: Sequence[str],
        put_docs: Sequence[tuple[str, str, str, dict[str, Any]]] = (),
        remove_docs: Sequence[str] = (),
    ) -> None:
        journal_id = self.state.journal_begin(chroma_name, [r.chunk_id for r in rows], stale)
        if rows:
            self.vectors.upsert(
                chroma_name,
                [r.chunk_id for r in rows],
                embeddings,
                [r.text for r in rows],
                [r.metadata for r in rows],
            )
        self.state.apply(collection, stale, rows, journal_id, remove_docs=remove_docs, put_docs=put_docs)
        rebuild = self._keyword[collection].apply(
            remove=stale, add=[KeywordRow(r.chunk_id, r.doc_id, r.tokens, r.metadata) for r in rows]
        )
        if rebuild:
            self._rebuild_ms[collection] = rebuild * 1000
        self.vectors.delete(chroma_name, stale)
        self.state.journal_clear(journal_id)

    def delete_documents(self, collection: str, ids: Sequence[str]) -> tuple[list[str], list[str]]:
        """Returns (deleted ids, ids that were not present)."""
        if not ids:
            raise RiftError("ids must contain at least one document id")
        for i, doc_id in enumerate(ids):
            if not isinstance(doc_id, str) or not doc_id:
                raise RiftError(f"ids[{i}] must be a non-empty string")
        with self._write_lock:
            record = self._record(collection)
            present = self.state.doc_hashes(collection, list(dict.fromkeys(ids)))
            deleted = [d for d in dict.fromkeys(ids) if d in present]
            missing = [d for d in dict.fromkeys(ids) if d not in present]
            if deleted:
                stale = self.state.chunk_ids_of_docs(collection, deleted)
                self._commit(collection, record.chroma_name, [], None, stale, remove_docs=deleted)
        return deleted, missing

    def reembed(
        self, collection: str, embedder: Embedder, progress: Callable[[int, int], None] | None = None
    ) -> str:
        """Embed every chunk with `embedder` into a fresh Chroma collection, then switch to it atomically.
        Searches keep using the old collection until the switch."""
        record = self._record(collection)
        target = chroma_name_for(collection, embedder.version)
        if target == record.chroma_name:
            return target
        rows = list(self.state.iter_chunks(collection))
        self.vectors.drop(target)  # a leftover from an interrupted re-embed
        self.vectors.ensure(target, embedder.dimension)
        embeddings = embedder.encode_documents([r.text for r in rows], progress)
        self.vectors.upsert(
            target, [r.chunk_id for r in rows], embeddings, [r.text for r in rows], [r.metadata for r in rows]
        )
        with self._write_lock:
            # Writes that landed while we were embedding: copy their delta before switching.
            current = {r.chunk_id: r for r in self.state.iter_chunks(collection)}
            done = {r.chunk_id for r in rows}
            late = [current[c] for c in current.keys() - done]
            if late:
                vecs = embedder.encode_documents([r.text for r in late])
                self.vectors.upsert(
                    target,
                    [r.chunk_id for r in late],
                    vecs,
                    [r.text for r in late],
                    [r.metadata for r in late],
                )
            self.vectors.delete(target, sorted(done - current.keys()))
            old = record.chroma_name
            self.state.put_collection(collection, target, embedder.version)
            self.vectors.drop(old)
        return target

    # --- reads ---------------------------------------------------------------------------------------------

    def check_query(self, query: Any, k: Any, mode: Any) -> tuple[str, int, Mode]:
        if not isinstance(query, str) or not query.strip():
            raise RiftError("query must be a non-empty string")
        if len(query) > MAX_QUERY_CHARS:
            raise RiftError(f"query is {len(query):,} characters; the limit is {MAX_QUERY_CHARS:,}")
        check_text(query, "query", MAX_QUERY_CHARS)
        if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= self.settings.max_k:
            raise RiftError(f"k must be an integer from 1 to {self.settings.max_k}")
        if mode not in ("hybrid", "vector", "keyword"):
            raise RiftError("mode must be 'hybrid', 'vector' or 'keyword'")
        return query, k, mode

    def search(
        self,
        collection: str,
        query: str,
        k: int = 10,
        mode: Mode = "hybrid",
        filters: Mapping[str, Any] | None = None,
        group_by_document: bool = True,
        depth: int | None = None,
        rrf_k: float | None = None,
        weights: tuple[float, float] | None = None,
    ) -> SearchOutcome:
        query, k, mode = self.check_query(query, k, mode)
        node: Node | None = parse_filters(filters)
        record = self._record(collection)
        index = self._keyword.get(collection) or KeywordIndex()
        snap = index.snapshot
        depth = depth or self.settings.candidate_depth
        depth = max(depth, k)
        timings: dict[str, float] = {}
        version = record.model_version

        vector: list[Candidate] = []
        if mode in ("hybrid", "vector") and snap.live_count:
            t0 = time.perf_counter()
            embedding = self.embedder.encode_query(query)
            t1 = time.perf_counter()
            found = self.vectors.query(
                record.chroma_name, embedding, min(depth, snap.live_count), to_chroma(node)
            )
            t2 = time.perf_counter()
            timings["embed_ms"] = (t1 - t0) * 1000
            timings["vector_ms"] = (t2 - t1) * 1000
            for chunk_id, score in found:
                row = snap.row_of.get(chunk_id)
                if row is not None and snap.alive[row]:  # invisible until the write is acknowledged
                    vector.append(Candidate(snap.rows[row].doc_id, chunk_id, score))
        keyword: list[Candidate] = []
        if mode in ("hybrid", "keyword"):
            t0 = time.perf_counter()
            tokens = self.tokenizer.tokenize([query])[0]
            keyword = [Candidate(r.doc_id, r.chunk_id, s) for r, s in index.search(tokens, depth, node)]
            timings["keyword_ms"] = (time.perf_counter() - t0) * 1000

        t0 = time.perf_counter()
        vector = _group(vector, group_by_document)
        keyword = _group(keyword, group_by_document)
        key = (lambda c: c.doc_id) if group_by_document else (lambda c: c.chunk_id)
        v_rank = {key(c): i for i, c in enumerate(vector, 1)}
        k_rank = {key(c): i for i, c in enumerate(keyword, 1)}
        best = {key(c): c for c in reversed(keyword)}
        best.update({key(c): c for c in reversed(vector)})  # prefer the vector side's best chunk
        w = weights or (self.settings.vector_weight, self.settings.keyword_weight)
        fused = rrf(
            [[key(c) for c in vector], [key(c) for c in keyword]], k=rrf_k or self.settings.rrf_k, weights=w
        )[:k]
        timings["fusion_ms"] = (time.perf_counter() - t0) * 1000
        t0 = time.perf_counter()
        chunk_rows = self.state.chunks_by_id(collection, [best[key_].chunk_id for key_, _ in fused])
        hits = []
        for key_, score in fused:
            cand = best[key_]
            row = chunk_rows.get(cand.chunk_id)
            if row is None:
                continue  # deleted between ranking and hydration
            meta = {m: v for m, v in row.metadata.items() if not m.startswith(RESERVED_PREFIX)}
            hits.append(
                Hit(cand.doc_id, cand.chunk_id, row.text, meta, score, v_rank.get(key_), k_rank.get(key_))
            )
        timings["hydrate_ms"] = (time.perf_counter() - t0) * 1000
        return SearchOutcome(collection, query, mode, k, hits, vector, keyword, version, timings)

    def get_document(self, collection: str, doc_id: str) -> tuple[str, dict[str, Any], int, float]:
        self._record(collection)
        found = self.state.document(collection, doc_id)
        if found is None:
            raise NotFoundError(f"no document {doc_id!r} in collection {collection!r}")
        _, text, meta, updated = found
        return text, meta, len(self.state.document_chunks(collection, doc_id)), updated
