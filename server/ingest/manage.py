"""Reading back and managing what is stored: whole documents (recording fetches as a learning signal),
filtered document listings, and the collection catalog. Shared by the MCP tools and the CLI."""

from __future__ import annotations

import bisect
import functools
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

from server.engine.engine import check_collection_name
from server.engine.filters import document_columns, mask, parse_filters, unknown_fields_problem
from server.engine.shared import unseen_while_unreachable
from server.engine.state_store import DocumentEntry
from server.errors import NotFoundError, RiftError
from server.learning.query_log import is_query_id, not_logged

MAX_LIST = 1000


T = TypeVar("T")


def caught_up(read: Callable[..., T]) -> Callable[..., tuple[T, list[str]]]:
    """`read` (whose first argument is the engine, or the app that has it), run after catching up with other
    processes, returning also why its answer may be out of date: with a shared Chroma server that cannot be
    reached, reads answer from this process's copy, as searches do. Keeps `read`'s signature, so argument
    checks name its parameters."""

    @functools.wraps(read)
    def run(*args: Any, **kwargs: Any) -> tuple[T, list[str]]:
        engine = args[0] if hasattr(args[0], "follow_others") else args[0].engine()
        problem = engine.follow_others()
        try:
            result = read(*args, **kwargs)
        except NotFoundError as exc:
            if problem is None:
                raise
            raise unseen_while_unreachable(exc, problem) from None
        return result, [problem] if problem else []

    return run


@dataclass(frozen=True)
class DocumentView:
    collection: str
    doc_id: str
    text: str
    metadata: dict[str, Any]
    chunks: int
    updated_at: float
    total_chars: int
    offset: int
    truncated: bool
    fetch_recorded: bool
    warnings: list[str] = field(default_factory=list)  # why a query_id given was not recorded against


