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
import shutil
import threading
import time
import unicodedata
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field, replace
from typing import Any, Literal

import numpy as np

from server.config import Settings
from server.engine.chunking import CHUNKER_VERSION, chunk_document, document_chunking
from server.engine.embedder import Embedder
from server.engine.exact_vectors import VectorRows, quiet_numpy_blas
from server.engine.filters import (
    FLOAT_LIMIT,
    PREFIX_FIELD,
    RESERVED_PREFIX,
    Cond,
    Node,
    document_columns,
    equal_mask,
    fields_of,
    mask,
    named_fields,
    parse_filters,
    path_keys,
    to_chroma,
    unknown_fields_problem,
)
from server.engine.fusion import rrf
from server.engine.keyword_index import (
    KeywordIndex,
    KeywordRow,
    KeywordSnapshot,
    KeywordTokenizer,
    name_parts,
)
from server.engine.reconcile import CHUNK_KEYS, GAP_AFTER, GAP_BEFORE, MAX_GAP_CHARS, reconcile_with_chroma
from server.engine.shared import ID_KEY, SharedSync, unseen_while_unreachable, writer_id
from server.engine.state_store import CREATED_BY_WRITE, MOVING_TO_SERVER, ChunkRow, StateStore
from server.engine.vector_store import VectorStore, chroma_not_answering, chroma_server_problem, close_client
from server.engine.versions import content_hash, same_float
from server.errors import NotFoundError, RiftError, ShuttingDown

log = logging.getLogger(__name__)


def _log_failure(level: int, what: str, exc: BaseException, then: str) -> None:
    """Log a failure that a write survives (or leaves to start-up): one line when a Chroma server stopped
    answering, which is no bug (a traceback would reach a `rift add` user's terminal); the traceback otherwise."""
    problem = chroma_server_problem(exc, then=then)
    if problem is None and isinstance(exc, RiftError):  # rift's own words (its stores closed under it, ...)
        problem = f"{exc}; {then}"
    if problem is None:
        log.log(level, "%s; %s", what, then, exc_info=exc)
    else:
        log.log(level, "%s: %s", what, problem)

Mode = Literal["hybrid", "vector", "keyword"]
COLLECTION_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,62}\Z")
# Embedder.vocabulary_id of BERT's uncased WordPiece vocabulary (all-MiniLM-L6-v2, bge-small-en-v1.5).
BERT_UNCASED_VOCABULARY = "933b2a827add72e5"
CHROMA_NAME = re.compile(r"^rift-([A-Za-z0-9][A-Za-z0-9_-]{0,62})-[0-9a-f]{10}\Z")
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


# Not frozen: a search builds up to 2 x depth of these, and a frozen dataclass's __init__ costs 3x a slotted one's.
@dataclass(slots=True)
class Candidate:
    doc_id: str
    chunk_id: str
    score: float
    row: KeywordRow | None = None  # the snapshot row it came from, when known (hydration reads its text)


@dataclass(frozen=True)
class Hit:
    doc_id: str
    chunk_id: str
    text: str
    metadata: dict[str, Any]
    score: float
    vector_rank: int | None
    keyword_rank: int | None
    # Where the chunk lies in its document's text (characters; None for a chunk stored without them).
    start: int | None = None
    end: int | None = None
    # Each side's own score of the key (its best chunk when grouped): cosine similarity, BM25; None where that
    # side did not return it. Unlike the rank-based fused score, these say how close the best match is.
    vector_score: float | None = None
    keyword_score: float | None = None
    truncated: bool = False  # text is a part of the chunk (a search's max_chars), which start/end locate


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
    # How many terms the keyword side searched for; 0: the query has none (only stopwords or symbols), so
    # that side did not search. None where it did not run (vector mode).
    keyword_terms: int | None = None
    # When the searched collection was created: tells a search of a since deleted collection from one of a
    # new collection of the same name (the query log drops the former).
    collection_created: float | None = None
    # Why the results may be incomplete (the Chroma server could not be reached: keyword side alone), or why
    # they are empty (keyword mode and a query with no keyword terms; a filter that nothing can match).
    warnings: list[str] = field(default_factory=list)
    # A hybrid search whose vector side could not run (the Chroma server): keyword results alone.
    vector_skipped: bool = False


@dataclass(frozen=True)
class CollectionInfo:
    name: str
    documents: int
    chunks: int
    model_version: str
    chroma_name: str
    keyword_rebuild_ms: float


def _deleted_meanwhile(collection: str) -> NotFoundError:
    """A write whose collection another rift process sharing the Chroma server deleted while it ran."""
    return NotFoundError(
        f"collection {collection!r} was deleted by another rift process while this call ran: nothing was written"
    )


def default_doc_id(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:32]


def validate_document(
    doc: DocumentInput, field: Callable[[str], str], settings: Settings
) -> tuple[str, str, dict[str, Any]]:
    """One document's (doc_id, text, metadata), or a RiftError naming the field as `field(name)` does. Needs
    the settings only, so a file can be checked before a store opens (and maybe re-embeds) for it."""
    text = check_text(doc.text, field("text"), settings.max_document_chars, "max_document_chars")
    meta = check_metadata(doc.metadata, field("metadata"))
    if doc.id is None:
        return default_doc_id(text), text, meta
    if not isinstance(doc.id, str) or not doc.id.strip() or len(doc.id) > MAX_ID_CHARS:
        raise RiftError(f"{field('id')} must be a non-empty string of at most {MAX_ID_CHARS} chars")
    check_text(doc.id, field("id"), MAX_ID_CHARS)
    return doc.id, text, meta


_CHUNKING_SAMPLE = 8  # documents read to tell how an unrecorded collection was cut


def chroma_name_for(collection: str, model_version: str) -> str:
    return f"rift-{collection}-{hashlib.sha256(model_version.encode()).hexdigest()[:10]}"


def check_text(value: Any, where: str, limit: int, setting: str | None = None) -> str:
    """`setting`: the setting that sets `limit`, named in the error (fixed limits name none)."""
    if not isinstance(value, str):
        raise RiftError(f"{where} must be a string, got {type(value).__name__}")
    if not value.strip():
        raise RiftError(f"{where} must not be empty or whitespace")
    if len(value) > limit:
        source = f" (setting {setting})" if setting else ""
        raise RiftError(f"{where} is {len(value):,} characters; the limit is {limit:,}{source}")
    if "\x00" in value:
        raise RiftError(f"{where} contains a NUL character")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise RiftError(f"{where} is not valid Unicode (lone surrogate at position {exc.start})") from None
    return value


# Metadata bounds per document. Each chunk carries a copy, so these bound what one request can store.
MAX_METADATA_KEYS = 128
MAX_METADATA_KEY = 256
MAX_METADATA_CHARS = 65_536


def metadata_chars(key: str, value: Any) -> int:
    """What one metadata entry counts towards MAX_METADATA_CHARS (a number or a boolean counts 8)."""
    return len(key) + (len(value) if isinstance(value, str) else 8)


