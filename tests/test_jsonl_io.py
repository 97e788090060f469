"""`rift export` / `rift import`: a collection as JSON Lines, and back."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import sqlite3
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from server.engine.engine import DocumentInput
from server.errors import RiftError
from server.ingest import jsonl
from server.service import DataDirLock
from tests.conftest import *  # noqa: F403


@pytest.fixture
def cli(tmp_path: Path, tiny_model_path: Path, monkeypatch):
    from server.cli import main

    monkeypatch.setenv("RIFT_MODEL", str(tiny_model_path))
    monkeypatch.setenv("RIFT_CHUNK_TOKENS", "48")
    monkeypatch.setenv("RIFT_CHUNK_OVERLAP", "8")
    runner = CliRunner()

    def run(*args: str, ok: bool = True, stdin: bytes | None = None):
        result = runner.invoke(main, list(args), input=stdin)
        if ok:
            assert result.exit_code == 0, result.output
        return result

    return run


def lines_of(text: str) -> list[dict]:
    """An export's documents: its header and trailer checked, then left out."""
    lines = [json.loads(line) for line in text.split("\n") if line]  # (not splitlines: U+2028 is text here)
    assert list(lines[0]) == ["rift_export"] and list(lines[-1]) == ["rift_export_end"], lines
    assert lines[-1]["rift_export_end"]["documents"] == len(lines) - 2
    return lines[1:-1]


def test_export_then_import_keeps_every_document(cli, tmp_path: Path) -> None:
    """What an export writes, an import into another data dir stores again as it was: ids, texts (non-ASCII
    included) and metadata, a file's document with its sync keys; importing it again changes nothing."""
    first, second = str(tmp_path / "a"), str(tmp_path / "b")
    folder = tmp_path / "notes"
    folder.mkdir()
    (folder / "river.md").write_text("# River\n\nThe river floods in spring.\n")
    cli("add", str(folder), "--collection", "kb", "--data-dir", first)
    source = tmp_path / "in.jsonl"
    source.write_text(
        "\n".join(
            json.dumps(d, ensure_ascii=False)
            for d in [
                {"id": "b", "text": "Straße und Brücke über den Fluss 🌉", "metadata": {"year": 2020, "ok": True}},
                {"id": "a", "text": "granite weathers slowly", "metadata": {"score": 0.5, "tag": "rock"}},
                {"text": "a document without an id"},
            ]
        )
        + "\n\n",  # a blank line is skipped
        encoding="utf-8",
    )
    imported = json.loads(cli("import", "--json", str(source), "--collection", "kb", "--data-dir", first).stdout)
    assert imported == {"collection": "kb", "documents": 3, "added": 3, "updated": 0, "unchanged": 0,
                        "chunks": imported["chunks"]} and imported["chunks"] >= 3
    dump = tmp_path / "kb.jsonl"
    done = cli("export", "--collection", "kb", "-o", str(dump), "--data-dir", first)
    assert "exported 4 documents" in done.stderr
    exported = lines_of(dump.read_text(encoding="utf-8"))
    assert [d["id"] for d in exported] == sorted(d["id"] for d in exported) and len(exported) == 4
    by_id = {d["id"]: d for d in exported}
    assert by_id["b"] == {"id": "b", "text": "Straße und Brücke über den Fluss 🌉", "metadata": {"year": 2020, "ok": True}}
    river = by_id[str(folder / "river.md")]
    assert river["metadata"]["source"] == str(folder / "river.md") and river["text"].startswith("# River")
    listed = json.loads(cli("list", "--collection", "kb", "--json", "--data-dir", first).stdout)
    assert {d["doc_id"]: d["metadata"] for d in listed["documents"]} == {d["id"]: d["metadata"] for d in exported}

    again = json.loads(cli("import", "--json", str(dump), "--collection", "copy", "--data-dir", second).stdout)
    assert again["added"] == 4
    copy = lines_of(cli("export", "--collection", "copy", "--data-dir", second).stdout)
    assert copy == exported
    # The copy answers searches, filters on the imported metadata and $prefix on a file's source included.
    found = json.loads(
        cli(
            "search", "granite", "--collection", "copy", "--filters", '{"tag": "rock"}', "--json", "--data-dir", second
        ).stdout
    )
    assert [h["doc_id"] for h in found["hits"]] == ["a"]
    where = json.dumps({"source": {"$prefix": str(folder)}})
    assert json.loads(cli("list", "--collection", "copy", "--filters", where, "--json", "--data-dir", second).stdout)["total"] == 1
    same = json.loads(cli("import", "--json", str(dump), "--collection", "copy", "--data-dir", second).stdout)
    assert (same["added"], same["updated"], same["unchanged"], same["chunks"]) == (0, 0, 4, 0)
    said = cli("import", str(dump), "--collection", "copy", "--data-dir", second).stdout  # for a reader
    assert said == "copy: 4 documents imported: 0 added, 0 updated, 4 unchanged (0 chunks embedded)\n"
    # The folder's next sync into the copy finds its file as stored: nothing to read again.
    synced = json.loads(cli("add", str(folder), "--collection", "copy", "--json", "--data-dir", second).stdout)
    assert [f["status"] for f in synced["files"]] == ["unchanged"], synced
    subset = lines_of(cli("export", "--collection", "copy", "--filters", '{"year": {"$gte": 2000}}', "--data-dir", second).stdout)
    assert [d["id"] for d in subset] == ["b"]


