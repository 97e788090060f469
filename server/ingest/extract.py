"""Text and metadata from a file's bytes, one extractor per format, each built on a maintained library:
pypdf (PDF), BeautifulSoup (HTML), markdown-it-py + PyYAML (Markdown headings and front matter),
charset-normalizer (text that is not UTF-8)."""

from __future__ import annotations

import codecs
import datetime as dt
import io
import json
import logging
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from server.engine.engine import MAX_METADATA_KEY, metadata_chars
from server.ingest.filetypes import Family

log = logging.getLogger(__name__)

SNIFF_BYTES = 8192
MAX_FRONT_MATTER_KEYS = 64
MAX_FRONT_MATTER_VALUE = 4096
# All front matter together (keys and values): it is stored with every chunk, and a document's metadata is
# bounded in all (engine.MAX_METADATA_CHARS); the file's own keys need the rest.
MAX_FRONT_MATTER_CHARS = 32_768
MAX_TITLE = 300
# Keys a file document always has; front matter cannot override them.
FILE_KEYS = frozenset({"source", "name", "file_type", "size", "mtime", "title", "sha256", "via"})


def synced_file_keys(doc_id: str, metadata: Mapping[str, Any]) -> frozenset[str]:
    """The keys file sync sets (and compares on the next sync) for a document read from a file, which sync
    recognises by its `source` being its id; none for a document added as text."""
    return FILE_KEYS | {"extractor"} if metadata.get("source") == doc_id else frozenset()


# Deeper bracket nesting than front matter ever needs: PyYAML's time grows with the square of it (32 KB of
# "[[[[" took 41 s), so such front matter is left in the body unparsed.
MAX_FRONT_MATTER_NESTING = 64
FRONT_MATTER = re.compile(r"\A---[ \t]*\n(.*?\n)?(?:---|\.\.\.)[ \t]*(?:\n|\Z)", re.DOTALL)
RST_UNDERLINE = re.compile(r"^([=\-~^\"'`#*+:.])\1+\s*$")
HTML_DROP = ("script", "style", "noscript", "template", "svg", "head")
# Elements that start a new line when a browser lays the page out; any other tag is inline.
# fmt: off
HTML_BLOCKS = frozenset({
    "address", "article", "aside", "blockquote", "body", "caption", "dd", "details", "dialog", "div", "dl", "dt",
    "fieldset", "figcaption", "figure", "footer", "form", "h1", "h2", "h3", "h4", "h5", "h6", "header", "hr",
    "html", "li", "main", "nav", "ol", "p", "pre", "section", "summary", "table", "tbody", "thead", "tfoot",
    "tr", "ul",
})
# fmt: on
_BREAK = "\x00"  # marks a line break (a NUL in a page's own text would only become one)
_VERBATIM = "\x01"  # starts a line of a <pre>: its indentation and spacing are kept


class SkipFile(Exception):  # noqa: N818 - a skip with a reason, not a failure
    """The file is not ingested; the message is the reason shown to the caller."""


@dataclass
class Extracted:
    text: str
    title: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)  # format-specific (front matter, pages)


# Non-ASCII bytes up to which mostly ASCII text that is not UTF-8 is read as Windows-1252 (see decode_text).
FEW_LEGACY_BYTES = 16
_NON_ASCII = bytes(range(128, 256))


