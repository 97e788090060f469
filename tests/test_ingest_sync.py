"""Folder ingestion end to end on the engine: every format, what is left out and why, search, change/delete
and re-ingest with prune, and the index matching the folder afterwards."""

from __future__ import annotations

import json
import os
import shutil
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from server.config import Settings
from server.engine.engine import DocumentInput
from server.errors import NotFoundError, RiftError
from server.ingest.security import PathPolicy
from server.ingest.sync import sync_paths
from server.service import Rift
from tests.support.corpus import build_corpus

INGESTIBLE = {"guide.md", "notes/walrus.txt", "src/tides.py", "glacier.rst", "botany.html", "aurora.pdf"}


@pytest.fixture
def docs(tmp_path: Path) -> Path:
    return build_corpus(tmp_path / "root", tmp_path / "outside")


@pytest.fixture
def app(tmp_path: Path, tiny_model_path: Path, docs: Path):
    settings = Settings(
        data_dir=tmp_path / "data",
        model=str(tiny_model_path),
        chunk_tokens=48,
        chunk_overlap=8,
        allowed_roots=[docs.parent],
    )
    rift = Rift(settings).start(background=False)
    yield rift
    rift.close()


def sync(app: Rift, *paths: Path, **kwargs):
    return sync_paths(
        app.engine(), "files", [str(p) for p in paths], PathPolicy.for_server(app.settings), **kwargs
    )


def statuses(report, root: Path) -> dict[str, tuple[str, str | None]]:
    return {str(Path(f.path).relative_to(root)): (f.status, f.reason) for f in report.files}


def stored(app: Rift, root: Path) -> set[str]:
    return {str(Path(d).relative_to(root)) for d, _ in app.engine().state.list_documents("files", -1, 0)}


def assert_consistent(app: Rift) -> None:
    engine = app.engine()
    record = engine.state.collection("files")
    chroma = set(engine.vectors.all_ids(record.chroma_name))
    assert chroma == engine.state.chunk_ids("files") == engine._keyword["files"].chunk_ids()


def top_doc(app: Rift, query: str, root: Path, **kwargs) -> str | None:
    hits = app.search("files", query, k=3, mode="keyword", **kwargs).outcome.hits
    return str(Path(hits[0].doc_id).relative_to(root)) if hits else None


def test_ingests_every_format_and_says_why_others_are_left_out(app: Rift, docs: Path) -> None:
    report = sync(app, docs)
    got = statuses(report, docs)
    assert {p for p, (s, _) in got.items() if s == "added"} == INGESTIBLE
    assert got["photo.png"] == ("skipped", "binary file (contains NUL bytes)")
    assert got["build"] == ("skipped", "ignored by .gitignore")
    assert got["scratch.tmp"] == ("skipped", "ignored by .gitignore")
    status, reason = got["notes/linked-secret.txt"]
    assert status == "skipped" and "outside the allowed roots" in reason
    assert stored(app, docs) == INGESTIBLE
    assert report.counts()["added"] == len(INGESTIBLE)
    assert all(f.chunks > 0 for f in report.files if f.status == "added")
    assert_consistent(app)


def test_file_metadata_and_structure_aware_chunks(app: Rift, docs: Path) -> None:
    sync(app, docs)
    engine = app.engine()
    text, meta, _, _ = engine.get_document("files", str(docs / "guide.md"))
    assert meta["source"] == str(docs / "guide.md") and meta["file_type"] == "markdown"
    assert meta["title"] == "Volcano Field Guide"  # front matter title wins over the first heading
    assert meta["tags"] == "geology, safety" and meta["version"] == 3 and meta["draft"] is False
    assert meta["author.name"] == "Ann" and meta["published"] == "2024-01-02"
    assert meta["size"] == (docs / "guide.md").stat().st_size
    assert meta["mtime"] == pytest.approx((docs / "guide.md").stat().st_mtime)
    assert not text.startswith("---") and "Strombolian" in text  # front matter is metadata, not text

    headings = [
        c.metadata.get("heading") for c in engine.state.document_chunks("files", str(docs / "guide.md"))
    ]
    assert {"Eruptions", "Eruptions > Warning signs", "Evacuation"} <= set(headings)
    assert (
        headings.index("Eruptions")
        < headings.index("Eruptions > Warning signs")
        < headings.index("Evacuation")
    )
    for chunk in engine.state.document_chunks("files", str(docs / "guide.md")):
        assert text[chunk.metadata["_rift_start"] : chunk.metadata["_rift_end"]] == chunk.text

    symbols = [
        c.metadata.get("symbol") for c in engine.state.document_chunks("files", str(docs / "src/tides.py"))
    ]
    assert "tide_height" in symbols and any(s and s.startswith("Harbour") for s in symbols)

    _, pdf_meta, _, _ = engine.get_document("files", str(docs / "aurora.pdf"))
    assert pdf_meta["title"] == "Aurora Observations" and pdf_meta["file_type"] == "pdf"
    pages = [c.metadata.get("page") for c in engine.state.document_chunks("files", str(docs / "aurora.pdf"))]
    assert pages == [1, 2]  # two short pages: one chunk each, so a page filter finds each page's text
    assert top_doc(app, "magnetometers", docs, filters={"page": 2}) == "aurora.pdf"
    assert top_doc(app, "magnetometers", docs, filters={"page": 1}) is None

    html_text, html_meta, _, _ = engine.get_document("files", str(docs / "botany.html"))
    assert html_meta["title"] == "Desert Botany"
    assert "Saguaro" in html_text and "cactusTracker" not in html_text and "color: red" not in html_text

    _, rst_meta, _, _ = engine.get_document("files", str(docs / "glacier.rst"))
    assert rst_meta["title"] == "Glacier Handbook"
    _, txt_meta, _, _ = engine.get_document("files", str(docs / "notes/walrus.txt"))
    assert txt_meta["title"] == "walrus.txt" and txt_meta["file_type"] == "text"


def test_search_finds_each_format_and_nothing_left_out(app: Rift, docs: Path) -> None:
    sync(app, docs)
    assert top_doc(app, "strombolian lava bombs", docs) == "guide.md"
    assert top_doc(app, "walrus colonies", docs) == "notes/walrus.txt"
    assert top_doc(app, "harbour draft", docs) == "src/tides.py"
    assert top_doc(app, "crevasses bedrock", docs) == "glacier.rst"
    assert top_doc(app, "saguaro pleated", docs) == "botany.html"
    assert top_doc(app, "magnetometers geomagnetic", docs) == "aurora.pdf"
    assert top_doc(app, "penguins", docs) is None  # only in .gitignore'd files
    assert top_doc(app, "swordfish launch code", docs) is None  # only behind the escaping symlink
    hybrid = app.search("files", "walrus colonies", k=3).outcome.hits
    assert str(docs / "notes/walrus.txt") in [h.doc_id for h in hybrid]


def test_reingest_updates_skips_and_prunes_until_the_index_matches_the_folder(app: Rift, docs: Path) -> None:
    sync(app, docs)
    (docs / "notes/walrus.txt").write_text("Narwhal tusks are elongated teeth.\n")
    (docs / "glacier.rst").unlink()
    (docs / "notes/new.md").write_text("# Fjords\n\nFjords are drowned glacial valleys.\n")
    guide = docs / "guide.md"
    os.utime(guide, (time.time() + 100, time.time() + 100))  # touched, same bytes

    without_prune = statuses(sync(app, docs), docs)
    assert without_prune["notes/walrus.txt"][0] == "updated"
    assert without_prune["notes/new.md"][0] == "added"
    assert without_prune["guide.md"][0] == "unchanged"  # content hash, not mtime, decides
    assert without_prune["src/tides.py"][0] == "unchanged"
    assert "glacier.rst" in stored(app, docs)  # kept: prune is opt-in

    pruned = statuses(sync(app, docs, prune=True), docs)
    assert pruned["glacier.rst"] == ("removed", "file no longer exists")
    expected = (INGESTIBLE - {"glacier.rst"}) | {"notes/new.md"}
    assert stored(app, docs) == expected
    assert top_doc(app, "walrus colonies", docs) is None
    assert top_doc(app, "narwhal tusks", docs) == "notes/walrus.txt"
    assert top_doc(app, "crevasses bedrock", docs) is None
    assert top_doc(app, "drowned glacial fjords", docs) == "notes/new.md"
    assert_consistent(app)

    again = sync(app, docs, prune=True).counts()
    assert again["added"] == again["updated"] == again["removed"] == 0
    assert again["unchanged"] == len(expected)


def test_prune_removes_newly_ignored_files_but_respects_glob_scope(app: Rift, docs: Path) -> None:
    sync(app, docs)
    only_md = statuses(sync(app, docs, glob="*.md", prune=True), docs)
    # Out-of-glob files are neither listed nor pruned (ignored folders are still reported).
    assert {p for p, (s, _) in only_md.items() if s != "skipped"} == {"guide.md"}
    assert stored(app, docs) == INGESTIBLE

    (docs / ".gitignore").write_text("build/\n*.tmp\nnotes/\n")
    pruned = statuses(sync(app, docs, prune=True), docs)
    status, reason = pruned["notes"]
    assert status == "skipped" and reason == "ignored by .gitignore"
    assert pruned["notes/walrus.txt"][0] == "removed"
    assert stored(app, docs) == INGESTIBLE - {"notes/walrus.txt"}


def test_an_unreadable_gitignore_leaves_its_folder_out_and_prune_keeps_its_documents(
    app: Rift, docs: Path, monkeypatch
) -> None:
    """A .gitignore that cannot be read may be keeping secrets out: the files it governs are not guessed at
    but left out, reported as an error that may pass (pruning keeps their documents); one above the synced
    folder leaves the whole folder out."""
    (docs / "notes" / ".gitignore").write_text("secret.md\n")
    (docs / "notes" / "secret.md").write_text("The walrus keeper's password is hunter2.\n")
    sync(app, docs)
    assert stored(app, docs) == INGESTIBLE

    unreadable: set[Path] = {docs / "notes" / ".gitignore"}
    read_text = Path.read_text

    def denied(self: Path, *args, **kwargs) -> str:
        if self in unreadable:  # (chmod would not stop root from reading it)
            raise PermissionError(13, "Permission denied", str(self))
        return read_text(self, *args, **kwargs)

    monkeypatch.setattr(Path, "read_text", denied)
    left_out = "the folder is left out, as the rules that apply to it are unknown"
    got = statuses(sync(app, docs, prune=True), docs)
    assert got["notes"] == (
        "skipped",
        f"cannot read {docs / 'notes' / '.gitignore'}: Permission denied; {left_out}",
    )
    assert not any(p.startswith("notes/") for p in got)
    assert stored(app, docs) == INGESTIBLE  # notes/walrus.txt stays; the secret never came in

    unreadable.clear()
    unreadable.add(docs / ".gitignore")
    got = statuses(sync(app, docs / "notes", prune=True), docs)
    assert got == {"notes": ("skipped", f"cannot read {docs / '.gitignore'}: Permission denied; {left_out}")}
    assert stored(app, docs) == INGESTIBLE


def test_prune_of_a_folder_that_is_gone_removes_its_documents(app: Rift, docs: Path) -> None:
    import shutil

    from server.errors import NotFoundError

    sync(app, docs)
    assert "notes/walrus.txt" in stored(app, docs)
    shutil.rmtree(docs / "notes")
    with pytest.raises(NotFoundError, match="does not exist"):
        sync(app, docs / "notes")  # without prune a missing path is an error, as before
    pruned = statuses(sync(app, docs / "notes", prune=True), docs)
    assert pruned == {"notes/walrus.txt": ("removed", "file no longer exists")}
    assert stored(app, docs) == INGESTIBLE - {"notes/walrus.txt"}
    with pytest.raises(NotFoundError, match="does not exist"):
        sync(app, docs / "never-synced", prune=True)  # a typo removes nothing and says so
    assert_consistent(app)


