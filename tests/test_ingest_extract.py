"""Extraction per format, structure-aware splitting, folder walking and the low-level path checks."""

from __future__ import annotations

import os
import random
import shutil
import subprocess
from pathlib import Path

import pytest

from server.errors import NotFoundError, RiftError
from server.ingest.extract import (
    SkipFile,
    decode_text,
    extract,
    flatten_front_matter,
    looks_binary,
    markdown_headings,
    rst_headings,
    split_front_matter,
)
from server.ingest.filetypes import classify
from server.ingest.security import PathPolicy, read_file
from server.ingest.splitters import (
    MAX_PATH_CHARS,
    MAX_PATH_PART_CHARS,
    chunk_structured,
    split_blocks,
    split_markdown,
    split_pdf,
    split_python,
)
from server.ingest.walker import MAX_FOLDER_DEPTH, UNKNOWN_RULES, Found, Skipped, compile_glob, walk
from tests.support.corpus import make_pdf


@pytest.fixture(scope="module")
def tokenizer(tiny_model_path: Path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(tiny_model_path))


# --- extraction ------------------------------------------------------------------------------------------------


def test_front_matter_is_parsed_flattened_or_left_alone() -> None:
    front, body = split_front_matter("---\na: 1\nb:\n  c: [x, y]\n  d: [{e: 1}]\n...\nbody\n")
    assert body == "body\n"
    flat = flatten_front_matter(front)
    assert flat == {"a": 1, "b.c": "x, y", "b.d": '[{"e": 1}]'}
    assert split_front_matter("---\n: : bad [\n---\nbody") == ({}, "---\n: : bad [\n---\nbody")
    assert split_front_matter("---\n- a list\n---\nbody")[0] == {}
    assert split_front_matter("no front matter\n---\n") == ({}, "no front matter\n---\n")
    dropped = flatten_front_matter({"$where": 1, "#x": 2, "_rift_doc": 3, "none": None, "nan": float("nan")})
    assert dropped == {}


def test_markdown_title_and_headings_ignore_code_fences() -> None:
    text = "Intro\n\n```\n# not a heading\n```\n\nSetext Title\n============\n\n## Sub\n"
    assert markdown_headings(text) == [(1, 6, "Setext Title"), (2, 9, "Sub")]
    out = extract(Path("a.md"), text.encode(), "markdown")
    assert out.title == "Setext Title"
    assert extract(Path("plain.md"), b"just words\n", "markdown").title == "plain.md"


def test_rst_heading_levels_follow_first_appearance() -> None:
    text = "=====\nTop\n=====\n\nintro\n\nPart\n----\n\nx\n\nDetail\n~~~~~~\n\n----------\n\nOther\n-----\n"
    assert rst_headings(text) == [(1, 0, "Top"), (2, 6, "Part"), (3, 11, "Detail"), (2, 16, "Other")]


def test_html_text_title_and_encoding() -> None:
    page = '<html><head><meta charset="iso-8859-1"></head><body><h1>Caf\xe9</h1><p>cr\xe8me</p></body></html>'
    out = extract(Path("p.html"), page.encode("latin-1"), "html")
    assert out.title == "Café" and "crème" in out.text


def test_html_breaks_lines_at_blocks_not_at_inline_tags() -> None:
    page = (
        "<p>我们用<a href='#'>深度</a>学习做<b>机器</b>翻译。</p><p>re<i>trie</i>val is\n  wrapped in source</p>"
        "<ul><li>one</li><li>two</li></ul>a<br>b<pre>x = 1\ny = 2</pre><table><tr><td>c1</td><td>c2</td></tr></table>"
    )
    lines = [line for line in extract(Path("p.html"), page.encode(), "html").text.split("\n") if line]
    assert lines == [
        "我们用深度学习做机器翻译。",
        "retrieval is wrapped in source",
        "one",
        "two",
        "a",
        "b",
        "x = 1",
        "y = 2",
        "c1 c2",
    ]


def test_html_pre_keeps_its_indentation() -> None:
    page = (
        "<p>Example:</p><pre class='highlight'>\n<span class='k'>def</span> <span>f</span>(x):\n"
        "    <span class='k'>if</span> x:\n        return  1\n\treturn 0</pre><p>after   it</p>"
    )
    text = extract(Path("p.html"), page.encode(), "html").text
    assert "def f(x):\n    if x:\n        return  1\n\treturn 0\n" in text
    assert text.startswith("Example:\n") and text.endswith("\nafter it")
    assert "\x01" not in text and "\x00" not in text


def test_html_with_thousands_of_unclosed_paragraphs_reads_each_as_a_line() -> None:
    # html.parser nested each unclosed <p> inside the one before, 5,000 levels deep, and marking line breaks by
    # inserting into that tree took quadratic time (13 s for 16,000 paragraphs); one walk over it is linear.
    page = "<body>" + "".join(f"<p>paragraph {i}" for i in range(5000)) + "</body>"
    lines = extract(Path("p.html"), page.encode(), "html").text.split("\n")
    assert [line for line in lines if line] == [f"paragraph {i}" for i in range(5000)]