def test_import_checks_every_line_before_it_writes(cli, tmp_path: Path, monkeypatch) -> None:
    """A bad line anywhere is named with its line number, and nothing of the file is stored (a document longer
    than one write takes too: it stored the lines before it, then failed on every run)."""
    monkeypatch.setenv("RIFT_MAX_CHARS_PER_CALL", "60")
    data = str(tmp_path / "data")
    good = [json.dumps({"id": f"d{i}", "text": f"document number {i}"}) for i in range(3)]
    cases = [
        ("{not json", "line 4: not JSON"),
        ('["a"]', "line 4: a JSON object"),
        ('{"id": "x", "txt": "typo"}', "line 4: unknown field 'txt'"),
        ('{"id": "x"}', "line 4: text is missing"),
        ('{"id": "x", "text": "   "}', "line 4: text must not be empty"),
        ('{"id": "x", "text": "t", "metadata": {"a": {"b": 1}}}', "line 4: metadata.a must be a string, number or boolean"),
        ('{"id": "x", "text": "t", "metadata": {"_rift_doc": "y"}}', "reserved"),
        ('{"id": 5, "text": "t"}', "line 4: id must be a non-empty string"),
        ('{"id": "d1", "text": "again"}', "line 4: its id 'd1' is also line 2's"),
        ('{"_id": "d1", "text": "again"}', "line 4: its _id 'd1' is also line 2's"),
        ('{"_id": "x", "id": "y", "text": "t"}', "unknown field 'id'"),
        ('{"_id": "x", "title": 3, "text": "t"}', "line 4: title must be a string"),
        ('{"_id": "", "text": "t"}', "line 4: _id must be a non-empty string"),
        ('{"id": "x", "text": "a\tb"}', "line 4: not JSON (Invalid control character at column"),
        ('{"id": "x", "text": "t", "metadata": {"n": ' + "9" * 5000 + "}}", "line 4: not JSON (Exceeds the limit"),
        ('{"id": "x", "text": "' + "y" * 70 + '"}', "line 4: text is 70 characters; one write takes at most 60"),
    ]
    for bad, message in cases:
        path = tmp_path / "bad.jsonl"
        path.write_text("\n".join([*good, bad, good[0].replace("d0", "d9")]) + "\n")
        result = cli("import", "--json", str(path), "--data-dir", data, ok=False)
        assert result.exit_code != 0 and message in result.output, (bad, result.output)
    path.write_bytes(b'{"id": "a", "text": "ok"}\n{"id": "b", "text": "caf\xe9"}\n')
    result = cli("import", "--json", str(path), "--data-dir", data, ok=False)
    assert "line 2: not UTF-8" in result.output
    assert "No such file" in cli("import", "--json", str(tmp_path / "nope.jsonl"), "--data-dir", data, ok=False).output
    # Nothing was written by any of them.
    listed = cli("list", "--data-dir", data, ok=False)
    assert listed.exit_code != 0 or json.loads(listed.stdout)["total"] == 0
    # An export of an empty collection holds no line, and imports as an empty collection (it was refused: a
    # backup of such a collection could not be restored).
    empty = tmp_path / "empty.jsonl"
    cli("collections", "create", "drafts", "--data-dir", data)
    cli("export", "--collection", "drafts", "-o", str(empty), "--data-dir", data)
    assert lines_of(empty.read_text()) == []
    other = str(tmp_path / "other")
    restored = cli("import", "--json", str(empty), "--collection", "drafts", "--data-dir", other)
    assert json.loads(restored.stdout)["documents"] == 0
    assert "the file holds no document: collection 'drafts' was created, empty" in restored.stderr
    listed = json.loads(cli("collections", "--json", "--data-dir", other).output)["collections"]
    assert [(c["name"], c["documents"]) for c in listed] == [("drafts", 0)]
    again = cli("import", "--json", str(empty), "--collection", "drafts", "--data-dir", other)
    assert "the file holds no document: nothing was imported" in again.stderr


def test_a_line_cut_off_at_its_end_is_named_at_its_own_column() -> None:
    """`{"id":"x","text":"a"` and its newline read "Expecting ',' delimiter at column 1": JSON's line 2, the
    newline's. A CRLF file, and a text that ends in a line break inside its string, read as before."""
    for end in (b"\n", b"\r\n", b""):
        with pytest.raises(RiftError, match=r"^line 2: not JSON \(Expecting ',' delimiter at column 21\)$"):
            list(jsonl.read_lines(io.BytesIO(b'{"id": "a", "text": "ok"}\n{"id":"x","text":"a"' + end)))
    crlf = b'{"id": "a", "text": "ok"}\r\n{"id": "b", "text": "ends in a break \\r\\n"}\r\n'
    assert [(d.doc_id, d.text) for d in jsonl.read_lines(io.BytesIO(crlf))] == [
        ("a", "ok"),
        ("b", "ends in a break \r\n"),
    ]