def test_prune_of_a_path_that_changed_kind_removes_what_was_stored_there(app: Rift, docs: Path) -> None:
    """A file replaced by a folder of the same name, and a folder replaced by a file: pruning the path named
    removes the old documents (they stayed, searchable, with the path named; found by helper DG)."""
    import shutil

    readme = docs / "README"
    readme.write_text("The walrus hauls out on the ice floe.\n")
    sync(app, readme, docs / "notes")
    assert {"README", "notes/walrus.txt"} <= stored(app, docs)
    readme.unlink()
    readme.mkdir()
    (readme / "inside.md").write_text("# Inside\n\nThe heron nests by the reservoir.\n")
    shutil.rmtree(docs / "notes")
    (docs / "notes").write_text("not a folder any more\n")
    got = statuses(sync(app, readme, docs / "notes", prune=True), docs)
    assert got["README"] == ("removed", "replaced by a folder of the same name")
    assert got["notes/walrus.txt"] == ("removed", "file no longer exists")
    assert got["README/inside.md"] == ("added", None)
    assert {"README", "notes/walrus.txt"}.isdisjoint(stored(app, docs))
    assert_consistent(app)


def test_size_limit_single_files_and_no_recursion(tmp_path: Path, tiny_model_path: Path, docs: Path) -> None:
    settings = Settings(
        data_dir=tmp_path / "data2",
        model=str(tiny_model_path),
        chunk_tokens=48,
        chunk_overlap=8,
        allowed_roots=[docs],
        max_file_bytes=200,
    )
    rift = Rift(settings).start(background=False)
    try:
        got = statuses(sync(rift, docs, recursive=False), docs)
        status, reason = got["guide.md"]
        assert status == "skipped" and "max_file_bytes" in reason
        assert "notes/walrus.txt" not in got and "src/tides.py" not in got
        single = statuses(sync(rift, docs / "src" / "tides.py", docs / "notes" / "walrus.txt"), docs)
        assert single["notes/walrus.txt"] == ("added", None)  # a file named explicitly, in a sub-folder
        assert single["src/tides.py"][0] == "skipped" and "max_file_bytes" in single["src/tides.py"][1]
    finally:
        rift.close()


def test_a_named_file_now_left_out_keeps_no_stale_document_under_prune(app: Rift, docs: Path) -> None:
    walrus = docs / "notes" / "walrus.txt"
    assert statuses(sync(app, walrus), docs)["notes/walrus.txt"][0] == "added"
    walrus.write_text("")  # emptied: no text to index now
    os.utime(walrus, (time.time() - 60, time.time() - 60))  # (for good: not a save caught mid-way)
    status, reason = statuses(sync(app, walrus), docs)["notes/walrus.txt"]
    assert status == "skipped" and reason.endswith("its earlier version stays indexed (prune removes it)")
    assert top_doc(app, "walrus", docs) == "notes/walrus.txt"  # (said so: the old text still answers)
    status, reason = statuses(sync(app, walrus, prune=True), docs)["notes/walrus.txt"]
    assert status == "removed" and reason.endswith("its document was removed")
    assert "notes/walrus.txt" not in stored(app, docs) and top_doc(app, "walrus", docs) is None
    assert_consistent(app)


def test_a_file_named_with_its_folder_stays_whatever_the_folder_s_gitignore_says(app: Rift, docs: Path) -> None:
    """A file named in the call bypasses .gitignore; the walk of a folder also named says it is ignored, which
    is not its status: it is listed once, from its own reading, and prune keeps it run after run (it was
    removed every other run, while the same report listed it unchanged; found by helper AS)."""
    (docs / ".gitignore").write_text("build/\n*.tmp\nprivate.md\n")
    private = docs / "private.md"
    private.write_text("# Private\n\nThe heron nests by the reservoir.\n")
    generated = docs / "build" / "generated.txt"  # named too, in a folder .gitignore leaves out whole
    for run, status in enumerate(("added", "unchanged", "unchanged", "unchanged")):
        paths = (docs, private, generated) if run % 2 == 0 else (private, generated, docs)
        report = sync(app, *paths, prune=True)
        assert [(f.status, f.reason) for f in report.files if f.path == str(private)] == [(status, None)], run
        assert [f.status for f in report.files if f.path == str(generated)] == [status], run
        assert report.counts()["removed"] == 0, run
        assert stored(app, docs) == INGESTIBLE | {"private.md", "build/generated.txt"}, run
    assert top_doc(app, "heron", docs) == "private.md"
    assert_consistent(app)
    # Without prune, once too (not also "skipped: ignored by .gitignore; its earlier version stays indexed").
    report = sync(app, private, docs)
    assert [(f.status, f.reason) for f in report.files if f.path == str(private)] == [("unchanged", None)]
    # Not named, it is what the folder's rules say: left out, and pruned.
    status, reason = statuses(sync(app, docs, prune=True), docs)["private.md"]
    assert status == "removed" and reason == "ignored by .gitignore; its document was removed"
    assert top_doc(app, "heron", docs) is None
    assert_consistent(app)


def test_cli_groups_leave_a_file_named_in_one_to_that_one(tmp_path: Path, tiny_model_path: Path, monkeypatch) -> None:
    """`rift add` syncs more than 100 paths in groups: a folder in one group pruned the file its .gitignore
    leaves out that another group names (removed for good when the folder came last), and listed it twice."""
    from server.cli import main

    monkeypatch.setenv("RIFT_MODEL", str(tiny_model_path))
    folder, filler = tmp_path / "d", tmp_path / "f"
    folder.mkdir()
    filler.mkdir()
    (folder / ".gitignore").write_text("private.md\n")
    private = folder / "private.md"
    private.write_text("# Private\n\nThe heron nests by the reservoir.\n")
    for i in range(100):
        (filler / f"n{i:03}.md").write_text(f"note number {i}\n")
    notes = [str(p) for p in sorted(filler.iterdir())]
    runner = CliRunner()
    for run, status in enumerate(("added", "unchanged", "unchanged")):
        paths = [str(private), *notes, str(folder)] if run % 2 == 0 else [str(folder), *notes, str(private)]
        out = runner.invoke(main, ["add", *paths, "--prune", "--json", "--data-dir", str(tmp_path / "data")])
        assert out.exit_code == 0, out.output
        files = json.loads(out.stdout)["files"]
        assert [f["status"] for f in files if f["path"] == str(private)] == [status], run
        assert not [f for f in files if f["status"] == "removed"], run


def test_cli_add_of_an_unreadable_named_file_stores_the_rest_and_names_it(
    tmp_path: Path, tiny_model_path: Path, monkeypatch
) -> None:
    """click refused an unreadable path as a usage error (exit 2) before anything ran, so `rift add a.md b.md`
    stored neither; add_paths skips it with the reason (found by helper DG). Simulated: tests may run as root."""
    from server.cli import main
    from server.ingest import sync as sync_module

    monkeypatch.setenv("RIFT_MODEL", str(tiny_model_path))
    good, locked = tmp_path / "good.md", tmp_path / "locked.md"
    good.write_text("# Good\n\nThe heron nests by the reservoir.\n")
    locked.write_text("# Locked\n\nThe walrus hauls out.\n")
    real_access, real_read = os.access, sync_module.read_file

    def access(path: Any, mode: int, *args: Any, **kwargs: Any) -> bool:
        return False if str(path) == str(locked) else real_access(path, mode, *args, **kwargs)

    def read_file(path: Path, *args: Any, **kwargs: Any) -> Any:
        if Path(path) == locked:
            raise PermissionError(13, "Permission denied", str(path))
        return real_read(path, *args, **kwargs)

    monkeypatch.setattr(os, "access", access)
    monkeypatch.setattr(sync_module, "read_file", read_file)
    out = CliRunner().invoke(main, ["add", str(good), str(locked), "--data-dir", str(tmp_path / "data")])
    assert out.exit_code == 1, out.output
    assert f"added     {good}" in out.output
    assert f"not stored, though named: {locked}: cannot read file: Permission denied" in out.output


def _notes_store(tmp_path: Path, files: dict[str, str]) -> tuple[Path, str, CliRunner]:
    """A folder of `files` (name -> text) added with `rift add` to a new data dir: (folder, data dir, runner)."""
    from server.cli import main

    notes = tmp_path / "notes"
    notes.mkdir()
    for name, text in files.items():
        (notes / name).write_text(text)
    data = str(tmp_path / "data")
    runner = CliRunner()
    assert runner.invoke(main, ["add", str(notes), "--data-dir", data]).exit_code == 0
    return notes, data, runner


def test_cli_search_reads_as_text_and_as_json(tmp_path: Path, tiny_model_path: Path, monkeypatch) -> None:
    """`rift search` prints a line per hit (with the heading its chunk lies under) and its text indented below
    (escaped: a stored document cannot colour the terminal), then the logged search's query_id; `--json` gives
    the same hits to a script."""
    from server.cli import main

    monkeypatch.setenv("RIFT_MODEL", str(tiny_model_path))
    files = {
        "otter.md": "# Otters\n\nThe otter cracks shells on a stone.\n",
        "paint.txt": "otter \x1b[31mred\x1b[0m paint\n",
        "moss.txt": "Moss grows on the north side.\n",
    }
    notes, data, runner = _notes_store(tmp_path, files)
    text = runner.invoke(main, ["search", "otter shells", "-k", "2", "--data-dir", data])
    assert text.exit_code == 0, text.output
    lines = text.output.splitlines()
    assert lines[0].startswith(f"1. {notes / 'otter.md'} › Otters  (score ") and "keyword #1" in lines[0]
    assert lines[1:3] == ["   # Otters", "   The otter cracks shells on a stone."]
    assert "\x1b" not in text.output and "   otter \\x1b[31mred\\x1b[0m paint" in lines
    assert lines[-1].startswith("query_id ") and sum(line[:1].isdigit() for line in lines) == 2
    found = json.loads(runner.invoke(main, ["search", "otter shells", "-k", "2", "--json", "--data-dir", data]).output)
    assert [h["doc_id"] for h in found["hits"]][0] == str(notes / "otter.md") and len(found["hits"]) == 2
    assert found["query_id"] != lines[-1].removeprefix("query_id ")  # each search is logged on its own
    short = runner.invoke(main, ["search", "stone", "--max-chars", "20", "--data-dir", data])
    assert "…" in short.output  # a window shorter than its chunk says so
    nothing = runner.invoke(main, ["search", "zzzq", "--mode", "keyword", "--data-dir", data])
    assert nothing.exit_code == 0 and nothing.output.strip() == "no hits"


def test_cli_list_and_get_read_as_text(tmp_path: Path, tiny_model_path: Path, monkeypatch) -> None:
    """`rift list` prints a line per document (id, then its metadata but the path again) and says on stderr how
    many of how many, and the next page's --after; `rift collections` a line per collection; `rift get` prints the text alone on stdout (tabs and lines
    kept, control characters escaped), what it is and the part shown on stderr."""
    from server.cli import main

    monkeypatch.setenv("RIFT_MODEL", str(tiny_model_path))
    files = {
        "a.md": "# Otters\n\nThe otter\tcracks shells.\n",
        "b.txt": "red \x1b[31mpaint\x1b[0m\n",
        "c.txt": "Moss grows on the north side.\n",
    }
    notes, data, runner = _notes_store(tmp_path, files)
    page = runner.invoke(main, ["list", "--limit", "2", "--data-dir", data])
    assert page.exit_code == 0, page.output
    lines = page.stdout.splitlines()
    assert [line.split("  ")[0] for line in lines] == [str(notes / "a.md"), str(notes / "b.txt")]
    assert lines[0] == f"{notes / 'a.md'}  file_type=markdown, title=Otters"  # (not its path again, size, hash)
    assert page.stderr.strip() == f"documents 1 to 2 of 3 in default; the next page: --after {notes / 'b.txt'}"
    rest = runner.invoke(main, ["list", "--after", str(notes / "b.txt"), "--data-dir", data])
    assert rest.stdout.split("  ")[0] == str(notes / "c.txt") and rest.stderr.strip() == "documents 3 to 3 of 3 in default"
    none = runner.invoke(main, ["list", "--prefix", "zz", "--data-dir", data])
    assert none.exit_code == 0 and none.stdout == "" and none.stderr.strip() == "no documents in default"
    catalog = runner.invoke(main, ["collections", "--data-dir", data])
    assert catalog.exit_code == 0, catalog.output
    assert [line.split() for line in catalog.stdout.splitlines()] == [
        ["COLLECTION", "DOCUMENTS", "CHUNKS", "MODEL"], ["default", "3", "3", str(tiny_model_path)]
    ]
    assert runner.invoke(main, ["search", "otter shells", "--data-dir", data]).exit_code == 0
    figures = runner.invoke(main, ["stats", "--data-dir", data])
    assert figures.exit_code == 0, figures.output
    lines = figures.stdout.splitlines()
    assert lines[0].split()[:2] == ["model", str(tiny_model_path)]
    table = lines.index(next(line for line in lines if line.startswith("COLLECTION")))
    assert lines[table + 1].split()[:4] == ["default", "3", "3", "1"]  # documents, chunks, searches logged
    assert "searches     1 logged, 0 feedback verdicts" in lines
    assert json.loads(runner.invoke(main, ["stats", "--json", "--data-dir", data]).stdout)["queries"]["logged_queries"] == 1

    whole = runner.invoke(main, ["get", str(notes / "a.md"), "--data-dir", data])
    assert whole.exit_code == 0, whole.output
    assert whole.stdout == "# Otters\n\nThe otter\tcracks shells.\n"
    assert whole.stderr.strip() == f"{notes / 'a.md'} in default: 35 characters, 1 chunk(s); file_type=markdown, title=Otters"
    painted = runner.invoke(main, ["get", str(notes / "b.txt"), "--data-dir", data])
    assert "\x1b" not in painted.stdout and painted.stdout == "red \\x1b[31mpaint\\x1b[0m\n"
    part = runner.invoke(main, ["get", str(notes / "a.md"), "--max-chars", "8", "--data-dir", data])
    assert part.stdout == "# Otters\n"
    assert part.stderr.splitlines()[-1] == "characters 0 to 8 of 35; --offset 8 for the rest"
    end = runner.invoke(main, ["get", str(notes / "a.md"), "--offset", "10", "--data-dir", data])
    assert end.stdout == "The otter\tcracks shells.\n" and end.stderr.splitlines()[-1] == "characters 10 to 35 of 35"