def _check_int(value: Any, where: str, low: int, high: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < low or (high and value > high):
        bound = f"from {low} to {high}" if high else f"of at least {low}"
        raise RiftError(f"{where} must be an integer {bound}")
    return value


def get_document(
    rift: Any,
    collection: str,
    doc_id: str,
    query_id: str | None = None,
    offset: int = 0,
    max_chars: int | None = None,
) -> DocumentView:
    """A stored document's text (or a window of it) and metadata. With `query_id` (from hybrid_search), the
    read is recorded against that search in the query log."""
    if not isinstance(doc_id, str) or not doc_id:
        raise RiftError("doc_id must be a non-empty string")
    if not _is_unicode(doc_id):  # (SQLite cannot take it: a UnicodeEncodeError traceback)
        raise RiftError("doc_id is not valid Unicode: give a stored document's id (rift list shows them)")
    _check_int(offset, "offset", 0)
    if max_chars is not None:
        _check_int(max_chars, "max_chars", 1)
    engine = rift.engine()
    logged = None
    warnings = []
    if query_id is not None:
        if not isinstance(query_id, str) or not query_id.strip():
            raise RiftError("query_id must be a non-empty string (the query_id a hybrid_search returned)")
        # A query_id of the wrong form is a caller's mistake (a doc_id or the query's text passed instead), and
        # is refused as other arguments are. One of the right form that the log no longer holds (pruned past
        # log_max_queries, or its collection deleted and made again) is no mistake: the document is what the
        # agent came for, so it is returned, with why the read was not recorded.
        if not is_query_id(query_id):
            raise RiftError(
                f"query_id {query_id!r} is not one hybrid_search returns (32 hexadecimal digits): pass the "
                "query_id of the search that found this document, or none"
            )
        if not rift.settings.log_queries or rift.log is None:
            warnings.append("the query log is off (setting log_queries): this read was not recorded")
        else:
            logged = rift.log.get(query_id)
            if logged is None:
                warnings.append(f"{not_logged(query_id, rift.log.max_queries)}; this read was not recorded")
            elif logged.collection != collection:
                raise RiftError(
                    f"query_id {query_id!r} searched collection {logged.collection!r}, not {collection!r}"
                )
    text, metadata, chunks, updated = engine.get_document(collection, doc_id)
    if offset > len(text):  # (at the end exactly, the window is empty: a reader paging on stops there)
        raise RiftError(f"offset {offset} is past the end of document {doc_id!r}, which has {len(text)} characters")
    end = len(text) if max_chars is None else offset + max_chars
    # Recorded only as a read of a document that search's response named (as `feedback` is): another document would
    # become that query's positive though the agent found it elsewhere.
    if logged is not None and doc_id in logged.shown and not rift.log.record_fetch(query_id, doc_id):
        warnings.append(
            f"query {query_id!r} left the query log just now (past log_max_queries the oldest searches go, and a "
            "deleted collection's searches go with it): this read was not recorded"
        )
        logged = None
    if logged is not None and doc_id not in logged.shown:
        warnings.append(
            f"document {doc_id!r} was not among query {query_id!r}'s results or blind spots: this read was not "
            "recorded against it (a read counts only for a document that search showed)"
        )
        logged = None
    return DocumentView(
        collection,
        doc_id,
        text[offset:end],
        metadata,
        chunks,
        updated,
        len(text),
        offset,
        end < len(text),
        logged is not None,
        warnings,
    )


def list_documents(
    engine: Any,
    collection: str,
    filters: Mapping[str, Any] | None,
    limit: int = 50,
    offset: int = 0,
    after: str | None = None,
    id_prefix: str = "",
) -> tuple[int, list[tuple[str, dict[str, Any]]], int]:
    """(number of matching documents, one page of (doc_id, metadata) ordered by id, the page's offset). Filters use the search
    grammar over document metadata ($prefix on source included); chunk-level keys such as heading are not
    document metadata. `after` (a doc_id) starts the page after that id instead of at `offset`: paging by
    the last id seen lists every document once even while others are added or deleted between pages.
    `id_prefix` keeps the documents whose id starts with it (ids are not metadata, so filters cannot)."""
    node = parse_filters(filters)
    if not isinstance(id_prefix, str) or not _is_unicode(id_prefix):
        raise RiftError("id_prefix must be text: the start of the doc_ids to list")
    _check_int(limit, "limit", 1, MAX_LIST)
    _check_int(offset, "offset", 0)
    if after is not None and (not isinstance(after, str) or not after):
        raise RiftError("after must be the doc_id of the last document of the previous page")
    if after is not None and offset:
        raise RiftError("give either after (the last doc_id of the previous page) or offset, not both")
    if after is not None and not _is_unicode(after):
        raise RiftError("after is not valid Unicode: give the doc_id of the last document of the previous page")
    engine.follow_others()
    _check_collection(engine, collection)
    if node is None:  # a page from the primary key: reading every document's metadata took 1 s per 100K
        state = engine.state
        if after is not None:
            offset = state.document_count(collection, up_to=after, prefix=id_prefix)
            page = state.list_documents(collection, limit, 0, after=after, prefix=id_prefix)
            return state.document_count(collection, prefix=id_prefix), page, offset
        total = state.document_count(collection, prefix=id_prefix)
        # past the end the page is empty, as a filtered listing's slice is; SQLite takes no offset over 2**63 - 1
        page = state.list_documents(collection, limit, offset, prefix=id_prefix) if offset < total else []
        return total, page, offset
    docs = engine.state.list_documents(collection, -1, 0, prefix=id_prefix)
    columns = document_columns([m for _, m in docs], node)
    keep = mask(node, columns)
    docs = [d for d, ok in zip(docs, keep, strict=True) if ok]
    if not docs and columns.size and (problem := unknown_fields_problem(node, columns.fields, collection)):
        if id_prefix:  # fields no document under the prefix has: the rest of the collection may have them
            everyone = document_columns([m for _, m in engine.state.list_documents(collection, -1, 0)], node)
            problem = unknown_fields_problem(node, everyone.fields, collection)
        if problem:
            raise RiftError(problem)
    if after is not None:  # ids are ordered as SQLite orders them: by UTF-8 bytes, i.e. by code point
        offset = bisect.bisect_right([d for d, _ in docs], after)
    return len(docs), docs[offset : offset + limit], offset


def list_collections(engine: Any) -> list[dict[str, Any]]:
    engine.follow_others()
    out = []
    for name in engine.collection_names():
        try:
            info = engine.info(name)
        except NotFoundError:
            continue  # deleted since the names were read
        out.append(
            {
                "name": info.name,
                "documents": info.documents,
                "chunks": info.chunks,
                "model_version": info.model_version,
            }
        )
    return out


def _is_unicode(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate: what the shell makes of bytes that are not UTF-8
        return False
    return True


def _check_collection(engine: Any, collection: str) -> None:
    """NotFoundError naming the known collections (or a bad name's error) unless `collection` exists; not
    engine.info, which counts every chunk of the collection."""
    check_collection_name(collection)  # before the state is asked: a name that is not Unicode breaks SQLite
    if engine.state.collection(collection) is None:
        engine.info(collection)


def resource_page(
    engine: Any, start: tuple[str, str] | None, limit: int
) -> tuple[list[tuple[str, DocumentEntry]], tuple[str, str] | None]:
    """Every collection's documents a page at a time: up to `limit` (collection, entry) pairs, ordered by
    collection then id, from `start` = (collection, the last doc_id listed; "" = from its first). Returns the
    page and where the next one starts (None after the last). Paging by the last id lists each document once
    while others are added or deleted."""
    engine.follow_others(probe=False)  # (resources and completions: answered at once)
    names = sorted(engine.collection_names())
    collection, after = start or (names[0] if names else "", "")
    page: list[tuple[str, DocumentEntry]] = []
    for name in names[bisect.bisect_left(names, collection) :]:
        if name != collection:
            after = ""  # a collection deleted since the cursor was made resumes at the next one
        # one more than the page holds: a full last page then ends the listing without an empty page after it
        page += [(name, e) for e in engine.state.document_page(name, after, limit + 1 - len(page))]
        if len(page) > limit:
            last = page[limit - 1]
            return page[:limit], (last[0], last[1].doc_id)
    return page, None


def collection_names(engine: Any) -> list[str]:
    """The collections' names, sorted, with other processes' changes caught up."""
    engine.follow_others(probe=False)  # (resources and completions: answered at once)
    return sorted(engine.collection_names())


def complete_doc_ids(engine: Any, collection: str, prefix: str, limit: int) -> tuple[list[str], int]:
    """Up to `limit` doc_ids of `collection` that start with `prefix` (by id), and how many do."""
    engine.follow_others(probe=False)  # (resources and completions: answered at once)
    _check_collection(engine, collection)
    return engine.state.doc_ids_starting(collection, prefix, limit)