def test_import_reads_a_beir_corpus_from_stdin(cli, tmp_path: Path) -> None:
    """A BEIR corpus.jsonl line becomes a document whose text is its title then its text, with its title as
    metadata (as rift's benchmark indexes it); a UTF-8 BOM is allowed."""
    data = str(tmp_path / "data")
    corpus = "\ufeff" + "\n".join(
        json.dumps(d)
        for d in [
            {"_id": "MED-1", "title": "Vitamin D", "text": "Sunlight makes it.", "metadata": {"url": "http://x"}},
            {"_id": "MED-2", "title": "", "text": "No title here.", "metadata": {}},
            {"_id": "MED-3", "title": "Only a title"},
        ]
    )
    out = json.loads(cli("import", "--json", "-", "--collection", "nf", "--data-dir", data, stdin=corpus.encode()).stdout)
    assert out["added"] == 3
    docs = {d["id"]: d for d in lines_of(cli("export", "--collection", "nf", "--data-dir", data).stdout)}
    assert docs["MED-1"] == {"id": "MED-1", "text": "Vitamin D\nSunlight makes it.", "metadata": {"title": "Vitamin D", "url": "http://x"}}
    assert docs["MED-2"] == {"id": "MED-2", "text": "No title here.", "metadata": {}}
    assert docs["MED-3"]["text"] == "Only a title"
    # As BEIR ships it: corpus.jsonl.gz, from a file or stdin; a damaged one is an error, not a traceback.
    packed = tmp_path / "corpus.jsonl.gz"
    packed.write_bytes(gzip.compress(corpus.encode()))
    again = json.loads(cli("import", "--json", str(packed), "--collection", "nf", "--data-dir", data).stdout)
    assert (again["added"], again["unchanged"]) == (0, 3)
    piped = cli("import", "--json", "-", "--collection", "nf2", "--data-dir", data, stdin=packed.read_bytes()).stdout
    assert json.loads(piped)["added"] == 3
    packed.write_bytes(packed.read_bytes()[:-12])
    cut = cli("import", "--json", str(packed), "--collection", "nf3", "--data-dir", data, ok=False)
    assert cut.exit_code == 1 and "cannot read the file" in cut.output, cut.output


def test_an_import_that_fails_part_way_says_what_is_stored_and_resumes(rift, monkeypatch) -> None:
    """Each batch is one add_documents call: a failure names the lines already stored, and running the same
    file again skips them (unchanged, not embedded again) and stores the rest."""
    monkeypatch.setattr(jsonl, "BATCH_DOCUMENTS", 2)
    data = "".join(json.dumps({"id": f"d{i}", "text": f"stone number {i} in the wall"}) + "\n" for i in range(5))
    real = rift.add_documents
    calls = []

    def flaky(collection, documents, progress=None):
        calls.append([d.id for d in documents])
        if len(calls) == 2:
            raise RiftError("Chroma said no")
        if len(calls) == 3:
            raise OSError(28, "No space left on device")
        return real(collection, documents, progress)

    monkeypatch.setattr(rift, "add_documents", flaky)
    with pytest.raises(RiftError, match=r"importing lines 3-4 failed: Chroma said no; lines up to 2 are stored \(2 added"):
        jsonl.import_documents(rift, "wall", io.BytesIO(data.encode()))
    # (a failure that is not rift's own says the same, with its kind)
    with pytest.raises(RiftError, match=r"lines 1-2 failed: the disk .* is full.*\(OSError: \[Errno 28\] No space left on device\); nothing was"):
        jsonl.import_documents(rift, "wall", io.BytesIO(data.encode()))
    assert [d for d, _ in rift.engine().state.list_documents("wall", -1, 0)] == ["d0", "d1"]
    # (a Chroma server lost: its address and what to do, not httpx's bare "ConnectError: ...")
    import httpx

    request = httpx.Request("POST", "http://chroma.internal:8000/api/v2/collections")
    calls[:] = [[], []]
    monkeypatch.setattr(jsonl, "BATCH_DOCUMENTS", 1)

    def lost(collection, documents, progress=None):
        calls.append([d.id for d in documents])
        if len(calls) == 4:
            raise httpx.ConnectError("[Errno 111] Connection refused", request=request)
        return real(collection, documents, progress)

    monkeypatch.setattr(rift, "add_documents", lost)
    with pytest.raises(RiftError, match=r"lines 2-2 failed: cannot reach the Chroma server at http://chroma.internal:8000 "
                       r"\(ConnectError: .*\): start it .*; the import can resume once it answers; lines up to 1 are stored"):
        jsonl.import_documents(rift, "wall", io.BytesIO(data.encode()))
    monkeypatch.setattr(rift, "add_documents", real)
    monkeypatch.setattr(jsonl, "BATCH_DOCUMENTS", 2)
    seen = []
    report = jsonl.import_documents(rift, "wall", io.BytesIO(data.encode()), progress=lambda r: seen.append(r.written_through_line))
    assert (report.added, report.unchanged, report.documents) == (3, 2, 5) and seen == [2, 4, 5]
    assert len(rift.engine().state.list_documents("wall", -1, 0)) == 5