def test_cli_add_then_search(tmp_path: Path, tiny_model_path: Path, docs: Path, monkeypatch) -> None:
    from server.cli import main

    monkeypatch.setenv("RIFT_MODEL", str(tiny_model_path))
    monkeypatch.setenv("RIFT_CHUNK_TOKENS", "48")
    monkeypatch.setenv("RIFT_CHUNK_OVERLAP", "8")
    data = str(tmp_path / "cli-data")
    runner = CliRunner()
    added = runner.invoke(main, ["add", str(docs), "--collection", "notes", "--data-dir", data])
    assert added.exit_code == 0, added.output
    assert f"added     {docs / 'guide.md'}" in added.output
    assert "binary file" in added.output
    found = runner.invoke(
        main,
        ["search", "saguaro pleated stems", "--collection", "notes", "--mode", "keyword", "--data-dir", data],
    )
    assert found.exit_code == 0, found.output
    assert str(docs / "botany.html") in found.output
    again = runner.invoke(
        main, ["add", str(docs), "--collection", "notes", "--prune", "--json", "--data-dir", data]
    )
    # The CLI reads what its user can, so the symlink out of the folder was followed (the server refuses it).
    assert again.exit_code == 0 and '"unchanged": 7' in again.output
    assert str(docs.parent.parent / "outside" / "secret.txt") in again.output
    missing = runner.invoke(main, ["add", str(docs / "nope"), "--data-dir", data])
    assert missing.exit_code != 0 and "does not exist" in missing.output
    # A shell glob may name more files than one sync call takes; the CLI syncs them in groups.
    many = tmp_path / "many"
    many.mkdir()
    for i in range(105):
        (many / f"n{i}.md").write_text(f"note number {i}\n")
    bulk = runner.invoke(main, ["add", *sorted(str(p) for p in many.iterdir()), "--data-dir", data, "--json"])
    assert bulk.exit_code == 0, bulk.output
    assert '"added": 105' in bulk.output
    # A missing path past the first group of 100 is named by its own index, before anything is stored.
    more = [str(p) for p in sorted(many.iterdir())] + [str(many / "missing.md")]
    typo = runner.invoke(main, ["add", *more, "--collection", "typo", "--data-dir", data])
    assert typo.exit_code != 0 and f"paths[105] '{many / 'missing.md'}' does not exist" in typo.output
    listed = runner.invoke(main, ["stats", "--json", "--data-dir", data])
    assert "typo" not in [c["name"] for c in json.loads(listed.stdout)["collections"]]
    # A glob that matches nothing is refused before a watch starts, not logged on every change.
    bad = runner.invoke(main, ["watch", str(docs), "--glob", "[", "--data-dir", data])
    assert bad.exit_code != 0 and "matches nothing" in bad.output
    # So is one for add, and a bad collection name, before the model loads or a data dir is made.
    fresh = tmp_path / "never-made"
    for extra in (["--glob", "["], ["--collection", "no/slash"]):
        early = runner.invoke(main, ["add", str(docs), *extra, "--data-dir", str(fresh)])
        assert early.exit_code != 0 and not fresh.exists(), early.output
    assert "matches nothing" in runner.invoke(main, ["add", str(docs), "--glob", "[", "--data-dir", str(fresh)]).output
    # Learning commands read an existing store: a mistyped data dir is named, not created.
    typo = tmp_path / "typo-data"
    for command in (["models"], ["rollback"], ["retrain", "--dry-run"]):
        result = runner.invoke(main, [*command, "--data-dir", str(typo)])
        assert result.exit_code != 0 and "no rift data folder" in result.output, (command, result.output)
    assert not typo.exists()
    notes = tmp_path / "just-notes"  # an existing folder that is no rift store is not written into
    notes.mkdir()
    (notes / "a.md").write_text("hello\n")
    for command in (["stats"], ["models"]):
        result = runner.invoke(main, [*command, "--data-dir", str(notes)])
        assert result.exit_code != 0 and "no rift data folder" in result.output, (command, result.output)
    # Nor by the commands that create a store: only a new or empty folder becomes one.
    for command in (["add", str(docs / "guide.md")], ["watch", str(docs)]):
        result = runner.invoke(main, [*command, "--data-dir", str(notes)])
        assert result.exit_code != 0 and "holds files that are not rift's (such as a.md)" in result.output
    assert [p.name for p in notes.iterdir()] == ["a.md"]


def test_watch_keeps_a_folder_in_sync(app: Rift, docs: Path) -> None:
    from server.ingest.watch import watch_folder

    stop = threading.Event()
    syncs: list = []
    thread = threading.Thread(
        target=watch_folder,
        args=(app.engine(), docs, "files"),
        kwargs={
            "policy": PathPolicy.for_server(app.settings),
            "debounce_ms": 200,
            "stop_event": stop,
            "on_sync": syncs.append,
            # Changes under this folder are not reacted to; kelp.md merely shares the start of its name.
            "ignore_under": [docs / "kelp"],
        },
        daemon=True,
    )
    thread.start()
    try:
        wait_for(lambda: stored(app, docs) == INGESTIBLE)
        (docs / "kelp.md").write_text("# Kelp\n\nKelp forests shelter sea otters.\n")
        wait_for(lambda: stored(app, docs) == INGESTIBLE | {"kelp.md"})
        (docs / "notes" / "walrus.txt").unlink()
        wait_for(lambda: stored(app, docs) == (INGESTIBLE - {"notes/walrus.txt"}) | {"kelp.md"})
        # A folder watchfiles skips by default but the sync reads (no .gitignore excludes it here).
        (docs / "node_modules").mkdir()
        (docs / "node_modules" / "readme.md").write_text("# Pkg\n\nA vendored package.\n")
        wait_for(lambda: "node_modules/readme.md" in stored(app, docs))
        assert top_doc(app, "kelp forests otters", docs) == "kelp.md"
    finally:
        stop.set()
        thread.join(10)
    assert not thread.is_alive()
    assert len(syncs) >= 3


@contextmanager
def watching(app: Rift, folder: Path, **options: Any) -> Iterator[threading.Thread]:
    """`watch_folder` on `folder` (with `options`) in a thread for the body; stopped after it, and it must stop."""
    from server.ingest.watch import watch_folder

    stop = threading.Event()
    thread = threading.Thread(
        target=watch_folder,
        args=(app.engine(), folder, "files"),
        kwargs={"policy": PathPolicy.for_server(app.settings), "debounce_ms": 200, "stop_event": stop, **options},
        daemon=True,
    )
    thread.start()
    try:
        yield thread
    finally:
        stop.set()
        thread.join(10)
    assert not thread.is_alive()


def test_watch_waits_for_a_vanished_folder_and_follows_a_replaced_one(app: Rift, docs: Path) -> None:
    away = docs.with_name("docs-away")
    with watching(app, docs) as thread:
        wait_for(lambda: stored(app, docs) == INGESTIBLE)
        docs.rename(away)  # gone (an unmounted disk, a checkout in progress): nothing is pruned
        time.sleep(2.0)
        assert stored(app, docs) == INGESTIBLE and thread.is_alive()
        away.rename(docs)  # back, with a change made meanwhile: the watch picks the folder up again
        (docs / "kelp.md").write_text("# Kelp\n\nKelp forests shelter sea otters.\n")
        wait_for(lambda: stored(app, docs) == INGESTIBLE | {"kelp.md"})
        # Replaced by a new folder of the same name (a new inode): watched and synced as the new content.
        docs.rename(away)
        docs.mkdir()
        (docs / "fresh.md").write_text("# Fresh\n\nA new folder in the old one's place.\n")
        wait_for(lambda: stored(app, docs) == {"fresh.md"})
        (docs / "later.md").write_text("# Later\n\nWritten after the new watch started.\n")
        wait_for(lambda: stored(app, docs) == {"fresh.md", "later.md"})


def test_watch_keeps_the_documents_of_a_mount_point_that_is_unmounted(app: Rift, docs: Path, monkeypatch) -> None:
    """Unmounted, a mount point is an empty folder of another device: that is not the folder being replaced,
    and its sync pruned every document (a remount embedded them all again). Here the watch starts before the
    disk is mounted, as one started at login may."""
    mounted = {str(docs): False}
    real = os.path.ismount
    monkeypatch.setattr(os.path, "ismount", lambda path: mounted.get(os.fspath(path), False) or real(path))
    disk = docs.with_name("docs-disk")
    docs.rename(disk)
    docs.mkdir()  # the mount point, nothing mounted on it yet

    def mount() -> None:
        docs.rmdir()
        disk.rename(docs)
        mounted[str(docs)] = True

    def unmount() -> None:
        docs.rename(disk)
        docs.mkdir()  # an empty folder of the parent's device stays
        mounted[str(docs)] = False

    with watching(app, docs) as thread:
        time.sleep(1.5)
        mount()
        wait_for(lambda: stored(app, docs) == INGESTIBLE)
        unmount()
        time.sleep(2.5)
        assert stored(app, docs) == INGESTIBLE and thread.is_alive()
        (disk / "kelp.md").write_text("# Kelp\n\nKelp forests shelter sea otters.\n")  # mounted again, changed
        mount()
        wait_for(lambda: stored(app, docs) == INGESTIBLE | {"kelp.md"})


def link_outside(docs: Path) -> Path:
    """A file outside `docs` (under the allowed roots) that a symlink in it leads to."""
    outside = docs.parent / "shared"
    outside.mkdir()
    target = outside / "comet.md"
    target.write_text("# Comets\n\nA comet's tail points away from the sun.\n")
    (docs / "comet.md").symlink_to(target)
    return target


