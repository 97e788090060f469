"""Token-aware chunking: windows of the embedding model's own tokens, cut back to a sentence end when one is
near, with overlap, returned as exact slices of the original text."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

# Raise when a change here (or in the file-type splitters) cuts stored documents differently: every data dir
# then re-chunks its documents once at start-up (Engine.rechunk_if_changed).
CHUNKER_VERSION = 2  # 2: cuts at whitespace, not inside a word (v1 began chunks with "ynthesis experiments")
SENTENCE_ENDS = frozenset(".!?;")
WIDE_SENTENCE_ENDS = frozenset("。！？；")  # scripts written without spaces end sentences with these


@dataclass(frozen=True)
class Chunk:
    text: str
    start: int  # character offsets into the document
    end: int
    metadata: Mapping[str, Any] = field(default_factory=dict)  # per chunk, e.g. {"heading": "Setup > Linux"}


def chunk_text(text: str, tokenizer: Any, max_tokens: int, overlap: int) -> list[Chunk]:
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

    def at_space(i: int) -> bool:
        """Whether a chunk may begin at token i (or end before it): whitespace separates it from the token
        before, so no word is cut in two (a tokenizer also skips characters inside a word, such as the
        combining accents of decomposed text: such a gap is no boundary)."""
        if i == 0 or i == n:
            return True
        gap = text[offsets[i - 1][1] : offsets[i][0]]
        return bool(gap) and (gap.isspace() or any(c.isspace() for c in gap))

    def ends_sentence(cut: int) -> bool:
        last = text[offsets[cut - 1][1] - 1]
        if last in WIDE_SENTENCE_ENDS:
            return True
        # "3.14" or "e.g.x" is no sentence end: one is followed by whitespace, a line break is one too.
        return at_space(cut) and (last in SENTENCE_ENDS or "\n" in text[offsets[cut - 1][1] : offsets[cut][0]])

    def window_end(start: int) -> int:
        end = min(start + max_tokens, n)
        if end == n:
            return end
        # Prefer to end on a sentence (or line) end in the last 40% of the window, else between words (as late
        # as the window has one); a window without a space (CJK, a long URL) is cut between tokens.
        floor = start + int(max_tokens * 0.6)
        cut = next((c for c in range(end, floor, -1) if ends_sentence(c)), None)
        return cut or next((c for c in range(end, start, -1) if at_space(c)), None) or end

    chunks: list[Chunk] = []
    start, last_end = 0, 0
    while start < n:
        end = window_end(start)
        if end <= last_end:  # the overlap left no room before a long word: start where the last chunk ended
            start = last_end
            end = window_end(start)
        char_start, char_end = offsets[start][0], offsets[end - 1][1]
        # Characters the tokenizer skipped next to the chunk's edge tokens (a combining accent, a zero-width
        # mark) belong to those words: keep them in the chunk's text.
        char_end += len(_word_tail(text[char_end : offsets[end][0] if end < n else len(text)]))
        char_start -= len(_word_tail(text[offsets[start - 1][1] if start else 0 : char_start][::-1]))
        chunks.append(Chunk(text[char_start:char_end], char_start, char_end))
        if end >= n:
            break
        # The next chunk starts `overlap` tokens back, moved forward to a word's start (a little less overlap),
        # else back to one (a little more), else at `end` (none: a word longer than the overlap); never at or
        # before `start`.
        back = max(end - overlap, start + 1)
        begin = next((i for i in range(back, end) if at_space(i)), None)
        if begin is None:
            begin = next((i for i in range(back - 1, max(start, back - overlap), -1) if at_space(i)), None)
        start, last_end = (begin if begin is not None else end if at_space(end) else back), end
    return chunks


def _word_tail(gap: str) -> str:
    """The leading part of `gap` before its first whitespace."""
    for i, c in enumerate(gap):
        if c.isspace():
            return gap[:i]
    return gap


def chunk_document(
    text: str, metadata: Mapping[str, Any], tokenizer: Any, max_tokens: int, overlap: int
) -> list[Chunk]:
    """Structure-aware chunks when the document's `file_type` has a splitter (Markdown headings, code symbols,
    PDF pages: see server.ingest.splitters), else plain token windows."""
    from server.ingest.splitters import chunk_structured  # lazy: the engine does not need ingest to import

    chunks = chunk_structured(text, metadata, tokenizer, max_tokens, overlap)
    return chunk_text(text, tokenizer, max_tokens, overlap) if chunks is None else chunks
