"""Token-aware chunking: windows of the embedding model's own tokens, cut back to a sentence end when one is
near, with overlap, returned as exact slices of the original text."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

# Raise when a change here (or in the file-type splitters) cuts stored documents differently, and set the
# version since which each kind of document is cut as now (PROSE_SINCE; Splitter.since): every data dir then
# re-chunks once at start-up (Engine.rechunk_if_changed), but a document of a kind the change does not concern
# keeps its version (document_chunking), so only documents cut differently are written again, and of those
# only chunks whose text the collection does not hold yet are embedded.
# 2: code windows start and end on lines; a small section joins its long neighbour (splitters._glue_small);
# plain windows (text, HTML, documents added as text) and PDF pages are cut as in 1.
CHUNKER_VERSION = 2
PROSE_SINCE = 1  # plain token windows (chunk_text without lines)
SENTENCE_ENDS = frozenset(".!?;\n")


@dataclass(frozen=True)
class Chunk:
    text: str
    start: int  # character offsets into the document
    end: int
    metadata: Mapping[str, Any] = field(default_factory=dict)  # per chunk, e.g. {"heading": "Setup > Linux"}


def chunk_text(text: str, tokenizer: Any, max_tokens: int, overlap: int, lines: bool = False) -> list[Chunk]:
    """`lines` (code): a window ends at a line end in its last 40 % when there is one, and the next one starts
    at the first line start inside the overlap (else where the overlap begins), so a chunk of code does not
    begin or end mid-line. Prose windows keep their token cuts (README "Chunks are windows")."""
    if max_tokens < 1:
        raise ValueError("max_tokens must be positive")
    overlap = max(0, min(overlap, max_tokens // 2))
    offsets = tokenizer(
        text, add_special_tokens=False, return_offsets_mapping=True, truncation=False, verbose=False
    )["offset_mapping"]
    offsets = [(s, e) for s, e in offsets if e > s]
    if len(offsets) <= max_tokens:
        stripped = text.strip()
        return [Chunk(stripped, text.find(stripped), text.find(stripped) + len(stripped))] if stripped else []

    n = len(offsets)
    # Token i is the first of its line (code only): a line break, then only blanks, lie between the start of the
    # token before and it. (From the token before's start: byte-level BPE tokenizers, RoBERTa's and GPT's, make
    # the line break a token of its own, so no break lies between two tokens' offsets.)
    first_on_line = [i == 0 or _breaks_line(text[offsets[i - 1][0] : offsets[i][0]]) for i in range(n)] if lines else []
    chunks: list[Chunk] = []
    start = 0
    while start < n:
        end = min(start + max_tokens, n)
        if end < n:
            # Prefer to end on a sentence boundary (code: a line end) in the last 40% of the window.
            floor = start + int(max_tokens * 0.6)
            for cut in range(end, floor, -1):
                if first_on_line[cut] if lines else text[offsets[cut - 1][1] - 1] in SENTENCE_ENDS:
                    end = cut
                    break
        char_start, char_end = offsets[start][0], offsets[end - 1][1]
        chunks.append(Chunk(text[char_start:char_end], char_start, char_end))
        if end >= n:
            break
        start = max(end - overlap, start + 1)
        if lines:
            start = next((i for i in range(start, end) if first_on_line[i]), start)
    return chunks


def _breaks_line(between: str) -> bool:
    at = between.rfind("\n")
    return at >= 0 and not between[at + 1 :].strip()


def document_chunking(chunking: str, metadata: Mapping[str, Any]) -> str:
    """The chunking signature a document's version is hashed with: the collection's (`chunking`, "v<CHUNKER_VERSION>
    tokens=... overlap=..."), its version replaced by the one since which documents of this kind are cut as now.
    A signature of an older chunker (recorded before a bump) is every document's as it stands."""
    from server.ingest.splitters import cut_since  # lazy, as in chunk_document

    current = f"v{CHUNKER_VERSION} "
    if not chunking.startswith(current):
        return chunking
    return f"v{cut_since(metadata)} {chunking[len(current) :]}"


def chunk_document(
    text: str, metadata: Mapping[str, Any], tokenizer: Any, max_tokens: int, overlap: int
) -> list[Chunk]:
    """Structure-aware chunks when the document's `file_type` has a splitter (Markdown headings, code symbols,
    PDF pages: see server.ingest.splitters), else plain token windows."""
    from server.ingest.splitters import chunk_structured  # lazy: the engine does not need ingest to import

    chunks = chunk_structured(text, metadata, tokenizer, max_tokens, overlap)
    return chunk_text(text, tokenizer, max_tokens, overlap) if chunks is None else chunks