def test_watch_syncs_a_change_to_a_file_a_symlink_leads_to_outside_the_folder(app: Rift, docs: Path, monkeypatch) -> None:
    """The link's target is stored, and was read again only when something in the folder itself changed."""
    target = link_outside(docs)

    def text() -> str:
        try:
            return app.engine().get_document("files", str(target))[0]
        except NotFoundError:  # (not synced yet)
            return ""

    with watching(app, docs):
        wait_for(lambda: "tail points" in text())
        time.sleep(1.0)
        target.write_text("# Comets\n\nA comet's nucleus is ice and dust.\n")  # edited in place
        wait_for(lambda: "nucleus" in text())
        fresh = target.with_name(".comet.md.tmp")  # an editor's save: a new file renamed over the old one
        fresh.write_text("# Comets\n\nA comet's coma glows near the sun.\n")
        fresh.replace(target)
        wait_for(lambda: "coma" in text())
        time.sleep(1.0)
        target.write_text("# Comets\n\nComets return on long orbits.\n")  # the new file is watched too
        wait_for(lambda: "long orbits" in text())
        # A save whose sync fails (the server away): the new file is watched all the same.
        from server.ingest import watch

        real, failed = watch.sync_paths, []

        def fails_once(*args, **kwargs):
            if not failed:
                failed.append(1)
                raise RiftError("the Chroma server is away")
            return real(*args, **kwargs)

        monkeypatch.setattr(watch, "sync_paths", fails_once)
        fresh.write_text("# Comets\n\nA comet's coma glows.\n")
        fresh.replace(target)
        wait_for(lambda: bool(failed))
        time.sleep(1.5)
        target.write_text("# Comets\n\nComets shed meteor showers.\n")
        wait_for(lambda: "meteor" in text())
        # Deleted and written again at once, as a checkout does (its old inode may come back, its watch not).
        target.unlink()
        target.write_text("# Comets\n\nComets were checked out.\n")
        wait_for(lambda: "checked out" in text())
        time.sleep(1.5)
        target.write_text("# Comets\n\nComets were edited after the checkout.\n")
        wait_for(lambda: "after the checkout" in text())
        # Deleted, then written again later (no event inside the folder says so): synced when it comes back.
        target.unlink()
        wait_for(lambda: text() == "")
        time.sleep(1.5)
        target.write_text("# Comets\n\nComets are back.\n")
        wait_for(lambda: "are back" in text())


def test_watch_goes_on_when_a_linked_file_goes_as_its_watch_starts(app: Rift, docs: Path, monkeypatch) -> None:
    """The OS watch of a file that no longer exists fails to start: that ended `rift watch` with a traceback."""
    import watchfiles

    target = link_outside(docs)
    real, starts = watchfiles.watch, []

    def target_gone_first(*paths, **kwargs):
        starts.append(len(paths))
        if len(paths) > 1 and target.exists():
            target.unlink()
        return real(*paths, **kwargs)

    monkeypatch.setattr(watchfiles, "watch", target_gone_first)
    with watching(app, docs) as thread:
        wait_for(lambda: len(starts) >= 3)  # the start that failed, and one more
        (docs / "kelp.md").write_text("# Kelp\n\nKelp forests shelter sea otters.\n")
        kelp = str(docs / "kelp.md")
        wait_for(lambda: kelp in dict(app.engine().state.list_documents("files", -1, 0)))
        assert thread.is_alive()


def test_a_polling_watch_does_not_sync_again_and_again_for_a_broken_symlink(app: Rift, docs: Path, monkeypatch) -> None:
    """Polling reports a broken link as deleted at every scan: each synced the folder, every 300 ms, for good."""
    from server.ingest import watch

    (docs / "gone.md").symlink_to(docs.parent / "nowhere.md")
    (docs / ".#guide.md").symlink_to("user@host.1234")  # an editor's lock: left out by the filter (no first sync)
    real, syncs = watch.sync_paths, []
    monkeypatch.setattr(watch, "sync_paths", lambda *a, **k: (syncs.append(1), real(*a, **k))[1])
    with watching(app, docs, force_polling=True):
        wait_for(lambda: len(syncs) >= 1)
        time.sleep(3.0)
        assert len(syncs) <= 2


def test_a_change_in_a_symlinked_folder_sync_does_not_follow_syncs_nothing(app: Rift, docs: Path, monkeypatch) -> None:
    """The OS watch follows a symlinked sub-folder (a linked build tree) that a sync does not: every change
    there synced the whole folder for nothing."""
    from server.ingest import watch

    tree = docs.parent / "build-tree"
    (tree / "deep").mkdir(parents=True)
    (docs / "generated").symlink_to(tree)
    real, syncs = watch.sync_paths, []
    monkeypatch.setattr(watch, "sync_paths", lambda *a, **k: (syncs.append(1), real(*a, **k))[1])
    with watching(app, docs):
        wait_for(lambda: stored(app, docs) == INGESTIBLE)
        time.sleep(0.5)
        first = len(syncs)
        for i in range(3):
            (tree / "deep" / f"out{i}.md").write_text("# Built\n\nGenerated output.\n")
            time.sleep(0.3)
        time.sleep(2.0)
        assert len(syncs) == first
        (docs / "kelp.md").write_text("# Kelp\n\nKelp forests shelter sea otters.\n")  # a change inside syncs
        wait_for(lambda: stored(app, docs) == INGESTIBLE | {"kelp.md"})


def test_a_folder_whose_os_watch_fails_is_synced_on_a_timer(app: Rift, docs: Path, monkeypatch) -> None:
    """Polling that meets a symlink loop fails at every scan (watchfiles' RuntimeError): the watch ended."""
    from server.ingest import watch

    (docs / "l1").symlink_to(docs / "l2")
    (docs / "l2").symlink_to(docs / "l1")
    monkeypatch.setattr(watch, "FALLBACK_SYNC_S", 1)
    with watching(app, docs, force_polling=True) as thread:
        wait_for(lambda: stored(app, docs) == INGESTIBLE)
        (docs / "kelp.md").write_text("# Kelp\n\nKelp forests shelter sea otters.\n")
        wait_for(lambda: stored(app, docs) == INGESTIBLE | {"kelp.md"})
        assert thread.is_alive()


def test_watch_follows_a_symlinked_folder_to_its_new_target(app: Rift, docs: Path, monkeypatch) -> None:
    import watchfiles

    real_watch, watched = watchfiles.watch, []
    monkeypatch.setattr(watchfiles, "watch", lambda *paths, **k: (watched.append(paths), real_watch(*paths, **k))[1])
    releases = docs / "releases"
    for version in ("v1", "v2"):
        (releases / version).mkdir(parents=True)
        (releases / version / "guide.md").write_text(f"# Guide\n\nRelease {version} notes.\n")
    current = docs / "current"
    current.symlink_to(releases / "v1")
    with watching(app, current):
        wait_for(lambda: stored(app, docs) == {"releases/v1/guide.md"})
        switched = docs / "current.new"  # an atomic switch, as deploy tools do it
        switched.symlink_to(releases / "v2")
        switched.replace(current)
        wait_for(lambda: "releases/v2/guide.md" in stored(app, docs))
        (releases / "v2" / "faq.md").write_text("# FAQ\n\nWatched in the new target.\n")
        wait_for(lambda: "releases/v2/faq.md" in stored(app, docs))
        # (The old target's documents stay: its files are still there, and prune only reads the new target.)
    # The new target's files are in the folder watched, not files outside it watched one by one (an OS watch
    # each, up to the OS's limit, and a restart of the watch at every save).
    assert {paths for paths in watched} == {(releases.resolve() / "v1",), (releases.resolve() / "v2",)}


def test_watch_syncs_a_change_in_a_folder_that_a_link_inside_also_leads_to(app: Rift, docs: Path) -> None:
    """The OS reports a change in `real/` through a link to it (`alias -> real`, one watch per folder), and the
    change was taken for one in a linked folder a sync does not follow: never synced."""
    (docs / "real").mkdir()
    (docs / "real" / "old.md").write_text("# Old\n\nAlready there.\n")
    (docs / "alias").symlink_to(docs / "real")
    with watching(app, docs):
        wait_for(lambda: "real/old.md" in stored(app, docs))
        (docs / "real" / "kelp.md").write_text("# Kelp\n\nKelp forests shelter sea otters.\n")
        wait_for(lambda: "real/kelp.md" in stored(app, docs))


def test_a_sync_stopped_before_its_first_commit_leaves_no_new_collection(
    app: Rift, docs: Path, monkeypatch
) -> None:
    engine = app.engine()

    def cancelled(texts, progress=None):
        raise KeyboardInterrupt  # as Ctrl-C, or a cancelled request's progress report, stops it

    monkeypatch.setattr(engine.embedder, "encode_documents", cancelled)
    with pytest.raises(KeyboardInterrupt):
        sync_paths(engine, "fresh", [str(docs)], PathPolicy.unrestricted())
    assert "fresh" not in engine.collection_names()


def test_a_renamed_folder_is_synced_without_embedding_anything_again(app: Rift, docs: Path, monkeypatch) -> None:
    sync(app, docs)
    engine = app.engine()
    encoded: list[str] = []
    real = engine.embedder.encode_documents

    def counting(texts, progress=None):
        encoded.extend(texts)
        return real(texts, progress)

    monkeypatch.setattr(engine.embedder, "encode_documents", counting)
    (docs / "notes").rename(docs / "journal")
    got = statuses(sync(app, docs, prune=True), docs)
    assert got["journal/walrus.txt"][0] == "added" and got["notes/walrus.txt"][0] == "removed"
    assert encoded == []
    assert top_doc(app, "walrus", docs) == "journal/walrus.txt"


def test_a_renamed_file_keeps_the_searches_and_feedback_logged_on_it(app: Rift, docs: Path) -> None:
    """A renamed or moved file is a new document (its id is its path) and its old one is pruned: the searches
    logged on it and the agent's verdicts trained on nothing any more (found by helper DJ). The sync that
    stores its whole text under the new path hands the old document's passages on to it; the training row
    then names the new document, so a plan drops it when that one goes."""
    folder = docs.parent / "notes"  # (in the allowed root, beside the corpus)
    (folder / "sub").mkdir(parents=True)
    (folder / "a.md").write_text("# Tides\n\nThe tide pool holds anemones and crabs at low water.\n")
    (folder / "b.md").write_text("# Coffee\n\nEspresso is brewed under pressure with fine grounds.\n")
    sync(app, folder, prune=True)
    old, other = str(folder / "a.md"), str(folder / "b.md")
    search = app.search("files", "tide pool anemones", k=2)
    assert {h.doc_id for h in search.outcome.hits} == {old, other}
    judged = app.learning.judge(search.query_id, [(old, True), (other, False)])
    assert [j["stored"] for j in judged] == [True, True]
    passages = app.engine().state.document_chunks("files", old)

    (folder / "a.md").rename(folder / "sub" / "moved.md")
    got = statuses(sync(app, folder, prune=True), folder)
    assert got["sub/moved.md"][0] == "added" and got["a.md"][0] == "removed"
    new = str(folder / "sub" / "moved.md")
    now = app.engine().state.document_chunks("files", new)
    heirs = app.engine().state.successors("files", [c.chunk_id for c in passages])
    assert heirs == {c.chunk_id: n.chunk_id for c, n in zip(passages, now, strict=True)}
    assert app.learning.feedback(search.query_id, old, True)["stored"] is True  # it still trains

    _mined, rows, kept = app.learning.mine(dry_run=True)
    assert [(t.kind, t.positive_doc, t.negative_doc) for t in kept] == [("feedback", new, other)]
    (negative,) = app.engine().state.document_chunks("files", other)
    assert rows == [("tide pool anemones", now[0].text, negative.text)]


def test_the_gate_reads_held_out_verdicts_under_the_ids_their_documents_have_now(app: Rift, docs: Path) -> None:
    """The gate searches afresh and ranks documents by today's ids: a held-out verdict on a file renamed since
    must count under its new path, and one on a file deleted since must not count at all (it scored 0 for both
    models, yet counted towards the feedback queries that let labels decide; found by helper DL)."""
    from server.learning.gate import GateConfig
    from server.learning.mining import MiningConfig
    from server.learning.pipeline import collect_and_mine

    folder = docs.parent / "notes"
    folder.mkdir()
    (folder / "a.md").write_text("# Tides\n\nThe tide pool holds anemones and crabs at low water.\n")
    (folder / "b.md").write_text("# Coffee\n\nEspresso is brewed under pressure with fine grounds.\n")
    (folder / "c.md").write_text("# Kelp\n\nKelp forests shelter fish along rocky tide lines.\n")
    sync(app, folder, prune=True)
    a, b, c = (str(folder / n) for n in ("a.md", "b.md", "c.md"))
    app.search("files", "espresso grounds", k=3)  # (older: trained on, not held out)
    search = app.search("files", "tide pool anemones", k=3)
    app.learning.judge(search.query_id, [(a, True), (b, False), (c, True)])
    (folder / "a.md").rename(folder / "moved.md")
    (folder / "c.md").unlink()
    sync(app, folder, prune=True)
    app.log.flush()

    gate = GateConfig(holdout_fraction=0.5, min_holdout=1)
    mined = collect_and_mine(app.log, app.engine(), MiningConfig(), gate)
    assert [q.query_id for q in mined.holdout] == [search.query_id]
    assert mined.feedback[search.query_id] == {str(folder / "moved.md"): True, b: False}