def utf16_without_bom(data: bytes) -> str | None:
    """"utf-16-le" or "utf-16-be" for UTF-16 text that lacks a byte-order mark (some Windows tools write it):
    mostly ASCII, so every other byte of its start is NUL and the others are printable; else None."""
    head = data[:SNIFF_BYTES]
    if len(head) < 8:
        return None
    head = head[: len(head) // 2 * 2]
    for zeros, chars, name in ((head[1::2], head[::2], "utf-16-le"), (head[::2], head[1::2], "utf-16-be")):
        if zeros.count(0) >= 0.9 * len(zeros) and sum(32 <= c < 127 or c in (9, 10, 13) for c in chars) >= 0.9 * len(chars):
            return name
    return None


def looks_binary(data: bytes) -> bool:
    head = data[:SNIFF_BYTES]
    if head.startswith((b"\xff\xfe", b"\xfe\xff")) or utf16_without_bom(head):  # UTF-16 text has NULs
        return False
    return b"\x00" in head


def decode_text(data: bytes) -> str:
    if data.startswith((b"\xff\xfe", b"\xfe\xff")):
        # A broken tail (an odd byte, a lone surrogate) costs a replacement character, not the file.
        return data.decode("utf-16", errors="replace")
    wide = utf16_without_bom(data)
    if wide is not None:
        return data.decode(wide, errors="replace")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError:
        pass
    # UTF-8 with a few stray bytes (a pasted Latin-1 character, a file cut mid-character) is still UTF-8 text:
    # read as a legacy encoding, all of its other non-ASCII characters would turn to mojibake.
    # Valid multi-byte sequences are strong evidence: legacy-encoded text almost never forms them.
    lenient = data.decode("utf-8-sig", errors="replace")
    stray = lenient.count("\ufffd")
    few = stray <= max(1, len(lenient) // 1000)
    if stray <= 2 + len(lenient) // 50 and sum(ord(c) > 127 for c in lenient) - stray >= 2 * stray:
        return lenient
    # A few legacy bytes in mostly ASCII text (a euro sign, a curly quote, "café" in a short note) are too
    # little for a detector, which then picks a rare code page (cp437, cp1006, big5hkscs: mojibake); Windows-1252
    # is by far the most common legacy encoding of such text. Mostly non-ASCII text (Cyrillic, Greek, CJK) and
    # longer legacy text still go to the detector, which has the evidence then.
    high = len(data) - len(data.translate(None, _NON_ASCII))  # (in C: a file may be megabytes)
    if high <= FEW_LEGACY_BYTES and high * 5 <= len(data):
        try:
            western = data.decode("cp1252")
        except UnicodeDecodeError:  # (a byte Windows-1252 leaves undefined: not that encoding)
            western = None
        if western is not None and _reads_as_western(western):
            return western
    from charset_normalizer import from_bytes

    matches = list(from_bytes(data))
    if not matches:
        if few:
            return lenient
        raise SkipFile("binary file (not decodable as text)")
    # Among plausible legacy encodings, Windows-1252 is by far the most common for text files; the detector
    # otherwise picks rarer ones (mac_latin2, cp1250) for plain Western text.
    for match in matches:
        if match.encoding == "cp1252":
            return str(match)
    return str(matches[0])


# A non-ASCII character inside a word that is not a letter ("Za¿ó³æ": Polish read as Windows-1252) or a
# typographic mark that sits there (it’s, co‑op): the bytes are another code page's letters.
_INSIDE_A_WORD = re.compile(r"(?<=[^\W\d_])[^\x00-\x7f](?=[^\W\d_])")
_IN_WORD_MARKS = frozenset("’‘·–—\xad")  # (U+00AD: a soft hyphen, as Word, PDF and HTML exports hold)


# Windows-1252 signs that Western prose hardly ever holds, and that other code pages' bytes often read as
# ("ƒeƒXƒg" is Shift-JIS, "¤¤¤å" Big5).
_UNLIKELY_SIGNS = frozenset("¤¦¨¬¯¸¹ƒˆ˜")


def _reads_as_western(text: str) -> bool:
    """Whether `text`, bytes read as Windows-1252, looks like Western text rather than another code page's
    (Central European, or CJK double bytes)."""
    if not _UNLIKELY_SIGNS.isdisjoint(text):
        return False
    return all(m.group().isalpha() or m.group() in _IN_WORD_MARKS for m in _INSIDE_A_WORD.finditer(text))


def clean(text: str) -> str:
    """One newline convention, no NULs, no lone surrogates: what the engine accepts."""
    text = text.replace("\r\n", "\n").replace("\r", "\n").replace("\x00", "")
    return text.encode("utf-8", "replace").decode("utf-8")


def _short(title: Any) -> str | None:
    if not isinstance(title, str):
        return None
    title = " ".join(title.split())
    return title[:MAX_TITLE] or None


# --- Markdown -------------------------------------------------------------------------------------------------


def split_front_matter(text: str) -> tuple[dict[str, Any], str]:
    """(front matter mapping, body). Invalid or non-mapping YAML stays in the body, unparsed."""
    import yaml

    match = FRONT_MATTER.match(text)
    if not match:
        return {}, text
    raw = match.group(1) or ""
    if _nesting(raw) > MAX_FRONT_MATTER_NESTING:
        log.info("ignoring front matter nested more than %d levels", MAX_FRONT_MATTER_NESTING)
        return {}, text
    try:
        # Aliases are refused: a self-referencing one recursed without end, and a few hundred bytes of nested
        # ones ("billion laughs") expand exponentially once flattened. Front matter never needs them.
        if any(isinstance(event, yaml.AliasEvent) for event in yaml.parse(raw, Loader=yaml.SafeLoader)):
            log.info("ignoring front matter that uses YAML aliases")
            return {}, text
        data = yaml.safe_load(raw)
    except (yaml.YAMLError, ValueError, OverflowError) as exc:  # (a date like 2020-02-30: ValueError)
        log.info("ignoring invalid front matter: %s", exc)
        return {}, text
    except RecursionError:  # thousands of nested brackets: PyYAML's parser recurses per level
        log.info("ignoring front matter nested too deeply")
        return {}, text
    if data is None:
        data = {}
    if not isinstance(data, Mapping):
        return {}, text
    return dict(data), text[match.end() :]


def _nesting(raw: str) -> int:
    """The deepest nesting of [ and { in `raw` (quotes ignored: an upper bound is all that is needed)."""
    depth = deepest = 0
    for char in raw:
        if char in "[{":
            depth += 1
            deepest = max(deepest, depth)
        elif char in "]}" and depth:
            depth -= 1
    return deepest


def flatten_front_matter(data: Mapping[str, Any]) -> dict[str, str | int | float | bool]:
    """Nested keys become 'a.b'; lists of scalars become 'x, y'; dates become ISO strings; what cannot be
    stored as a flat metadata value (null, NaN, reserved names) is dropped."""
    out: dict[str, str | int | float | bool] = {}

    def put(key: str, value: Any) -> None:
        if len(out) >= MAX_FRONT_MATTER_KEYS or not key or key.startswith(("$", "#", "_rift_", "chroma:")):
            return
        if "\x00" in key:  # no filter could name it; the engine refuses it (and would have refused the file)
            return
        if not encodable(key) or (isinstance(value, str) and not encodable(value)):
            return  # a lone surrogate (an escape in YAML) cannot be stored: drop the entry, keep the file
        if len(key) > MAX_METADATA_KEY:
            return
        if value is None or (isinstance(value, float) and not math.isfinite(value)):
            return
        if isinstance(value, bool):
            out[key] = value
        elif isinstance(value, int):
            out[key] = value if abs(value) < 2**63 else str(value)
        elif isinstance(value, float):
            out[key] = value
        elif isinstance(value, dt.date | dt.datetime | dt.time):
            out[key] = value.isoformat()
        elif isinstance(value, Mapping):
            for k, v in value.items():
                put(f"{key}.{k}", v)
            return
        elif isinstance(value, list | tuple | set):
            if all(isinstance(v, str | int | float | bool) for v in value):
                out[key] = ", ".join(str(v) for v in value)[:MAX_FRONT_MATTER_VALUE]
            else:
                out[key] = json.dumps(list(value), default=str, ensure_ascii=False)[:MAX_FRONT_MATTER_VALUE]
        else:
            out[key] = str(value)[:MAX_FRONT_MATTER_VALUE]
        if isinstance(out.get(key), str):
            out[key] = clean(str(out[key]))[:MAX_FRONT_MATTER_VALUE]

    for k, v in data.items():
        put(str(k).strip(), v)
    size = 0
    kept: dict[str, str | int | float | bool] = {}
    for key, value in out.items():  # in the file's order, until the budget is spent
        size += metadata_chars(key, value)
        if size > MAX_FRONT_MATTER_CHARS:
            break
        kept[key] = value
    return kept


def markdown_headings(text: str) -> list[tuple[int, int, str]]:
    """(level, line index, heading text) for every ATX or setext heading, ignoring '#' inside code blocks."""
    from markdown_it import MarkdownIt

    tokens = MarkdownIt("commonmark").parse(text)
    out = []
    for i, tok in enumerate(tokens):
        if tok.type == "heading_open" and tok.map is not None:
            inline = tokens[i + 1].content if i + 1 < len(tokens) else ""
            out.append((int(tok.tag[1:]), tok.map[0], " ".join(inline.split())))
    return out


def extract_markdown(text: str) -> Extracted:
    front, body = split_front_matter(text)
    meta = flatten_front_matter(front)
    title = _short(front.get("title"))
    if title is None:
        title = next((_short(h) for _, _, h in markdown_headings(body) if h.strip()), None)
    return Extracted(body, title, {k: v for k, v in meta.items() if k not in FILE_KEYS})


# --- reStructuredText -------------------------------------------------------------------------------------------


def rst_headings(text: str) -> list[tuple[int, int, str]]:
    """(level, line index of the section's first line, title). Levels follow the order adornment styles first
    appear, as docutils assigns them."""
    lines = text.split("\n")
    styles: list[tuple[str, bool]] = []
    out: list[tuple[int, int, str]] = []
    i = 0
    while i + 1 < len(lines):
        title, under = lines[i], lines[i + 1]
        match = RST_UNDERLINE.match(under)
        if title.strip() and not title[0].isspace() and match and len(under.rstrip()) >= len(title.rstrip()):
            if RST_UNDERLINE.match(title) and title.rstrip() == under.rstrip():  # a transition, not a title
                i += 1
                continue
            over = i > 0 and lines[i - 1].rstrip() == under.rstrip()
            style = (match.group(1), over)
            if style not in styles:
                styles.append(style)
            out.append((styles.index(style) + 1, i - 1 if over else i, " ".join(title.split())))
            i += 2
            continue
        i += 1
    return out


def extract_rst(text: str) -> Extracted:
    title = next((_short(h) for _, _, h in rst_headings(text)), None)
    return Extracted(text, title)


# --- HTML -----------------------------------------------------------------------------------------------------


_AS_BROWSERS_READ = {"ascii": "cp1252", "iso8859-1": "cp1252", "iso8859-9": "cp1254"}


def _html_markup(data: bytes) -> bytes | str:
    """What BeautifulSoup parses for an HTML file's bytes. A BOM, or a charset Python does not know: the bytes,
    for bs4. A declared charset (<meta charset>, an XML declaration): the text in it, a stray bad byte
    replaced. No charset, or bytes not in the declared one (a page saved in Windows-1252 that says UTF-8): the
    same decoding as a text file (bs4's own guess took short Windows-1252 pages for other code pages)."""
    from bs4.dammit import EncodingDetector

    if data.startswith((b"\xef\xbb\xbf", b"\xff\xfe", b"\xfe\xff")):
        return data
    declared = EncodingDetector.find_declared_encoding(data, is_html=True)
    if declared is None:
        return decode_text(data)
    try:
        codec = codecs.lookup(declared).name
    except LookupError:
        return data
    # As browsers read these labels (WHATWG Encoding): a UTF-16/32 label that bs4 found in the bytes is wrong
    # (the bytes are ASCII-compatible), and ASCII / Latin-1 labels mean Windows-1252.
    codec = _AS_BROWSERS_READ.get(codec, "utf-8" if codec.startswith(("utf-16", "utf-32")) else codec)
    try:
        return data.decode(codec)
    except UnicodeDecodeError:
        pass
    if codec != "utf-8":
        text = data.decode(codec, errors="replace")
        if text.count("\ufffd") <= max(2, len(text) // 1000):
            return text
    return decode_text(data)


def extract_html(data: bytes) -> Extracted:
    from bs4 import BeautifulSoup

    markup = _html_markup(data)
    # lxml (libxml2): the tree a browser builds where optional tags are left out, in linear time.
    soup = BeautifulSoup(markup, "lxml")
    # The document's own <title>, not one inside an inline <svg> (its accessible name).
    own = next((t for t in soup.find_all("title") if t.find_parent("svg") is None), None)
    title = _short(own.get_text()) if own else None
    for tag in soup(HTML_DROP):
        tag.decompose()
    if title is None:
        h1 = soup.find("h1")
        title = _short(h1.get_text(" ")) if h1 else None
    lines = (
        line.replace(_VERBATIM, "").rstrip() if line.startswith(_VERBATIM) else " ".join(line.split())
        for line in _laid_out_text(soup).split(_BREAK)
    )
    text = re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip()
    return Extracted(text, title)


def _laid_out_text(root: Any) -> str:
    """The text of a parsed page with `_BREAK` where the layout breaks lines (blocks, <br>, each line of a
    <pre>, whose lines start with `_VERBATIM`) and none at inline tags: a word or a CJK phrase split by
    <b>/<a>/<span> stays one piece, and source line wrapping inside a paragraph is only a space.
    One walk over the tree: inserting markers into it costs a walk of each tag's subtree, which is quadratic
    in pages whose unclosed <p> tags nest thousands deep."""
    from bs4 import NavigableString, Tag

    keep = root.interesting_string_types  # what get_text() reads: text and CDATA, no comments
    parts: list[str] = []
    in_pre = 0
    stack: list[tuple[Any, bool]] = [(root, False)]
    while stack:
        node, leaving = stack.pop()
        if leaving:
            if node.name == "pre":
                in_pre -= 1
            if node.name in HTML_BLOCKS:
                parts.append(_BREAK)
            elif node.name in ("td", "th"):
                parts.append(" ")
            continue
        if isinstance(node, NavigableString):
            if type(node) in keep:
                parts.append(node.replace("\n", _BREAK + _VERBATIM) if in_pre else str(node))
            continue
        if not isinstance(node, Tag):
            continue
        if node.name == "br":
            parts.append(_BREAK)
            continue
        if node.name in HTML_BLOCKS:
            parts.append(_BREAK)
        if node.name == "pre":
            in_pre += 1
            parts.append(_VERBATIM)
        stack.append((node, True))
        stack.extend((child, False) for child in reversed(node.contents))
    return "".join(parts)


# --- PDF ------------------------------------------------------------------------------------------------------


def extract_pdf(data: bytes, max_chars: int | None = None) -> Extracted:
    """Pages are joined with a form feed (those in a page's own text become newlines) so the PDF splitter can
    tell which page a chunk came from. Extraction stops once the text passes `max_chars` (a few KB of PDF can
    hold thousands of pages sharing one compressed stream: every page extracted costs time, and the document
    would be refused anyway)."""
    from pypdf import PdfReader
    from pypdf.errors import PdfReadError

    try:
        reader = PdfReader(io.BytesIO(data))
        if reader.is_encrypted and not reader.decrypt(""):
            raise SkipFile("encrypted PDF (needs a password)")
        pages: list[str] = []
        total = 0
        for page in reader.pages:
            pages.append(page.extract_text() or "")
            total += len(pages[-1])
            if max_chars is not None and total > max_chars:
                raise SkipFile(
                    f"extracted text passes {max_chars:,} characters after {len(pages)} of "
                    f"{len(reader.pages)} pages (max_document_chars)"
                )
        title = _short(reader.metadata.title) if reader.metadata else None
    except SkipFile:
        raise
    except (PdfReadError, ValueError, KeyError, TypeError, OSError) as exc:
        raise SkipFile(f"unreadable PDF: {exc}") from None
    except Exception as exc:  # pypdf raises assorted errors on damaged files; name the file, do not crash
        raise SkipFile(f"unreadable PDF: {type(exc).__name__}: {exc}") from None
    # A form feed inside a page's text would read as a page break: every later page's number would shift.
    pages = [clean(p).replace("\f", "\n").strip("\n") for p in pages]
    if not any(p.strip() for p in pages):
        raise SkipFile("PDF has no extractable text (scanned images?)")
    return Extracted("\n\f\n".join(pages), title, {"pages": len(pages)})


# --- dispatch -------------------------------------------------------------------------------------------------


# Bumped when a family's extraction changes what text a file gives, so the next sync re-reads files stored by
# the earlier extractor (same bytes) instead of skipping them: html 2 = no line breaks at inline tags,
# 3 = <pre> keeps its indentation, 4 = a comment inside a <pre> is no longer read as text; pdf 2 = a form feed
# in a page's text no longer shifts later pages' numbers (re-reading also re-chunks: pages no longer share one);
# html 5 and the text families 2 = legacy bytes decoded better (a short Windows-1252 note, a page's declared
# charset): text stored as mojibake is read again; html 6 = parsed by lxml as browsers do (the body of a page
# without </head> is its text, and a <title> outside a <head> is not). A file whose text comes out the same is
# only relabelled.
TEXT_FAMILIES = ("markdown", "rst", "text", "code")
EXTRACTOR_VERSIONS: dict[str, int] = {"html": 6, "pdf": 2} | dict.fromkeys(TEXT_FAMILIES, 2)


def extractor_version(family: str) -> int:
    """The version of `family`'s extractor; documents stored without one were made by version 1."""
    return EXTRACTOR_VERSIONS.get(family, 1)


def extract(path: Path, data: bytes, family: Family, max_chars: int | None = None) -> Extracted:
    """Text, title and format metadata of a file's bytes; raises SkipFile with the reason when it has none.
    `max_chars`: formats whose text can be far larger than their bytes stop early past it (PDF)."""
    if family == "pdf":
        if b"%PDF-" not in data[:1024]:  # (the header may follow other bytes within the first 1,024: PDF 1.7, H.3)
            raise SkipFile("not a PDF file (no %PDF header in its first 1,024 bytes)")
        out = extract_pdf(data, max_chars)
    else:
        if looks_binary(data):
            raise SkipFile("binary file (contains NUL bytes)")
        if family == "html":
            out = extract_html(data)
        else:
            text = clean(decode_text(data))
            if family == "markdown":
                out = extract_markdown(text)
            elif family == "rst":
                out = extract_rst(text)
            else:
                out = Extracted(text)
    out.text = clean(out.text)
    if not out.text.strip():
        raise SkipFile("no text")
    if out.title is None:
        out.title = path.name
    return out


def encodable(text: str) -> bool:
    """Whether `text` can be written as UTF-8: a lone surrogate (a YAML escape; a file name that is not valid
    UTF-8 reaches Python with surrogate escapes) cannot."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True