def test_html_without_its_optional_closing_head_tag_keeps_its_body() -> None:
    # HTML5 lets a page leave </head> (and <head>, <body>) out; the body is still the page's text, and the
    # <title> is its title, not a line of its text.
    for page in (
        "<html><head><title>T</title><body><p>Hello world</p></body></html>",
        "<!DOCTYPE html><title>T</title><p>Hello world",
    ):
        got = extract(Path("p.html"), page.encode(), "html")
        assert (got.title, got.text) == ("T", "Hello world"), page


def test_html_that_python_html_parser_takes_quadratic_time_on_reads_at_once() -> None:
    # 200 KB of unclosed comment openers took html.parser 29 s here (CPython before 3.11.13, CVE-2025-6069),
    # a 10 MB file hours; lxml's parser reads it at once.
    page = "<p>before</p>" + "<!--" * 50_000
    assert extract(Path("p.html"), page.encode(), "html").text == "before"


def test_html_comments_stay_out_even_inside_pre() -> None:
    # A CDATA section in HTML content is a bogus comment to an HTML5 parser: browsers do not show it either.
    page = "<p>a<!-- note --></p><pre>x = 1<!-- hidden -->\ny = 2</pre><p><![CDATA[gone]]>kept</p>"
    text = extract(Path("p.html"), page.encode(), "html").text
    assert "note" not in text and "hidden" not in text and "gone" not in text
    assert [line for line in text.split("\n") if line] == ["a", "x = 1", "y = 2", "kept"]


def test_text_decoding_and_binary_detection() -> None:
    french = "Le cœur a ses raisons que la raison ne connaît point. Déjà l'été, à côté du château." * 3
    assert decode_text(french.encode("cp1252")) == french
    assert decode_text("\ufeffbom".encode()) == "bom"
    assert extract(Path("u16.txt"), "wide text".encode("utf-16"), "text").text == "wide text"
    for encoding in ("utf-16-le", "utf-16-be"):  # without a byte-order mark: not "binary (NUL bytes)"
        wide = "wide text\r\nwithout a BOM, café".encode(encoding)
        assert not looks_binary(wide) and extract(Path("u16.txt"), wide, "text").text == "wide text\nwithout a BOM, café"
    assert looks_binary(b"\x00\x01\x00\x02" * 50)  # NULs every other byte, but no text between them
    with pytest.raises(SkipFile, match="binary file"):
        extract(Path("x.txt"), b"abc\x00def", "text")
    with pytest.raises(SkipFile, match="no text"):
        extract(Path("x.txt"), b" \n\t\n", "text")
    assert extract(Path("crlf.txt"), b"a\r\nb\rc", "text").text == "a\nb\nc"
    # A broken UTF-16 tail or one stray byte in UTF-8 costs a replacement character, not the file.
    assert decode_text("wide text".encode("utf-16") + b"\x00\xd8x").startswith("wide text")
    assert decode_text("un café crème, déjà vu ".encode() * 20 + b"\xe9").startswith("un café crème")
    # ... even where a legacy-encoding detector would claim the whole file (it picked cp1250 for these).
    assert decode_text("Grüße aus Köln. ".encode() * 3 + b"caf\xe9") == "Grüße aus Köln. " * 3 + "caf\ufffd"
    assert decode_text("Grüße aus Köln ö".encode()[:-1]) == "Grüße aus Köln \ufffd"  # cut mid-character
    assert decode_text("L'été à Paris, où ça coûte cher. ".encode() + b"\x93q\x94") == (
        "L'été à Paris, où ça coûte cher. \ufffdq\ufffd"
    )
    # A few Windows-1252 bytes in short ASCII text: a detector picked cp437, cp1006 or big5hkscs for these.
    for note in ("Budget: 500€ for travel\n", "Café\n", "“quoted” text\n", "It’s done.\n", "Cross\xadref in Zürich\n"):
        assert decode_text(note.encode("cp1252")) == note
        page = f"<p>{note}</p>".encode("cp1252")  # (no declared charset)
        assert extract(Path("p.html"), page, "html").text == note.strip()
    # A page that says UTF-8 but was saved as Windows-1252: read as the text file it is.
    page = '<meta charset="utf-8"><title>Café</title><p>500€ “quoted”</p>'.encode("cp1252")
    out = extract(Path("p.html"), page, "html")
    assert out.title == "Café" and out.text.endswith("500€ “quoted”")
    # Labels read as browsers read them: Latin-1 / ASCII mean Windows-1252, and a UTF-16 label in bytes that
    # are not UTF-16 (bs4 found it as ASCII) means UTF-8.
    for label in ("iso-8859-1", "us-ascii"):
        page = f'<meta charset="{label}"><p>“Quoted” café, 500€</p>'.encode("cp1252")
        assert extract(Path("p.html"), page, "html").text == "“Quoted” café, 500€"
    for text in ("Hello world", "Hello worlds"):  # (either length)
        assert extract(Path("p.html"), f'<meta charset="utf-16"><p>{text}</p>'.encode(), "html").text == text
    # Another declared charset is honoured, a stray bad byte costing one replacement character, not the page.
    page = '<meta charset="shift_jis"><p>日本語の文書'.encode("shift_jis") + b"\x81\x20" + "です</p>".encode("shift_jis")
    assert extract(Path("p.html"), page, "html").text.startswith("日本語の文書")
    # ... but not other code pages' text that Windows-1252 would misread, however much ASCII surrounds it.
    padding = "An ordinary English paragraph about the project, its settings and how to run it. "
    cases = [("Zażółć gęślą jaźń", "cp1250", 0), ("Zażółć gęślą jaźń", "cp1250", 1), ("Zażółć gęślą jaźń", "cp1250", 8)]
    cases += [("繁體中文", "big5", 0), ("繁體中文", "big5", 1), ("한국어 문서", "euc_kr", 0), ("한국어 문서", "euc_kr", 1)]
    for text, encoding, copies in cases:  # (longer CJK text the detector itself misreads: not these)
        assert decode_text((padding * copies + text).encode(encoding)) == padding * copies + text
    assert decode_text((padding + "テストです").encode("shift_jis")) == padding + "テストです"