def test_a_file_renamed_to_another_type_maps_each_passage_to_the_chunk_covering_it(
    app: Rift, docs: Path
) -> None:
    """notes.md renamed notes.txt: the same text, cut by another splitter (no chunk text in common), so each
    old passage goes on in the new chunk that covers most of its span, as after a change of chunking."""
    from tests.support.tiny_model import WORDS

    w = [x for x in WORDS if x.isalpha()]
    parts = [" ".join(w[(5 * p + j) % len(w)] for j in range(60)) + "." for p in range(4)]
    parts = [f"## Part {p}\n\n{text}" for p, text in enumerate(parts)]
    folder = docs.parent / "notes"
    folder.mkdir()
    (folder / "notes.md").write_text("# Field notes\n\n" + "\n\n".join(parts))
    sync(app, folder, prune=True)
    state = app.engine().state
    old = state.document_chunks("files", str(folder / "notes.md"))
    (folder / "notes.md").rename(folder / "notes.txt")
    sync(app, folder, prune=True)
    new = {c.chunk_id: c for c in state.document_chunks("files", str(folder / "notes.txt"))}
    assert len(old) > 2 and not {c.text for c in old} & {c.text for c in new.values()}
    heirs = state.successors("files", [c.chunk_id for c in old])
    assert set(heirs) == {c.chunk_id for c in old} and set(heirs.values()) <= set(new)
    for was in old:
        assert set(was.text.split()) & set(new[heirs[was.chunk_id]].text.split())


def test_only_a_text_moved_one_to_one_in_one_sync_is_a_rename(app: Rift, docs: Path) -> None:
    """A rename is told by the whole text (or most of its words: the next test), never by a passage two files
    share (a licence header, the rest of each file its own), and only one to one: two copies of one text gone, or come, link none of them; nor does a text pruned by one sync and
    added by a later one. A rename beside them in the same sync is still followed."""
    folder = docs.parent / "notes"
    folder.mkdir()
    header = " ".join(f"licence clause {i} grants rights to copy." for i in range(12))
    texts = {
        "headed.md": f"{header}\n\nThe walrus hauls out on the ice floe to rest.",
        "copy1.md": "Glaciers carve valleys over thousands of years.",
        "copy2.md": "Glaciers carve valleys over thousands of years.",
        "solo.md": "Auroras glow green when solar wind meets oxygen.",
        "late.md": "Ferns unfurl their fronds in the shaded understory.",
        "keep.md": "Basalt columns form as thick lava cools and cracks.",
    }
    for name, text in texts.items():
        (folder / name).write_text(text)
    sync(app, folder, prune=True)
    state = app.engine().state
    before = {name: state.document_chunks("files", str(folder / name)) for name in texts}

    for name in ("headed.md", "copy1.md", "copy2.md", "solo.md", "keep.md", "late.md"):
        (folder / name).unlink()
    (folder / "other.md").write_text(f"{header}\n\nThe puffin nests in burrows on the cliff top.")
    (folder / "copy3.md").write_text(texts["copy1.md"])
    (folder / "solo1.md").write_text(texts["solo.md"])
    (folder / "solo2.md").write_text(texts["solo.md"])
    (folder / "kept.md").write_text(texts["keep.md"])
    sync(app, folder, prune=True)
    other = state.document_chunks("files", str(folder / "other.md"))
    assert {c.text for c in before["headed.md"]} & {c.text for c in other}  # a passage both files have
    (folder / "late2.md").write_text(texts["late.md"])
    sync(app, folder, prune=True)

    heirs = state.successors("files", [c.chunk_id for chunks in before.values() for c in chunks])
    (kept,) = state.document_chunks("files", str(folder / "kept.md"))
    assert heirs == {before["keep.md"][0].chunk_id: kept.chunk_id}


def test_a_file_renamed_and_edited_in_one_sync_hands_on_the_passages_the_edit_kept(
    app: Rift, docs: Path
) -> None:
    """`git mv` and an edit before the next sync (or an editor's "save as" after a change): the old path is
    pruned and no stored text equals it, so every logged passage of it ended. A removed file whose words the
    new one shares at least as an edited chunk must (Jaccard 0.8, stricter than git's 50 % rename score) is
    that file, edited, when the pair is one to one: its kept passages go on, the edited one too after a small
    edit, and a rewritten one ends as in a file edited in place. Two edited copies of one file link none, nor
    does a rewrite."""
    from tests.support.tiny_model import WORDS

    w = [x for x in WORDS if x.isalpha()]
    parts = [" ".join(w[(7 * p + j) % len(w)] for j in range(50)) + "." for p in range(4)]
    body = "\n\n".join(f"## Part {p}\n\n{text}" for p, text in enumerate(parts))
    folder = docs.parent / "notes"
    folder.mkdir()
    (folder / "notes.md").write_text("# Field notes\n\n" + body)
    (folder / "copied.md").write_text("# Copied\n\n" + parts[3] + " " + parts[2])
    (folder / "solo.md").write_text("Auroras glow green when solar wind meets oxygen high above the pole.")
    sync(app, folder, prune=True)
    state = app.engine().state
    old = state.document_chunks("files", str(folder / "notes.md"))
    copied = state.document_chunks("files", str(folder / "copied.md"))
    (solo,) = state.document_chunks("files", str(folder / "solo.md"))
    search = app.search("files", parts[1][:80], k=3)
    assert str(folder / "notes.md") in {h.doc_id for h in search.outcome.hits}

    # One word of part 1 changed, part 3 rewritten (in words parts 0-2 have, at about its length); renamed.
    # copied.md edited into two copies; solo rewritten.
    rewrite = " ".join(w[j % 21] for j in range(50)) + "."
    edited_parts = [parts[0], parts[1].replace(w[7], "kelp", 1), parts[2], rewrite]
    edited = "# Field notes\n\n" + "\n\n".join(f"## Part {p}\n\n{t}" for p, t in enumerate(edited_parts))
    (folder / "notes.md").rename(folder / "journal.md")
    (folder / "journal.md").write_text(edited)
    for name in ("copied.md", "solo.md"):
        (folder / name).unlink()
    (folder / "copy-a.md").write_text("# Copied\n\n" + parts[3] + " " + parts[2] + " More.")
    (folder / "copy-b.md").write_text("# Copied\n\n" + parts[3] + " " + parts[2] + " Less.")
    (folder / "aurora.md").write_text("Green auroras glow when the wind from the sun meets oxygen over poles.")
    got = statuses(sync(app, folder, prune=True), folder)
    assert got["journal.md"][0] == "added" and got["notes.md"][0] == "removed"

    new = state.document_chunks("files", str(folder / "journal.md"))
    by_id = {c.chunk_id: c for c in new}
    heirs = state.successors("files", [c.chunk_id for c in [*old, *copied, solo]])
    assert set(heirs.values()) <= set(by_id)  # the copies and the rewrite link nothing
    kept = [c for c in old if c.text in {n.text for n in new}]
    assert kept and all(by_id[heirs[c.chunk_id]].text == c.text for c in kept)
    changed = [c for c in old if c.text not in {n.text for n in new}]
    part3 = ("# Field notes\n\n" + body).index("## Part 3")
    rewritten = [c for c in changed if c.metadata["_rift_start"] >= part3]
    edits = [c for c in changed if c not in rewritten]  # part 1's, one word changed: the small edit goes on
    assert edits and all("kelp" in by_id[heirs[c.chunk_id]].text for c in edits if parts[1][:20] in c.text)
    for c in edits:
        words, heir = set(c.text.split()), set(by_id[heirs[c.chunk_id]].text.split())
        assert len(words & heir) / len(words | heir) >= 0.8
    assert rewritten and not any(c.chunk_id in heirs for c in rewritten)
    assert app.learning.feedback(search.query_id, str(folder / "notes.md"), True)["stored"] is True


def test_a_passage_an_edited_rename_rewrote_is_the_renamed_file_s_when_restored_and_judged(
    app: Rift, docs: Path
) -> None:
    """A file renamed with an edit that rewrote a passage: the passage's searches end, as in a file edited in
    place, but its tombstone stayed under the old path, so restoring the passage in the renamed file (an edit
    undone) did not take them up again, and the gate dropped a held-out verdict on the file (its passage
    rewritten, its old path gone: read as deleted), where an edit in place keeps it. Both follow the rename
    now, also through a second rename that restores the passage in the same sync."""
    from server.learning.gate import GateConfig
    from server.learning.mining import MiningConfig
    from server.learning.pipeline import collect_and_mine
    from tests.support.tiny_model import WORDS

    w = [x for x in WORDS if x.isalpha()]
    parts = [" ".join(w[(7 * p + j) % len(w)] for j in range(50)) + "." for p in range(4)]
    # Part 3 rewritten with words the other parts have: the file stays 90 % alike, and as long.
    rewrite = " ".join(w[j] for j in [*range(0, 21), *range(50, 64), *range(0, 15)]) + "."

    def body(last: str) -> str:
        sections = enumerate([*parts[:3], last])
        return "# Field notes\n\n" + "\n\n".join(f"## Part {p}\n\n{t}" for p, t in sections)

    folder = docs.parent / "notes"
    folder.mkdir()
    (folder / "a.md").write_text(body(parts[3]))
    (folder / "solo.md").write_text("Auroras glow green when solar wind meets oxygen high above the pole.")
    sync(app, folder, prune=True)
    state = app.engine().state
    a, b, c, solo = (str(folder / n) for n in ("a.md", "b.md", "c.md", "solo.md"))
    old = state.document_chunks("files", a)
    app.search("files", "auroras oxygen", k=3)  # (older: trained on, not held out)
    search = app.search("files", " ".join(w[64:71]), k=3)  # words only part 3 has
    app.learning.judge(search.query_id, [(a, True), (solo, False)])

    (folder / "a.md").rename(folder / "b.md")
    (folder / "b.md").write_text(body(rewrite))
    sync(app, folder, prune=True)
    heirs = state.successors("files", [x.chunk_id for x in old])
    rewritten = [x for x in old if x.chunk_id not in heirs]
    part3 = body("").index("## Part 3")
    assert heirs and rewritten and all(x.metadata["_rift_end"] > part3 for x in rewritten)
    assert app.learning.feedback(search.query_id, a, True)["stored"] is False
    app.log.flush()
    gate = GateConfig(holdout_fraction=0.5, min_holdout=1)
    mined = collect_and_mine(app.log, app.engine(), MiningConfig(), gate)
    assert [q.query_id for q in mined.holdout] == [search.query_id]
    assert mined.feedback[search.query_id] == {b: True, solo: False}  # as for a.md edited in place

    (folder / "b.md").write_text(body(parts[3]))  # the edit undone
    sync(app, folder, prune=True)
    now = {x.chunk_id for x in state.document_chunks("files", b)}
    heirs = state.successors("files", [x.chunk_id for x in old])
    assert set(heirs) == {x.chunk_id for x in old} and set(heirs.values()) <= now
    assert app.learning.feedback(search.query_id, a, True)["stored"] is True

    (folder / "b.md").write_text(body(rewrite))  # rewritten in place, then restored as the file is renamed
    sync(app, folder, prune=True)
    (folder / "b.md").rename(folder / "c.md")
    (folder / "c.md").write_text(body(parts[3]))
    sync(app, folder, prune=True)
    now = {x.chunk_id for x in state.document_chunks("files", c)}
    heirs = state.successors("files", [x.chunk_id for x in old])
    assert set(heirs) == {x.chunk_id for x in old} and set(heirs.values()) <= now


