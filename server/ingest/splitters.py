"""Structure-aware chunking, chosen by a document's `file_type` metadata.

A splitter cuts the text into contiguous sections (a Markdown/RST heading's section, a Python function or
class, a blank-line block of other code, a PDF page), each with a path such as ("Install", "Linux") or
("Engine", "search"). Sections are then packed: neighbours are merged while they fit in one chunk and share a
path prefix (so a chunk never mixes two unrelated top-level sections), and a section too long for one chunk is
cut into token windows. Each chunk records its path under `heading` (documents) or `symbol` (code), and PDF
chunks their `page` (pages are never packed together).
"""

from __future__ import annotations

import ast
import logging
import re
from bisect import bisect_left
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from server.engine.chunking import PROSE_SINCE, Chunk, chunk_text
from server.ingest.extract import markdown_headings, rst_headings
from server.ingest.filetypes import CODE_TYPES

log = logging.getLogger(__name__)
BLANK_RUN = re.compile(r"\n[ \t]*\n(?:[ \t]*\n)*")
# Every chunk of a section carries its path, so an unbounded heading (a paragraph a "---" line turns into a
# setext heading, a file that is one long "# ..." line) would be stored once per chunk: quadratic in the file.
MAX_PATH_PART_CHARS = 200
MAX_PATH_CHARS = 1000
# A packed group of fewer tokens than this (or than an eighth of the chunk size) is glued onto a neighbour's
# windows rather than stored as a chunk of its own (_glue_small).
SMALL_GROUP_TOKENS = 32


@dataclass(frozen=True)
class Section:
    start: int
    end: int
    path: tuple[str, ...] = ()
    meta: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Splitter:
    split: Callable[[str], list[Section]]
    label: str | None = None  # metadata key that receives the joined path
    joiner: str = " > "
    lines: bool = False  # code: a section longer than a chunk is windowed at line starts (chunk_text)
    since: int = PROSE_SINCE  # the chunker version since which this kind is cut as now (chunking.document_chunking)


def path_label(path: tuple[str, ...], joiner: str = " > ") -> str:
    """A section path as its chunks' label ("Install > Linux"), each part and the whole bounded."""
    return _clip(joiner.join(_clip(part, MAX_PATH_PART_CHARS) for part in path), MAX_PATH_CHARS)


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _line_starts(text: str) -> list[int]:
    return [0, *(m.end() for m in re.finditer("\n", text))]


def _sections_from_bounds(text: str, bounds: list[tuple[int, tuple[str, ...]]]) -> list[Section]:
    """bounds: (char offset where a section starts, its path), in order; a later bound at the same offset wins."""
    starts: dict[int, tuple[str, ...]] = {0: ()}
    for offset, path in bounds:
        starts[min(max(offset, 0), len(text))] = path
    ordered = sorted(starts.items())
    ends = [o for o, _ in ordered[1:]] + [len(text)]
    return [Section(o, e, p) for (o, p), e in zip(ordered, ends, strict=True) if e > o]


def _heading_sections(text: str, headings: list[tuple[int, int, str]]) -> list[Section]:
    lines = _line_starts(text)
    stack: list[tuple[int, str]] = []
    bounds: list[tuple[int, tuple[str, ...]]] = []
    for level, line, title in headings:
        while stack and stack[-1][0] >= level:
            stack.pop()
        stack.append((level, title or "(untitled)"))
        bounds.append((lines[line] if line < len(lines) else len(text), tuple(t for _, t in stack)))
    return _sections_from_bounds(text, bounds)


def split_markdown(text: str) -> list[Section]:
    return _heading_sections(text, markdown_headings(text))


def split_rst(text: str) -> list[Section]:
    return _heading_sections(text, rst_headings(text))


def split_pdf(text: str) -> list[Section]:
    out: list[Section] = []
    start = 0
    for page, piece in enumerate(text.split("\f"), 1):
        out.append(Section(start, start + len(piece), (), {"page": page}))
        start += len(piece) + 1
    return out


def split_blocks(text: str) -> list[Section]:
    """Runs of non-blank lines; packing merges them back up to the chunk size, so cuts fall on blank lines."""
    cuts = [m.end() for m in BLANK_RUN.finditer(text)]
    return _sections_from_bounds(text, [(c, ()) for c in cuts])


def split_python(text: str) -> list[Section]:
    """Top-level functions and classes, and each method of a class, with their decorators and the comment
    lines right above them. Code that does not parse falls back to blank-line blocks."""
    try:
        tree = ast.parse(text)
    except (SyntaxError, ValueError):
        return split_blocks(text)
    lines = text.split("\n")
    starts = _line_starts(text)

    def offset(line: int) -> int:  # 0-based line index -> char offset
        return starts[line] if line < len(starts) else len(text)

    def first_line(node: ast.AST, floor: int) -> int:
        first = min([node.lineno] + [d.lineno for d in getattr(node, "decorator_list", [])]) - 1
        while first - 1 >= floor and lines[first - 1].lstrip().startswith("#"):
            first -= 1
        return first

    defs = (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)
    bounds: list[tuple[int, tuple[str, ...]]] = []
    floor = 0
    for node in tree.body:
        if not isinstance(node, defs):
            floor = node.end_lineno or floor
            continue
        bounds.append((offset(first_line(node, floor)), (node.name,)))
        if isinstance(node, ast.ClassDef):
            inner = node.lineno
            for sub in node.body:
                if isinstance(sub, ast.FunctionDef | ast.AsyncFunctionDef):
                    bounds.append((offset(first_line(sub, inner)), (node.name, sub.name)))
                    bounds.append((offset(sub.end_lineno or sub.lineno), (node.name,)))
                inner = sub.end_lineno or inner
        floor = node.end_lineno or node.lineno
        bounds.append((offset(floor), ()))
    return _sections_from_bounds(text, bounds)