def test_bytes_no_detector_reads_as_text_are_binary_even_without_nuls() -> None:
    import random

    rng = random.Random(0)
    with pytest.raises(SkipFile, match="binary file"):
        decode_text(bytes(rng.randrange(1, 256) for _ in range(4000)))  # (any code page decodes them)


def test_front_matter_nested_too_deeply_stays_in_the_body() -> None:
    meta, body = split_front_matter("---\na: " + "[" * 3000 + "]" * 3000 + "\n---\n# Body\n")
    assert meta == {} and "# Body" in body


def test_front_matter_aliases_are_dropped_not_expanded() -> None:
    laughs = "a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
        f"{chr(98 + i)}: &{chr(98 + i)} [{', '.join(['*' + chr(97 + i)] * 9)}]\n" for i in range(8)
    )
    for front in ("a: &a {b: *a}\n", "a: &a [*a]\n", laughs):
        meta, body = split_front_matter(f"---\n{front}---\n# Body\n")
        assert meta == {} and "# Body" in body  # left in the body, unparsed, as invalid front matter is


def test_front_matter_is_bounded_in_all_so_the_document_stays_storable() -> None:
    from server.engine.engine import MAX_METADATA_CHARS, check_metadata
    from server.ingest.extract import MAX_FRONT_MATTER_CHARS

    flat = flatten_front_matter({f"k{i}": "x" * 5000 for i in range(60)} | {"y" * 300: 1})
    assert 0 < sum(len(k) + len(v) for k, v in flat.items()) <= MAX_FRONT_MATTER_CHARS < MAX_METADATA_CHARS
    assert list(flat) == [f"k{i}" for i in range(len(flat))]  # in the file's order; the 300-char key dropped
    check_metadata(flat, "metadata")  # accepted by the engine


def test_metadata_is_bounded_in_keys_key_length_and_total_size() -> None:
    from server.engine.engine import MAX_METADATA_CHARS, check_metadata

    with pytest.raises(RiftError, match="at most 128"):
        check_metadata({f"k{i}": i for i in range(129)}, "documents[0].metadata")
    with pytest.raises(RiftError, match="key containing a NUL character"):
        check_metadata({"a\x00b": "x"}, "documents[0].metadata")
    with pytest.raises(RiftError, match="key longer than 256"):
        check_metadata({"k" * 1_000: 1}, "documents[0].metadata")
    with pytest.raises(RiftError, match=r"documents\[0\].metadata is larger than 65,536 characters in all"):
        check_metadata({f"k{i}": "v" * 40_000 for i in range(2)}, "documents[0].metadata")
    assert check_metadata({"k": "v" * (MAX_METADATA_CHARS - 1)}, "m")  # one long value still fits
    # Each ancestor folder of an absolute source is stored with every chunk (for $prefix): they count too.
    assert check_metadata({"source": "/home/me/notes/" + "d/" * 100 + "x.md"}, "m")
    with pytest.raises(RiftError, match=r"m.source is nested too deep: its ancestor folders"):
        check_metadata({"source": "/a" * 3000}, "m")


def test_an_inline_svg_title_is_not_the_page_title() -> None:
    page = b"<html><body><svg><title>icon</title></svg><h1>Real</h1><p>text</p></body></html>"
    assert extract(Path("p.html"), page, "html").title == "Real"


def test_pdf_text_pages_and_failures(tmp_path: Path) -> None:
    make_pdf(tmp_path / "two.pdf", "Two Pages", ["First page words.", "Second page words."])
    out = extract(tmp_path / "two.pdf", (tmp_path / "two.pdf").read_bytes(), "pdf")
    assert out.title == "Two Pages" and out.metadata == {"pages": 2}
    assert out.text.split("\f")[0].strip() == "First page words."
    with pytest.raises(SkipFile, match="no %PDF header"):
        extract(Path("fake.pdf"), b"hello", "pdf")
    # Bytes before the header (a mail gateway's or a scanner's prefix): PDF readers accept it within 1,024.
    prefixed = b"X" * 200 + b"\n" + (tmp_path / "two.pdf").read_bytes()
    assert extract(Path("prefixed.pdf"), prefixed, "pdf").text == out.text
    with pytest.raises(SkipFile, match="no %PDF header"):
        extract(Path("late.pdf"), b"X" * 1100 + (tmp_path / "two.pdf").read_bytes(), "pdf")
    with pytest.raises(SkipFile, match="unreadable PDF"):
        extract(Path("broken.pdf"), b"%PDF-1.4\n garbage without objects", "pdf")


def test_classify() -> None:
    assert classify(Path("a/B.PY")) == ("python", "code")
    assert classify(Path("Makefile")) == ("make", "code")
    assert classify(Path("README")) == ("text", "text")
    assert classify(Path("x.markdown")) == ("markdown", "markdown")
    assert classify(Path("photo.png")) is None and classify(Path(".env")) is None