def test_a_template_s_instance_deleted_as_another_is_added_is_no_rename(app: Rift, docs: Path) -> None:
    """Instances of one template (a generated reference's pages, stubs, daily notes) share most of their words
    whatever each is about: one deleted and another added in one sync must not read as a file renamed and
    edited, though no other file of that sync is as alike, when the folder holds more instances (helper DQ).
    The deleted page's searches and verdicts then trained on the added page's text ("toolkit update" for a
    search for "toolkit deploy"), and a verdict on the deleted page read as stored."""
    page = "toolkit {name}: it is how we do it, so you can set it up as you like it to be and go on.\n"
    folder = docs.parent / "commands"
    folder.mkdir()
    for name in ("export", "import", "deploy"):
        (folder / f"{name}.md").write_text(page.format(name=name))
    sync(app, folder, prune=True)
    state = app.engine().state
    deploy = state.document_chunks("files", str(folder / "deploy.md"))
    search = app.search("files", "toolkit deploy", k=3)
    assert str(folder / "deploy.md") in {h.doc_id for h in search.outcome.hits}

    (folder / "deploy.md").unlink()  # a command dropped, another added: its page has the same words but one
    (folder / "update.md").write_text(page.format(name="update"))
    got = statuses(sync(app, folder, prune=True), folder)
    assert got["deploy.md"][0] == "removed" and got["update.md"][0] == "added"
    assert state.successors("files", [c.chunk_id for c in deploy]) == {}
    assert app.learning.feedback(search.query_id, str(folder / "deploy.md"), True)["stored"] is False

    # Alone in its folder, the same change is a file renamed and edited (as git would say): it goes on.
    for name in ("export", "import"):
        (folder / f"{name}.md").unlink()
    sync(app, folder, prune=True)
    before = state.document_chunks("files", str(folder / "update.md"))
    (folder / "update.md").rename(folder / "upgrade.md")
    (folder / "upgrade.md").write_text(page.format(name="upgrade"))
    sync(app, folder, prune=True)
    after = {c.chunk_id: c.text for c in state.document_chunks("files", str(folder / "upgrade.md"))}
    heirs = state.successors("files", [c.chunk_id for c in before])
    assert heirs and set(heirs.values()) <= set(after)

    # Moved into another folder under its name and edited: it goes on. Moved and renamed and edited at once:
    # no more told from two files of a kind in two folders (a library's signal/wavelets.py and
    # sparse/spfuncs.py), so it does not.
    (folder / "old").mkdir()
    (folder / "upgrade.md").rename(folder / "old" / "upgrade.md")
    (folder / "old" / "upgrade.md").write_text(page.format(name="upgrade") + "Retired.\n")
    sync(app, folder, prune=True)
    moved = state.document_chunks("files", str(folder / "old" / "upgrade.md"))
    assert set(state.successors("files", list(after)).values()) <= {c.chunk_id for c in moved}
    assert state.successors("files", list(after))
    (folder / "old" / "upgrade.md").rename(folder / "retired.md")
    (folder / "retired.md").write_text(page.format(name="upgrade") + "Retired for good.\n")
    sync(app, folder, prune=True)
    assert state.successors("files", [c.chunk_id for c in moved]) == {}


def test_a_path_written_again_after_its_file_was_renamed_away_holds_its_own_passages(
    app: Rift, docs: Path
) -> None:
    """A file renamed away and then written again at its old path (copied back, or renamed back, its mtime
    kept) gets back the very chunk ids it had, which still mapped to the renamed file's chunks: a chunk id
    live again kept a successor, so deleting it later left its searches training on the copy (a deletion
    reported as `stored`, copies linked), and renaming back made the chunk its own successor (found by
    helper DL). A chunk id written again is its own passage, with no successor."""
    folder = docs.parent / "notes"
    folder.mkdir()
    (folder / "a.md").write_text("# Tides\n\nThe tide pool holds anemones and crabs at low water.\n")
    (folder / "c.md").write_text("# Coffee\n\nEspresso is brewed under pressure with fine grounds.\n")
    sync(app, folder, prune=True)
    state = app.engine().state
    a, b = str(folder / "a.md"), str(folder / "b.md")
    (first,) = state.document_chunks("files", a)
    os.rename(folder / "a.md", folder / "b.md")
    sync(app, folder, prune=True)
    (moved,) = state.document_chunks("files", b)
    assert state.successors("files", [first.chunk_id]) == {first.chunk_id: moved.chunk_id}

    shutil.copy2(folder / "b.md", folder / "a.md")  # back beside its copy, mtime kept: the same chunk id
    sync(app, folder, prune=True)
    assert [c.chunk_id for c in state.document_chunks("files", a)] == [first.chunk_id]
    assert state.successors("files", [first.chunk_id]) == {}
    search = app.search("files", "tide pool anemones", k=3)
    assert a in {h.doc_id for h in search.outcome.hits}
    (folder / "a.md").unlink()  # deleted, its copy staying: no rename, nothing to train on
    sync(app, folder, prune=True)
    assert app.learning.feedback(search.query_id, a, True)["stored"] is False

    os.rename(folder / "b.md", folder / "a.md")  # renamed back
    sync(app, folder, prune=True)
    assert [c.chunk_id for c in state.document_chunks("files", a)] == [first.chunk_id]
    assert state.successors("files", [first.chunk_id, moved.chunk_id]) == {moved.chunk_id: first.chunk_id}
    assert app.learning.feedback(search.query_id, a, True)["stored"] is True


def test_one_odd_file_never_aborts_a_sync(app: Rift, docs: Path, monkeypatch) -> None:
    odd = docs / "odd"
    odd.mkdir()
    (odd / "broken16.txt").write_bytes("wide text".encode("utf-16") + b"\x00\xd8x")
    (odd / "alias.md").write_text("---\na: &a {b: *a}\n---\n# Loop\n\nfront matter that refers to itself\n")
    (odd / "crash.md").write_text("# Crash\n\nthe parser fails on this one\n")
    real = __import__("server.ingest.sync", fromlist=["extract"]).extract

    def flaky(path, data, family, max_chars=None):
        if path.name == "crash.md":
            raise RecursionError("a parser bug")
        return real(path, data, family, max_chars)

    monkeypatch.setattr("server.ingest.sync.extract", flaky)
    got = statuses(sync(app, odd), odd)
    assert got["broken16.txt"][0] == got["alias.md"][0] == "added"
    assert got["crash.md"] == ("skipped", "cannot extract text: RecursionError: a parser bug")


def test_prune_keeps_documents_under_a_folder_it_cannot_read_this_time(
    app: Rift, docs: Path, monkeypatch
) -> None:
    sync(app, docs)
    assert "notes/walrus.txt" in stored(app, docs)
    real_walk = os.walk

    def walk_without_notes(top, **kwargs):  # as os.walk does when listing a folder fails: onerror, after
        for dirpath, dirnames, filenames in real_walk(top, **kwargs):
            if "notes" in dirnames:
                dirnames.remove("notes")
            yield dirpath, dirnames, filenames
        kwargs["onerror"](PermissionError(13, "Permission denied", str(docs / "notes")))

    monkeypatch.setattr("server.ingest.walker.os.walk", walk_without_notes)
    got = statuses(sync(app, docs, prune=True), docs)
    assert got["notes"] == ("skipped", "cannot read folder: Permission denied")
    assert "notes/walrus.txt" in stored(app, docs)


def test_rifts_own_data_dir_inside_a_synced_folder_is_not_ingested(
    tmp_path: Path, tiny_model_path: Path
) -> None:
    root = tmp_path / "home"
    (root / "notes").mkdir(parents=True)
    (root / "notes" / "a.md").write_text("# A\n\nplain note\n")
    settings = Settings(data_dir=root / ".rift", model=str(tiny_model_path), chunk_tokens=48, chunk_overlap=8)
    app = Rift(settings).start(background=False)
    try:
        (root / ".rift" / "notes.txt").write_text("rift's own file")
        report = sync_paths(app.engine(), "files", [str(root)], PathPolicy.unrestricted())
        assert {Path(f.path).relative_to(root).as_posix() for f in report.files} == {"notes/a.md"}
    finally:
        app.close()


def test_watch_survives_a_failed_sync(app: Rift, docs: Path, monkeypatch) -> None:
    from server.ingest import watch

    calls: list[int] = []
    real = watch.sync_paths

    def fails_first(*args, **kwargs):
        calls.append(1)
        if len(calls) == 1:
            raise OSError(28, "No space left on device")
        return real(*args, **kwargs)

    monkeypatch.setattr(watch, "sync_paths", fails_first)
    stop = threading.Event()
    thread = threading.Thread(
        target=watch.watch_folder,
        args=(app.engine(), docs, "files"),
        kwargs={"policy": PathPolicy.for_server(app.settings), "debounce_ms": 200, "stop_event": stop},
        daemon=True,
    )
    thread.start()
    try:
        time.sleep(1.0)
        (docs / "kelp.md").write_text("# Kelp\n\nKelp forests shelter sea otters.\n")
        wait_for(lambda: "kelp.md" in stored(app, docs))
        assert thread.is_alive()
    finally:
        stop.set()
        thread.join(10)


def test_a_watch_sync_that_fails_for_a_reason_says_it_in_one_line(app: Rift, docs: Path, monkeypatch, caplog) -> None:
    from server.ingest import watch

    monkeypatch.setattr(watch, "sync_paths", lambda *a, **k: (_ for _ in ()).throw(RiftError("the disk is full")))
    stop = threading.Event()
    stop_soon = threading.Timer(1.5, stop.set)
    stop_soon.start()
    with caplog.at_level("ERROR", logger="server.ingest.watch"):
        watch.watch_folder(app.engine(), docs, "files", debounce_ms=200, stop_event=stop)
    failed = [r for r in caplog.records if "sync of" in r.getMessage()]
    assert failed and "the disk is full; watching on" in failed[0].getMessage()
    assert all(r.exc_info is None for r in failed)  # no traceback for a problem that is the user's to fix


@pytest.mark.parametrize("when", ["between syncs", "during a sync"])
def test_a_watch_whose_rift_is_closed_stops_saying_so_once(
    app: Rift, docs: Path, monkeypatch, caplog, when: str
) -> None:
    """A library's watch thread left running after its Rift is closed holds the engine, not the Rift: each
    later sync logged a traceback ending in sqlite3's 'Cannot operate on a closed database' and it watched on
    forever (found by helper CM). It now ends, with one line saying why."""
    from server.ingest import watch

    if when == "during a sync":  # (the second sync finds the rift closed under it: its error is the store's)
        real, calls = watch.sync_paths, []

        def closes_first(*args, **kwargs):
            calls.append(1)
            if len(calls) == 2:
                app.close()
            return real(*args, **kwargs)

        monkeypatch.setattr(watch, "sync_paths", closes_first)
    syncs: list = []
    with caplog.at_level("INFO", logger="server.ingest.watch"), watching(app, docs, on_sync=syncs.append) as thread:
        wait_for(lambda: len(syncs) == 1)
        if when == "between syncs":
            app.close()
        (docs / "kelp.md").write_text("# Kelp\n\nKelp forests shelter sea otters.\n")
        deadline = time.monotonic() + 5
        while thread.is_alive() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not thread.is_alive()  # (by itself: `watching` sets its stop event only after this)
    said = [r.getMessage() for r in caplog.records if "was closed" in r.getMessage()]
    assert said == [f"the rift this watch syncs into was closed: stopping the watch of {docs}"]
    assert all(r.exc_info is None for r in caplog.records)
    assert not [r for r in caplog.records if r.levelname == "ERROR"]


def test_rift_watch_lists_a_skipped_file_again_only_when_its_reason_changes(capsys) -> None:
    from server.ingest.cli import _print_report
    from server.ingest.sync import FileResult, SyncReport

    def report(*files: FileResult) -> SyncReport:
        out = SyncReport("files")
        out.files.extend(files)
        return out

    seen: dict[str, str | None] = {}
    png, big = FileResult("/d/a.png", "skipped", "unsupported"), FileResult("/d/big.md", "skipped", "too large")
    _print_report(report(png, FileResult("/d/n.md", "added", None, 1)), False, False, seen)
    _print_report(report(png, FileResult("/d/n.md", "updated", None, 1)), False, False, seen)
    _print_report(report(png, big), False, False, seen)
    _print_report(report(FileResult("/d/a.png", "skipped", "unreadable"), big), False, False, seen)
    lines = capsys.readouterr().out.splitlines()
    assert [line.split(":")[0] for line in lines] == [
        "skipped   /d/a.png",
        "added     /d/n.md (1 chunks)",
        "updated   /d/n.md (1 chunks)",
        "skipped   /d/big.md",
        "skipped   /d/a.png",
    ]