def test_export_reads_one_snapshot_while_a_server_writes(rift, settings, monkeypatch) -> None:
    """An export reads state.sqlite read-only in one transaction: it works while the data dir is locked by a
    server, and a write committed while it pages through is not half in the file."""
    monkeypatch.setattr(jsonl, "EXPORT_PAGE", 1)
    rift.add_documents("kb", [DocumentInput(text=f"page {i} of the book", id=f"p{i}") for i in range(3)])
    conn = jsonl.read_only_state(settings.state_db)
    written = []

    class Sink(io.StringIO):
        def write(self, line: str) -> int:
            if not written:  # a server's write lands between the export's pages
                rift.add_documents("kb", [DocumentInput(text="a late page", id="p9")])
                rift.delete_documents("kb", ["p2"])
                written.append(True)
            return super().write(line)

    sink = Sink()
    assert jsonl.export_documents(conn, "kb", None, sink) == 3
    assert [d["id"] for d in lines_of(sink.getvalue())] == ["p0", "p1", "p2"]
    with pytest.raises(RiftError, match=r"collection 'nope' does not exist \(the collections are kb\)"):
        jsonl.export_documents(conn, "nope", None, io.StringIO())
    conn.close()


def test_cli_export_while_the_data_dir_is_locked(cli, tmp_path: Path, tiny_model_path: Path) -> None:
    """`rift export` needs no lock (other commands refuse while a server runs); an export to a file that fails
    leaves the file that was there."""
    from server.config import Settings

    data = tmp_path / "data"
    source = tmp_path / "in.jsonl"
    source.write_text(json.dumps({"id": "x", "text": "the only document"}) + "\n")
    cli("import", "--json", str(source), "--data-dir", str(data))
    lock = DataDirLock(Settings(data_dir=data, model=str(tiny_model_path)))
    lock.acquire()
    try:
        assert "in use" in cli("list", "--data-dir", str(data), ok=False).output
        assert lines_of(cli("export", "--data-dir", str(data)).stdout) == [{"id": "x", "text": "the only document", "metadata": {}}]
        target = tmp_path / "keep.jsonl"
        target.write_text("earlier export\n")
        failed = cli("export", "--collection", "nope", "-o", str(target), "--data-dir", str(data), ok=False)
        assert "collection 'nope' does not exist" in failed.output
        assert target.read_text() == "earlier export\n" and [p.name for p in tmp_path.glob("*.partial")] == []
        assert "no rift data folder" in cli("export", "--data-dir", str(tmp_path / "none"), ok=False).output
    finally:
        lock.release()


def test_export_output_goes_where_it_is_told_and_nowhere_else(cli, tmp_path: Path) -> None:
    """-o through a symlink fills the file it points to (the link stays), an existing file keeps its mode, and
    a pipe (or a device) is written as it is, not replaced by a regular file."""
    import os
    import stat
    import threading

    data = str(tmp_path / "data")
    source = tmp_path / "in.jsonl"
    source.write_text(json.dumps({"id": "x", "text": "the only document"}) + "\n")
    cli("import", "--json", str(source), "--data-dir", data)
    expected = [{"id": "x", "text": "the only document", "metadata": {}}]
    real = tmp_path / "real.jsonl"
    real.write_text("old\n")
    real.chmod(0o600)
    link = tmp_path / "link.jsonl"
    link.symlink_to(real)
    cli("export", "-o", str(link), "--data-dir", data)
    assert link.is_symlink() and lines_of(real.read_text()) == expected
    assert stat.S_IMODE(real.stat().st_mode) == 0o600
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    got: list[str] = []
    reader = threading.Thread(target=lambda: got.append(fifo.read_text()))
    reader.start()
    cli("export", "-o", str(fifo), "--data-dir", data)
    reader.join(10)
    assert lines_of(got[0]) == expected and stat.S_ISFIFO(fifo.stat().st_mode)
    assert "give a file name" in cli("export", "-o", "", "--data-dir", data, ok=False).output
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".partial")] == []