# --- splitting -------------------------------------------------------------------------------------------------


def labels(chunks, key: str) -> list[str | None]:
    return [c.metadata.get(key) for c in chunks]


def test_a_long_heading_is_clipped_in_every_chunk_label(tokenizer) -> None:
    # A paragraph followed by "---" is a setext heading: its text would otherwise be stored in every chunk.
    paragraph = " ".join(f"word{i}" for i in range(3000))
    text = f"# {'very long title ' * 40}\n\n## Part\n\n{paragraph}\n---\n\n" + "body text here. " * 400
    chunks = chunk_structured(text, {"file_type": "markdown"}, tokenizer, 64, 8)
    headings = labels(chunks, "heading")
    assert len(chunks) > 20 and all(h is not None and len(h) <= MAX_PATH_CHARS for h in headings)
    assert headings[0].startswith("very long title") and headings[0].split(" > ")[0].endswith("…")
    assert max(len(part) for h in headings for part in h.split(" > ")) <= MAX_PATH_PART_CHARS


def test_markdown_sections_merge_under_a_shared_parent_only(tokenizer) -> None:
    text = "# A\n\na text\n\n## A1\n\none\n\n## A2\n\ntwo\n\n# B\n\nb text\n"
    assert [(text[s.start : s.end].split("\n")[0], s.path) for s in split_markdown(text)] == [
        ("# A", ("A",)), ("## A1", ("A", "A1")), ("## A2", ("A", "A2")), ("# B", ("B",))
    ]  # fmt: skip
    chunks = chunk_structured(text, {"file_type": "markdown"}, tokenizer, 10_000, 0)
    assert labels(chunks, "heading") == ["A", "B"]  # A's children fold into A; B stays apart
    tiny = chunk_structured(text, {"file_type": "markdown"}, tokenizer, 4, 1)  # every section is cut
    assert len(tiny) > 4 and set(labels(tiny, "heading")) == {"A", "A > A1", "A > A2", "B"}
    for chunk in tiny:
        assert text[chunk.start : chunk.end] == chunk.text


def test_python_symbols_keep_decorators_and_comments(tokenizer) -> None:
    code = (
        "import os\n\n\n# helper comment\n@decorator\ndef f():\n    return 1\n\n\n"
        "class K:\n    x = 1\n\n    # about m\n    def m(self):\n        return 2\n\n    y = 3\n"
    )
    sections = [(s.path, code[s.start : s.end]) for s in split_python(code) if code[s.start : s.end].strip()]
    assert [path for path, _ in sections] == [(), ("f",), ("K",), ("K", "m"), ("K",)]  # y = 3 is K's again
    assert sections[0][1].startswith("import os")
    assert sections[1][1].startswith("# helper comment\n@decorator\ndef f():")
    assert sections[3][1].startswith("    # about m\n    def m(self):")
    assert sections[4][1].strip() == "y = 3"
    chunks = chunk_structured(code, {"file_type": "python"}, tokenizer, 10_000, 0)
    assert labels(chunks, "symbol") == ["f", "K"]  # the module preamble joins f; m folds into K
    broken = split_python("def broken(:\n    pass\n\nx = 1\n")
    assert [s.path for s in broken] == [(), ()]  # unparsable: blank-line blocks


def test_a_small_section_joins_its_long_neighbour_instead_of_being_a_chunk(tokenizer) -> None:
    """A class line before a long first method, or a comment between two long methods, was a chunk of its own
    (packing merges a pair only when both fit one chunk): now it starts the next section's first chunk, which
    keeps that section's label. A small section under another name (class K) stays its own; one with no next
    section (module code at the end) ends the one before. Windows of a long method start and end on lines."""
    body = "\n".join(f"        x = river + city  # the cat {i}" for i in range(60))
    code = (
        f"class Engine:\n    def search(self):\n{body}\n\n    # fusion\n\n    def fuse(self):\n{body}\n\n\n"
        f"class K:\n    pass\n\n\ndef main():\n{body}\n\n\nmain()\n"
    )
    chunks = chunk_structured(code, {"file_type": "python"}, tokenizer, 128, 16)
    assert chunks is not None and len(chunks) > 8
    for chunk in chunks:
        assert code[chunk.start : chunk.end] == chunk.text
        assert len(tokenizer(chunk.text, add_special_tokens=False)["input_ids"]) <= 128
        assert not code[: chunk.start].rsplit("\n", 1)[-1].strip()  # starts a line
        assert not code[chunk.end :].split("\n", 1)[0].strip()  # ends one
    assert not [c.text for c in chunks if c.text in ("class Engine:", "# fusion", "main()")]
    assert chunks[0].text.startswith("class Engine:\n    def search(self):")
    assert chunks[0].metadata["symbol"] == "Engine.search"
    fuse = [c for c in chunks if c.metadata.get("symbol") == "Engine.fuse"]
    assert fuse[0].text.startswith("# fusion\n\n    def fuse(self):")
    assert [c.text for c in chunks if c.metadata.get("symbol") == "K"] == ["class K:\n    pass"]
    assert chunks[-1].text.endswith("\n\n\nmain()") and chunks[-1].metadata["symbol"] == "main"
    # A heading before a long subsection likewise starts the subsection's first chunk.
    text = "# Guide\n\n## Install\n\n" + "\n".join("the cat sat on the mat by the river" for _ in range(60))
    md = chunk_structured(text, {"file_type": "markdown"}, tokenizer, 128, 16)
    assert md is not None and md[0].text.startswith("# Guide\n\n## Install")
    assert {c.metadata["heading"] for c in md} == {"Guide > Install"}