def test_a_touched_file_gets_its_new_mtime_once_then_is_skipped_unread(
    app: Rift, docs: Path, monkeypatch
) -> None:
    sync(app, docs)
    guide = docs / "guide.md"
    os.utime(guide, (guide.stat().st_atime, guide.stat().st_mtime + 100))  # same bytes, new mtime
    got = statuses(sync(app, docs), docs)
    assert got["guide.md"] == ("unchanged", "same bytes, new mtime: metadata refreshed")
    stored_meta = dict(app.engine().state.list_documents("files", -1, 0))[str(guide)]
    assert stored_meta["mtime"] == guide.stat().st_mtime
    reads: list[Path] = []
    real = __import__("server.ingest.sync", fromlist=["read_file"]).read_file

    def counting(path, *args, **kwargs):
        reads.append(path)
        return real(path, *args, **kwargs)

    monkeypatch.setattr("server.ingest.sync.read_file", counting)
    assert statuses(sync(app, docs), docs)["guide.md"] == ("unchanged", None)
    assert guide not in reads  # skipped by its stat, as before the touch


def wait_for(condition, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.1)


def test_files_from_an_earlier_extractor_are_read_again_once(app: Rift, docs: Path, monkeypatch) -> None:
    sync(app, docs)
    page = str(docs / "botany.html")
    versions = __import__("server.ingest.extract", fromlist=["x"]).EXTRACTOR_VERSIONS
    now = versions["html"]
    assert dict(app.engine().state.list_documents("files", -1, 0))[page]["extractor"] == now
    app.update_metadata("files", [page], {"tag": "botany"}, [])
    # A new html extractor: the same bytes must be extracted again (and only the html files), then skipped.
    # It reads the page as before: relabelled, not reported as changed.
    monkeypatch.setitem(versions, "html", now + 1)
    got = statuses(sync(app, docs), docs)
    assert got["botany.html"] == ("unchanged", "read again by a newer extractor: same text")
    assert got["guide.md"] == ("unchanged", None)
    stored = dict(app.engine().state.list_documents("files", -1, 0))[page]
    assert stored["extractor"] == now + 1
    assert stored["tag"] == "botany"  # the agent's key stays: the file did not change (it was dropped)
    assert statuses(sync(app, docs), docs)["botany.html"] == ("unchanged", None)


def test_text_an_earlier_extractor_garbled_is_read_again(app: Rift, docs: Path, monkeypatch) -> None:
    extract_module = __import__("server.ingest.extract", fromlist=["x"])
    note = docs / "prices.txt"
    note.write_bytes(b"Caf\xe9 au lait costs 5\x80 at the corner.\n")  # Windows-1252, as a short note often is
    menu = docs / "menu.md"  # only its front matter is legacy text: the body reads the same either way
    menu.write_bytes(b"---\ntitle: Caf\xe9 menu\n---\n\nTea and coffee are served all day.\n")
    # Stored by an extractor that read such bytes as another code page (rift before text extractor 2).
    with monkeypatch.context() as old:
        for family in extract_module.TEXT_FAMILIES:
            old.setitem(extract_module.EXTRACTOR_VERSIONS, family, 1)
        old.setattr(extract_module, "decode_text", lambda data: data.decode("cp437"))
        sync(app, docs)
    assert app.engine().get_document("files", str(note))[0].startswith("Caf\u0398")  # "CafΘ": mojibake
    got = statuses(sync(app, docs), docs)
    assert got["prices.txt"][0] == "updated"
    assert app.engine().get_document("files", str(note))[0] == "Caf\xe9 au lait costs 5\u20ac at the corner.\n"
    # A title (or another front-matter value) read differently is a change, though the text is the same.
    assert got["menu.md"][0] == "updated"
    assert app.engine().get_document("files", str(menu))[1]["title"] == "Caf\xe9 menu"
    # Every other text file read again gives the same text: relabelled, its vectors kept, not reported changed.
    assert got["guide.md"] == ("unchanged", "read again by a newer extractor: same text")
    assert statuses(sync(app, docs), docs)["guide.md"] == ("unchanged", None)
    assert_consistent(app)


def test_a_file_reached_through_a_symlink_is_pruned_when_the_link_goes(app: Rift, docs: Path) -> None:
    shared = docs.parent / "shared"
    shared.mkdir()
    (shared / "comet.md").write_text("# Comets\n\nA comet's tail points away from the sun.\n")
    (shared / "nebula.md").write_text("# Nebulae\n\nA nebula is a cloud of gas and dust.\n")
    (docs / "comet-link.md").symlink_to(shared / "comet.md")
    (docs / "nebula-link.md").symlink_to(shared / "nebula.md")

    sync(app, docs)
    meta = dict(app.engine().state.list_documents("files", -1, 0))
    comet, nebula = str(shared / "comet.md"), str(shared / "nebula.md")
    assert meta[comet]["source"] == comet and meta[comet]["via"] == str(docs / "comet-link.md")
    sync(app, shared / "nebula.md")  # synced directly too: the document is that file's now
    meta = dict(app.engine().state.list_documents("files", -1, 0))
    assert "via" not in meta[nebula]
    # Reached through the link again in a later call, it stays the file's own document (it flipped to the
    # link, was rewritten each time, and the link's removal then pruned a file that still exists).
    again = sync(app, docs)
    assert {f.path: f.status for f in again.files}[nebula] == "unchanged"
    assert "via" not in dict(app.engine().state.list_documents("files", -1, 0))[nebula]

    (docs / "comet-link.md").unlink()
    (docs / "nebula-link.md").unlink()
    report = sync(app, docs, prune=True)
    removed = {f.path: f.reason for f in report.files if f.status == "removed"}
    assert removed == {comet: f"the symlink it was reached through ({docs / 'comet-link.md'}) is gone"}
    left = {d for d, _ in app.engine().state.list_documents("files", -1, 0)}
    assert nebula in left and comet not in left
    assert (shared / "comet.md").exists()  # the file itself is never touched
    assert_consistent(app)


@pytest.mark.parametrize("link_now", ["a copy", "gone"])
def test_prune_of_a_former_link_keeps_the_file_it_led_to_when_named_too(app: Rift, docs: Path, link_now: str) -> None:
    """`rift add docs/comet.md shared/comet.md --prune`, where docs/comet.md was a symlink to the other (now a
    regular copy, or deleted): the document of shared/comet.md, stored through the link, was read again in
    that call and then pruned for the link's sake (found by helper DH)."""
    import shutil

    shared = docs.parent / "shared"
    shared.mkdir()
    target, link = shared / "comet.md", docs / "comet.md"
    target.write_text("# Comets\n\nA comet's tail points away from the sun.\n")
    link.symlink_to(target)
    sync(app, docs)
    assert dict(app.engine().state.list_documents("files", -1, 0))[str(target)]["via"] == str(link)
    link.unlink()
    if link_now == "a copy":
        shutil.copy(target, link)
    report = sync(app, link, target, prune=True)
    assert str(target) not in {f.path for f in report.files if f.status == "removed"}
    assert str(target) in {d for d, _ in app.engine().state.list_documents("files", -1, 0)}
    assert "via" not in dict(app.engine().state.list_documents("files", -1, 0))[str(target)]
    assert_consistent(app)


def test_prune_of_many_named_files_looks_at_each_stored_document_once(app: Rift, docs: Path, monkeypatch) -> None:
    """53eb052 checked every stored document against every named file (a file may have replaced a synced
    folder): 100 named files in a collection of 100,000 documents spent 80 s there (helper DH)."""
    from server.ingest import sync as sync_module

    many = docs / "many"
    many.mkdir()
    for i in range(100):
        (many / f"n{i}.md").write_text(f"# Note {i}\n\nThe tide table for day {i}.\n")
    sync(app, docs)
    stored_now = len(stored(app, docs))
    calls = 0
    real = sync_module._place

    def counted(doc_id: str, meta: dict[str, Any]) -> Path:
        nonlocal calls
        calls += 1
        return real(doc_id, meta)

    monkeypatch.setattr(sync_module, "_place", counted)
    report = sync(app, *sorted(many.iterdir()), prune=True)
    assert report.counts()["unchanged"] == 100 and report.counts()["removed"] == 0
    assert calls <= stored_now, f"{calls} looks at {stored_now} stored documents"


def test_rift_s_own_files_are_never_documents_even_when_named(app: Rift) -> None:
    registry = app.settings.models_dir / "registry.json"
    assert registry.is_file()
    # As `rift add` names it (add_paths reads rift's data dir only when an allowed root holds it).
    report = sync_paths(app.engine(), "files", [str(registry)], PathPolicy.unrestricted())
    assert [(f.status, f.reason) for f in report.files] == [("skipped", "one of rift's own files (in its data dir)")]


def test_front_matter_cannot_steer_prune_and_batches_follow_the_per_call_limit(
    tmp_path: Path, tiny_model_path: Path
) -> None:
    """A Markdown file whose front matter says `via: <a link elsewhere>` is not pruned by another folder's
    sync (the sync's own `via` key is not the user's to set); `add_paths` writes in batches no larger than
    max_documents_per_call; a FIFO named .gitignore is not read (it would block the walk forever): its folder is
    left out, as its rules are unknown."""
    root = tmp_path / "root"
    (root / "A").mkdir(parents=True)
    (root / "B").mkdir()
    (root / "C").mkdir()
    (root / "A" / "via.md").write_text(f"---\nvia: {root / 'B' / 'link.md'}\n---\n# Kept\n")
    for i in range(12):
        (root / "B" / f"n{i}.md").write_text(f"# note {i}\n")
    os.mkfifo(root / "C" / ".gitignore")
    (root / "C" / "c.md").write_text("# C\n")
    settings = Settings(
        data_dir=tmp_path / "data", model=str(tiny_model_path), chunk_tokens=48, chunk_overlap=8,
        allowed_roots=[root], max_documents_per_call=5,
    )
    rift = Rift(settings).start(background=False)
    try:
        policy = PathPolicy.for_server(settings)
        sync_paths(rift.engine(), "files", [str(root / "A")], policy)
        report = sync_paths(rift.engine(), "files", [str(root / "B")], policy, prune=True)
        assert sum(f.status == "added" for f in report.files) == 12
        fifo = sync_paths(rift.engine(), "files", [str(root / "C")], policy).files
        assert [(f.path, f.status) for f in fifo] == [(str(root / "C"), "skipped")]
        assert f"cannot read {root / 'C' / '.gitignore'}: not a regular file" in (fifo[0].reason or "")
        docs = {d for d, _ in rift.engine().state.list_documents("files", -1, 0)}
        assert str(root / "A" / "via.md") in docs and len(docs) == 13
        meta = rift.engine().get_document("files", str(root / "A" / "via.md"))[1]
        assert "via" not in meta
    finally:
        rift.close()


def test_batches_follow_the_per_call_character_budget(tmp_path: Path, tiny_model_path: Path) -> None:
    """A sync never sends one add_documents call more text than max_chars_per_call (it would be refused
    whole); a file beyond the budget on its own is skipped with the reason, the others are stored."""
    root = tmp_path / "root"
    root.mkdir()
    for i in range(7):
        (root / f"n{i}.txt").write_text(f"note {i} " + "word " * 7)  # 42 characters each
    (root / "big.txt").write_text("long " * 30)
    settings = Settings(
        data_dir=tmp_path / "data", model=str(tiny_model_path), chunk_tokens=48, chunk_overlap=8,
        allowed_roots=[root], max_chars_per_call=100,
    )
    rift = Rift(settings).start(background=False)
    sizes: list[int] = []
    engine = rift.engine()
    add = engine.add_documents

    def recording(collection, documents, progress=None):
        sizes.append(sum(len(d.text) for d in documents))
        return add(collection, documents, progress)

    engine.add_documents = recording  # type: ignore[method-assign]
    try:
        report = sync_paths(engine, "files", [str(root)], PathPolicy.for_server(settings))
        by_name = {Path(f.path).name: f for f in report.files}
        assert sum(f.status == "added" for f in report.files) == 7
        assert by_name["big.txt"].status == "skipped"
        assert "limit per call is 100 (setting max_chars_per_call)" in (by_name["big.txt"].reason or "")
        assert sizes and max(sizes) <= 100 and sum(sizes) == 7 * 42
        assert len(engine.state.list_documents("files", -1, 0)) == 7
    finally:
        rift.close()