def test_export_writes_utf8_whatever_the_locale_and_stops_quietly_when_the_reader_does(
    tmp_path: Path, tiny_model_path: Path, rift
) -> None:
    """A shell whose locale is not UTF-8 still gets a file rift import reads (it was a traceback, or latin-1);
    `rift export | head -1` ends without an error message."""
    import os
    import subprocess
    import sys

    rift.add_documents("kb", [DocumentInput(text=f"Straße\u2028{i} 🌉", id=f"d{i:04d}") for i in range(300)])
    data = str(rift.settings.data_dir)
    env = {**os.environ, "PYTHONIOENCODING": "latin-1", "RIFT_MODEL": str(tiny_model_path)}
    command = [sys.executable, "-m", "server.cli", "export", "--collection", "kb", "--data-dir", data]
    done = subprocess.run(command, env=env, capture_output=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert lines_of(done.stdout.decode("utf-8"))[0] == {"id": "d0000", "text": "Straße\u20280 🌉", "metadata": {}}
    piped = subprocess.run(f"{' '.join(command)} | head -2", shell=True, env=env, capture_output=True, timeout=120)
    assert piped.stdout.decode("utf-8").split("\n")[1].startswith('{"id": "d0000"') and b"Error" not in piped.stderr
    # -o /dev/stdout writes where the shell points stdout, between what others write there (it replaced
    # the redirected file with a new one: HEADER was lost and FOOTER went to the replaced file).
    out = tmp_path / "all.txt"
    shell = f"{{ echo HEADER; {' '.join(command)} -o /dev/stdout; echo FOOTER; }} > {out}"
    assert subprocess.run(shell, shell=True, env=env, timeout=120).returncode == 0
    lines = out.read_text(encoding="utf-8").split("\n")
    assert lines[0] == "HEADER" and lines[-2] == "FOOTER" and len(lines) == 305  # (and the export's own two)
    # ... also through a link to it, or a relative path to it.
    link = tmp_path / "to-stdout"
    link.symlink_to("/dev/stdout")
    for target in (str(link), "dev/stdout"):
        shell = f"cd / && {{ echo HEADER; {' '.join(command)} -o {target}; echo FOOTER; }} > {out}"
        assert subprocess.run(shell, shell=True, env=env, timeout=120).returncode == 0
        assert out.read_text(encoding="utf-8").split("\n")[::303] == ["HEADER", "FOOTER"], target
    # A descriptor the shell did not open is refused, as the shell refuses it: never one of rift's own files.
    for fd in ("7", "4", "99999999999999999999"):
        refused = subprocess.run([*command, "-o", f"/dev/fd/{fd}"], env=env, capture_output=True, timeout=120)
        assert refused.returncode == 1 and b"Bad file descriptor" in refused.stderr, refused.stderr
    assert rift.engine().state.document_count("kb") == 300


def _copy_in_a_folder_it_may_not_write(rift, settings, tmp_path: Path, monkeypatch) -> tuple[Path, Any, list[str]]:
    """A one-document store's state copied to tmp_path/backup, where (as SQLite answers where it may not make
    the -shm) only an immutable=1 connection opens; (the copy, sqlite3's own connect, the URIs tried)."""
    import shutil

    rift.add_documents("kb", [DocumentInput(text="kept in the backup", id="b")])
    rift.close()
    copy = tmp_path / "backup"
    copy.mkdir()
    shutil.copy(settings.state_db, copy / "state.sqlite")
    real = sqlite3.connect
    tried: list[str] = []

    def readonly_folder(database: str, *args, **kwargs):
        tried.append(database)
        if "immutable=1" not in database:
            raise sqlite3.OperationalError("attempt to write a readonly database")
        return real(database, *args, **kwargs)

    monkeypatch.setattr(jsonl.sqlite3, "connect", readonly_folder)
    return copy, real, tried


def test_export_reads_a_store_in_a_folder_it_may_not_write(rift, settings, tmp_path: Path, monkeypatch) -> None:
    """A copy of the data dir (a backup, another user's store) in a read-only folder: without a -wal file the
    database file is all there is, and it is read as it is."""
    copy, real, tried = _copy_in_a_folder_it_may_not_write(rift, settings, tmp_path, monkeypatch)
    conn = jsonl.read_only_state(copy / "state.sqlite")
    out = io.StringIO()
    assert jsonl.export_documents(conn, "kb", None, out) == 1 and "kept in the backup" in out.getvalue()
    conn.close()
    assert ["immutable=1" in uri for uri in tried] == [False, True]
    # Read without locks, a write meanwhile (its owner's rift starting on it) tears the read: said so, rather
    # than "database disk image is malformed" from half a checkpoint (found by helper BJ).
    conn = jsonl.read_only_state(copy / "state.sqlite")
    writer = real(str(copy / "state.sqlite"))

    class Written(io.StringIO):
        def write(self, line: str) -> int:
            writer.execute("UPDATE documents SET text = 'rewritten' WHERE doc_id = 'b'")
            writer.commit()
            return super().write(line)

    with pytest.raises(RiftError, match="was written while it was read .* run the export again"):
        jsonl.export_documents(conn, "kb", None, Written())
    conn.close()
    writer.close()
    # With a -wal file, the database file may lack committed writes: refused, not read without them.
    (copy / "state.sqlite-wal").write_bytes(b"")
    with pytest.raises(RiftError, match="cannot read rift's state .*readonly database"):
        jsonl.read_only_state(copy / "state.sqlite")


def test_export_to_a_writable_file_in_a_folder_it_may_not_write_writes_it_in_place(
    cli, tmp_path: Path, monkeypatch
) -> None:
    """The copy made beside the target could not be created there, so `-o` failed where the shell's `>` works.
    (As root every folder is writable: the refusal to make the copy is played by mkstemp.)"""
    data = str(tmp_path / "data")
    source = tmp_path / "in.jsonl"
    source.write_text(json.dumps({"id": "x", "text": "the only document"}) + "\n")
    cli("import", "--json", str(source), "--data-dir", data)
    target = tmp_path / "out.jsonl"
    target.write_text("an older export\n")

    def folder_not_writable(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(jsonl.tempfile, "mkstemp", folder_not_writable)
    cli("export", "-o", str(target), "--data-dir", data)
    assert lines_of(target.read_text()) == [{"id": "x", "text": "the only document", "metadata": {}}]
    missing = tmp_path / "new.jsonl"  # a new file needs the folder, as it does for the shell
    result = cli("export", "-o", str(missing), "--data-dir", data, ok=False)
    assert result.exit_code == 1 and f"cannot write {missing}: Permission denied" in result.output, result.output
    assert not missing.exists()


def test_collections_are_listed_created_and_deleted_from_the_shell(cli, tmp_path: Path) -> None:
    data = str(tmp_path / "a")
    assert json.loads(cli("collections", "create", "notes", "--json", "--data-dir", data).output) == {
        "collection": "notes",
        "created": True,
    }
    assert json.loads(cli("collections", "create", "notes", "--json", "--data-dir", data).output)["created"] is False
    assert cli("collections", "create", "notes", "--data-dir", data).output == "collection 'notes' exists: left as it is\n"
    assert cli("collections", "create", "other", "--data-dir", data).output == "created collection 'other'\n"
    cli("collections", "delete", "other", "--yes", "--data-dir", data)
    cli("import", "--json", "-", "--collection", "notes", "--data-dir", data, stdin=b'{"id": "a", "text": "river floods"}\n')
    listed = json.loads(cli("collections", "--json", "--data-dir", data).output)["collections"]
    assert [(c["name"], c["documents"]) for c in listed] == [("notes", 1)]
    # Deleting cannot be undone: without a terminal to ask on, it needs --yes.
    refused = cli("collections", "delete", "notes", "--data-dir", data, ok=False)
    assert refused.exit_code == 2 and "add --yes to confirm" in refused.output
    assert cli("collections", "delete", "notes", "--yes", "--data-dir", data).output == (
        "deleted collection 'notes': 1 document, 1 chunk\n"
    )
    assert json.loads(cli("collections", "--json", "--data-dir", data).output)["collections"] == []
    gone = cli("collections", "delete", "notes", "--yes", "--data-dir", data, ok=False)
    assert gone.exit_code == 1 and "unknown collection 'notes'" in gone.output
    # --data-dir before the subcommand names the store too (it was ignored: the default store's was deleted).
    cli("collections", "--json", "--data-dir", data, "create", "kept")
    assert [c["name"] for c in json.loads(cli("collections", "--json", "--data-dir", data).output)["collections"]] == ["kept"]
    cli("collections", "--json", "--data-dir", data, "delete", "kept", "--yes")
    assert json.loads(cli("collections", "--json", "--data-dir", data).output)["collections"] == []
    twice = cli("collections", "--json", "--data-dir", data, "delete", "kept", "--yes", "--data-dir", "elsewhere", ok=False)
    assert twice.exit_code == 2 and "two data dirs given" in twice.output


def test_deleting_a_collection_at_the_prompt_says_what_was_kept(cli, tmp_path: Path, monkeypatch) -> None:
    """On a terminal the command asks. "No", Ctrl-C and Ctrl-D each keep the collection and say so (click's
    "Aborted!" did not say whether anything was deleted; Ctrl-C exits 130 as every interrupted command does)."""
    from server.ingest import docs_cli

    data = str(tmp_path / "a")
    cli("import", "--json", "-", "--collection", "notes", "--data-dir", data, stdin=b'{"id": "a", "text": "river floods"}\n')
    monkeypatch.setattr(docs_cli, "_asks_a_person", lambda: True)
    declined = cli("collections", "delete", "notes", "--data-dir", data, ok=False, stdin=b"n\n")
    assert declined.exit_code == 1 and "collection 'notes' kept" in declined.output, declined.output
    assert "Aborted" not in declined.output
    closed = cli("collections", "delete", "notes", "--data-dir", data, ok=False, stdin=b"")  # (end of input)
    assert closed.exit_code == 130 and "interrupted: collection 'notes' kept" in closed.output, closed.output
    listed = json.loads(cli("collections", "--json", "--data-dir", data).output)["collections"]
    assert [(c["name"], c["documents"]) for c in listed] == [("notes", 1)]
    deleted = cli("collections", "delete", "notes", "--data-dir", data, stdin=b"y\n")
    assert deleted.output.endswith("deleted collection 'notes': 1 document, 1 chunk\n"), deleted.output


def test_a_bad_file_is_refused_before_any_store_opens(cli, tmp_path: Path, monkeypatch) -> None:
    """The store opened first: for a file refused at line 1 it created a data dir, loaded the model, and with a
    changed model re-embedded the whole store."""
    import server.cli

    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"id": "a", "text": "fine"}\nnot json\n')
    opened = []
    monkeypatch.setattr(server.cli, "open_rift", lambda *a, **k: opened.append(1))
    refused = cli("import", "--json", str(bad), "--data-dir", str(tmp_path / "fresh"), ok=False)
    assert refused.exit_code == 1 and "line 2: not JSON" in refused.output, refused.output
    assert opened == [] and not (tmp_path / "fresh").exists()


def test_ctrl_c_while_stdin_is_read_exits_130(cli, tmp_path: Path, monkeypatch) -> None:
    """Reading a pipe into a temporary copy ended in click's "Aborted!", exit 1."""
    from server.ingest import docs_cli

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    import os
    import threading

    pipe = tmp_path / "pipe"  # (what `producer | rift import -` reads: not seekable)
    os.mkfifo(pipe)
    writer = threading.Thread(target=lambda: pipe.write_bytes(b'{"text": "x"}\n'), daemon=True)
    writer.start()
    monkeypatch.setattr(docs_cli.shutil, "copyfileobj", interrupted)
    result = cli("import", "--json", str(pipe), "--data-dir", str(tmp_path / "d"), ok=False)
    writer.join(10)
    assert result.exit_code == 130, result.output
    assert "interrupted: nothing was stored; run the same import again to resume" in result.output


def test_a_reader_meanwhile_does_not_fail_an_export_without_locks(rift, settings, tmp_path: Path, monkeypatch) -> None:
    """A reader of the store in a folder it may write (its owner's `rift export`) leaves an empty -wal file and
    changes nothing: the read without locks it overlapped is whole, not refused as written meanwhile (found by
    helper BP: nobody's export of 4,000 documents refused after writing them all)."""
    copy, real, _tried = _copy_in_a_folder_it_may_not_write(rift, settings, tmp_path, monkeypatch)
    conn = jsonl.read_only_state(copy / "state.sqlite")
    reader = real(f"file:{copy / 'state.sqlite'}?mode=ro", uri=True)

    class Read(io.StringIO):
        def write(self, line: str) -> int:
            assert reader.execute("SELECT count(*) FROM documents").fetchone() == (1,)
            return super().write(line)

    assert jsonl.export_documents(conn, "kb", None, Read()) == 1
    assert (copy / "state.sqlite-wal").stat().st_size == 0  # (what the reader left)
    conn.close()
    reader.close()


def _whole_export(cli, tmp_path: Path) -> tuple[Path, list[str]]:
    """A three-document collection exported to tmp_path/kb.jsonl; (the file, its lines)."""
    data = str(tmp_path / "source")
    docs = "".join(
        json.dumps({"id": f"d{i}", "text": f"stone number {i} in the wall", "metadata": {"tag": "rock"}}) + "\n"
        for i in range(3)
    )
    cli("import", "--json", "-", "--collection", "kb", "--data-dir", data, stdin=docs.encode())
    dump = tmp_path / "kb.jsonl"
    cli("export", "--collection", "kb", "-o", str(dump), "--data-dir", data)
    return dump, dump.read_text(encoding="utf-8").split("\n")[:-1]


def test_an_export_ends_with_a_trailer_and_a_file_cut_short_is_refused_storing_nothing(
    cli, tmp_path: Path, tiny_model_path: Path
) -> None:
    """An export had no end mark: a file cut at a line's end (a full disk, a killed export, a copy stopped part
    way) imported without a word, the documents after the cut missing. Its last line now holds the count and
    the checksum of its documents, and an import refuses a file whose trailer is missing or does not match,
    before it writes anything: the collection it would have written is as it was (also from stdin, gzipped)."""
    dump, lines = _whole_export(cli, tmp_path)
    assert json.loads(lines[0]) == {"rift_export": {"format": 1, "collection": "kb"}}
    assert [json.loads(line)["id"] for line in lines[1:-1]] == ["d0", "d1", "d2"]
    digest = hashlib.sha256("".join(line + "\n" for line in lines[1:-1]).encode()).hexdigest()
    assert json.loads(lines[-1]) == {"rift_export_end": {"documents": 3, "sha256": digest}}

    target = str(tmp_path / "target")
    cli("import", "--json", "-", "--collection", "kb", "--data-dir", target, stdin=b'{"id": "keep", "text": "already here"}\n')

    def stored() -> str:
        return cli("export", "--collection", "kb", "--data-dir", target).stdout

    before = stored()
    assert '"id": "keep"' in before and before.count("\n") == 3
    cut = tmp_path / "cut.jsonl"
    edited = [lines[1], lines[2].replace("stone number 1", "stone number 7"), lines[3]]
    cases = [
        (lines[:-1], "the file looks cut short: 3 documents read (through line 4), and the rift_export_end line"),
        (lines[:-2], "the file looks cut short: 2 documents read (through line 3)"),
        (lines[:1], "the file looks cut short: 0 documents read (through line 1)"),
        ([*lines[:2], lines[-1]], "the file holds 1 document, but its rift_export_end line (line 3) says the export "
                                  "wrote 3: lines are missing; nothing was imported"),
        ([*lines, *lines[1:]], "line 6: after the rift_export_end line (line 5), which ends an export"),
        ([*lines[:-1], *lines], "line 5: a rift_export header, which only a file's first line holds"),
        ([lines[0], *edited, lines[-1]], "the file's document lines are not those exported: their SHA-256 is"),
        ([lines[0].replace('"format": 1', '"format": 2'), *lines[1:]], "line 1: an export of format 2; this rift "
                                                                      "reads format 1"),
        ([*lines[:-1], '{"rift_export_end": {"documents": "3"}}'], "line 5: a rift_export_end line holds"),
    ]
    for kept, message in cases:
        content = "".join(line + "\n" for line in kept).encode()
        cut.write_bytes(content)
        for args, stdin in (([str(cut)], None), (["-"], content), (["-"], gzip.compress(content))):
            result = cli("import", "--json", *args, "--collection", "kb", "--data-dir", target, ok=False, stdin=stdin)
            assert result.exit_code == 1 and message in result.output, (kept, args, result.output)
    cut.write_text("".join(line + "\n" for line in lines[:-1]), encoding="utf-8")
    result = cli("import", "--json", str(cut), "--collection", "kb", "--data-dir", target, ok=False)
    assert "is missing (a full disk, an export stopped or a copy cut part way?); nothing was imported: export the " \
        "collection again (edited on purpose? remove its first line, the rift_export header" in result.output
    assert stored() == before
    # Through the Python API too: refused before the first batch is written.
    from tests.support.helpers import make_settings, open_rift

    app = open_rift(make_settings(tmp_path / "target", tiny_model_path))
    try:
        with pytest.raises(RiftError, match="looks cut short: 2 documents read"):
            jsonl.import_documents(app, "kb", io.BytesIO("".join(line + "\n" for line in lines[:-2]).encode()))
        assert [d for d, _ in app.engine().state.list_documents("kb", -1, 0)] == ["keep"]
    finally:
        app.close()


def test_a_whole_export_round_trips_from_a_file_stdin_or_gzip_and_an_old_one_imports_with_a_warning(
    cli, tmp_path: Path
) -> None:
    """The trailer is checked and the import is as before; a file without a header (an older rift's export, a
    BEIR corpus) still imports, saying that it could not be checked for completeness."""
    dump, lines = _whole_export(cli, tmp_path)
    content = dump.read_bytes()
    for n, (args, stdin) in enumerate([([str(dump)], None), (["-"], content), (["-"], gzip.compress(content))]):
        data = str(tmp_path / f"copy{n}")
        result = cli("import", "--json", *args, "--collection", "kb", "--data-dir", data, stdin=stdin)
        assert json.loads(result.stdout)["added"] == 3 and "warning" not in result.stderr, result.stderr
        assert cli("export", "--collection", "kb", "--data-dir", data).stdout.encode() == content
    # CRLF line ends (a copy through an editor or a Windows tool) change no document: still whole.
    crlf = tmp_path / "crlf.jsonl"
    crlf.write_bytes(content.replace(b"\n", b"\r\n"))
    assert json.loads(cli("import", "--json", str(crlf), "--collection", "kb", "--data-dir", str(tmp_path / "copy0")).stdout)[
        "unchanged"
    ] == 3
    old = tmp_path / "old.jsonl"
    old.write_text("".join(line + "\n" for line in lines[1:-1]), encoding="utf-8")  # what an older rift wrote
    result = cli("import", "--json", str(old), "--collection", "kb", "--data-dir", str(tmp_path / "old"))
    assert json.loads(result.stdout)["added"] == 3
    assert "warning: the file has no rift export header or trailer" in result.stderr
    assert "a file cut short cannot be told from a whole one; 3 documents read" in result.stderr
    # An empty collection's export is a header and a trailer (an older one: an empty file, still read).
    data = str(tmp_path / "empty")
    cli("collections", "create", "drafts", "--data-dir", data)
    empty = cli("export", "--collection", "drafts", "--data-dir", data).stdout
    assert [json.loads(line) for line in empty.split("\n")[:-1]] == [
        {"rift_export": {"format": 1, "collection": "drafts"}},
        {"rift_export_end": {"documents": 0, "sha256": hashlib.sha256(b"").hexdigest()}},
    ]
    restored = cli("import", "--json", "-", "--collection", "drafts", "--data-dir", str(tmp_path / "e2"), stdin=empty.encode())
    assert "collection 'drafts' was created, empty" in restored.stderr and "warning" not in restored.stderr
    # A filtered export names its filter in its header.
    part = cli("export", "--collection", "kb", "--filters", '{"tag": "rock"}', "--data-dir", str(tmp_path / "copy0"))
    assert json.loads(part.stdout.split("\n")[0]) == {
        "rift_export": {"format": 1, "collection": "kb", "filters": {"tag": "rock"}}
    }
    # A filter refused after reading (a field no document has) writes nothing: `> f.jsonl` kept a header alone.
    refused = cli("export", "--collection", "kb", "--filters", '{"nosuch": 1}', "--data-dir", str(tmp_path / "copy0"), ok=False)
    assert refused.exit_code == 1 and "'nosuch'" in refused.stderr and refused.stdout == ""