def test_each_pdf_chunk_is_labelled_with_the_page_its_text_is_on(tmp_path: Path, tokenizer) -> None:
    """Short pages are not packed into one chunk (it carried only the first page's number and a raw form
    feed), and a form feed inside a page's own text does not shift the numbers of the pages after it."""
    from fpdf import FPDF

    pdf = FPDF()
    pdf.set_font("helvetica", size=12)
    for text in ("first page alpha \f still first page beta", "second page gamma", "third page delta"):
        pdf.add_page()
        pdf.cell(text=text)  # (multi_cell would break the line at the form feed)
    pdf.output(str(tmp_path / "ff.pdf"))
    out = extract(tmp_path / "ff.pdf", (tmp_path / "ff.pdf").read_bytes(), "pdf")
    assert out.metadata == {"pages": 3} and len(out.text.split("\f")) == 3
    chunks = chunk_structured(out.text, {"file_type": "pdf"}, tokenizer, 256, 32)
    assert chunks is not None
    got = [(c.metadata["page"], " ".join(c.text.split())) for c in chunks]
    assert got == [
        (1, "first page alpha still first page beta"),
        (2, "second page gamma"),
        (3, "third page delta"),
    ]
    assert not any("\f" in c.text for c in chunks)


def test_code_blocks_pdf_pages_and_plain_fallback(tokenizer) -> None:
    js = "function a() {\n  return 1;\n}\n\nfunction b() {\n  return 2;\n}\n"
    assert [js[s.start : s.end].strip() for s in split_blocks(js)] == [
        "function a() {\n  return 1;\n}", "function b() {\n  return 2;\n}"
    ]  # fmt: skip
    assert len(chunk_structured(js, {"file_type": "javascript"}, tokenizer, 10_000, 0)) == 1
    assert [s.meta["page"] for s in split_pdf("one\n\f\ntwo\f\fthree")] == [1, 2, 3, 4]
    pages = chunk_structured("one page\n\f\ntwo page", {"file_type": "pdf"}, tokenizer, 4, 0)
    assert 1 in labels(pages, "page") and 2 in labels(pages, "page")
    assert chunk_structured("text", {"file_type": "text"}, tokenizer, 10, 0) is None
    assert chunk_structured("text", {}, tokenizer, 10, 0) is None


# --- walking and path checks ---------------------------------------------------------------------------------


def listing(folder: Path, policy: PathPolicy | None = None, **kwargs) -> dict[str, str]:
    out = {}
    for item in walk(folder, policy or PathPolicy.unrestricted(), **kwargs):
        rel = str(Path(item.path).relative_to(folder))
        out[rel] = "found" if isinstance(item, Found) else item.reason
    return out