def test_a_file_document_takes_an_agent_s_own_keys_but_not_those_sync_sets(app: Rift, docs: Path) -> None:
    """update_metadata on a file's document: an agent's own key is kept (also through a sync that finds the
    file unchanged); the keys sync sets and compares (source, mtime, sha256, ...) are refused."""
    sync(app, docs)
    doc_id = next(d for d, _ in app.engine().state.list_documents("files", -1, 0))
    [status] = app.update_metadata("files", [doc_id], {"reviewed": True}, [])
    assert status.status == "updated"
    for change, remove in (({"source": "/elsewhere"}, []), ({}, ["mtime"]), ({"sha256": "0" * 64}, [])):
        with pytest.raises(RiftError, match="change the file instead"):
            app.update_metadata("files", [doc_id], change, remove)
    report = sync(app, docs)
    assert {f.status for f in report.files if f.path == doc_id} == {"unchanged"}
    meta = app.engine().get_document("files", doc_id)[1]
    assert meta["reviewed"] is True and meta["source"] == doc_id
    # A touch (same bytes, new mtime) refreshes the stored mtime and keeps the agent's key.
    os.utime(doc_id, (time.time() + 60, time.time() + 60))
    report = sync(app, docs)
    meta = app.engine().get_document("files", doc_id)[1]
    assert meta["reviewed"] is True and meta["mtime"] == os.stat(doc_id).st_mtime
    # A file's document is recognised as sync does, by its source being its id (not by other keys).
    app.engine().add_documents("files", [DocumentInput(text="x y z", id="note", metadata={"sha256": "0"})])
    app.update_metadata("files", ["note"], {"sha256": "1", "source": "/somewhere"}, [])
    assert_consistent(app)


def test_update_metadata_keeps_to_the_per_call_character_budget(tmp_path: Path, tiny_model_path: Path) -> None:
    settings = Settings(
        data_dir=tmp_path / "data", model=str(tiny_model_path), chunk_tokens=48, chunk_overlap=8,
        max_chars_per_call=100,
    )
    rift = Rift(settings).start(background=False)
    try:
        for i in range(3):
            rift.add_documents("default", [DocumentInput(text="word " * 12, id=f"d{i}")])
        with pytest.raises(RiftError, match=r"180 characters; the limit per call is 100 .*max_chars_per_call"):
            rift.update_metadata("default", ["d0", "d1", "d2"], {"tag": "x"}, [])
        assert [s.status for s in rift.update_metadata("default", ["d0"], {"tag": "x"}, [])] == ["updated"]
    finally:
        rift.close()


def test_cli_lists_reads_and_deletes_documents(tmp_path: Path, tiny_model_path: Path, monkeypatch) -> None:
    """The corpus from the shell: `rift list`, `rift get`, `rift delete` (by id, or every document a filter
    matches, past the per-call limit the MCP tool pages by)."""
    from server.cli import main

    monkeypatch.setenv("RIFT_MODEL", str(tiny_model_path))
    monkeypatch.setenv("RIFT_MAX_DOCUMENTS_PER_CALL", "2")
    folder = tmp_path / "notes"
    (folder / "old").mkdir(parents=True)
    for i in range(5):
        (folder / "old" / f"n{i}.md").write_text(f"# Note {i}\n\nold river note {i}\n")
    (folder / "keep.md").write_text("# Keep\n\nthe river we keep\n")
    data = str(tmp_path / "cli-data")
    runner = CliRunner()

    def run(*args: str) -> dict:
        result = runner.invoke(main, [*args, "--data-dir", data])
        assert result.exit_code == 0, result.output
        return json.loads(result.output)

    for path in sorted(folder.rglob("*.md")):  # one file a call: the per-call limit is 2
        run("add", str(path), "--json")
    listed = run("list", "--limit", "4", "--json")
    assert listed["total"] == 6 and len(listed["documents"]) == 4 and listed["next_after"]
    rest = run("list", "--limit", "4", "--after", listed["next_after"], "--json")
    assert len(rest["documents"]) == 2 and rest["next_after"] is None
    keep = str(folder / "keep.md")
    doc = run("get", keep, "--max-chars", "6", "--json")
    assert doc["text"] == "# Keep" and doc["truncated"] and doc["metadata"]["source"] == keep
    where = json.dumps({"source": {"$prefix": str(folder / "old")}})
    assert run("list", "--filters", where, "--json")["total"] == 5
    by_id = run("list", "--prefix", str(folder / "old") + os.sep, "--limit", "2", "--json")
    assert by_id["total"] == 5 and [d["doc_id"] for d in by_id["documents"]] == [str(folder / "old" / "n0.md"), str(folder / "old" / "n1.md")]
    gone = run("delete", "--filters", where, "--json")
    assert sorted(gone["deleted"]) == sorted(str(folder / "old" / f"n{i}.md") for i in range(5))
    assert [d["doc_id"] for d in run("list", "--json")["documents"]] == [keep]
    # An id that was not there is a failure (exit 1, as rm's), after what was deleted.
    partly = runner.invoke(main, ["delete", keep, "nope", "--json", "--data-dir", data])
    assert partly.exit_code == 1, partly.output
    assert json.loads(partly.stdout) == {"collection": "default", "deleted": [keep], "not_found": ["nope"]}
    run("add", keep, "--json")
    partly = runner.invoke(main, ["delete", keep, "nope", "--data-dir", data])  # for a reader: a line a document
    assert partly.exit_code == 1 and partly.stdout.splitlines() == [f"deleted   {keep}", "default: 1 deleted"]
    assert "1 of the ids is not in collection 'default': 'nope'; a file's document id is its absolute path" in partly.stderr
    for bad, message in [
        (["delete"], "document ids or --filters"),
        (["delete", "x", "--filters", "{}"], "document ids or --filters"),
        (["delete", "--filters", "{}"], "at least one condition; to empty a collection, delete the collection"),
        (["delete", "--filters", "{}"], "`rift collections delete NAME`"),  # (it named the MCP tool alone)
        (["delete", "--filters", "[1]"], "JSON object"),
        (["get", "nope"], "no document 'nope'"),
    ]:
        result = runner.invoke(main, [*bad, "--data-dir", data])
        assert result.exit_code != 0 and message in result.output, (bad, result.output)


def test_a_sync_reports_while_it_embeds_and_stops_there_when_cancelled(app: Rift, docs: Path) -> None:
    """Progress came only after a batch of up to 32 files had committed: a small folder of long files (a
    minute to embed, past an MCP client's request timeout) sent one report, at the end, and could not be
    cancelled."""
    seen: list[tuple[float, int, str]] = []
    report = sync(app, docs, progress=lambda done, total, message: seen.append((done, total, message)))
    embedding = [s for s in seen if s[2].startswith("embedding ")]
    assert embedding and embedding[0] != seen[-1]
    assert [done for done, _, _ in seen] == sorted(done for done, _, _ in seen)  # never goes back
    assert seen[-1][0] == seen[-1][1] > 0 and seen[-1][2].startswith("reading files: ")  # done, at the end
    assert {f.status for f in report.files} >= {"added"}

    class Cancelled(Exception):
        pass

    def cancel_while_embedding(done: float, total: int, message: str) -> None:
        if message.startswith("embedding "):
            raise Cancelled  # as a cancelled MCP request's next progress report raises

    fresh = docs.parent / "fresh"
    fresh.mkdir()
    (fresh / "kelp.md").write_text("# Kelp\n\nKelp forests shelter sea otters.\n")
    with pytest.raises(Cancelled):
        sync(app, fresh, progress=cancel_while_embedding)
    assert str(fresh / "kelp.md") not in dict(app.engine().state.list_documents("files", -1, 0))


def test_a_file_caught_empty_mid_save_keeps_its_document_until_it_settles(app: Rift, docs: Path) -> None:
    """An editor's in-place save (truncate, then write) or a shell's `>` leaves the file empty for a moment: a
    sync then removed its document and the next added it back, losing the keys an agent had set (found by
    helper BL). A stored file that reads empty and changed in the last SETTLING_S seconds is skipped as
    transient; emptied for good, it goes at the first sync after that."""
    from server.ingest.sync import SETTLING

    sync(app, docs)
    note = docs / "guide.md"
    app.update_metadata("files", [str(note)], {"reviewed": True}, [])
    text = note.read_text()
    note.write_text("")  # (mid-save)
    assert statuses(sync(app, docs, prune=True), docs)["guide.md"] == ("skipped", SETTLING)
    note.write_text(text)  # the save's write
    assert statuses(sync(app, docs, prune=True), docs)["guide.md"][0] == "unchanged"
    assert app.engine().get_document("files", str(note))[1]["reviewed"] is True
    note.write_text("")
    os.utime(note, (time.time() - 60, time.time() - 60))  # empty and settled: emptied for good
    assert statuses(sync(app, docs, prune=True), docs)["guide.md"][0] == "removed"


def test_watch_syncs_a_file_caught_empty_again_once_it_settles(app: Rift, docs: Path) -> None:
    """Emptied for good while watched, with no later change to wake the watch: it syncs again after
    SETTLING_S and the document goes."""
    with watching(app, docs, prune=True):
        wait_for(lambda: "guide.md" in stored(app, docs))
        (docs / "guide.md").write_text("")
        wait_for(lambda: "guide.md" not in stored(app, docs), timeout=20)


def test_file_names_in_text_output_cannot_drive_the_terminal() -> None:
    """`rift add` / `rift watch` print file names: an escape sequence, a newline or an undecodable byte in one
    shows as a \\xNN escape in text output (it would colour the terminal or split the line), other Unicode as
    it is; `printable`, for JSON (json.dumps escapes control characters itself), keeps the characters."""
    from server.ingest.sync import printable, printable_text

    assert printable_text("added     /d/esc\x1b[31mRED.md") == "added     /d/esc\\x1b[31mRED.md"
    assert printable_text("line\nbreak\r\t\x00\x7f\x9b.md") == "line\\x0abreak\\x0d\\x09\\x00\\x7f\\x9b.md"
    assert printable_text("/d/caf\udce9.md: lone \ud800") == "/d/caf\\xe9.md: lone \\ud800"
    # a right-to-left override shows "invoice\u202egnp.exe" as "invoiceexe.png"; a line separator breaks a line
    assert printable_text("invoice\u202egnp.exe \u2066x\u2069 a\u2028b") == "invoice\\u202egnp.exe \\u2066x\\u2069 a\\u2028b"
    for kept in ("café Ünïcode.md", "日本語のメモ.md", "🙂 notes.md", "a\\x1b literal backslash.md"):
        assert printable_text(kept) == kept
    name = "/d/esc\x1b[31mRED\n.md"
    assert json.loads(json.dumps(printable(name), ensure_ascii=False)) == name
    assert printable("caf\udce9.md") == "caf\ufffd.md"  # unchanged: JSON shows undecodable bytes as U+FFFD


def test_rift_add_lists_control_characters_in_file_names_escaped(
    tmp_path: Path, tiny_model_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`rift add`'s text lines show a file name's escape sequence or newline as \\xNN (see printable_text)."""
    from server.cli import main

    monkeypatch.setenv("RIFT_MODEL", str(tiny_model_path))
    folder = tmp_path / "odd"
    folder.mkdir()
    names = ["esc\x1b[31mRED.md", "line\nbreak.md", "café 日本 🙂.md"]
    for name in names:
        (folder / name).write_text("# Note\n\nSome words about tides.\n")
    data = str(tmp_path / "data")
    text = CliRunner().invoke(main, ["add", str(folder), "--data-dir", data])
    assert text.exit_code == 0, text.output
    assert "\x1b" not in text.stdout and len(text.stdout.splitlines()) == 3, text.stdout
    assert f"added     {folder}/esc\\x1b[31mRED.md" in text.stdout
    assert f"added     {folder}/line\\x0abreak.md" in text.stdout
    assert f"added     {folder}/café 日本 🙂.md" in text.stdout
    # JSON keeps the names as they are (json escapes the control characters).
    listed = CliRunner().invoke(main, ["add", str(folder), "--json", "--data-dir", data])
    assert listed.exit_code == 0 and "\x1b" not in listed.stdout, listed.output
    assert {f["path"] for f in json.loads(listed.stdout)["files"]} == {str(folder / n) for n in names}