SPLITTERS: dict[str, Splitter] = {
    "markdown": Splitter(split_markdown, "heading", since=2),
    "rst": Splitter(split_rst, "heading", since=2),
    "pdf": Splitter(split_pdf),  # (one section a page, each its own metadata: _glue_small never joins them)
    **{t: Splitter(split_blocks, lines=True, since=2) for t in CODE_TYPES},
    "python": Splitter(split_python, "symbol", ".", lines=True, since=2),
}


def cut_since(metadata: Mapping[str, Any]) -> int:
    """The chunker version since which a document of this `file_type` is cut as now."""
    splitter = SPLITTERS.get(metadata.get("file_type"))  # type: ignore[arg-type]
    return PROSE_SINCE if splitter is None else splitter.since


def cut_now_types() -> set[str]:
    """The file types the current chunker cuts otherwise than the one before it (Splitter.since is current)."""
    from server.engine.chunking import CHUNKER_VERSION

    return {t for t, splitter in SPLITTERS.items() if splitter.since == CHUNKER_VERSION}


def _common(a: tuple[str, ...], b: tuple[str, ...]) -> tuple[str, ...]:
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    return a[:n]


def pack(
    text: str, sections: list[Section], splitter: Splitter, tokenizer: Any, max_tokens: int, overlap: int
) -> list[Chunk]:
    offsets = tokenizer(
        text, add_special_tokens=False, return_offsets_mapping=True, truncation=False, verbose=False
    )["offset_mapping"]
    token_starts = [s for s, e in offsets if e > s]

    def tokens(a: int, b: int) -> int:
        return bisect_left(token_starts, b) - bisect_left(token_starts, a)

    groups: list[list[Any]] = []  # [start, end, path, meta]
    for sec in sections:
        if not text[sec.start : sec.end].strip():
            if groups:
                groups[-1][1] = sec.end
            continue
        if groups:
            g = groups[-1]
            common = _common(g[2], sec.path)
            # An untitled section (preamble, module-level code) may join its neighbour; titled ones only
            # merge under a shared parent, which then labels the chunk. Sections with their own metadata (a
            # PDF page) never share a chunk: it would carry only the first one's.
            same_meta = g[3] == dict(sec.meta)
            if same_meta and (common or not g[2] or not sec.path) and tokens(g[0], sec.end) <= max_tokens:
                g[1] = sec.end
                g[2] = common if (g[2] and sec.path) else (g[2] or sec.path)
                continue
        groups.append([sec.start, sec.end, sec.path, dict(sec.meta)])
    groups = _glue_small(groups, tokens, max_tokens)

    chunks: list[Chunk] = []
    for start, end, path, meta in groups:
        if path and splitter.label:
            meta[splitter.label] = path_label(path, splitter.joiner)
        piece = text[start:end]
        if tokens(start, end) <= max_tokens:
            stripped = piece.strip()
            if stripped:
                at = start + piece.find(stripped)
                chunks.append(Chunk(stripped, at, at + len(stripped), meta))
            continue
        for ch in chunk_text(piece, tokenizer, max_tokens, overlap, splitter.lines):
            chunks.append(Chunk(ch.text, start + ch.start, start + ch.end, meta))
    return chunks


def _glue_small(groups: list[list[Any]], tokens: Callable[[int, int], int], max_tokens: int) -> list[list[Any]]:
    """A group too small to be a useful chunk (a class line before a long first method, a heading before a long
    subsection, a comment between two long functions) is left by packing only when its neighbours are too long
    to share one chunk with it. It then joins the front of the next group, which keeps its own label, when that
    one's path lies under the small one's (a class and its method; an untitled comment before anything), else
    the end of the previous one likewise; never across other metadata (PDF pages). The neighbour is then
    windowed (chunk_text) if it was not: two windows in place of the two chunks."""
    small = min(SMALL_GROUP_TOKENS, max_tokens // 8)

    def joins(g: list[Any], other: list[Any]) -> bool:
        # (the small group's path is the neighbour's, or a parent of it: its label stays true of the text)
        return g[3] == other[3] and other[2][: len(g[2])] == g[2]

    out: list[list[Any]] = []
    for i, g in enumerate(groups):
        if tokens(g[0], g[1]) < small:
            if i + 1 < len(groups) and joins(g, groups[i + 1]):
                groups[i + 1][0] = g[0]
                continue
            if out and joins(g, out[-1]):
                out[-1][1] = g[1]
                continue
        out.append(g)
    return out


def chunk_structured(
    text: str, metadata: Mapping[str, Any], tokenizer: Any, max_tokens: int, overlap: int
) -> list[Chunk] | None:
    """Chunks for a document whose `file_type` has a splitter; None means 'use plain token windows'."""
    splitter = SPLITTERS.get(metadata.get("file_type"))  # type: ignore[arg-type]
    if splitter is None:
        return None
    try:
        sections = splitter.split(text)
    except Exception:  # a splitter bug must not lose the document: fall back to plain windows
        log.warning("splitter for %s failed; using plain chunks", metadata.get("file_type"), exc_info=True)
        return None
    return pack(text, sections, splitter, tokenizer, max_tokens, overlap) if sections else None