def test_walk_nested_gitignore_negation_ancestor_rules_and_glob(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    (repo / ".git").mkdir(parents=True)
    (repo / ".gitignore").write_text("*.log\nsecret/\n")
    docs = repo / "docs"
    (docs / "sub").mkdir(parents=True)
    (docs / "secret").mkdir()
    (docs / "a.md").write_text("a")
    (docs / "debug.log").write_text("x")  # ignored by the repository's .gitignore above the folder
    (docs / "sub" / ".gitignore").write_text("*.txt\n!keep.txt\n")
    (docs / "sub" / "drop.txt").write_text("x")
    (docs / "sub" / "keep.txt").write_text("x")
    (docs / "secret" / "s.md").write_text("x")
    (docs / ".hg").mkdir()  # VCS folders are left out silently
    (docs / ".hg" / "store").write_text("x")
    os.mkfifo(docs / "pipe.md")
    got = listing(docs)
    assert got == {
        "a.md": "found",
        "debug.log": "ignored by .gitignore",
        "secret": "ignored by .gitignore",
        "sub/.gitignore": "found",
        "sub/drop.txt": "ignored by .gitignore",
        "sub/keep.txt": "found",
        "pipe.md": "not a regular file",
    }
    assert listing(docs, pattern=compile_glob("*.md")) == {
        "a.md": "found", "secret": "ignored by .gitignore", "pipe.md": "not a regular file"
    }  # fmt: skip
    assert "sub/keep.txt" not in listing(docs, recursive=False)
    with pytest.raises(RiftError, match="glob"):
        compile_glob([])
    for silent in ("[", "*.md[", "#notes"):  # would match no file at all: refused, not a quiet empty sync
        with pytest.raises(RiftError, match=r"glob\[1\] .* matches nothing in gitignore syntax"):
            compile_glob(["*.md", silent])
    assert compile_glob(["\\[draft\\]*.md", "\\#tag.md", "[abc].md"]) is not None
    with pytest.raises(RiftError, match="only exclusions"):
        compile_glob(["!*.md"])
    assert compile_glob(["*", "!*.log"]) is not None


def test_gitignores_above_the_folder_apply_whichever_folder_is_synced(tmp_path: Path, monkeypatch) -> None:
    """A file's verdict does not depend on the folder synced: the .gitignore files of the folders above it
    apply up to the repository root, inside the allowed roots even when that root lies outside them, and up to
    the filesystem root outside any repository. A folder holding .git is its own root: nothing above applies."""
    repo = tmp_path.resolve() / "repo"
    (repo / ".git").mkdir(parents=True)
    (repo / ".gitignore").write_text("*.key.md\n")
    docs = repo / "docs"
    (docs / "sub").mkdir(parents=True)
    (docs / ".gitignore").write_text("secret.md\n")
    for name in ("secret.md", "api.key.md", "ok.md"):
        (docs / "sub" / name).write_text("x")
    inside_docs = PathPolicy((docs,))  # the repository root (and its .gitignore) lie outside the roots
    expected = {"secret.md": "ignored by .gitignore", "api.key.md": "found", "ok.md": "found"}
    assert listing(docs / "sub", inside_docs) == expected
    assert {k.removeprefix("sub/"): v for k, v in listing(docs, inside_docs).items() if "/" in k} == expected
    assert listing(docs / "sub")["api.key.md"] == "ignored by .gitignore"  # unrestricted: up to the root

    notes = tmp_path.resolve() / "notes"  # no repository above
    (notes / "sub").mkdir(parents=True)
    (notes / ".gitignore").write_text("secret.md\n")
    (notes / "sub" / "secret.md").write_text("x")
    assert listing(notes)["sub/secret.md"] == "ignored by .gitignore"
    assert listing(notes / "sub") == {"secret.md": "ignored by .gitignore"}
    assert listing(notes / "sub", PathPolicy((notes / "sub",))) == {"secret.md": "found"}  # notes is outside
    (notes / "sub" / ".git").mkdir()
    assert listing(notes / "sub") == {"secret.md": "found"}

    exists = Path.exists

    def unsearchable(self: Path) -> bool:  # a folder without x permission (chmod would not stop root)
        if self.parent == notes / "sub":
            raise PermissionError(13, "Permission denied", str(self))
        return exists(self)

    monkeypatch.setattr(Path, "exists", unsearchable)
    assert listing(notes / "sub") == {"secret.md": "ignored by .gitignore"}  # walked as far as it can be


def test_an_unreadable_gitignore_leaves_out_what_it_governs(tmp_path: Path) -> None:
    """Its folder's whole subtree is left out (a link into it too), and for one above the walked folder the
    whole walk, each reported once as an error that may pass."""
    root = tmp_path.resolve() / "root"
    (root / "sub" / "deep").mkdir(parents=True)
    (root / "ok.md").write_text("x")
    (root / "sub" / "secret.md").write_text("x")
    (root / "sub" / "deep" / "d.md").write_text("x")
    (root / "sub" / ".gitignore").mkdir()  # its rules cannot be read
    (root / "link.md").symlink_to(root / "sub" / "secret.md")
    why = f"cannot read {root / 'sub' / '.gitignore'}: not a regular file"
    items = list(walk(root, PathPolicy.unrestricted()))
    got = {str(i.path.relative_to(root)): i.reason if isinstance(i, Skipped) else "found" for i in items}
    assert got == {
        "ok.md": "found",
        "sub": f"{why}; {UNKNOWN_RULES}",
        "link.md": f"symlink to a file whose folder's rules are unknown: {why}",
    }
    assert all(i.transient for i in items if isinstance(i, Skipped))
    assert listing(root / "sub" / "deep") == {".": f"{why}; {UNKNOWN_RULES}"}


def test_walk_survives_a_tree_nested_past_the_recursion_limit(tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    (root / "top.md").write_text("x")
    deep = root
    for _ in range(1100):  # os.walk recursed once a level: RecursionError, nothing stored
        deep = deep / "d"
        deep.mkdir()  # (one level at a time: mkdir(parents=True) recurses too)
    (deep / "bottom.md").write_text("x")
    shallow = root.joinpath(*["d"] * 5, "mid.md")
    shallow.write_text("x")
    try:
        seen = listing(root)
        assert seen["top.md"] == "found" and seen[str(shallow.relative_to(root))] == "found"
        cut = str(root.joinpath(*["d"] * (MAX_FOLDER_DEPTH + 1)).relative_to(root))
        assert seen[cut] == f"folder nested more than {MAX_FOLDER_DEPTH} levels deep"
        assert str((deep / "bottom.md").relative_to(root)) not in seen
    finally:  # bottom-up, one level at a time: pytest's own clean-up of old temp dirs recurses too
        (deep / "bottom.md").unlink()
        while deep != root.joinpath(*["d"] * 5):
            deep.rmdir()
            deep = deep.parent


def test_walk_reads_into_folders_as_git_does(tmp_path: Path) -> None:
    # Rules about a folder's contents do not exclude the folder itself, so a later "!" can re-include files.
    for rules, folder in (("*\n!*/\n!*.md\n", "sub"), ("build/**\n!build/keep.md\n", "build")):
        root = tmp_path / folder
        (root / folder).mkdir(parents=True)
        (root / ".gitignore").write_text(rules)
        (root / folder / "keep.md").write_text("x")
        (root / folder / "drop.txt").write_text("x")
        assert listing(root)[f"{folder}/keep.md"] == "found"
        assert listing(root)[f"{folder}/drop.txt"] == "ignored by .gitignore"
    # A folder a rule names is still left out whole, and git cannot re-include a file inside it.
    root = tmp_path / "whole"
    (root / "out").mkdir(parents=True)
    (root / ".gitignore").write_text("out/\n!out/keep.md\n")
    (root / "out" / "keep.md").write_text("x")
    assert listing(root) == {".gitignore": "found", "out": "ignored by .gitignore"}


def test_a_rule_about_a_folder_never_re_includes_the_files_in_it(tmp_path: Path) -> None:
    # git matches a rule against a path's own name: "!build", "!/a" or "!*/" re-include a folder, never the
    # files in it that other rules exclude. pathspec's verdict counted the parent folder's match.
    cases = {
        "root": ("*.md\n", "keep/build/.gitignore", "!build\n", "keep/build/y.md"),
        "under": ("a/**\n!/a\n", "a/b/.gitignore", "x.txt\n", "a/b/keep.txt"),
        "folders": ("a/**\n", "a/.gitignore", "!*/\n", "a/logs/y.md"),
    }
    for name, (top, deeper, rules, target) in cases.items():
        root = tmp_path / name
        (root / target).parent.mkdir(parents=True)
        (root / ".gitignore").write_text(top)
        (root / deeper).write_text(rules)
        (root / target).write_text("x")
        assert listing(root).get(target) != "found", name
    # "keep/**/" names the folders inside keep, not keep itself: keep stays excluded by "/*".
    root = tmp_path / "strictly"
    (root / "keep" / "sub").mkdir(parents=True)
    (root / ".gitignore").write_text("/*\n!/.gitignore\n!keep/**/\n")
    (root / "keep" / "sub" / "x.txt").write_text("x")
    assert listing(root) == {".gitignore": "found", "keep": "ignored by .gitignore"}


@pytest.mark.skipif(shutil.which("git") is None, reason="compares with git itself")
def test_walk_agrees_with_git_on_random_ignore_rules(tmp_path: Path) -> None:
    """Random folders and nested .gitignore files: rift must find exactly what git lists as untracked."""
    rng = random.Random(7)
    names, files = ["a", "b", "logs", "build", "keep"], ["x.txt", "y.md", "keep.txt"]
    rules = [
        "*.md", "!*.md", "logs/", "!logs/", "build", "!build", "/a", "!/a", "keep*", "!keep*", "b/*", "!b/keep/",
        "**/logs", "!**/keep.txt", "*", "!*/", "!*.txt", "x.txt", "!x.txt", "a/**", "!a/b/", "/build/*", "*/",
        "!keep/", "**", "**/", "/*", "!/*/", "a/*/x.txt", "?", "[ab]", "logs/**/keep.txt", "!logs/**", "keep/**",
        "!keep/**/", "*/x.txt",
    ]  # fmt: skip
    for trial in range(40):
        root = tmp_path / str(trial)
        root.mkdir()
        subprocess.run(["git", "init", "-q", str(root)], check=True)
        folders = [root]
        for _ in range(rng.randint(2, 6)):
            folder = rng.choice(folders) / rng.choice(names)
            folder.mkdir(exist_ok=True)
            folders.append(folder)
        for folder in folders:
            for name in rng.sample(files, rng.randint(1, 3)):
                (folder / name).write_text("x")
        for folder in rng.sample(folders, rng.randint(1, min(3, len(folders)))):
            (folder / ".gitignore").write_text("\n".join(rng.sample(rules, rng.randint(1, 4))) + "\n")
        git = subprocess.run(
            ["git", "-C", str(root), "ls-files", "--others", "--exclude-standard"],
            capture_output=True, text=True, check=True,
        ).stdout.split()  # fmt: skip
        ours = {rel for rel, verdict in listing(root).items() if verdict == "found"}
        rules_files = {rel for rel in {*git, *ours} if rel.endswith(".gitignore")}  # rift reads them as text
        assert ours - rules_files == set(git) - rules_files, [
            (str(p.relative_to(root)), p.read_text()) for p in root.rglob(".gitignore")
        ]


def test_one_bad_gitignore_line_costs_only_that_line(tmp_path: Path) -> None:
    (tmp_path / ".gitignore").write_text("secret.txt\nfoo[z-a]bar\n")
    (tmp_path / "secret.txt").write_text("hunter2")
    assert listing(tmp_path)["secret.txt"] == "ignored by .gitignore"


def test_a_symlink_does_not_let_in_what_gitignore_or_the_glob_keeps_out(tmp_path: Path) -> None:
    (tmp_path / ".gitignore").write_text("secret.txt\nprivate/\n")
    (tmp_path / "secret.txt").write_text("hunter2")
    (tmp_path / "private").mkdir()
    (tmp_path / "private" / "p.md").write_text("x")
    (tmp_path / "y.txt").write_text("x")
    os.symlink("secret.txt", tmp_path / "link.txt")
    os.symlink("private/p.md", tmp_path / "plink.md")
    os.symlink("y.txt", tmp_path / "x.md")
    got = listing(tmp_path)
    assert got["link.txt"] == "symlink to a file ignored by .gitignore"
    assert got["plink.md"] == "symlink to a file in a folder ignored by .gitignore"
    assert "x.md" not in listing(tmp_path, pattern=compile_glob("*.md"))  # its target, y.txt, is out of scope


def test_a_folder_listed_but_not_entered_is_skipped_not_fatal(tmp_path: Path, monkeypatch) -> None:
    (tmp_path / "noexec" / "inner").mkdir(parents=True)
    (tmp_path / "a.md").write_text("x")
    real = Path.is_symlink

    def is_symlink(self: Path) -> bool:  # as Python 3.11 does under a folder without x permission
        if self.name == "inner":
            raise PermissionError(13, "Permission denied", str(self))
        return real(self)

    monkeypatch.setattr(Path, "is_symlink", is_symlink)
    got = listing(tmp_path)
    assert got["a.md"] == "found" and got["noexec/inner"] == "cannot read folder: Permission denied"


def test_policy_and_reads(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "in").mkdir(parents=True)
    (root / "in" / "f.txt").write_text("hi")
    (tmp_path / "out.txt").write_text("secret")
    os.symlink(tmp_path / "out.txt", root / "in" / "link.txt")
    policy = PathPolicy((root.resolve(),))
    assert policy.check(str(root / "in" / "f.txt"), "p") == (root / "in" / "f.txt").resolve()
    with pytest.raises(RiftError, match="symlink that leads to"):
        policy.check(str(root / "in" / "link.txt"), "p")
    with pytest.raises(NotFoundError):
        policy.check(str(root / "nope"), "p")
    # Outside the roots a missing path is "outside", as an existing one is (no probing the disk) ...
    with pytest.raises(RiftError, match="outside the allowed roots") as outside:
        policy.check(str(tmp_path / "nope.txt"), "p")
    assert not isinstance(outside.value, NotFoundError)
    os.symlink(tmp_path, root / "peek")
    with pytest.raises(RiftError, match="outside the allowed roots") as outside:
        policy.check(str(root / "peek" / "nope.txt"), "p")  # (through a symlink that leads out, too)
    assert not isinstance(outside.value, NotFoundError)
    # ... and inside them a missing path is missing, spelt through a symlink to a root too (macOS /tmp).
    os.symlink(root, tmp_path / "alias")
    with pytest.raises(NotFoundError):
        policy.check(str(tmp_path / "alias" / "nope"), "p")
    with pytest.raises(RiftError, match="NUL"):
        policy.check("/x\x00y", "p")
    assert (
        PathPolicy.unrestricted().check(str(root / "in" / "link.txt"), "p")
        == (tmp_path / "out.txt").resolve()
    )
    with pytest.raises(OSError):
        read_file(root / "in" / "link.txt", 100)  # O_NOFOLLOW: a symlink is never read through
    with pytest.raises(ValueError, match="max_file_bytes"):
        read_file(root / "in" / "f.txt", 1)
    data, info = read_file(root / "in" / "f.txt", 100)
    assert data == b"hi" and info.st_size == 2
    assert read_file(root / "in" / "f.txt", 1, head_only=True)[0] == b"h"
    # A folder on the way swapped for a symlink after the walk checked it: O_NOFOLLOW guards only the last
    # component, so the opened file itself is checked against the roots.
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "elsewhere" / "f.txt").write_text("outside")
    os.symlink(tmp_path / "elsewhere", root / "swapped")
    assert read_file(root / "swapped" / "f.txt", 100)[0] == b"outside"  # the CLI may read anything
    with pytest.raises(ValueError, match="outside the allowed roots"):
        read_file(root / "swapped" / "f.txt", 100, policy)


def test_an_unknown_home_directory_is_named_not_raised() -> None:
    with pytest.raises(RiftError, match=r"paths\[0\] '~no-such-user-rift/x': cannot expand '~'"):
        PathPolicy.unrestricted().check("~no-such-user-rift/x", "paths[0]")


def test_front_matter_that_cannot_be_stored_is_dropped_not_the_file() -> None:
    """A value PyYAML cannot build (an impossible date), deep bracket nesting (PyYAML's time grows with its
    square), keys with lone surrogates, and a front-matter key that names a file key (`via`, which the sync
    reads): the body and the rest stay."""
    import time

    from server.ingest.extract import extract_markdown

    meta, body = split_front_matter("---\ndate: 2020-02-30\n---\n# Body\n")
    assert meta == {} and "# Body" in body
    started = time.perf_counter()
    meta, body = split_front_matter("---\na: " + "[" * 16000 + "]" * 16000 + "\n---\n# Body\n")
    assert meta == {} and "# Body" in body and time.perf_counter() - started < 2
    out = extract_markdown('---\n"\\udc00": 1\nvia: /elsewhere/link.md\nkept: yes\n---\n# Body\n')
    assert out.metadata == {"kept": True}
    # A key holding a NUL is dropped like the others (it made the whole file skipped).
    out = extract_markdown('---\n"a\\0b": 1\nkept: yes\n---\n# Body\n')
    assert out.metadata == {"kept": True}


def test_a_pdf_stops_extracting_past_the_size_limit(tmp_path: Path) -> None:
    """A few KB of PDF can hold thousands of pages: extraction stops once the text passes the limit."""
    from server.ingest.extract import SkipFile, extract_pdf

    pdf = tmp_path / "long.pdf"
    make_pdf(pdf, "Long", [f"page {i} " + "words " * 200 for i in range(6)])
    data = pdf.read_bytes()
    assert extract_pdf(data).metadata["pages"] == 6
    with pytest.raises(SkipFile, match=r"passes 2,000 characters after 2 of 6 pages \(max_document_chars\)"):
        extract_pdf(data, max_chars=2000)