def check_metadata(value: Any, where: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise RiftError(f"{where} must be an object of str/int/float/bool values")
    if len(value) > MAX_METADATA_KEYS:
        raise RiftError(f"{where} has {len(value)} keys; at most {MAX_METADATA_KEYS} are allowed")
    out: dict[str, Any] = {}
    size = 0
    for key, item in value.items():
        if not isinstance(key, str) or not key.strip():
            raise RiftError(f"{where} keys must be non-empty strings")
        if len(key) > MAX_METADATA_KEY:
            raise RiftError(f"{where} has a key longer than {MAX_METADATA_KEY} characters ({key[:40]!r}...)")
        if "\x00" in key:  # no filter could name it (filters refuse a NUL), as writes refuse one in a value
            raise RiftError(f"{where} has a key containing a NUL character")
        if key.startswith(RESERVED_PREFIX):
            raise RiftError(f"{where}.{key}: keys starting with {RESERVED_PREFIX!r} are reserved")
        if key[0] in "$#" or key == "chroma:document":  # Chroma's operators and its own keys
            raise RiftError(
                f"{where}.{key}: keys starting with '$' or '#', and 'chroma:document', are reserved"
            )
        try:
            key.encode("utf-8")
        except UnicodeEncodeError:
            raise RiftError(f"{where} has a key that is not valid Unicode") from None
        if isinstance(item, str):
            if len(item) > MAX_METADATA_CHARS:
                raise RiftError(f"{where}.{key} is longer than {MAX_METADATA_CHARS:,} characters")
            if "\x00" in item:
                raise RiftError(f"{where}.{key} contains a NUL character")
            try:
                item.encode("utf-8")
            except UnicodeEncodeError:
                raise RiftError(f"{where}.{key} is not valid Unicode") from None
        elif isinstance(item, float) and not math.isfinite(item):
            raise RiftError(f"{where}.{key} must be a finite number")
        elif isinstance(item, float) and abs(item) >= FLOAT_LIMIT:
            raise RiftError(f"{where}.{key} is {item:g}; numbers must lie within ±9.2e18 (64-bit integers)")
        elif isinstance(item, int) and not isinstance(item, bool) and not -(2**63) <= item <= 2**63 - 1:
            raise RiftError(f"{where}.{key} is out of the 64-bit integer range")
        elif not isinstance(item, str | int | float | bool):
            raise RiftError(f"{where}.{key} must be a string, number or boolean, got {type(item).__name__}")
        size += metadata_chars(key, item)
        if size > MAX_METADATA_CHARS:
            # Every chunk stores its document's metadata (Chroma filters per chunk): bound the total.
            raise RiftError(
                f"{where} is larger than {MAX_METADATA_CHARS:,} characters in all (keys and values); "
                "keep long text in the document itself"
            )
        out[key] = item
    # An absolute `source` adds one key per ancestor folder, each holding that folder's whole path (the $prefix
    # filter's equality test), so a deep path grows every chunk's copy with the square of its length.
    folder_chars = sum(metadata_chars(key, item) for key, item in path_keys(out).items())
    if folder_chars and size + folder_chars > MAX_METADATA_CHARS:
        raise RiftError(
            f"{where}.{PREFIX_FIELD} is nested too deep: its ancestor folders, which every chunk stores for the "
            f"$prefix filter, take {folder_chars:,} characters, past the {MAX_METADATA_CHARS:,} metadata bound"
        )
    return out


def check_query_text(query: Any, where: str = "query") -> str:
    """A search's text, as search takes it (the `ask` prompt checks its question with it too): a non-empty
    string, not only whitespace or invisible characters, at most MAX_QUERY_CHARS, no NUL, valid Unicode."""
    if not isinstance(query, str) or not query:
        raise RiftError(f"{where} must be a non-empty string")
    if not query.strip() or all(unicodedata.category(c)[0] in "CZ" for c in query):
        raise RiftError(f"{where} must not be only whitespace or invisible characters")
    if len(query) > MAX_QUERY_CHARS:
        raise RiftError(f"{where} is {len(query):,} characters; the limit is {MAX_QUERY_CHARS:,}")
    return check_text(query, where, MAX_QUERY_CHARS)


def check_collection_name(name: Any) -> str:
    if not isinstance(name, str) or not COLLECTION_NAME.match(name):
        raise RiftError(
            "collection must be 1-63 characters of letters, digits, '_' or '-', starting with a letter or digit"
        )
    return name


# State setting: when this data dir first started on a Chroma server (its embedded store is not read after,
# until the data dir comes back to it: see Engine.open).
LEFT_EMBEDDED_STORE = "left_embedded_store"


def _vectors_of(collection: Any, ids: list[str], dimension: int) -> dict[str, Any]:
    """Chunk id -> vector, of the `ids` Chroma collection `collection` holds with that dimension."""
    try:
        got = collection.get(ids=ids, include=["embeddings"])
    except Exception as exc:  # the copy is a shortcut: embed instead
        log.debug("reading vectors from the embedded store failed: %s", exc)
        return {}
    vectors = got.get("embeddings")
    if vectors is None:
        return {}
    return {i: v for i, v in zip(got["ids"], vectors, strict=True) if v is not None and len(v) == dimension}


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


MAX_VALUES_SHOWN = 20  # a field with more distinct values than this is not listed in a filter's warning


def _unmatchable_filter(node: Node, snap: Any, collection: str) -> str | None:
    """Why a filtered search found nothing, when the filter is why: it names a field no chunk has (a typo), or
    asks a text field for a value no chunk has, whose values are then listed ({"file_type": "py"}: python)."""
    fields = snap.columns.fields
    problem = unknown_fields_problem(node, fields, collection, of_chunks=True)
    if problem is not None:
        return problem
    for cond in _required(node):
        if cond.op not in ("$eq", "$in") or cond.field not in fields or cond.field.startswith(RESERVED_PREFIX):
            continue
        column = snap.columns.objects(cond.field)
        wanted = cond.value if cond.op == "$in" else [cond.value]
        if any((equal_mask(column, w) & snap.alive).any() for w in wanted):  # (as the filter compares)
            continue
        # The distinct values by type: in one set True and 1 (False and 0) are one value, and a type would vanish.
        have: dict[str, set[Any]] = {}
        for v, alive in zip(column, snap.alive, strict=True):
            if alive and v is not None:
                have.setdefault(_kind(v), set()).add(v)
        texts = have.get("string", set())
        listed = len(have) == 1 and 0 < len(texts) <= MAX_VALUES_SHOWN
        values = f"; its values there: {', '.join(sorted(texts))}" if listed else ""
        hint = _type_hint(cond.field, wanted, have)
        shown = ", ".join(json.dumps(w, ensure_ascii=False) for w in wanted)  # (as the agent wrote them: JSON)
        return f"no chunk in {collection!r} has {cond.field} {shown}{hint}{values}"
    return None


def _kind(value: Any) -> str:
    """A metadata value's JSON type, as filters compare them (True is not 1, "2020" not 2020)."""
    if isinstance(value, bool):
        return "boolean"
    return "number" if isinstance(value, int | float) else "string" if isinstance(value, str) else "value"


def _look_alikes(value: Any) -> dict[str, Any]:
    """`value` written as each other JSON type that reads the same ("2020" -> 2020, 1 -> True, True -> "true")."""
    kind = _kind(value)
    out: dict[str, Any] = {}
    if kind == "string":
        word = value.strip().lower()
        if word in ("true", "false", "1", "0"):
            out["boolean"] = word in ("true", "1")
        try:
            number = float(word)
        except ValueError:
            number = math.nan
        if math.isfinite(number):
            out["number"] = int(number) if number.is_integer() and abs(number) < 2**53 else number
    elif kind == "number":
        out["string"] = str(int(value)) if isinstance(value, float) and value.is_integer() else str(value)
        if value in (0, 1):
            out["boolean"] = bool(value)
    elif kind == "boolean":
        out["string"] = "true" if value else "false"
        out["number"] = int(value)
    return out


def _type_hint(field: str, wanted: Sequence[Any], by_kind: Mapping[str, set[Any]]) -> str:
    """Where a wanted value is of another type than the field's values (`by_kind`: their distinct values by
    type; a number given as a string: a warning of "no such value" alone misleads), say so, with the value to
    write when one of them reads the same."""
    for w in wanted:
        kind = _kind(w)
        # (membership within one kind only: in Python True == 1, but not in a filter)
        alike = [(k, c) for k, c in _look_alikes(w).items() if c in by_kind.get(k, ())]
        if not alike and (kind in by_kind or not by_kind):
            continue
        holds = " and ".join(f"{k}s" for k in sorted(by_kind))
        advice = f"; write {json.dumps(alike[0][1])}" if alike else ""
        return f": {field} holds {holds}, and {json.dumps(w, ensure_ascii=False)} is a {kind} (filters compare by type{advice})"
    return ""


def _required(node: Node) -> Iterator[Cond]:
    """The conditions every match must meet: `node`'s own, or its $and's, not an $or's (a $prefix is one)."""
    if isinstance(node, Cond):
        yield node
    elif node.op == "$and":
        for child in node.children:
            yield from _required(child)


def _shown_chunks(
    docs: Iterable[str],
    vector: Sequence[Candidate],
    keyword: Sequence[Candidate],
    weights: tuple[float, float],
    rrf_k: float,
    query: str = "",
) -> dict[str, Candidate]:
    """Each of `docs`' chunk to show: the one that fusing the two sides' chunk lists ranks first, so a chunk
    both sides found wins. (Each side's best chunk of the document, by the side that ranked the document higher,
    showed a long document's vector chunk whenever both sides ranked it first: often not the chunk holding the
    query's words, which the keyword side had found.) One pass over the lists, scoring only `docs`' chunks: they
    may run to thousands of candidates where a few long documents fill the depth.

    Except where the query is a definition's name (`_named`): then the first candidate chunk of that definition.
    A file's callers and imports of a name hold its words as often as the definition does, and fused higher than
    it in a third of such searches (they may be both sides' first), so the agent was shown another part of the
    right file (README "Tools", hybrid_search)."""
    wanted = set(docs)
    score: dict[str, float] = {}
    found: dict[str, Candidate] = {}
    for weight, side in zip(weights, (vector, keyword), strict=True):
        for rank, c in enumerate(side, 1):
            if c.doc_id not in wanted:
                continue
            score[c.chunk_id] = score.get(c.chunk_id, 0.0) + weight / (rrf_k + rank)
            if c.chunk_id not in found or (found[c.chunk_id].row is None and c.row is not None):
                found[c.chunk_id] = c  # (a keyword candidate carries its row: its text need not be read again)
    best: dict[str, Candidate] = {}
    top: dict[str, float] = {}
    for chunk_id, value in score.items():  # (in first-seen order: the vector side's on a tie)
        c = found[chunk_id]
        if value > top.get(c.doc_id, -math.inf):
            best[c.doc_id], top[c.doc_id] = c, value
    named = _named(query, found.values())
    if named:
        # The definition whose best chunk fuses highest (a name two classes' methods share), shown from its
        # first chunk: the one holding the signature, where a long function's later chunk may fuse higher.
        chosen: dict[str, tuple[float, str]] = {}
        for chunk_id in named:
            c = found[chunk_id]
            if score[chunk_id] > chosen.get(c.doc_id, (-math.inf, ""))[0]:
                chosen[c.doc_id] = (score[chunk_id], c.row.metadata["symbol"])  # type: ignore[union-attr]
        first: dict[str, tuple[float, Candidate]] = {}
        for chunk_id in named:
            c = found[chunk_id]
            if c.row.metadata["symbol"] != chosen[c.doc_id][1]:  # type: ignore[union-attr]
                continue
            start = c.row.metadata.get("_rift_start")  # type: ignore[union-attr]
            at = float(start) if isinstance(start, int | float) else math.inf
            if c.doc_id not in first or at < first[c.doc_id][0]:
                first[c.doc_id] = (at, c)
        best.update({doc: c for doc, (_, c) in first.items()})
    return best


def _named(query: str, candidates: Iterable[Candidate]) -> list[str]:
    """The chunk ids of `candidates` whose definition the query names: the last part of the chunk's `symbol`
    (the Python splitter's label, `Engine.search` -> `search`) has the query's words, identifiers cut into parts (`writer_id`,
    `WriterId` and "writer id" all name `writer_id`). A query of other words as well names nothing: measured on
    code, a docstring's sentence naming identifiers then showed the wrong chunk more often."""
    wanted = name_parts(query)
    if not wanted:
        return []
    matches: dict[str, bool] = {}
    out = []
    for c in candidates:
        # Only the Python splitter's labels: `symbol` is also an ordinary metadata key (a ticker, a gene), and
        # a document's own metadata reaches every chunk of it (found by helper CS).
        if c.row is None or c.row.metadata.get("file_type") != "python":
            continue
        symbol = c.row.metadata.get("symbol")
        if not isinstance(symbol, str) or not symbol:
            continue
        if symbol not in matches:
            matches[symbol] = name_parts(symbol.rsplit(".", 1)[-1]) == wanted
        if matches[symbol]:
            out.append(c.chunk_id)
    return out


class Engine:
    def __init__(
        self, settings: Settings, embedder: Embedder, vectors: VectorStore, state: StateStore
    ) -> None:
        self.settings = settings
        quiet_numpy_blas()
        # Every collection record names the model version its vectors came from; queries are embedded by that
        # version's embedder, so a search never mixes one model's query with another model's vectors.
        self._embedders: dict[str, Embedder] = {}
        self.embedder = embedder  # the serving model: new collections and start-up re-embeds use it
        self.vectors = vectors
        self.state = state
        self.tokenizer = KeywordTokenizer(settings.stemmer_language, settings.stopwords)
        self._keyword: dict[str, KeywordIndex] = {}
        # Told when another process sharing the Chroma server deleted a collection (the app forgets its searches
        # and its texts in a retrain's plan, as a deletion here does).
        self.on_deleted_elsewhere: Callable[[str], None] | None = None
        # Told (collection, doc ids) once documents' stored texts have left the store: deleted, or written again
        # with other text, here or by another process whose writes this one followed (the app removes them from
        # a retrain's plan). A failure is logged; the committed write stands.
        self.on_documents_gone: Callable[[str, list[str]], None] | None = None
        self._rebuild_ms: dict[str, float] = {}
        self._write_lock = threading.RLock()
        self._journal_owed = False  # an undo failed: its journal entry waits (see finish_owed_undos)
        self._owed_retry_failed = False
        # Journal id -> the version stamp (_rift_ts) of a write whose undo failed, while this process runs: its
        # retry removes only chunks still carrying that stamp, as the undo itself would have.
        self._undo_stamps: dict[int, float] = {}
        # Set by `begin_close` (the Rift is closing): a write in flight stops at its next safe point (see
        # `_stop_if_closing`) instead of running on until its stores are closed under it.
        self._closing = threading.Event()
        self._restored: dict[str, int] = {}  # collection -> chunks put back into Chroma at open
        self._copied: dict[str, int] = {}  # ... of which copied from the embedded store (moved to a server)
        self._weights_changed = False  # the configured model's folder holds other weights than last time
        self._moving: set[str] = set()  # collections this start moves to a Chroma server (see open)
        self._returning = False  # this start brings a data dir back from a Chroma server to its embedded store
        # A hybrid search runs BM25 on this pool while its own thread embeds the query (onnxruntime and torch
        # release the GIL): about 1 ms less per search on this 2-core machine (README "Benchmarks").
        self._side = ThreadPoolExecutor(max_workers=4, thread_name_prefix="rift-keyword")
        # With a Chroma server, other rift processes may write the same collections: follow their writes.
        self.shared: SharedSync | None = None
        if settings.vector_backend == "http":
            self.shared = SharedSync(self, writer_id(settings.data_dir), settings.chroma_sync_ms)

    @property
    def closed(self) -> bool:
        """Whether its stores were closed, or are being closed (the Rift holding it was): nothing can be read or
        written any more. A caller holding the engine rather than the Rift (a folder's watch) asks this to stop."""
        return self._closing.is_set() or self.state.closed

    def begin_close(self) -> None:
        """The Rift is closing: a write in flight stops at its next safe point (between two embedding batches,
        before its commit begins, between two batches of its Chroma upsert), so closing waits for that rather
        than closing the stores under it. A commit past its Chroma half finishes."""
        self._closing.set()

    def _stop_if_closing(self, collection: str) -> None:
        """A safe point of a write: nothing of it is stored yet. Raises ShuttingDown when rift is closing."""
        if self._closing.is_set():
            log.warning("rift is closing: a write to collection %r stopped before it stored anything", collection)
            raise ShuttingDown(
                "rift was shut down while this call ran: it stopped before storing anything; send it again once "
                "rift runs again"
            )

    # --- start-up ------------------------------------------------------------------------------------------

    def discard(self) -> None:
        """Let go of an engine whose `open` failed (its state store stays open for the next one)."""
        self._side.shutdown(wait=False)

    def open(self, rechunk: bool = True, keep: Collection[str] = ()) -> dict[str, Any]:
        """Finish interrupted writes, reconcile with Chroma, build keyword indices, re-embed collections
        made by another model, re-chunk documents cut for other chunk settings (unless `rechunk` is off: a
        command that only reads leaves that to the next server). `keep`: model versions whose vectors stay
        when a collection left on one is switched to the serving model (versions kept for a rollback: a
        rollback killed after switching collections to its target, before the registry named it serving,
        is undone here, and the next rollback to it must not embed the whole corpus again). Returns what
        was repaired."""
        # The collections this start moves to a server: at the data dir's first start there (none before it
        # recorded being on one: this version's marker, or the Chroma ids earlier versions noted), each one
        # it holds; later, those whose move did not finish (a command that only reads, a crash, a collection
        # refused for another model). The markers go first, one per collection: the ids a move notes on its
        # way must not make its next try an ordinary start, whose reconcile takes the server's copy as the
        # truth and drops what the move had yet to put there.
        on_server_before = self.state.setting(LEFT_EMBEDDED_STORE) is not None or self.state.has_setting_prefix(ID_KEY)
        markers = set(self._moving_markers())
        if self.shared is not None:
            live = {r.name for r in self.state.collections()}
            if not on_server_before and not markers:
                for name in live:
                    self.state.put_setting(f"{MOVING_TO_SERVER}{name}", str(time.time()))
                markers = set(live)
            for name in markers - live:  # its collection is gone (a delete takes the marker with it)
                self.state.delete_setting(f"{MOVING_TO_SERVER}{name}")
            self._moving = live & markers
        # Back from a Chroma server: the embedded store holds what it held when the data dir left it, so the
        # state (which followed every write since) is the truth, not Chroma: documents deleted or replaced on
        # the server must not come back from it.
        self._returning = self.shared is None and (on_server_before or bool(markers))
        report: dict[str, Any] = {
            "journal": 0,
            "added_from_chroma": 0,
            "removed_missing": 0,
            "reembedded": [],
        }
        with self._write_lock:
            serving = {r.chroma_name: r.name for r in self.state.collections()}
            settled, report["journal"] = self._finish_journal(serving)
            self._journal_owed = False
            if self.shared is not None:
                report["deleted_elsewhere"] = self.shared.gone_while_down()
            self._finish_drops()  # of collections deleted before a crash or a Chroma error
            dropped = self._drop_unfinished_creates()  # (after the journal: their chunks are undone)
            if dropped:
                report["dropped_unfinished_creates"] = dropped
            self.vectors.sweep()  # index files Chroma left on disk for collections dropped before
            if self._returning:
                if not rechunk:
                    raise RiftError(
                        f"this data dir comes back from a Chroma server to its embedded store ({self.settings.chroma_dir}), "
                        "which holds what it held before the move; this command does not update it: start "
                        "`rift serve` or run `rift add` once"
                    )
                report["dropped_stale"] = self._drop_stale_embedded_collections()
            report["adopted_from_chroma"] = self._adopt_chroma_collections()
            report["retokenized"] = self._retokenize_if_changed()
            self._check_configured_weights()
            for record in self.state.collections():
                if self.shared is not None and not self.shared.may_serve(record):
                    self._load_keyword(record.name)  # refused until restarted on the model serving it
                    continue
                record = self.state.collection(record.name) or record  # may_serve may rename its model
                added, removed = self._reconcile(record.name, record.chroma_name, repair=rechunk)
                if self.state.collection(record.name) is None:  # deleted elsewhere since start-up looked
                    report.setdefault("deleted_elsewhere", []).append(record.name)
                    continue
                if self.shared is not None and not self.shared.may_serve(record):
                    self._load_keyword(record.name)  # switched elsewhere since start-up looked
                    continue
                # Merged: announced whole at once (a move retried after a failure may have put its documents
                # there before), then its marker goes, before a later collection's move can fail.
                if record.name in self._moving:
                    self.shared.publish(record.name, record.chroma_name, record.model_version)  # type: ignore[union-attr]
                    self.state.delete_setting(f"{MOVING_TO_SERVER}{record.name}")
                if record.name in self._restored:
                    report.setdefault("restored_to_chroma", {})[record.name] = self._restored[record.name]
                if record.name in self._copied:
                    report.setdefault("copied_from_embedded_store", {})[record.name] = self._copied[record.name]
                report["added_from_chroma"] += added
                report["removed_missing"] += removed
                self._load_keyword(record.name)
                if self.shared is None and rechunk:
                    self._rechunk_orphans(record.name)
                if record.model_version != self.embedder.version:
                    kept = record.model_version in keep
                    if kept:
                        log.warning(
                            "collection %r was left on version %s by a model switch that stopped before it "
                            "finished (a rollback killed midway); the serving version is %s: switching it back "
                            "(from its kept vectors, if any: only the chunks they lack are embedded); the vectors "
                            "of %s stay for the next rollback",
                            record.name,
                            record.model_version,
                            self.embedder.version,
                            record.model_version,
                        )
                    else:
                        log.warning(
                            "collection %r was embedded by %s; the model to serve is %s: re-embedding its %d "
                            "chunks before serving (to switch models without downtime, use `rift reindex "
                            "--model`)",
                            record.name,
                            record.model_version,
                            self.embedder.version,
                            self.state.counts(record.name)[1],
                        )
                    self.reembed(record.name, self.embedder, keep_old=kept)
                    report["reembedded"].append(record.name)
                if rechunk and self.shared is None:  # processes sharing a Chroma server would each re-chunk
                    rechunked = self.rechunk_if_changed(record.name)
                    if rechunked:
                        report.setdefault("rechunked", {})[record.name] = rechunked
                elif rechunk and self.chunking_changed(record.name):
                    log.warning(
                        "collection %r was chunked with other settings (chunk_tokens, chunk_overlap, the model's "
                        "limit or a newer rift's chunker); with a shared Chroma server stored documents are not "
                        "re-chunked at start-up (every process would): stop this process and run `rift rechunk` "
                        "once, then in each other process (which then rewrites nothing)",
                        record.name,
                    )
            if self._returning:  # every collection's vectors match the state again
                # What it knew of the server is stale too: a later start there is a move again, which puts
                # what was written here meanwhile onto the server rather than take the server's older copy.
                # (The ids first: while any marker is left, the next start here is still the return.)
                self.state.delete_setting(ID_KEY, prefix=True)
                self.state.delete_setting(MOVING_TO_SERVER, prefix=True)
                self.state.delete_setting(LEFT_EMBEDDED_STORE)
                self._returning = False
            if self.shared is not None:
                self.shared.prime()
                self._moving.clear()
                # The embedded store is read for the move to a server only: what it holds may go stale later.
                if not self.state.has_setting_prefix(MOVING_TO_SERVER):
                    if self.state.setting(LEFT_EMBEDDED_STORE) is None:
                        self.state.put_setting(LEFT_EMBEDDED_STORE, str(time.time()))
                else:
                    log.warning(
                        "the move of collection(s) %s to the Chroma server is not finished; the next start goes on",
                        ", ".join(repr(c) for c in self._moving_markers()),
                    )
                self._tell_undone(settled, serving)
        return report

    def _finish_journal(self, serving: Mapping[str, str], say: bool = True) -> tuple[dict[str, set[str]], int]:
        """Undo the Chroma half of writes that did not commit, and remove the chunks that committed writes
        replaced, as the journal holds them (the caller holds the write lock: no write of this process is in
        flight). `serving`: Chroma name -> collection, of the serving collections. Returns (Chroma name ->
        documents whose unfinished write was undone, entries finished). `say`: log each entry before its try
        (start-up; a retry says only what it finished)."""
        settled: dict[str, set[str]] = {}
        finished = 0
        existing: set[str] | None = None
        for entry in self.state.journal_pending():
            if existing is None:
                existing = {name for name, _ in self.vectors.list_collections()}
            if entry.chroma_name not in existing:  # dropped since: a delete must not create it again
                self.state.journal_clear(entry.id)
                continue
            ids = entry.new_ids if entry.phase == "write-new" else entry.old_ids
            # Chunk ids are content hashes: a later write of the same content made these ids live
            # again, and Chroma must keep every live chunk.
            if entry.chroma_name in serving:
                live = self.state.live_chunk_ids(serving[entry.chroma_name], ids)
                ids = [i for i in ids if i not in live]
            if self.shared is not None:  # ... or another process wrote them since
                ids = self.shared.written_before(entry.chroma_name, ids, entry.created_at)
                stamp = self._undo_stamps.get(entry.id)
                if stamp is not None and ids:
                    # ... or stamped them before this write and uploaded them after it (the same text written
                    # at once): the undo spares those; so must its retry (found by helper DF).
                    found = self.vectors.get(entry.chroma_name, ids)
                    ids = [c for c, _, m in found if same_float(m.get("_rift_ts"), stamp)]
            if say:
                log.warning("recovering interrupted write %s (%s, %d chunks)", entry.id, entry.phase, len(ids))
            self.vectors.delete(entry.chroma_name, ids)
            self.state.journal_clear(entry.id)
            self._undo_stamps.pop(entry.id, None)
            finished += 1
            if ids:  # chunk ids are "<doc id>::<hash>::<n>"
                settled.setdefault(entry.chroma_name, set()).update(i.rsplit("::", 2)[0] for i in ids)
        return settled, finished

    def _tell_undone(self, settled: Mapping[str, set[str]], serving: Mapping[str, str]) -> None:
        """Other processes may have read an undone write from Chroma meanwhile (a full repair reads whatever
        is there): have them read those documents again."""
        for chroma, doc_ids in settled.items():
            record = self.state.collection(serving.get(chroma, ""))
            if record is not None and record.chroma_name == chroma:
                self.shared.publish(record.name, chroma, record.model_version, sorted(doc_ids))

    def finish_owed_undos(self, wait: bool = True) -> bool:
        """Finish now what a failed undo left to start-up (the Chroma server died mid-write, before its undo
        could reach it): a server that runs for weeks would otherwise keep that write's chunks in Chroma
        until its next start, and every process that joined meanwhile would serve documents whose write
        failed (found by helper DE). Tried before the next write and when a shared server answers again; a
        failure leaves it owed. Without `wait` (a search's sync) it is left to the write holding the lock,
        which tries it first. Returns whether it finished one."""
        if not self._journal_owed or self.closed or (self.shared is not None and self.shared.known_unreachable):
            return False  # (a server known down: each try would wait out chroma_timeout_s first)
        if not self._write_lock.acquire(blocking=wait):
            return False
        try:
            if not self._journal_owed:
                return False
            try:
                serving = {r.chroma_name: r.name for r in self.state.collections()}
                settled, finished = self._finish_journal(serving, say=False)
                if self.shared is not None:
                    self._tell_undone(settled, serving)
            except Exception as exc:
                # (Once as a warning: a sync retries at every interval while the server fails it.)
                level = logging.DEBUG if self._owed_retry_failed else logging.WARNING
                self._owed_retry_failed = True
                _log_failure(level, "finishing an interrupted write failed again", exc, "retrying later")
                return False
            self._journal_owed = self._owed_retry_failed = False
            if finished:
                log.warning("finished %d interrupted write(s) that a failed undo had left", finished)
            return bool(finished)
        finally:
            self._write_lock.release()

    def _reconcile(self, collection: str, chroma_name: str, repair: bool = True) -> tuple[int, int]:
        """Make SQLite's chunk rows match Chroma's stored chunks (Chroma is the source of truth), one whole
        document version at a time (see server/engine/reconcile.py). Returns (chunks added, rows dropped).
        Alone on its store, first put back into Chroma what it lost (see `_restore_lost_vectors`)."""
        record = self._record(collection)
        # Gone since start-up listed the server (another process deleted it meanwhile): look again rather than
        # let `ensure` make it anew, empty, for every process to adopt.
        if (
            self.shared is not None
            and not self.shared.lost(collection)
            and not self.vectors.exists(chroma_name)
            and self.shared.check_again(record) != "lost"
        ):
            return 0, 0
        lost_on_server = self.shared is not None and self.shared.lost(collection)
        # Refused before `ensure`: an empty collection left on the server would read as "every document deleted".
        if lost_on_server and not repair:
            chunks = self.state.chunk_ids(collection)
            if self.vectors.exists(chroma_name):  # made again elsewhere: refused only if it lacks chunks
                chunks -= set(self.vectors.all_ids(chroma_name))
            if chunks:
                self._refuse_repair(collection, len(chunks), len({c.rsplit("::", 2)[0] for c in chunks}))
        if lost_on_server and record.model_version not in self._embedders:
            # Re-embedded by the serving model right after, from the stored rows: nothing to make here.
            return 0, 0
        embedder = self._embedders.get(record.model_version, self.embedder)
        # Labelled as create_collection labels it: made again here (a lost `chroma` folder), it can still be
        # adopted should the state database be lost later too.
        labels = {"rift:collection": collection, "rift:model_version": record.model_version}
        self.vectors.ensure(chroma_name, embedder.dimension, labels)
        in_chroma: set[str] | None = None
        # Alone on its store, on a Chroma server that lost the collection (no rift process deleted it), or
        # moving to a server that already has it (another data dir moved there first): what the state holds
        # goes onto the server, whose documents this data dir lacks are then adopted, never the reverse.
        if self.shared is None or lost_on_server or collection in self._moving:
            in_chroma = self._restore_lost_vectors(collection, chroma_name, repair)
            if in_chroma is None:
                return 0, 0
            if self._returning:
                stale = sorted(in_chroma - self.state.chunk_ids(collection))
                if stale:
                    log.warning(
                        "collection %r: removing %d chunks from the embedded store that were deleted or replaced "
                        "while the data dir was on a Chroma server",
                        collection,
                        len(stale),
                    )
                    self.vectors.delete(chroma_name, stale)
                    in_chroma -= set(stale)
        delta = reconcile_with_chroma(
            self.vectors,
            self.state,
            self.tokenizer,
            collection,
            chroma_name,
            drop_orphans=self.shared is not None,
            in_chroma=in_chroma,
            chunkings=self.version_chunkings(collection),
        )
        self._texts_gone(collection, delta.texts_gone)  # (deleted or rewritten elsewhere while this one was down)
        # Whole again (only now: a start cut short before this puts back the rest next time).
        if lost_on_server:
            self.shared.restored(collection)  # type: ignore[union-attr]
        return len(delta.added), len(delta.removed)

    def _rechunk_orphans(self, collection: str) -> None:
        """Documents stored without any chunk (a repair cut short by a crash, in an earlier version) would be
        listed but never found, and re-adding them was a no-op: write them again from their stored text."""
        orphans = self.state.orphan_documents(collection)
        if not orphans or self._embedders.get(self._record(collection).model_version) is None:
            return
        docs = [(d, found[1], found[2]) for d in orphans if (found := self.state.document(collection, d))]
        log.warning("collection %r: %d documents had no chunks; splitting them again", collection, len(docs))
        for start in range(0, len(docs), self.settings.max_documents_per_call):
            self._write_documents(
                collection, docs[start : start + self.settings.max_documents_per_call], rewrite=True
            )

    def _moving_markers(self) -> list[str]:
        """The collections whose move to a Chroma server has begun and not finished."""
        return self.state.setting_keys(MOVING_TO_SERVER)

    def _restore_lost_vectors(self, collection: str, chroma_name: str, repair: bool) -> set[str] | None:
        """Alone on its store, rift writes Chroma before it commits a chunk and deletes it there only after
        committing its removal, so a committed chunk Chroma lacks was lost there (a deleted or damaged
        `chroma` folder), never deleted on purpose: re-embed it from its stored text instead of dropping the
        document. Returns the chunk ids Chroma then holds, or None when the reconcile must wait (the
        collection is re-embedded by another model right after, from the same rows). A command that must not
        repair (`repair` off) refuses instead."""
        have = set(self.vectors.all_ids(chroma_name))
        lost = sorted(self.state.chunk_ids(collection) - have)
        if not lost:
            return have
        record = self._record(collection)
        embedder = self._embedders.get(record.model_version)
        docs = len({chunk_id.rsplit("::", 2)[0] for chunk_id in lost})
        if not repair:
            self._refuse_repair(collection, len(lost), docs)
        if embedder is None:
            return None
        if collection in self._moving:
            log.warning(
                "putting %d chunks (%d documents) of collection %r onto the Chroma server", len(lost), docs, collection
            )
        else:
            log.warning(
                "Chroma has lost %d chunks (%d documents) of collection %r; putting them back from rift's stored "
                "text",
                len(lost),
                docs,
                collection,
            )
        self._restored[collection] = len(lost)
        local_client, local = self._local_chroma_collection(collection, chroma_name)
        copied = 0
        try:
            for start in range(0, len(lost), 500):
                rows = list(self.state.chunks_by_id(collection, lost[start : start + 500]).values())
                held = _vectors_of(local, [r.chunk_id for r in rows], embedder.dimension) if local else {}
                if held:
                    found = [r for r in rows if r.chunk_id in held]
                    self._upsert_rows(chroma_name, found, np.asarray([held[r.chunk_id] for r in found]))
                    copied += len(found)
                self._embed_into(chroma_name, [r for r in rows if r.chunk_id not in held], embedder)
        finally:
            if local_client is not None:  # (its store's System would stay cached for the process otherwise)
                close_client(local_client)
        if copied:
            self._copied[collection] = copied
            log.warning("copied %d of those vectors from the embedded store %s", copied, self.settings.chroma_dir)
        return have | set(lost)

    def _local_chroma_collection(self, collection: str, chroma_name: str) -> tuple[Any, Any]:
        """With a Chroma server, the embedded store this data dir used before (`data_dir/chroma`), when it holds
        `chroma_name`: a store moved to a server then copies its vectors instead of embedding every chunk
        again (over an hour on a CPU for 100K chunks). The collection's name carries the model version, and a
        chunk id its document version's hash (text, metadata, chunking) and its place, so a vector found there
        is the one the model made of that chunk. Returns (client, collection), (None, None) when there is
        none; the caller closes the client."""
        folder = self.settings.chroma_dir
        if self.shared is None or not (folder / "chroma.sqlite3").is_file():
            return None, None
        # Only at the move itself (the first start on a server), and not when the configured model's weights
        # changed meanwhile: the embedded store keeps vectors that later drops and rewrites reach only on the
        # server, under the same names.
        if collection not in self._moving or self._weights_changed:
            return None, None
        client = None
        try:
            import chromadb
            from chromadb.config import Settings as ChromaSettings

            client = chromadb.PersistentClient(path=str(folder), settings=ChromaSettings(anonymized_telemetry=False))
            return client, client.get_collection(chroma_name)
        except Exception as exc:  # no such collection, or an unreadable store: embed instead
            log.debug("no vectors to copy from %s for %s: %s", folder, chroma_name, exc)
            if client is not None:
                close_client(client)
            return None, None

    def _refuse_repair(self, collection: str, chunks: int, docs: int) -> None:
        if collection in self._moving:
            raise RiftError(
                f"this data dir is moving to the Chroma server, which lacks {chunks:,} chunks ({docs:,} documents) "
                f"of its collection {collection!r}; this command does not put them there: start `rift serve` or "
                "run `rift add` once"
            )
        where = (
            f"was {self.settings.chroma_dir} removed or damaged?"
            if self.shared is None
            else "a new Chroma server, or one whose data was lost?"
        )
        raise RiftError(
            f"Chroma has lost {chunks:,} chunks ({docs:,} documents) of collection {collection!r} that rift's "
            f"state holds ({where}); this command does not repair the store: start `rift serve` or run "
            "`rift add` to re-embed them from their stored text"
        )

    def _embed_into(self, chroma_name: str, rows: Sequence[ChunkRow], embedder: Embedder) -> None:
        """Embed stored chunk rows with `embedder` and put them into Chroma collection `chroma_name`."""
        if rows:
            self._upsert_rows(chroma_name, rows, embedder.encode_documents([r.text for r in rows]))

    def _upsert_rows(
        self,
        chroma_name: str,
        rows: Sequence[ChunkRow],
        embeddings: Any,
        stop: Callable[[], bool] | None = None,
    ) -> None:
        self.vectors.upsert(
            chroma_name,
            [r.chunk_id for r in rows],
            embeddings,
            [r.text for r in rows],
            [r.metadata for r in rows],
            stop=stop,
        )

    def _chunking(self, collection: str) -> str:
        return self._chunking_of(self.embedder_for(self._record(collection)))

    def _chunking_of(self, embedder: Embedder) -> str:
        """What a document's chunks depend on besides its text: stored chunks made otherwise are re-made."""
        tokens = embedder.max_chunk_tokens(self.settings.chunk_tokens)
        signature = f"v{CHUNKER_VERSION} tokens={tokens} overlap={self.settings.chunk_overlap}"
        # The tokenizer's vocabulary, since a model of another one (same chunk size) would read only part of
        # chunks cut in the old one's tokens. BERT's uncased one (all-MiniLM-L6-v2, bge-small) stays out, so
        # stores chunked before the vocabulary was recorded are not cut again for it.
        vocabulary = getattr(embedder, "vocabulary_id", BERT_UNCASED_VOCABULARY)
        return signature if vocabulary == BERT_UNCASED_VOCABULARY else f"{signature} vocabulary={vocabulary}"

    def version_chunkings(self, collection: str) -> tuple[str, ...]:
        """The chunking signatures `collection`'s document versions may be hashed with (the current one, the one
        recorded for its stored documents, and none: from before chunking was hashed), by which their metadata is
        read back exactly from Chroma."""
        recorded = self.state.setting(f"chunking:{collection}")  # (cut otherwise, a rechunk pending)
        try:
            current = self._chunking(collection)
        except (RiftError, KeyError):  # (no record or model for it yet)
            current = ""
        return tuple(dict.fromkeys(c for c in (current, recorded, "") if c is not None))

    def _recorded_chunking(self, collection: str) -> str | None:
        """How `collection`'s stored documents were cut (None: it has none). Not recorded here (a collection
        adopted from a Chroma server, which another process made; or a data dir from before the record), it is
        read off a stored document's hash: the current chunking, or from before chunking was hashed (taken as
        it is), or else unknown, which reads as changed."""
        stored = self.state.setting(f"chunking:{collection}")
        if stored is not None:
            return stored
        wanted = self._chunking(collection)
        # A few documents, not one: rebuilt from Chroma (a lost state database), a float in a document's
        # metadata may come back 1 ULP off, and its hash then matches no chunking at all.
        sample = self.state.list_documents(collection, _CHUNKING_SAMPLE, 0)
        if not sample:
            return None
        # Of the kinds the current chunker cuts as an older one did (document_chunking), a document hashes
        # the same under both: only the others tell. Sampled first; none stored, the rest tell as well.
        from server.ingest.splitters import cut_now_types  # lazy, as in chunk_document

        decisive = self.state.documents_of_types(collection, sorted(cut_now_types()), _CHUNKING_SAMPLE)
        for doc_id in decisive or [d for d, *_ in sample]:
            found = self.state.document(collection, doc_id)
            if found is None:
                continue
            doc_hash, text, metadata, _updated = found
            if doc_hash == content_hash(text, metadata, document_chunking(wanted, metadata)):
                return wanted
            if doc_hash == content_hash(text, metadata):
                # Hashed before chunking was (chunker 1): taken as it is unless its kind is cut otherwise since.
                from server.ingest.splitters import cut_since

                return wanted if cut_since(metadata) == 1 else "v1 (before chunking was hashed)"
        return "unknown: cut by another process"

    def chunking_changed(self, collection: str) -> bool:
        """Stored documents of `collection` were cut for other chunk settings than the serving model's."""
        stored = self._recorded_chunking(collection)
        return stored is not None and stored != self._chunking(collection)

    def rechunk_if_changed(
        self,
        collection: str,
        should_stop: Callable[[], bool] | None = None,
        progress: Callable[[int, int], None] | None = None,
    ) -> int:
        """After a change of chunk_tokens or chunk_overlap (or of a model whose sequence limit caps the chunk
        size), split every stored document again from its stored text and embed the chunks that changed:
        otherwise old documents keep chunks the model may not read to the end. The chunking is part of a
        document version's hash, so each re-chunked document is a new version with new chunk ids (an
        interrupted write rolls back to the old one intact), and a run cut short resumes where it stopped:
        documents already re-chunked are unchanged the second time. `progress` hears (documents read, of how
        many) after each batch. Returns the documents rewritten."""
        key = f"chunking:{collection}"
        wanted, stored = self._chunking(collection), self._recorded_chunking(collection)
        if stored == wanted:
            if self.state.setting(key) is None:
                self.state.put_setting(key, wanted)
            return 0
        done = 0
        if stored is not None:  # (none: no document to cut again)
            started = time.perf_counter()
            ids = [d for d, _ in self.state.list_documents(collection, -1, 0)]
            for first in range(0, len(ids), 64):
                if should_stop is not None and should_stop():  # the signature stays: the next start resumes
                    return done
                try:
                    self.check_room()
                except RiftError as exc:  # not a reason to refuse to start (and serve reads): resumes next start
                    log.warning("re-chunking collection %r stopped: %s", collection, exc)
                    return done
                # Read and written back under one hold of the write lock: a write that landed in between
                # (an update, new metadata, a delete, the collection's deletion) would otherwise be undone.
                with self._write_lock:
                    seen = time.time()
                    if self.shared is not None:
                        self.shared.sync(force=True)
                        self.shared.check_served_here(collection)
                    if self.state.collection(collection) is None:
                        return done  # deleted meanwhile: nothing left to re-chunk (nor to re-create)
                    batch = []
                    for doc_id in ids[first : first + 64]:
                        found = self.state.document(collection, doc_id)
                        if found is not None:  # (stored documents passed the limits of their day: not re-checked)
                            batch.append((doc_id, found[1], found[2]))
                    # (Not `_write_documents`: its own sync could bring in a newer text of a document read
                    # above, which the text read before would then undo.)
                    written = self._write_into(collection, batch, None, read_at=seen, skip_late=True)
                done += sum(s.status != "unchanged" for s in written)
                if progress is not None:
                    progress(min(first + 64, len(ids)), len(ids))
            log.warning(
                "chunking of collection %r changed (%s -> %s): re-chunked %d documents in %.1fs",
                collection,
                stored,
                wanted,
                done,
                time.perf_counter() - started,
            )
        self.state.put_setting(key, wanted)
        return done

    def _check_configured_weights(self) -> None:
        """A model folder replaced in place keeps its name, and vectors are labelled by name: never serve (or
        roll back to) vectors another model made. Stored vectors of the configured name are checked against
        the weights the name held when they were made; the first start that records them trusts them."""
        from server.engine.models import resolve_model, weights_identity

        configured = self.settings.model
        key = f"model_weights:{configured}"
        # (`model_location`: where a moved folder lies now; `configured` keeps the name its vectors have)
        identity = weights_identity(resolve_model(self.settings.model_location).location)
        stored = self.state.setting(key)
        if stored is not None and stored != identity:
            stale = [r.name for r in self.state.collections() if r.model_version == configured]
            if stale:
                raise RiftError(
                    f"the model at {configured!r} (setting `model`) is not the one collections "
                    f"{', '.join(repr(n) for n in stale)} were embedded with: its weights changed ({stored[:19]}… "
                    f"then, {identity[:19]}… now), and rift will not search vectors another model made. Put the "
                    "earlier model back, or give the new one a new folder or name (setting `model`): rift then "
                    "re-embeds every collection with it at start-up"
                )
            self._weights_changed = True
            for record in self.state.collections():  # vectors kept for a rollback to the old weights
                self.drop_vectors(record.name, configured)
            log.warning("the model at %r changed; dropped the vectors its earlier weights made", configured)
        if stored != identity:
            self.state.put_setting(key, identity)

    def _retokenize_if_changed(self) -> int:
        """Stored keyword tokens follow the tokenizer they were made with; after a change of stemmer, stopword
        list or normalisation, re-derive them from the stored text, so old and new chunks match alike."""
        stored = self.state.setting("keyword_tokenizer")
        if stored == self.tokenizer.signature:
            return 0
        started = time.perf_counter()
        # Minutes for a million chunks, while every call waits: say why first (a new data dir has none to redo).
        if stored is not None or self.state.has_chunks():
            log.warning("keyword tokenizer changed (%s -> %s): re-tokenizing the stored chunks once",
                        stored or "an earlier version", self.tokenizer.signature)
        done = self.state.retokenize(self.tokenizer.tokenize)
        self.state.put_setting("keyword_tokenizer", self.tokenizer.signature)
        if done:
            log.warning(
                "keyword tokenizer changed (%s -> %s): re-tokenized %d stored chunks in %.1fs",
                stored or "an earlier version",
                self.tokenizer.signature,
                done,
                time.perf_counter() - started,
            )
        return done

    def _drop_stale_embedded_collections(self) -> list[str]:
        """Back from a Chroma server: drop the embedded store's collections that the state no longer has (deleted
        while the data dir was on the server), which `_adopt_chroma_collections` would otherwise bring back.
        Kept vectors of another model version of a live collection stay: a switch back to them drops what
        the state lacks (`switch_vectors`)."""
        records = self.state.collections()
        live = {r.name for r in records}
        known = {r.chroma_name for r in records} | set(self.state.pending_drops())
        dropped = []
        for name, _meta in self.vectors.list_collections():
            match = CHROMA_NAME.match(name)
            if name in known or match is None or match.group(1) in live:
                continue
            log.warning(
                "dropping Chroma collection %s from the embedded store: its collection %r was deleted while the "
                "data dir was on a Chroma server",
                name,
                match.group(1),
            )
            self.vectors.drop(name)
            dropped.append(name)
        return dropped

    def _drop_unfinished_creates(self) -> list[str]:
        """Drop the collections that a write made and was killed in before committing anything into them (their
        `create_collection` mark is left): nobody asked for them, and they hold nothing. One holding any document
        or chunk, in the state or in Chroma, stays: only its mark goes. Alone on the store only: the data dir's
        lock keeps out every other writer, so none can be writing into one. With a Chroma server the marks only
        go (left by a start before the move there): another process may have made or written the collection
        there meanwhile, or be doing its own first write into it, which a drop would turn into an error."""
        dropped: list[str] = []
        for collection in self.state.setting_keys(CREATED_BY_WRITE):
            if self.shared is None:
                pending = self.state.pending_drops()  # (an earlier incarnation's, dropped on their own)
                names = sorted(
                    name
                    for name, _meta in self.vectors.list_collections()
                    if (match := CHROMA_NAME.match(name)) is not None
                    and match.group(1) == collection
                    and name not in pending
                )
                if not any(self.state.counts(collection)) and not any(self.vectors.count(n) for n in names):
                    log.warning(
                        "collection %r was made by a write that was cut off before it stored anything: removing it",
                        collection,
                    )
                    self.state.delete_setting(f"chunking:{collection}")
                    # As delete_collection does alone on the store (the drops noted with the state's change); this
                    # also clears the mark, last, so a kill before it has the next start do all of it again.
                    self.state.delete_collection(collection, {n: self.vectors.collection_id(n) for n in names})
                    self._keyword.pop(collection, None)
                    self._finish_drops(names)
                    dropped.append(collection)
                    continue
            self.state.delete_setting(f"{CREATED_BY_WRITE}{collection}")
        return dropped

    def _adopt_chroma_collections(self) -> list[str]:
        """Re-register rift's Chroma collections that the state database does not know (it was deleted or
        lost): Chroma holds every chunk, so `_reconcile` can rebuild the rest from it."""
        import chromadb.errors

        known = {r.chroma_name for r in self.state.collections()} | set(self.state.pending_drops())
        found: dict[str, list[tuple[str, str, int]]] = {}
        for name, meta in self.vectors.list_collections():
            if name in known:
                continue
            match = CHROMA_NAME.match(name)
            if match is None:
                continue
            collection = match.group(1)
            version = (meta or {}).get("rift:model_version")
            if version is None and name == chroma_name_for(collection, self.embedder.version):
                version = self.embedder.version
            if not isinstance(version, str) or chroma_name_for(collection, version) != name:
                continue  # vectors of a model whose version we cannot name
            try:
                size = self.vectors.count(name)
            except chromadb.errors.NotFoundError:
                continue  # deleted since the listing (by another process sharing the server)
            found.setdefault(collection, []).append((name, version, size))
        adopted = []
        for collection, options in sorted(found.items()):
            if self.state.collection(collection) is not None:
                continue  # a kept collection of another model version, not an orphan
            # Several versions: prefer the fullest (an interrupted re-embed leaves a partial one), then the
            # serving model.
            name, version, _ = max(options, key=lambda o: (o[2], o[1] == self.embedder.version))
            # With a Chroma server this is routine (another process made the collection); alone it is a repair.
            level = logging.INFO if self.shared is not None else logging.WARNING
            log.log(
                level, "state database lacked collection %r: adopting Chroma collection %s", collection, name
            )
            self.state.put_collection(collection, name, version)
            if self.shared is not None:  # the incarnation this process now serves (see SharedSync._check)
                self.shared.remember(name)
            adopted.append(collection)
        return adopted

    def _load_keyword(self, collection: str) -> None:
        chunks = list(self.state.iter_chunks(collection))
        keep_text = self._fits_copy(len(chunks))
        rows = [
            KeywordRow(r.chunk_id, r.doc_id, r.tokens, r.metadata, r.text if keep_text else None)
            for r in chunks
        ]
        del chunks
        index = KeywordIndex(rows)
        self._keyword[collection] = index
        self._rebuild_ms[collection] = index.snapshot.build_seconds * 1000
        self._load_vector_copy(collection)

    def exact_search_active(self, collection: str) -> bool:
        """Whether vector searches of `collection` run on the in-memory copy (else Chroma's HNSW)."""
        index = self._keyword.get(collection)
        return index is not None and index.snapshot.vectors is not None

    def _exact_search_on(self) -> bool:
        # With a Chroma server other processes write too; their writes reach this process without vectors.
        return self.shared is None and self.settings.exact_search_max_chunks > 0

    def _fits_copy(self, chunks: int) -> bool:
        """Whether a collection of `chunks` keeps the in-memory copy (vectors and chunk texts)."""
        return self._exact_search_on() and chunks <= self.settings.exact_search_max_chunks

    def _load_vector_copy(self, collection: str) -> None:
        """Fill the collection's in-memory vector copy (exact vector search) from Chroma, or drop it when the
        collection is too large for it or exact search is off. Callers hold the write lock (or run start-up)."""
        index = self._keyword.get(collection)
        record = self.state.collection(collection)
        if index is None or record is None:
            return
        snap = index.snapshot
        if not self._fits_copy(len(snap.rows)):
            index.set_vectors(None, None)
            return
        embedder = self._embedders.get(record.model_version)
        dimension = embedder.dimension if embedder is not None else None
        # Only live rows: a delete masks its rows here but removes their vectors from Chroma (and a new
        # model's collection never had them). Masked rows get zeros; vector search never reads them.
        ids = [r.chunk_id for r, ok in zip(snap.rows, snap.alive, strict=True) if ok]
        found = self.vectors.embeddings_matrix(record.chroma_name, ids) if ids else None
        if ids and (found is None or (dimension is not None and found.shape[1] != dimension)):
            log.warning("exact vector search off for %r: Chroma lacks some of its vectors", collection)
            index.set_vectors(None, None)
            return
        if found is not None and snap.all_alive:
            matrix = found
        elif found is not None or dimension is not None:
            matrix = np.zeros(
                (len(snap.rows), found.shape[1] if found is not None else dimension), np.float32
            )
            if found is not None:
                matrix[snap.alive] = found
        else:  # nothing live, and no model loaded to say the dimension
            index.set_vectors(None, None)
            return
        index.set_vectors(VectorRows.of(matrix), record.model_version)

    # --- models --------------------------------------------------------------------------------------------

    @property
    def embedder(self) -> Embedder:
        return self._serving

    @embedder.setter
    def embedder(self, value: Embedder) -> None:
        # Assigning a wrapper of the same version (e.g. the benchmark's caching embedder) replaces it everywhere.
        self._serving = value
        self._embedders[value.version] = value

    def embedder_for(self, record: Any) -> Embedder:
        embedder = self._embedders.get(record.model_version)
        if embedder is None:
            raise RiftError(
                f"collection {record.name!r} was embedded by model {record.model_version!r}, which is not loaded"
            )
        return embedder

    def set_serving_embedder(self, embedder: Embedder) -> None:
        """Make `embedder` the default for new collections; drop embedders no collection uses any more."""
        with self._write_lock:
            self._embedders[embedder.version] = embedder
            self.embedder = embedder
            used = {r.model_version for r in self.state.collections()} | {embedder.version}
            for version in list(self._embedders):
                if version not in used:
                    del self._embedders[version]

    def drop_vectors(self, collection: str, model_version: str) -> None:
        """Drop a kept (non-live) Chroma collection of `collection` for another model version."""
        with self._write_lock:
            record = self._record(collection)
            name = chroma_name_for(collection, model_version)
            if name != record.chroma_name:
                self._drop_quietly(name, collection, record.model_version)

    def _drop_quietly(self, name: str, collection: str, serving: str, reason: str = "retired") -> None:
        """Drop Chroma collection `name`, vectors `collection` no longer serves (it serves model version
        `serving`; `reason` "deleted": it was deleted), where a failure must not fail the caller's committed
        work (it stays known to the state, so it is never adopted back as an orphan; a later cleanup retries)."""
        chroma_id = None
        try:
            if self.shared is not None:  # dropped by rift, not lost by the server (see SharedSync._check)
                chroma_id = self.vectors.collection_id(name)
                self.shared.dropping({name: chroma_id}, reason, collection, serving)
            self.vectors.drop(name)
        except Exception as exc:
            if self.shared is not None:
                self.shared.not_dropped(chroma_id)
            log.warning("dropping Chroma collection %s failed: %s", name, exc)

    # --- collections ---------------------------------------------------------------------------------------

    def collection_names(self) -> list[str]:
        return [c.name for c in self.state.collections()]

    def _record(self, collection: str):
        check_collection_name(collection)
        record = self.state.collection(collection)
        if record is None:
            names = self.collection_names()
            if collection in names:  # made again since the read above (a delete and an add raced this call)
                record = self.state.collection(collection)
                if record is None:
                    raise NotFoundError(f"collection {collection!r} was deleted while this call ran")
                return record
            known = ", ".join(names) or "none yet"
            raise NotFoundError(f"unknown collection {collection!r} (collections: {known})")
        return record

    def create_collection(self, collection: str, implicit: bool = False) -> bool:
        """Make `collection` if it does not exist; returns whether it made it. `implicit`: made by a write into a
        collection that did not exist (not asked for), which `settle_created` or the write's commit keeps:
        killed before either, the next start drops it if it holds nothing (`_drop_unfinished_creates`)."""
        check_collection_name(collection)
        marker = f"{CREATED_BY_WRITE}{collection}"
        with self._write_lock:
            if self.state.collection(collection) is not None:
                if not implicit and self.state.setting(marker) is not None:
                    self.state.delete_setting(marker)  # asked for now: it stays, empty or not
                return False
            if implicit and self.shared is None:
                # Noted before Chroma makes it: a kill in between would otherwise leave a Chroma collection for the
                # next start to adopt. (Not with a Chroma server: see _drop_unfinished_creates.)
                self.state.put_setting(marker, str(time.time()))
            elif self.state.setting(marker) is not None:  # (left by an implicit create that failed midway)
                self.state.delete_setting(marker)
            chroma_name = chroma_name_for(collection, self.embedder.version)
            if (
                chroma_name in self.state.pending_drops()
            ):  # a deleted collection of this name: finish its drop
                self._finish_drops([chroma_name])
                if chroma_name in self.state.pending_drops():
                    raise RiftError(
                        f"the deleted collection {collection!r} is still in Chroma (dropping it failed; see the log); "
                        "try again, or restart rift, which retries"
                    )
            self.vectors.ensure(
                chroma_name,
                self.embedder.dimension,
                {"rift:collection": collection, "rift:model_version": self.embedder.version},
            )
            self.state.put_collection(collection, chroma_name, self.embedder.version)
            self.state.put_setting(f"chunking:{collection}", self._chunking(collection))
            self._keyword[collection] = KeywordIndex()
            self._load_vector_copy(collection)
            if self.shared is not None:
                # (No change record: a reader repairs it in full, which also drops a stale handle to a collection
                # deleted and created again under this name; it is empty, so that costs nothing.)
                self.shared.remember(chroma_name)
                self.shared.publish(collection, chroma_name, self.embedder.version)
            return True

    def delete_collection(self, collection: str, removed: list[str] | None = None) -> CollectionInfo:
        """Drop it; returns its info as it was when dropped (read under the write lock, so a write that was
        queued before the drop is counted). `removed`, if given, gets the doc_ids it held, read then too."""
        with self._write_lock:
            if self.shared is not None:  # what other processes wrote to it since is deleted (and named) too
                self.shared.sync(force=True)
            record = self._record(collection)
            info = self.info(collection)
            if removed is not None:
                removed.extend(self.state.doc_ids(collection))
            # Every model version's vectors go, not only the serving one: a version kept for rollback would
            # otherwise be adopted back as an orphan at the next start, deleted documents and all.
            names = {record.chroma_name} | {
                name
                for name, _meta in self.vectors.list_collections()
                if (match := CHROMA_NAME.match(name)) is not None and match.group(1) == collection
            }
            if self.shared is not None:
                # Shared: drop first, so a failure changes nothing (the tool reports it), and the others see
                # the collection go. A crash before the state forgets it is a collection "deleted elsewhere"
                # at the next start. (A tombstone here could drop what another process made since.) Noted on the
                # server first as dropped by rift, so that no process takes their absence for a lost server.
                ids = {name: self.vectors.collection_id(name) for name in sorted(names)}
                self.shared.dropping(ids, "deleted", collection)
                for name in sorted(names):
                    try:
                        self.vectors.drop(name)
                    except BaseException:
                        for left in [n for n in sorted(names) if n >= name]:
                            self.shared.not_dropped(ids[left])
                        raise
                    self.shared.retire(name)
                self.state.delete_collection(collection)
                self._keyword.pop(collection, None)
                return info
            # Alone: noted as to drop in the transaction that forgets the collection, so a crash (or a Chroma
            # error) before the drops below finish is finished at the next start, never adopted back.
            ids = {n: self.vectors.collection_id(n) for n in sorted(names)}
            self.state.delete_collection(collection, ids)
            self._keyword.pop(collection, None)
            self._finish_drops(sorted(names))
            return info

    def _finish_drops(self, names: Sequence[str] | None = None) -> None:
        """Drop the Chroma collections of deleted collections (all those pending, or `names`). One made again
        under the name since (a new collection of the same name, here or in another process sharing the
        Chroma server) has another id and is left alone."""
        pending = self.state.pending_drops()
        for name in pending if names is None else [n for n in names if n in pending]:
            current = self.vectors.collection_id(name)
            if current is not None and (pending[name] is None or current == pending[name]):
                try:
                    if self.shared is not None:
                        match = CHROMA_NAME.match(name)
                        self.shared.dropping({name: current}, "deleted", match.group(1) if match else name)
                    self.vectors.drop(name)
                except Exception as exc:
                    log.warning(
                        "dropping Chroma collection %s failed (%s); the next start retries", name, exc
                    )
                    continue
                if self.shared is not None:
                    self.shared.retire(name)
            self.state.drop_done(name)

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

    def _check_call_count(self, count: int, field: str) -> None:
        if count > self.settings.max_documents_per_call:
            raise RiftError(
                f"{field} has {count} items; the limit per call is {self.settings.max_documents_per_call} "
                "(setting max_documents_per_call)"
            )

    def validate_documents(self, documents: Sequence[DocumentInput]) -> list[tuple[str, str, dict[str, Any]]]:
        if not documents:
            raise RiftError("documents must contain at least one document")
        self._check_call_count(len(documents), "documents")
        out: list[tuple[str, str, dict[str, Any]]] = []
        seen: dict[str, int] = {}
        total_chars = 0
        for i, doc in enumerate(documents):
            doc_id, text, meta = validate_document(doc, lambda name, i=i: f"documents[{i}].{name}", self.settings)
            total_chars += len(text)
            if total_chars > self.settings.max_chars_per_call:
                what = f"documents[{i}].text is" if i == 0 else f"documents[0..{i}] hold"
                raise RiftError(
                    f"{what} {total_chars:,} characters; the limit per call is "
                    f"{self.settings.max_chars_per_call:,} (setting max_chars_per_call): split the documents "
                    "over several calls"
                )
            if doc_id in seen:
                if doc.id is None and documents[seen[doc_id]].id is None:
                    raise RiftError(
                        f"documents[{i}] has no id and the same text as documents[{seen[doc_id]}] (an omitted id is "
                        "a hash of the text, so both would be one document): give them ids, or send the text once"
                    )
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
        return self._write_documents(collection, self.validate_documents(documents), progress)

    def _write_documents(
        self,
        collection: str,
        docs: Sequence[tuple[str, str, dict[str, Any]]],
        progress: Callable[[int, int], None] | None = None,
        rewrite: bool = False,
    ) -> list[DocumentStatus]:
        """Write validated (doc_id, text, metadata) documents; an unchanged one (same text, metadata and
        chunking) is skipped."""
        with self._write_lock:
            self.check_room()
            if self.shared is not None:
                self.shared.sync(force=True)
                self.shared.check_served_here(collection)
            created = self.create_collection(collection, implicit=True)
            try:
                written = self._write_into(collection, docs, progress, rewrite)
                if created:
                    self.settle_created(collection)  # (committed: already kept; else it wrote nothing, and stays)
                return written
            except BaseException as exc:
                # A write that made the collection and then failed or was cancelled (before its commit) must
                # not leave an empty collection behind.
                if created:
                    self.drop_collection_if_empty(collection)
                if self.state.closed and isinstance(exc, Exception) and not isinstance(exc, ShuttingDown):
                    # The stores were closed under it (a close that waited its time out): their error says
                    # nothing of why. Nothing of it is committed; the next start undoes the rest.
                    log.warning("rift was closed during a write to collection %r: it is not stored", collection)
                    raise ShuttingDown() from None
                raise

    def check_room(self, need_bytes: int = 0, what: str = "") -> None:
        """Refuse a write while the data dir's disk is nearly full: Chroma's embedded store, once a write has
        failed for want of space, fails (or hangs) every later one until the process restarts. `need_bytes`:
        what the write itself is known to take (a retrain's weights), on top of the floor."""
        floor = self.settings.min_free_disk_mb * 1024 * 1024
        if not floor:
            return
        try:
            free = shutil.disk_usage(self.settings.data_dir).free
        except OSError:
            return
        if free < floor + need_bytes:
            needs = f", and {what} needs about {-(-need_bytes // 1048576)} MB more" if need_bytes else ""
            raise RiftError(
                f"the disk holding data_dir {self.settings.data_dir} has {free / 1048576:.0f} MB free, less than "
                f"min_free_disk_mb ({self.settings.min_free_disk_mb}){needs}: free some space (deleting documents "
                "or `rift models --prune` helps) and write again; nothing was written"
            )

    def settle_created(self, collection: str) -> None:
        """The write that made `collection` (`create_collection` with `implicit`) finished: the collection stays,
        as a finished write left it, even empty."""
        key = f"{CREATED_BY_WRITE}{collection}"
        if self.state.setting(key) is not None:
            self.state.delete_setting(key)

    def drop_collection_if_empty(self, collection: str) -> bool:
        """Delete `collection` if it holds no document and is still the write's (marked by its implicit
        `create_collection`); for a write that created it and then stopped. One asked for meanwhile (an explicit
        create, or deleted and made again), or kept by another write into it that finished, stays. Never in
        shared mode, where another process may be writing into it. Failures are logged, not raised: the
        caller is already handling the write's own error."""
        if self.shared is not None or self.state.closed:  # (closed: it stays, empty, for delete_collection)
            return False
        try:
            with self._write_lock:
                if (
                    collection not in self.collection_names()
                    or self.state.setting(f"{CREATED_BY_WRITE}{collection}") is None
                    or self.state.counts(collection)[0]
                ):
                    return False
                self.delete_collection(collection)
                return True
        except Exception:
            log.warning("could not remove the empty collection %r", collection, exc_info=True)
            return False

    def _write_into(
        self,
        collection: str,
        docs: Sequence[tuple[str, str, dict[str, Any]]],
        progress: Callable[[int, int], None] | None,
        rewrite: bool = False,
        read_at: float | None = None,
        skip_late: bool = False,
    ) -> list[DocumentStatus]:
        """The body of `_write_documents`, under its write lock, into an existing collection. `rewrite`: also
        the documents whose stored version matches (a repair of documents that lost their chunks). `read_at`:
        documents written back as read at that time (a metadata change, a re-chunk): with a shared Chroma
        server, one another process wrote since would be undone by the text read before, so the call is
        refused (RiftError naming them), or with `skip_late` those are left out (status "unchanged")."""
        record = self._record(collection)
        embedder = self.embedder_for(record)
        chunking = self._chunking_of(embedder)
        existing = self.state.doc_hashes(collection, [d for d, _, _ in docs])
        if existing and not rewrite:  # a stored version without chunks is not "unchanged": it is never found
            chunked = {c.rsplit("::", 2)[0] for c in self.state.chunk_ids_of_docs(collection, list(existing))}
            existing = {d: h if d in chunked else "" for d, h in existing.items()}
        statuses: dict[str, DocumentStatus] = {}
        changed: list[tuple[str, str, dict[str, Any], str]] = []
        for doc_id, text, meta in docs:
            doc_hash = content_hash(text, meta, document_chunking(chunking, meta))
            if existing.get(doc_id) == doc_hash and not rewrite:
                statuses[doc_id] = DocumentStatus(doc_id, "unchanged", 0)
            else:
                changed.append((doc_id, text, meta, doc_hash))
        rows = self._chunk_rows(changed, embedder)
        if rows:

            def embedding(done: int, total: int) -> None:  # (also a safe point for a close: see begin_close)
                self._stop_if_closing(collection)
                if progress is not None:
                    progress(done, total)

            with self._unless_deleted_meanwhile(collection, record.chroma_name):  # (via its cached handle)
                embeddings = self._embed_reusing(collection, record.chroma_name, rows, embedder, embedding)
            old_ids = self.state.chunk_ids_of_docs(collection, [c[0] for c in changed])
            new_ids = [r.chunk_id for r in rows]
            stale = sorted(set(old_ids) - set(new_ids))
            if read_at is not None and self.shared is not None:
                # Checked once the slow part (embedding) is done: what lands after this is a write at the same
                # moment, which the later stamp wins.
                # (one that wrote the very version this writes, chunk ids and all, changed nothing it read)
                same = set(old_ids) | set(new_ids)
                held = {c.rsplit("::", 2)[0] for c in old_ids}
                # Per document, from the stamp of the version read, if older: a write stamped before `read_at`
                # whose upload landed after this process's sync was not read either.
                floors = self._version_stamps(collection, old_ids)
                with self._unless_deleted_meanwhile(collection, record.chroma_name):
                    late = self.shared.changed_since(
                        record.chroma_name, [c[0] for c in changed], read_at, same, held, floors
                    )
                if late and not skip_late:
                    shown = ", ".join(repr(d) for d in sorted(late)[:10]) + (" ..." if len(late) > 10 else "")
                    raise RiftError(
                        f"{len(late)} documents were written or deleted by another rift process while this call "
                        f"ran ({shown}): nothing was changed; read them again and retry"
                    )
                if late:
                    log.info("left out %d documents another process wrote or deleted meanwhile", len(late))
                    keep = [i for i, r in enumerate(rows) if r.doc_id not in late]
                    rows, embeddings = [rows[i] for i in keep], embeddings[keep]
                    changed = [c for c in changed if c[0] not in late]
                    for doc_id in late:
                        statuses[doc_id] = DocumentStatus(doc_id, "unchanged", 0)
                    old_ids = self.state.chunk_ids_of_docs(collection, [c[0] for c in changed])
                    new_ids = [r.chunk_id for r in rows]
                    stale = sorted(set(old_ids) - set(new_ids))
            if progress is not None:  # a cancelled call stops here (see tools/_common.progress_reporter)
                progress(len(rows), len(rows))
            if rows:
                self._commit(
                    collection,
                    record.chroma_name,
                    rows,
                    embeddings,
                    stale,
                    put_docs=[(d, h, t, m) for d, t, m, h in changed],
                    replaced=self._text_replaced(collection, changed, existing),
                )
        per_doc: dict[str, int] = {}
        for r in rows:
            per_doc[r.doc_id] = per_doc.get(r.doc_id, 0) + 1
        for doc_id, _, _, _ in changed:
            status = "updated" if doc_id in existing else "added"
            statuses[doc_id] = DocumentStatus(doc_id, status, per_doc.get(doc_id, 0))
        return [statuses[d] for d, _, _ in docs]

    def _text_replaced(
        self, collection: str, changed: Sequence[tuple[str, str, dict[str, Any], str]], existing: Mapping[str, str]
    ) -> list[str]:
        """The documents of `changed` (about to be written) whose stored text differs from the text written (not
        a metadata change, a re-chunk or a repair): their old texts leave the store. Read only when someone
        listens (`on_documents_gone`)."""
        if self.on_documents_gone is None:
            return []
        out = []
        for doc_id, text, _meta, _hash in changed:
            if doc_id in existing:
                found = self.state.document(collection, doc_id)
                if found is not None and found[1] != text:
                    out.append(doc_id)
        return out

    def _embed_reusing(
        self,
        collection: str,
        chroma_name: str,
        rows: Sequence[ChunkRow],
        embedder: Embedder,
        progress: Callable[[int, int], None] | None,
    ) -> Any:
        """Vectors for `rows`. A chunk whose text the collection already holds keeps that stored vector (a
        vector depends on the text alone): a metadata change, a touched file, an edit elsewhere in a long
        document, a renamed or copied file. The model is the cost of a write."""
        import numpy as np

        before = self.state.chunk_ids_by_text(collection, [r.text for r in rows])
        reuse = {i: before[r.text] for i, r in enumerate(rows) if r.text in before}
        unique = list(dict.fromkeys(reuse.values()))  # two new chunks may share one old text
        stored = self.vectors.embeddings_matrix(chroma_name, unique) if reuse else None
        if stored is None or stored.shape[1] != embedder.dimension:
            return embedder.encode_documents([r.text for r in rows], progress)
        row_of = {chunk_id: n for n, chunk_id in enumerate(unique)}
        fresh_at = [i for i in range(len(rows)) if i not in reuse]
        out = np.zeros((len(rows), embedder.dimension), dtype=np.float32)
        out[list(reuse)] = stored[[row_of[c] for c in reuse.values()]]
        if fresh_at:
            out[fresh_at] = np.asarray(embedder.encode_documents([rows[i].text for i in fresh_at], progress))
        elif progress is not None:
            progress(len(rows), len(rows))
        return out

    def _chunk_rows(
        self, changed: list[tuple[str, str, dict[str, Any], str]], embedder: Embedder | None = None
    ) -> list[ChunkRow]:
        if not changed:
            return []
        embedder = embedder or self.embedder
        max_tokens = embedder.max_chunk_tokens(self.settings.chunk_tokens)
        pieces: list[tuple[str, str, dict[str, Any], int, int, str, int, int]] = []
        for doc_id, text, meta, doc_hash in changed:
            # Structure-aware when meta names a file_type with a splitter; chunks may add e.g. "heading".
            chunks = chunk_document(text, meta, embedder.tokenizer, max_tokens, self.settings.chunk_overlap)
            dirs = path_keys(meta)  # ancestor folders of meta["source"], for the $prefix filter
            covered = 0
            for i, ch in enumerate(chunks):
                # The user's metadata wins over a key the splitter adds (a document's own "heading" stays its
                # own, so a filter on it finds the same chunks in both retrievers and in list_documents).
                own = {key: value for key, value in ch.metadata.items() if key not in meta}
                chunk_meta = {**meta, **own, **dirs}
                # Name the chunk's own keys, so a repair from Chroma leaves them off the document.
                if own:
                    chunk_meta[CHUNK_KEYS] = ",".join(sorted(own))
                # The text no chunk holds (whitespace between sections, mostly), so that a repair from Chroma
                # rebuilds the document exactly (reconcile.join_chunks).
                if ch.start > covered:
                    chunk_meta[GAP_BEFORE] = text[covered : ch.start][:MAX_GAP_CHARS]
                if i == len(chunks) - 1 and ch.end < len(text):
                    chunk_meta[GAP_AFTER] = text[ch.end :][:MAX_GAP_CHARS]
                covered = max(covered, ch.end)
                pieces.append((doc_id, doc_hash, chunk_meta, i, len(chunks), ch.text, ch.start, ch.end))
        tokens = self.tokenizer.tokenize([p[5] for p in pieces])
        written = time.time()  # orders versions of one document written by different processes
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
                "_rift_ts": written,
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
        replaced: Sequence[str] = (),
        rename_targets: Collection[str] = (),
    ) -> None:
        """Write `rows` (and `put_docs`) and remove `stale` (and `remove_docs`): Chroma first, then rift's
        state, then the keyword index. `replaced`: documents of `put_docs` whose stored text this write
        replaces (with `remove_docs`, told to `on_documents_gone` once committed). `rename_targets`: as for
        `StateStore.apply`."""
        # (No cancellation point between the two halves: undoing the Chroma half deletes chunk ids, which are
        # content hashes that another process sharing the server may hold too.)
        self._stop_if_closing(collection)  # (rift closing: the last point where nothing is written yet)
        self.finish_owed_undos()  # (before this write's own journal entry: only failed undos are pending)
        written = None
        if rows:
            # Versions of one document are ordered by this time, taken now rather than before embedding: two
            # processes writing one document at once then order their versions as their chunks reach Chroma,
            # so the later one's sweep below finds the earlier one's chunks there (before the journal: start-up
            # recovery removes only chunks written before their journal entry).
            written = time.time()
            rows = [replace(r, metadata={**r.metadata, "_rift_ts": written}) for r in rows]
        mine = [r.chunk_id for r in rows]  # what an undo (now, or by start-up recovery) deletes
        if self.shared is not None and mine:
            # Chunk ids are content hashes: ids Chroma already holds are another process's version of the same
            # text (this one's live chunks are never rewritten), which an undo of this write must leave.
            with self._unless_deleted_meanwhile(collection, chroma_name):  # (nothing written yet)
                held = self.vectors.present(chroma_name, mine)
                held -= self._owed_chunks(chroma_name, held)
            mine = [c for c in mine if c not in held]
        if self.shared is not None:
            self.shared.expect(collection, chroma_name)  # owed until announced: a crash before that is not lost
        journal_id = self.state.journal_begin(chroma_name, mine, stale)
        try:
            if rows:
                # (Closing: stops between two batches; the journal entry has the next start remove them.)
                self._upsert_rows(chroma_name, rows, embeddings, lambda: self._closing.is_set())
            self.state.apply(
                collection,
                stale,
                rows,
                journal_id,
                remove_docs=remove_docs,
                put_docs=put_docs,
                rename_targets=rename_targets,
            )
        except BaseException as exc:
            if self._closing.is_set() and isinstance(exc, Exception):
                # rift is closing (its stores may be closed already): not committed, and no time to undo the
                # Chroma half now; the journal entry has the next start remove it, as after a crash.
                log.warning(
                    "rift is closing: write %s to collection %r stopped before its commit; the next start removes "
                    "the %d chunks it put into Chroma",
                    journal_id,
                    collection,
                    len(mine),
                )
                raise ShuttingDown() from None
            # Not committed: undo the Chroma half now rather than at the next start (the journal still
            # covers a crash in here).
            gone = self._gone_from_server(chroma_name, exc)
            try:
                if self.shared is not None and mine and not gone:
                    # ... nor those another process uploaded since (the same text: stamped by it now). The stamp
                    # may come back a few ULPs off; taken for another's, this write's chunks would stay for good.
                    theirs = {
                        c for c, _, m in self.vectors.get(chroma_name, mine) if not same_float(m.get("_rift_ts"), written)
                    }
                    mine = [c for c in mine if c not in theirs]
                self.vectors.delete(chroma_name, mine)
                self.state.journal_clear(journal_id)
            except Exception as undo_exc:
                self._journal_owed = True
                if written is not None:
                    self._undo_stamps[journal_id] = written
                _log_failure(
                    logging.ERROR, f"rollback of write {journal_id} failed", undo_exc, "the next write or start finishes it"
                )
            else:
                if self.shared is not None and (not rows or gone):
                    self.shared.unexpect(chroma_name)  # undone whole, and no other process read it
                if self.shared is not None and rows and not gone:
                    # Another process may have read the undone version from Chroma meanwhile (a full repair
                    # reads whatever is there): have it read these documents again. (Not for a collection
                    # deleted meanwhile: that head would hide the deletion from this process's next sync.)
                    try:
                        record = self.state.collection(collection)
                        if record is not None and record.chroma_name == chroma_name:
                            self.shared.publish(
                                collection, chroma_name, record.model_version, sorted({r.doc_id for r in rows})
                            )
                    except Exception:
                        log.warning("could not tell other processes of undone write %s", journal_id, exc_info=True)
            if gone:
                self._look_again_on_server(collection)
                raise _deleted_meanwhile(collection) from None  # (Chroma's own words name no collection of ours)
            raise
        try:
            try:
                index = self._keyword[collection]
                fits = self._fits_copy(len(index.snapshot.rows) + len(rows))
                rebuild = index.apply(
                    remove=stale,
                    add=[
                        KeywordRow(r.chunk_id, r.doc_id, r.tokens, r.metadata, r.text if fits else None)
                        for r in rows
                    ],
                    add_vectors=embeddings if rows and fits else None,  # outgrown: Chroma's HNSW takes over
                )
                if rebuild:
                    self._rebuild_ms[collection] = rebuild * 1000
                try:
                    self.vectors.delete(chroma_name, stale)
                    self.state.journal_clear(journal_id)
                except Exception as exc:
                    # Committed and visible; the stale chunks are invisible to search and start-up removes them.
                    if self.closed:  # (rift closed under it: its stores' error says nothing more)
                        log.warning(
                            "rift closed during write %s to collection %r, after its commit: the next start "
                            "removes the chunks it replaced",
                            journal_id,
                            collection,
                        )
                    else:
                        self._journal_owed = True
                        _log_failure(
                            logging.ERROR,
                            f"removing replaced chunks of write {journal_id} failed",
                            exc,
                            "the next write or start finishes it",
                        )
                if self.shared is not None and rows:
                    self._sweep_older_versions(chroma_name, rows)
            except BaseException:
                if self.shared is not None:  # committed all the same: the other processes must hear of it
                    with suppress(Exception):
                        self._announce_commit(collection, chroma_name, rows, written, put_docs, remove_docs)
                    with suppress(Exception):
                        self._deleted_since_commit(collection, chroma_name)
                raise
            if self.shared is not None:  # tell the other processes sharing Chroma, now that it has landed
                self._announce_commit(collection, chroma_name, rows, written, put_docs, remove_docs)
                self._deleted_since_commit(collection, chroma_name)
        finally:  # committed: the texts it removed or replaced are gone, whatever failed after
            self._texts_gone(collection, [*remove_docs, *replaced])

    def _owed_chunks(self, chroma_name: str, held: set[str]) -> set[str]:
        """Of `held` (ids Chroma holds), this process's own chunks of a write whose undo is still owed (they carry
        its stamp): not another process's version. Counted as held, a write of the same text would restamp them
        and, failing too, leave them; the owed retry then takes them for another process's and keeps them for
        good (found by helper DF)."""
        owed = {
            c: self._undo_stamps[e.id]
            for e in (self.state.journal_pending() if self._undo_stamps and held else ())
            if e.id in self._undo_stamps and e.chroma_name == chroma_name and e.phase == "write-new"
            for c in e.new_ids
            if c in held
        }
        if not owed:
            return set()
        return {c for c, _, m in self.vectors.get(chroma_name, list(owed)) if same_float(m.get("_rift_ts"), owed[c])}

    def _texts_gone(self, collection: str, doc_ids: Iterable[str]) -> None:
        """Tell `on_documents_gone` that the stored texts of `doc_ids` left `collection`; never raises."""
        ids = sorted(set(doc_ids))
        if not ids or self.on_documents_gone is None:
            return
        try:
            self.on_documents_gone(collection, ids)
        except Exception:
            log.exception(
                "could not remove %d deleted or rewritten documents of collection %r from a retrain's plan (the "
                "next start of that retrain drops the deleted ones)",
                len(ids),
                collection,
            )

    def _announce_commit(
        self,
        collection: str,
        chroma_name: str,
        rows: Sequence[ChunkRow],
        written: float | None,
        put_docs: Sequence[tuple[str, str, str, dict[str, Any]]],
        remove_docs: Sequence[str],
    ) -> None:
        touched = {r.doc_id for r in rows} | set(remove_docs) | {d[0] for d in put_docs}
        # (A delete announces no stamp: it is no version, and the stamp it read at may be later than a version
        # written meanwhile that every process then shows.)
        versions = {r.doc_id: r.doc_hash for r in rows} if written is not None else None
        self.shared.publish(  # type: ignore[union-attr]
            collection, chroma_name, self._record(collection).model_version, sorted(touched), written, versions
        )

    @contextmanager
    def _unless_deleted_meanwhile(self, collection: str, chroma_name: str) -> Iterator[None]:
        """Turn Chroma's error for a collection another process deleted during this call into one line naming
        it, and follow the deletion here."""
        import chromadb.errors

        try:
            yield
        except chromadb.errors.ChromaError as exc:
            if not self._gone_from_server(chroma_name, exc):
                raise
            self._look_again_on_server(collection)
            raise _deleted_meanwhile(collection) from None

    def _gone_from_server(self, chroma_name: str, exc: BaseException) -> bool:
        """Whether `exc`, from a write to Chroma collection `chroma_name`, means another process sharing the
        server deleted it meanwhile: "does not exist", or another error while it is being dropped ("Missing
        metadata segment") after which it is gone."""
        import chromadb.errors

        if self.shared is None or not isinstance(exc, chromadb.errors.ChromaError):
            return False
        if isinstance(exc, chromadb.errors.NotFoundError):
            return True
        try:
            return self.vectors.collection_id(chroma_name) is None
        except Exception:
            return False

    def _deleted_since_commit(self, collection: str, chroma_name: str) -> bool:
        """Whether another process sharing the server deleted `collection` since this process's write reached
        Chroma; then the deletion wins, here at once, and this process's announcement goes: its head would hide
        the deletion from this process's own syncs. (Asked after announcing: a deleter retires the heads after
        dropping the collection, so one it retired is seen here, and one put back after is withdrawn.)"""
        try:
            if self.vectors.collection_id(chroma_name) is not None:
                return False
        except Exception:  # unreachable: the announcement is owed and paid later
            return False
        self._look_again_on_server(collection)
        if self.state.collection(collection) is None:  # followed: deleted
            with suppress(Exception):
                self.shared.withdraw(chroma_name)  # type: ignore[union-attr]
        return True

    def _version_stamps(self, collection: str, chunk_ids: Sequence[str]) -> dict[str, float]:
        """Document id -> the stamp (`_rift_ts`) of the version the keyword index holds, from `chunk_ids`."""
        snap = self._keyword[collection].snapshot
        out: dict[str, float] = {}
        for chunk_id in chunk_ids:
            at = snap.row_of.get(chunk_id)
            if at is None:
                continue
            row = snap.rows[at]
            ts = row.metadata.get("_rift_ts")
            if isinstance(ts, int | float) and not isinstance(ts, bool):
                out[row.doc_id] = max(out.get(row.doc_id, float(ts)), float(ts))
        return out

    def _look_again_on_server(self, collection: str) -> None:
        """With a shared server, after Chroma said `collection`'s vectors are gone: check the server as it is now,
        so a deletion by another process is followed here (forgotten) even when the heads do not show it (a write
        of this process, announced just after the deletion, put its head back)."""
        if self.shared is None:
            return
        with self._write_lock:
            record = self.state.collection(collection)
            if record is None:
                return
            self.vectors.forget(record.chroma_name)
            try:
                self.shared.check_again(record)
            except Exception:
                log.debug("checking collection %r on the server failed", collection, exc_info=True)

    def _sweep_older_versions(self, chroma_name: str, rows: Sequence[ChunkRow]) -> None:
        """Last writer wins, once committed: delete from Chroma every older version of the documents `rows`
        wrote, including other processes' (one written at the same moment is not in this state, so not in
        `stale`; left there, its chunks would take places in Chroma's answers that no search shows). Never
        before the commit: a write that is rolled back must leave the version it replaced."""
        import chromadb.errors

        doc_ids = sorted({r.doc_id for r in rows})
        try:
            written = float(rows[0].metadata["_rift_ts"])
            older = self.shared.older_versions(chroma_name, doc_ids, written, {r.chunk_id for r in rows})
            self.vectors.delete(chroma_name, sorted(older))
        except chromadb.errors.ChromaError as exc:
            if not self._gone_from_server(chroma_name, exc):  # ("Missing metadata segment": a drop under way)
                self._log_sweep_failure(doc_ids, exc)
            # else deleted by another process meanwhile (`_deleted_since_commit` follows it)
        except Exception as exc:
            self._log_sweep_failure(doc_ids, exc)

    @staticmethod
    def _log_sweep_failure(doc_ids: Sequence[str], exc: BaseException) -> None:
        # Committed and visible: those chunks are never shown, and the next write of the document removes them.
        _log_failure(
            logging.WARNING,
            f"removing other versions of {len(doc_ids)} written document(s) failed",
            exc,
            "the next write of those documents removes them (search never shows them)",
        )

    def update_metadata(
        self,
        collection: str,
        ids: Sequence[str],
        metadata: Mapping[str, Any] | None = None,
        remove: Sequence[str] = (),
        fixed_keys: Callable[[str, Mapping[str, Any]], Iterable[str]] | None = None,
    ) -> list[DocumentStatus]:
        """Merge `metadata` into stored documents' metadata and drop the `remove` keys, keeping their text: each
        is written again as a new version (its chunks keep their vectors: the texts are unchanged). All or
        nothing: an unknown id, a change to a key `fixed_keys` names for that document's stored metadata, or a
        result over the metadata bounds refuses the whole call."""
        if isinstance(ids, str | bytes) or not isinstance(ids, Sequence) or not ids:
            raise RiftError("ids must be a non-empty list of document ids")
        self._check_call_count(len(ids), "ids")
        for i, doc_id in enumerate(ids):
            check_text(doc_id, f"ids[{i}]", MAX_ID_CHARS)
        changes = check_metadata(metadata, "metadata")
        if isinstance(remove, str | bytes) or not all(isinstance(k, str) and k for k in remove):
            raise RiftError("remove must be a list of metadata keys")
        if not changes and not remove:
            raise RiftError("give metadata to set or keys to remove")
        if both := sorted(set(changes) & set(remove)):
            raise RiftError(f"keys both set and removed: {', '.join(both)}")
        with self._write_lock:
            seen = self._sync_for_write(collection)  # (an unknown collection: NotFoundError naming those there)
            docs: list[tuple[str, str, dict[str, Any]]] = []
            missing: list[str] = []
            for doc_id in dict.fromkeys(ids):
                found = self.state.document(collection, doc_id)
                if found is None:
                    missing.append(doc_id)
                    continue
                fixed = set(fixed_keys(doc_id, found[2])) if fixed_keys else set()
                fixed = sorted(fixed & (set(changes) | set(remove)))
                if fixed:
                    raise RiftError(
                        f"document {doc_id!r} was read from a file, whose sync sets {', '.join(fixed)}: "
                        "change the file instead"
                    )
                merged = {k: v for k, v in found[2].items() if k not in remove} | changes
                docs.append((doc_id, found[1], check_metadata(merged, f"the metadata of {doc_id!r}")))
            if missing:
                shown = ", ".join(repr(d) for d in missing[:10]) + (" ..." if len(missing) > 10 else "")
                counted = "1 id is" if len(missing) == 1 else f"{len(missing):,} ids are"
                raise NotFoundError(f"{counted} not in collection {collection!r}: {shown}")
            total = sum(len(text) for _, text, _ in docs)
            if total > self.settings.max_chars_per_call:  # each is split and indexed again, as an add would
                if len(docs) == 1:  # stored before the setting was lowered: fewer at a time cannot help
                    raise RiftError(
                        f"document {docs[0][0]!r} holds {total:,} characters, more than one call may write "
                        f"now ({self.settings.max_chars_per_call:,}, setting max_chars_per_call, lowered since "
                        "it was stored): raise the setting to change its metadata"
                    )
                raise RiftError(
                    f"these documents hold {total:,} characters; the limit per call is "
                    f"{self.settings.max_chars_per_call:,} (setting max_chars_per_call): update fewer at a time"
                )
            self.check_room()
            # Written as read: no second sync with other processes in between (a newer version one brought in
            # would be overwritten with the text read before it).
            return self._write_into(collection, docs, None, read_at=seen)

    def delete_documents(
        self, collection: str, ids: Sequence[str], rename_targets: Collection[str] = ()
    ) -> tuple[list[str], list[str]]:
        """Returns (deleted ids, ids that were not present). `rename_targets`: documents that one of `ids` may
        have been renamed to (a file sync's, stored before it prunes): a deleted document whose text one of
        them holds, whole or after a small edit, one to one, hands its logged passages on to it
        (`StateStore._renamed`)."""
        if isinstance(ids, str | bytes) or not isinstance(ids, Sequence):
            raise RiftError("ids must be a list of document ids")
        if not ids:
            raise RiftError("ids must contain at least one document id")
        for i, doc_id in enumerate(ids):
            if not isinstance(doc_id, str) or not doc_id:
                raise RiftError(f"ids[{i}] must be a non-empty string")
            if doc_id.strip():  # a blank id cannot exist; it is reported as not found
                check_text(doc_id, f"ids[{i}]", MAX_ID_CHARS)
        with self._write_lock:
            seen = self._sync_for_write(collection)
            present = self.state.doc_hashes(collection, list(dict.fromkeys(ids)))
            deleted = [d for d in dict.fromkeys(ids) if d in present]
            missing = [d for d in dict.fromkeys(ids) if d not in present]
            self._delete_present(collection, deleted, seen, rename_targets)
        return deleted, missing

    def delete_matching(
        self, collection: str, filters: Mapping[str, Any] | None, limit: int
    ) -> tuple[list[str], int]:
        """Delete the first `limit` documents (by id) whose metadata matches `filters` (the search grammar,
        $prefix on source included, over document metadata as list_documents reads it). Returns (deleted ids,
        matching documents left). A filter naming a field no document has is refused: `$ne`/`$nin` match a
        document without the field, so a typo (or a chunk's own key such as heading) would match them all."""
        node = parse_filters(filters)
        if node is None:
            raise RiftError(  # (read by agents and by `rift delete`'s users alike)
                "filters must hold at least one condition; to empty a collection, delete the collection instead "
                "(the delete_collection tool; `rift collections delete NAME`)"
            )
        with self._write_lock:
            seen = self._sync_for_write(collection)
            docs = self.state.list_documents(collection, -1, 0)
            columns = document_columns([m for _, m in docs], node)
            unknown = sorted(fields_of(node) - columns.fields)
            if unknown and docs:
                raise RiftError(
                    f"filters name {named_fields(unknown)}, which no document in {collection!r} has in "
                    "its metadata (delete filters read document metadata, as list_documents does; a chunk's "
                    "heading, symbol or page is not): nothing was deleted"
                )
            keep = mask(node, columns)
            matched = [d for (d, _), ok in zip(docs, keep, strict=True) if ok]
            doomed = matched[:limit]
            self._delete_present(collection, doomed, seen)
            return doomed, len(matched) - len(doomed)

    def _sync_for_write(self, collection: str) -> float:
        """With a shared Chroma server, catch up with other processes first (hold the write lock). Returns the
        time before that: versions of a document other processes write after it were not seen by the caller."""
        seen = time.time()
        if self.shared is not None:
            self.shared.sync(force=True)
            self.shared.check_served_here(collection)
        self._record(collection)
        return seen

    def _delete_present(
        self, collection: str, doc_ids: Sequence[str], seen: float, rename_targets: Collection[str] = ()
    ) -> None:
        """Delete documents the state holds (hold the write lock, after `_sync_for_write`, which gave `seen`)."""
        if not doc_ids:
            return
        record = self._record(collection)
        stale = self.state.chunk_ids_of_docs(collection, list(doc_ids))
        if self.shared is not None:  # versions of these documents other processes wrote before the sync
            with self._unless_deleted_meanwhile(collection, record.chroma_name):
                older = self.shared.older_versions(record.chroma_name, list(doc_ids), seen, set())
            stale = sorted(set(stale) | older)
        self._commit(
            collection,
            record.chroma_name,
            [],
            None,
            stale,
            remove_docs=list(doc_ids),
            rename_targets=rename_targets,
        )

    def reembed(
        self,
        collection: str,
        embedder: Embedder,
        progress: Callable[[int, int], None] | None = None,
        keep_old: bool = False,
    ) -> str:
        """Embed every chunk with `embedder` into that model's Chroma collection, then switch to it atomically.
        Searches keep using the old collection until the switch."""
        self.build_vectors(collection, embedder, progress)
        return self.switch_vectors(collection, embedder, keep_old)

    def build_vectors(
        self, collection: str, embedder: Embedder, progress: Callable[[int, int], None] | None = None
    ) -> str:
        """Fill `embedder`'s Chroma collection for `collection` without switching to it (a gate can compare it
        first). A kept collection of the same model version (an earlier swap, or an interrupted one) is reused:
        only the chunks it lacks are embedded, so switching back to a kept version is fast. The Chroma name
        hashes the model version, so a model of another dimension never lands in another model's collection."""
        record = self._record(collection)
        if self.shared is not None:  # not from a state that another process's switch left behind
            self.shared.check_served_here(collection, lost_ok=True)
        target = chroma_name_for(collection, embedder.version)
        if target == record.chroma_name:
            return target
        self.check_room()  # the biggest write of all: a whole new Chroma collection
        self.vectors.ensure(
            target,
            embedder.dimension,
            {"rift:collection": collection, "rift:model_version": embedder.version},
        )
        have = set(self.vectors.all_ids(target))
        rows = [r for r in self.state.iter_chunks(collection) if r.chunk_id not in have]
        if rows:
            self._upsert_rows(target, rows, embedder.encode_documents([r.text for r in rows], progress))
        elif progress is not None:
            progress(0, 0)
        with self._write_lock:
            if self.state.collection(collection) is None:
                # Deleted while this ran (the upsert recreated what the delete dropped): never leave vectors
                # that the next start would adopt as an orphan (noted first: a failed drop is retried).
                self.state.delete_collection(collection, {target: self.vectors.collection_id(target)})
                self._finish_drops([target])
                raise NotFoundError(f"collection {collection!r} was deleted while its vectors were built")
        return target

    @contextmanager
    def writes_paused(self) -> Iterator[None]:
        """No write, delete or switch runs while inside (it is the write lock; re-entrant)."""
        with self._write_lock:
            yield

    def switch_vectors(self, collection: str, embedder: Embedder, keep_old: bool = False) -> str:
        """Catch up on writes made since `build_vectors`, then switch the collection record and its query
        embedder together under the write lock. With keep_old the previous vectors stay (no longer updated;
        a later switch back catches up by the same delta)."""
        target = chroma_name_for(collection, embedder.version)
        with self._write_lock:
            if self.shared is not None:  # other processes' writes so far are part of what is caught up
                self.shared.sync(force=True)
            try:
                record = self._record(collection)
            except NotFoundError:
                if self.shared is not None:  # deleted elsewhere while built here: the vectors must not stay
                    self._drop_quietly(target, collection, embedder.version, reason="deleted")
                raise
            if target == record.chroma_name:
                return target
            if self.shared is not None:
                # Switched to another model elsewhere: this state lacks that process's writes, and a switch
                # from it would drop them from the server.
                self.shared.check_served_here(collection, lost_ok=True)
            current = {r.chunk_id: r for r in self.state.iter_chunks(collection)}
            # (Not there when the collection was created after `build_vectors` ran: all of it goes in now.)
            self.vectors.ensure(
                target,
                embedder.dimension,
                {"rift:collection": collection, "rift:model_version": embedder.version},
            )
            have = set(self.vectors.all_ids(target))
            self._embed_into(target, [current[c] for c in current.keys() - have], embedder)
            self.vectors.delete(target, sorted(have - current.keys()))
            old = record.chroma_name
            self._embedders[embedder.version] = embedder
            self.state.put_collection(collection, target, embedder.version)
            if self.shared is not None:  # other processes sharing the Chroma server follow the switch
                self.shared.remember(target)
                self.shared.publish(collection, target, embedder.version)
                self.shared.switched(collection, old)
                self.shared.restored(collection)  # new vectors, whole: a collection the server lost is back
            if not keep_old:
                self._drop_quietly(old, collection, embedder.version)
            self._load_vector_copy(collection)
        return target

    def keyword_snapshot(self, collection: str) -> KeywordSnapshot:
        """The rows of `collection` as searches now see them (BM25 postings, and the vector copy when held);
        empty for a collection without any. For analyses that score the index outside a search."""
        return (self._keyword.get(collection) or KeywordIndex()).snapshot

    def vector_ranking(self, collection: str, embedder: Embedder, query: str, depth: int) -> list[Candidate]:
        """Documents ranked by `embedder`'s vectors for `collection` (built or live), best chunk per document.
        Used to compare a candidate model with the serving one before switching."""
        if self.shared is not None:  # not from vectors another process switched to, or the server lost
            self.shared.check_served_here(collection)
        snap = self.keyword_snapshot(collection)
        if not snap.live_count:
            return []
        import chromadb.errors

        name = chroma_name_for(collection, embedder.version)
        try:
            found = self.vectors.query(name, embedder.encode_query(query), min(depth, snap.live_count), None)
        except chromadb.errors.NotFoundError:  # created after the candidate's vectors were built
            raise NotFoundError(f"collection {collection!r} has no vectors of model {embedder.version!r}") from None
        out = []
        for chunk_id, score in found:
            row = snap.row_of.get(chunk_id)
            if row is not None and snap.alive[row]:
                out.append(Candidate(snap.rows[row].doc_id, chunk_id, score))
        return _group(out, True)

    # --- reads ---------------------------------------------------------------------------------------------

    def check_query(self, query: Any, k: Any, mode: Any) -> tuple[str, int, Mode]:
        query = check_query_text(query)
        if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= self.settings.max_k:
            raise RiftError(f"k must be an integer from 1 to {self.settings.max_k} (setting max_k)")
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
        # With a Chroma server that cannot be reached, what is wrong: the search answers from the keyword side.
        unreachable = self.shared.before_search(collection) if self.shared is not None else None
        try:
            record = self._record(collection)
        except NotFoundError as exc:
            if unreachable is not None:
                raise unseen_while_unreachable(exc, unreachable) from None
            # Created by another process since the last check (within chroma_sync_ms): look now.
            if self.shared is None:
                raise
            asked = time.monotonic()
            try:
                moved = self.shared.sync(force=True)
            except Exception as failed:
                problem = self.shared.note_unreachable(failed, asked)
                if problem is None:
                    raise
                raise unseen_while_unreachable(exc, problem) from None
            if not moved:
                raise
            record = self._record(collection)
        index = self._keyword.get(collection) or KeywordIndex()
        snap = index.snapshot
        depth = depth or self.settings.candidate_depth
        depth = max(depth, k)
        timings: dict[str, float] = {}
        version = record.model_version
        terms: list[int] = []

        def keyword_side(depth: int = depth) -> tuple[list[Candidate], float]:
            started = time.perf_counter()
            tokens = self.tokenizer.tokenize([query])[0]
            terms.append(len(tokens))
            found = [
                Candidate(r.doc_id, r.chunk_id, s, r) for r, s in index.search(tokens, depth, node, snap)
            ]
            return found, (time.perf_counter() - started) * 1000

        def vector_side(depth: int = depth) -> list[Candidate]:
            nonlocal record, version
            idx, view = index, snap
            for attempt in (0, 1):
                try:
                    t0 = time.perf_counter()
                    embedding = self.embedder_for(record).encode_query(query)
                    t1 = time.perf_counter()
                    timings["embed_ms"] = (t1 - t0) * 1000
                    exact = idx.vector_search(embedding, depth, node, version, self._side, view)
                    if exact is not None:
                        # Rows of a published snapshot, masked by its liveness: acknowledged writes only.
                        found = [Candidate(row.doc_id, row.chunk_id, score, row) for row, score in exact]
                    elif not view.live_count:  # (a collection made again elsewhere, still empty)
                        found = []
                    else:
                        found = []
                        # Chroma may hold rows of a write not yet acknowledged: keep them invisible.
                        for chunk_id, score in self.vectors.query(
                            record.chroma_name, embedding, min(depth, view.live_count), to_chroma(node)
                        ):
                            at = view.row_of.get(chunk_id)
                            if at is not None and view.alive[at]:
                                row = view.rows[at]
                                found.append(Candidate(row.doc_id, chunk_id, score, row))
                    timings["vector_ms"] = (time.perf_counter() - t1) * 1000
                    return found
                except Exception as exc:
                    if chroma_not_answering(exc):
                        raise  # down or hung: asking it again below would fail or wait as long again
                    # A model swap switched this collection (and may have released the old model or dropped
                    # its vectors) between reading the record and querying: answer from the new (record,
                    # embedder) pair, which are always switched together. Another process sharing the Chroma
                    # server may have deleted or switched it since the last check: look now, so the answer
                    # says so rather than relaying Chroma's error.
                    if self.shared is not None and not attempt:
                        self.shared.sync(force=True)
                        if self._gone_from_server(record.chroma_name, exc):
                            self._look_again_on_server(collection)
                        self.shared.check_served_here(collection)
                    fresh = self._record(collection)
                    if self.shared is None and fresh.created_at != record.created_at:
                        # Deleted and made again by a write of this process while the search ran: neither
                        # answer would match the keyword side's, read from the collection that was deleted.
                        raise RiftError(
                            f"collection {collection!r} was deleted and created again while this search ran; "
                            "search again"
                        ) from None
                    # (Shared: a collection deleted and re-created elsewhere keeps its name; the sync above
                    # dropped the stale handle, so one more try reaches the new one.)
                    if attempt or (fresh.chroma_name == record.chroma_name and self.shared is None):
                        raise
                    if fresh.chroma_name == record.chroma_name:
                        self.vectors.forget(record.chroma_name)  # a stale handle to a re-created collection
                    record, version = fresh, fresh.model_version
                    if self.shared is not None:  # the sync may have read a re-created collection's chunks
                        idx = self._keyword.get(collection) or KeywordIndex()
                        view = idx.snapshot
            return []  # unreachable: the second attempt returns or raises

        # `depth` counts chunks; grouped by document, a few long documents can fill it and leave few documents.
        # Each side is then read deeper until it holds this many documents (or all the collection has): a
        # number that does not depend on k (for every k up to it), so a larger k only extends the hits and never
        # reorders them (a document's fused score would otherwise lack the side that a shallow read missed).
        # Past 16 times the depth a side is read deeper only while it holds fewer than k documents, so a filter
        # that passes a few very long documents does not make every search read all their chunks.
        doc_target = max(k, min(self.settings.max_k, depth))
        ceiling = depth * 16

        def deepened(found: list[Candidate], side: Callable[[int], list[Candidate]]) -> list[Candidate]:
            reach = depth
            while group_by_document and len(found) >= reach and reach < snap.live_count:
                documents = len({c.doc_id for c in found})
                if documents >= doc_target or (documents >= k and reach >= ceiling):
                    break
                if documents >= snap.live_documents:  # (counted only here: a few long documents fill the depth)
                    break
                reach = min(reach * 4, snap.live_count)
                found = side(reach)
            return found

        if unreachable is not None and mode == "vector":
            raise RiftError(f"a vector search needs the Chroma server, which holds the vectors: {unreachable}")
        overlapped = self._side.submit(keyword_side) if mode == "hybrid" else None
        vector: list[Candidate] = []
        if mode in ("hybrid", "vector") and snap.live_count and unreachable is None:
            asked = time.monotonic()
            try:
                vector = deepened(vector_side(), vector_side)
            except Exception as exc:
                # The server went away after the check: a hybrid search still answers from its keyword side.
                if self.shared is None or mode != "hybrid":
                    raise
                unreachable = self.shared.note_unreachable(exc, asked)
                if unreachable is None:
                    raise
        keyword: list[Candidate] = []
        if mode in ("hybrid", "keyword"):
            keyword, timings["keyword_ms"] = overlapped.result() if overlapped else keyword_side()
            keyword = deepened(keyword, lambda reach: keyword_side(reach)[0])

        t0 = time.perf_counter()
        vector_chunks, keyword_chunks = vector, keyword
        vector = _group(vector, group_by_document)
        keyword = _group(keyword, group_by_document)
        v_keys = [c.doc_id for c in vector] if group_by_document else [c.chunk_id for c in vector]
        k_keys = [c.doc_id for c in keyword] if group_by_document else [c.chunk_id for c in keyword]
        v_rank = {key_: i for i, key_ in enumerate(v_keys, 1)}
        k_rank = {key_: i for i, key_ in enumerate(k_keys, 1)}
        # The fusion weights balance two sides; a one-sided search ranks by its own side (a weight of 0
        # would otherwise empty it).
        w = (
            (weights or (self.settings.vector_weight, self.settings.keyword_weight))
            if mode == "hybrid"
            else (1, 1)
        )
        if not (v_keys and k_keys):
            # One side found nothing (a query of stopwords only has no keyword terms): the other ranks alone, as
            # in a one-sided search, even with a weight of 0, which would otherwise leave no hits at all.
            w = (w[0] or 1, w[1] or 1)
        rrf_k = rrf_k or self.settings.rrf_k
        fused = rrf([v_keys, k_keys], k=rrf_k, weights=w, limit=k)
        if group_by_document:
            best = _shown_chunks((key_ for key_, _ in fused), vector_chunks, keyword_chunks, w, rrf_k, query)
        else:  # (keys are chunks: either side's candidate is that chunk)
            best = {
                key_: vector[v_rank[key_] - 1] if key_ in v_rank else keyword[k_rank[key_] - 1] for key_, _ in fused
            }
        timings["fusion_ms"] = (time.perf_counter() - t0) * 1000
        t0 = time.perf_counter()
        # Text from the snapshot row where it is held (the same snapshot ranked it), else from SQLite.
        held = {
            key_: best[key_].row for key_, _ in fused if best[key_].row and best[key_].row.text is not None
        }
        missing = [best[key_].chunk_id for key_, _ in fused if key_ not in held]
        stored = self.state.chunks_by_id(collection, missing) if missing else {}
        hits = []
        for key_, score in fused:
            cand = best[key_]
            source: KeywordRow | ChunkRow | None = held.get(key_) or stored.get(cand.chunk_id)
            if source is None:
                continue  # deleted between ranking and hydration
            meta = {m: v for m, v in source.metadata.items() if not m.startswith(RESERVED_PREFIX)}
            start, end = source.metadata.get("_rift_start"), source.metadata.get("_rift_end")
            hits.append(
                Hit(
                    cand.doc_id,
                    cand.chunk_id,
                    source.text,
                    meta,
                    score,
                    v_rank.get(key_),
                    k_rank.get(key_),
                    int(start) if isinstance(start, int | float) else None,
                    int(end) if isinstance(end, int | float) else None,
                    vector[v_rank[key_] - 1].score if key_ in v_rank else None,
                    keyword[k_rank[key_] - 1].score if key_ in k_rank else None,
                )
            )
        timings["hydrate_ms"] = (time.perf_counter() - t0) * 1000
        warnings = [unreachable] if unreachable is not None else []
        if mode == "keyword" and terms and not terms[0]:  # (no hits, and no word of why: say it)
            warnings.append(
                "the query has no keyword terms (only stopwords or symbols), so keyword mode finds nothing: "
                "search in hybrid or vector mode"
            )
        if node is not None and not hits and snap.live_count and snap.columns is not None:
            why = _unmatchable_filter(node, snap, collection)
            if why is not None:
                warnings.append(why)
        return SearchOutcome(
            collection,
            query,
            mode,
            k,
            hits,
            vector,
            keyword,
            version,
            timings,
            terms[0] if terms else None,
            record.created_at,
            warnings,
            vector_skipped=mode == "hybrid" and unreachable is not None,
        )

    def follow_others(self, force: bool = False, probe: bool = True) -> str | None:
        """With a shared Chroma server, catch up with other processes' writes (at most every chroma_sync_ms
        unless `force`: a write checks first regardless), so reads agree with searches. A read (not `force`)
        answers from this process's copy while the server cannot be reached, as a search does: the returned
        problem says why (None when caught up). `probe=False`: not the call that asks a server found down
        whether it answers again (see SharedSync.catch_up)."""
        if self.shared is None:
            return None
        if force:
            self.shared.sync(force=True)
            return None
        return self.shared.catch_up(probe)

    def get_document(self, collection: str, doc_id: str) -> tuple[str, dict[str, Any], int, float]:
        self.follow_others()
        self._record(collection)
        found = self.state.document(collection, doc_id)
        if found is None:
            raise NotFoundError(f"no document {doc_id!r} in collection {collection!r}")
        _, text, meta, updated = found
        return text, meta, len(self.state.document_chunks(collection, doc_id)), updated
