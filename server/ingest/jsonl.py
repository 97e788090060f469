"""A collection's documents as JSON Lines: `rift export` writes them, `rift import` reads them back (or a corpus
from elsewhere, such as a BEIR `corpus.jsonl`).

One document per line: `{"id": ..., "text": ..., "metadata": {...}}`, the shape `add_documents` takes. An
export's first line is a header, `{"rift_export": {"format": 1, "collection": ...}}`, and its last a trailer,
`{"rift_export_end": {"documents": N, "sha256": ...}}` (the SHA-256 of its document lines, each with its "\n"),
written once every document is: a file cut short at a line's end (a full disk, a killed export, a copy stopped
part way) has a header and no trailer, and is refused rather than imported without the documents it lost. A file
without a header (an older rift's export, a BEIR corpus) imports unchecked.

An import reads the whole file once to check every line (and the trailer) before it writes anything, so a bad
line 90,000 stores nothing; then it writes in batches, and a run stopped half way is resumed by running it again
(documents already stored with the same text and metadata are skipped without embedding them again).

An export reads rift's `state.sqlite`, where a write becomes visible when its transaction commits, in one read
transaction: a consistent snapshot of the committed documents, even while a server is writing.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import sqlite3
import tempfile
import zlib
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from server.engine.filters import document_columns, mask, parse_filters, unknown_fields_problem
from server.engine.vector_store import chroma_server_problem
from server.errors import NotFoundError, RiftError, user_message

FIELDS = ("id", "text", "metadata")
BEIR_FIELDS = ("_id", "title", "text", "metadata")
BATCH_DOCUMENTS = 256  # per write: large enough to keep the model's batches full
EXPORT_PAGE = 500
EXPORT_FORMAT = 1  # the header's format: an import refuses a newer one
HEADER, TRAILER = "rift_export", "rift_export_end"


def document_text(title: str | None, text: str | None) -> str:
    """A titled document's text as rift indexes it: the title on its own line, then the text."""
    title, text = (title or "").strip(), (text or "").strip()
    return f"{title}\n{text}" if title and text else title or text


@dataclass(frozen=True)
class ImportDocument:
    line: int
    doc_id: str | None
    text: Any
    metadata: Any
    id_field: str = "id"  # as the line names it (BEIR's: _id)


def parse_line(raw: str, line: int) -> ImportDocument | None:
    """One line of an import file as a document (None for a blank line); a RiftError names the line."""
    if not raw.strip():
        return None
    return parse_value(_json(raw, line), line)


def _json(raw: str, line: int) -> Any:
    try:
        return json.loads(raw)
    except json.JSONDecodeError as exc:
        raise RiftError(f"line {line}: not JSON ({exc.msg.removesuffix(' at')} at column {exc.colno})") from None
    except ValueError as exc:  # e.g. an integer of more digits than Python converts
        raise RiftError(f"line {line}: not JSON ({exc})") from None
    except RecursionError:
        raise RiftError(f"line {line}: not JSON (nested too deep)") from None


def parse_value(value: Any, line: int) -> ImportDocument:
    """A line's JSON value as a document; a RiftError names the line."""
    if not isinstance(value, dict):
        raise RiftError(f'line {line}: a JSON object such as {{"id": ..., "text": ...}} expected, got {_kind(value)}')
    beir = "_id" in value
    known = BEIR_FIELDS if beir else FIELDS
    unknown = sorted(k for k in value if k not in known)
    if unknown:
        shape = "BEIR's _id, title, text, metadata" if beir else "id, text, metadata (or BEIR's _id, title, text)"
        raise RiftError(f"line {line}: unknown field {', '.join(map(repr, unknown))}; a line holds {shape}")
    if "text" not in value and not (beir and value.get("title")):
        raise RiftError(f"line {line}: text is missing")
    if not beir:
        return ImportDocument(line, value.get("id"), value.get("text"), value.get("metadata"))
    title, text, metadata = value.get("title"), value.get("text"), value.get("metadata")
    for name, item in (("title", title), ("text", text)):
        if item is not None and not isinstance(item, str):
            raise RiftError(f"line {line}: {name} must be a string, got {_kind(item)}")
    if isinstance(title, str) and title.strip():
        # (Its title as metadata, as a file's document has one, unless the line's own metadata gives one.)
        if metadata is None or metadata == {}:
            metadata = {"title": title.strip()}
        elif isinstance(metadata, Mapping) and "title" not in metadata:
            metadata = {"title": title.strip(), **metadata}
    return ImportDocument(line, value["_id"], document_text(title, text), metadata, "_id")


def _kind(value: Any) -> str:
    return {dict: "an object", list: "an array", str: "a string", bool: "a boolean", type(None): "null"}.get(
        type(value), "a number"
    )


@dataclass
class ExportSeal:
    """What a file's export header and trailer say, and what its document lines hold (`verify` compares them)."""

    header: dict[str, Any] | None = None
    trailer: dict[str, Any] | None = None
    trailer_line: int = 0
    documents: int = 0
    lines: int = 0
    digest: Any = field(default_factory=hashlib.sha256)

    @property
    def checked(self) -> bool:
        """Whether the file could be checked for completeness (it has an export's header or trailer)."""
        return self.header is not None or self.trailer is not None

    def add(self, raw: bytes) -> None:
        self.documents += 1
        self.digest.update(raw.rstrip(b"\r\n") + b"\n")

    def verify(self) -> None:
        """Raise when the file is not the whole export its header and trailer describe."""
        if self.header is not None and self.trailer is None:
            raise RiftError(
                f"the file looks cut short: {count_documents(self.documents)} read (through line {self.lines:,}), and "
                f"the {TRAILER} line that `rift export` writes last is missing (a full disk, an export stopped or a "
                "copy cut part way?); nothing was imported: export the collection again (edited on purpose? "
                f"remove its first line, the {HEADER} header, to import it unchecked)"
            )
        if self.trailer is None:
            return
        said, digest = self.trailer["documents"], self.digest.hexdigest()
        if said != self.documents:
            raise RiftError(
                f"the file holds {count_documents(self.documents)}, but its {TRAILER} line (line {self.trailer_line:,}) "
                f"says the export wrote {said:,}: {'lines are missing' if self.documents < said else 'lines were added'}"
                "; nothing was imported"
            )
        if self.trailer.get("sha256", digest) != digest:
            raise RiftError(
                f"the file's document lines are not those exported: their SHA-256 is {digest}, its {TRAILER} line "
                f"(line {self.trailer_line:,}) says {self.trailer['sha256']} (a line changed after the export?); "
                "nothing was imported"
            )


def count_documents(n: int) -> str:
    """'1 document', '1,200 documents'."""
    return f"{n:,} document{'' if n == 1 else 's'}"


def read_lines(stream: IO[bytes], seal: ExportSeal | None = None, verify: bool = True) -> Iterator[ImportDocument]:
    """The documents of a JSON Lines byte stream (UTF-8, a BOM allowed), each with its line number. An export's
    header and trailer lines are read into `seal`, and with `verify` checked against the documents at the end."""
    seal = seal if seal is not None else ExportSeal()
    for number, raw in enumerate(_raw_lines(stream), 1):
        seal.lines = number
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise RiftError(f"line {number}: not UTF-8 (byte {exc.start + 1})") from None
        if number == 1:
            text = text.removeprefix("\ufeff")
            raw = raw.removeprefix(b"\xef\xbb\xbf")
        # Without its line end: JSON's error for a line cut short would name "line 2, column 1" of it.
        text = text.rstrip("\r\n")
        if not text.strip():
            continue
        value = _json(text, number)
        if seal.trailer is not None:
            raise RiftError(
                f"line {number}: after the {TRAILER} line (line {seal.trailer_line}), which ends an export "
                "(two exports joined in one file? import them one at a time)"
            )
        if isinstance(value, dict) and len(value) == 1 and (HEADER in value or TRAILER in value):
            _marker(seal, value, number)
            continue
        doc = parse_value(value, number)
        seal.add(raw)
        yield doc
    if verify:
        seal.verify()


def _marker(seal: ExportSeal, value: dict[str, Any], number: int) -> None:
    if HEADER in value:
        header = value[HEADER]
        if seal.header is not None or seal.documents:
            raise RiftError(
                f"line {number}: a {HEADER} header, which only a file's first line holds (two exports joined in "
                "one file? import them one at a time)"
            )
        if not isinstance(header, dict) or type(header.get("format")) is not int:
            raise RiftError(f'line {number}: a {HEADER} header holds {{"format": <number>, ...}}')
        if header["format"] != EXPORT_FORMAT:
            raise RiftError(
                f"line {number}: an export of format {header['format']}; this rift reads format {EXPORT_FORMAT} "
                "(a newer rift wrote it: import it with that version)"
            )
        seal.header = header
        return
    trailer = value[TRAILER]
    if (
        not isinstance(trailer, dict)
        or type(trailer.get("documents")) is not int
        or not isinstance(trailer.get("sha256", ""), str)
    ):
        raise RiftError(f'line {number}: a {TRAILER} line holds {{"documents": <number>, "sha256": <hex>}}')
    seal.trailer, seal.trailer_line = trailer, number


def _raw_lines(stream: IO[bytes]) -> Iterator[bytes]:
    number = 0
    while True:
        try:
            raw = stream.readline()
        except (OSError, EOFError, zlib.error) as exc:  # a damaged or cut-off gzip file, a read error
            raise RiftError(f"line {number + 1}: cannot read the file ({exc or type(exc).__name__})") from None
        if not raw:
            return
        number += 1
        yield raw


@dataclass
class ImportReport:
    collection: str
    documents: int = 0  # in the file
    added: int = 0
    updated: int = 0
    unchanged: int = 0
    chunks: int = 0  # of the documents written (not of those skipped as unchanged)
    written_through_line: int = 0  # the last line of the last batch stored
    created_empty: bool = False  # the file held no document, and the collection did not exist: made, empty

    def as_dict(self) -> dict[str, Any]:
        return {
            "collection": self.collection,
            "documents": self.documents,
            "added": self.added,
            "updated": self.updated,
            "unchanged": self.unchanged,
            "chunks": self.chunks,
        }


def check_file(settings: Any, stream: IO[bytes]) -> ExportSeal:
    """Check every line as `add_documents` would check it under `settings`, that no two lines give one id, and
    an export's trailer (a file cut short is refused); returns what was read (`.documents`: how many; `.checked`:
    whether the file could be checked for completeness). Nothing is opened or written (a bad file must not start
    a store: that may create a data dir, or re-embed one for a changed model)."""
    seen: dict[str, int] = {}
    seal = ExportSeal()
    # A document longer than one call takes could never be written: refused here, before any line is stored.
    per_call = settings.max_chars_per_call
    for doc in read_lines(stream, seal):
        doc_id, text, _ = _validated(settings, doc)
        if len(text) > per_call:
            raise RiftError(
                f"line {doc.line}: text is {len(text):,} characters; one write takes at most {per_call:,} "
                "(setting max_chars_per_call)"
            )
        if doc_id in seen:
            what = doc.id_field if doc.doc_id is not None else "text (a line without an id gets its text's hash as id)"
            raise RiftError(f"line {doc.line}: its {what} {doc_id!r} is also line {seen[doc_id]}'s")
        seen[doc_id] = doc.line
    return seal  # (0 documents: an export of an empty collection, which imports as one)


def _validated(settings: Any, doc: ImportDocument) -> tuple[str, str, dict[str, Any]]:
    from server.engine.engine import DocumentInput, validate_document

    return validate_document(
        DocumentInput(text=doc.text, id=doc.doc_id, metadata=doc.metadata),
        lambda name: f"line {doc.line}: {doc.id_field if name == 'id' else name}",
        settings,
    )


def import_documents(
    rift: Any,
    collection: str,
    stream: IO[bytes],
    progress: Callable[[ImportReport], None] | None = None,
    checked: int | None = None,
) -> ImportReport:
    """Check the whole stream (seekable; `checked`: check_file already did, and found that many documents),
    then write its documents in batches through `add_documents`. A failure part way raises a RiftError saying
    which lines are stored; running the import again resumes."""
    from server.engine.engine import DocumentInput, check_collection_name

    check_collection_name(collection)
    settings = rift.engine().settings
    report = ImportReport(collection)
    report.documents = checked if checked is not None else check_file(settings, stream).documents
    stream.seek(0)
    limit_docs = min(BATCH_DOCUMENTS, settings.max_documents_per_call)
    batch: list[ImportDocument] = []
    chars = 0

    def write() -> None:
        try:
            statuses = rift.add_documents(
                collection, [DocumentInput(text=d.text, id=d.doc_id, metadata=d.metadata) for d in batch]
            )
        except Exception as exc:  # rift's own errors, and others (Chroma's, a full disk): say what is stored
            why = (
                user_message(exc)
                or chroma_server_problem(exc, then="the import can resume once it answers")
                or f"{type(exc).__name__}: {exc}"
            )
            stored = (
                f"lines up to {report.written_through_line} are stored ({_counts(report)}); run the import "
                "again to resume: stored documents are skipped"
                if report.written_through_line
                else "nothing was stored"
            )
            raise RiftError(f"importing lines {batch[0].line}-{batch[-1].line} failed: {why}; {stored}") from exc
        for status in statuses:
            setattr(report, status.status, getattr(report, status.status) + 1)
            if status.status != "unchanged":
                report.chunks += status.chunks
        report.written_through_line = batch[-1].line
        if progress is not None:
            progress(report)

    for doc in read_lines(stream, verify=False):  # (checked above)
        size = len(doc.text)
        if batch and (len(batch) >= limit_docs or chars + size > settings.max_chars_per_call):
            write()
            batch, chars = [], 0
        batch.append(doc)
        chars += size
    if batch:
        write()
    if not report.documents:  # (exported empty, imported empty: the collection is back)
        report.created_empty = rift.engine().create_collection(collection)
    return report


def _counts(report: ImportReport) -> str:
    return f"{report.added} added, {report.updated} updated, {report.unchanged} unchanged"


# --- export ---------------------------------------------------------------------------------------------------


def read_only_state(path: Path) -> sqlite3.Connection:
    """A read-only connection to rift's state database (another process may be writing it)."""
    if not path.is_file():
        raise RiftError(f"no rift state at {path}; check --data-dir or RIFT_DATA_DIR")
    try:
        return _check(sqlite3.connect(f"file:{path}?mode=ro", uri=True, isolation_level=None, timeout=30))
    except sqlite3.Error as exc:
        # A reader of a WAL database makes its -shm file: impossible in a folder it may not write (a backup
        # copy, another user's store). With no -wal file there is nothing but the database file to read.
        if Path(f"{path}-wal").exists():
            raise RiftError(f"cannot read rift's state {path}: {exc}") from None
        before = _identity(path)
        try:
            conn = sqlite3.connect(
                f"file:{path}?mode=ro&immutable=1", uri=True, isolation_level=None, factory=_UnlockedRead
            )
        except sqlite3.Error:
            raise RiftError(f"cannot read rift's state {path}: {exc}") from None
        conn.path, conn.identity = path, before
        try:
            return _check(conn)
        except sqlite3.Error:
            raise RiftError(f"cannot read rift's state {path}: {exc}") from None


class _UnlockedRead(sqlite3.Connection):
    """A read of a state database that takes no locks (immutable=1): SQLite then assumes the file never changes,
    so a rift process that starts writing it meanwhile (its owner's server, on a store another user may not
    write) tears the read. What the file was at the start is kept to tell (`_unchanged`)."""

    path: Path
    identity: tuple[int, int, int, int]


def _identity(path: Path) -> tuple[int, int, int, int]:
    """The file (inode), its size and last change, and the size of its -wal file (0 when there is none): a
    writer's commit puts frames in it, while a reader in a folder it may write (the owner's `rift export`)
    leaves an empty one, which changes nothing read here."""
    info = path.stat()
    try:
        wal = Path(f"{path}-wal").stat().st_size
    except FileNotFoundError:
        wal = 0
    return info.st_ino, info.st_size, info.st_mtime_ns, wal


def _unchanged(conn: sqlite3.Connection) -> None:
    """Raise when a read without locks overlapped a write: what it read may mix two states of the file."""
    if not isinstance(conn, _UnlockedRead):
        return
    try:
        same = _identity(conn.path) == conn.identity
    except OSError:
        same = False
    if not same:
        raise RiftError(
            f"rift's state {conn.path} was written while it was read (a rift process started on that data dir), "
            "and this read takes no locks (the folder is not writable here): nothing read can be trusted; run "
            "the export again once no rift process writes it"
        )


def _check(conn: sqlite3.Connection) -> sqlite3.Connection:
    try:
        conn.execute("SELECT 1 FROM documents LIMIT 1")
    except BaseException:
        conn.close()
        raise
    return conn


def export_documents(
    conn: sqlite3.Connection, collection: str, filters: Mapping[str, Any] | None, out: IO[str]
) -> int:
    """Write the collection's documents (or those matching `filters`, as `list_documents` matches them) to `out`
    as JSON Lines, by id, from one snapshot of the state, between a header line and a trailer line that holds
    their count and SHA-256 (written last: a file without it is not whole); returns how many."""
    node = parse_filters(filters)
    conn.execute("BEGIN")  # one snapshot: pages read later see no write committed after the first
    try:
        names = [r[0] for r in conn.execute("SELECT name FROM collections ORDER BY name")]
        if collection not in names:
            there = f"the collections are {', '.join(names)}" if names else "there is none yet"
            raise NotFoundError(f"collection {collection!r} does not exist ({there})")
        header: dict[str, Any] = {"format": EXPORT_FORMAT, "collection": collection}
        if filters:
            header["filters"] = dict(filters)
        # Written with the first document, or at the end: a filter refused once every document is read (one
        # naming fields no document has) leaves nothing on stdout, not a header alone.
        opening = [_line({HEADER: header})]

        def begin() -> None:
            if opening:
                out.write(opening.pop())

        count, after, digest = 0, "", hashlib.sha256()
        known: set[str] = set()  # fields the documents read have: a filter naming others matched nothing for that
        while True:
            rows = conn.execute(
                "SELECT doc_id, text, metadata FROM documents WHERE collection = ? AND doc_id > ? "
                "ORDER BY doc_id LIMIT ?",
                (collection, after, EXPORT_PAGE),
            ).fetchall()
            if not rows:
                _unchanged(conn)
                if not count and node is not None and known:
                    problem = unknown_fields_problem(node, known, collection)
                    if problem:
                        raise RiftError(problem)
                begin()
                out.write(_line({TRAILER: {"documents": count, "sha256": digest.hexdigest()}}))
                return count
            after = rows[-1][0]
            metadatas = [json.loads(m) for _, _, m in rows]
            keep = [True] * len(rows)
            if node is not None:
                columns = document_columns(metadatas, node)
                known |= columns.fields
                keep = mask(node, columns)
            for (doc_id, text, _), metadata, ok in zip(rows, metadatas, keep, strict=True):
                if ok:
                    # Keys in one order: a process that read a document back from a Chroma server holds them in
                    # Chroma's, and the same collection exports the same file from any process.
                    line = _line({"id": doc_id, "text": text, "metadata": dict(sorted(metadata.items()))})
                    begin()
                    out.write(line)
                    digest.update(line.encode("utf-8"))
                    count += 1
    except sqlite3.Error as exc:
        _unchanged(conn)  # ("database disk image is malformed" from a torn read names the wrong cause)
        raise RiftError(f"reading rift's state failed: {exc}") from None
    finally:
        with contextlib.suppress(sqlite3.Error):  # (a failure here must not hide the one that ended the read)
            conn.execute("ROLLBACK")


def _line(record: dict[str, Any]) -> str:
    return json.dumps(record, ensure_ascii=False) + "\n"  # (SQLite's text is UTF-8: no lone surrogate)


def descriptor_of(path: str) -> int | None:
    """The file descriptor a path names (/dev/stdout, /dev/fd/N, /proc/self/fd/N, or a link to one), else None.
    Links are followed one at a time: resolving the path whole would name the file the descriptor is open on."""
    at = os.path.abspath(os.path.expanduser(path))
    for _ in range(40):  # (a loop of links ends here)
        parent, name = os.path.split(at)
        if name.isdigit() and os.path.realpath(parent) == f"/proc/{os.getpid()}/fd":
            return int(name) if len(name) <= 9 else -1  # (-1: no such descriptor)
        if not os.path.islink(at):
            return None
        at = os.path.normpath(os.path.join(parent, os.readlink(at)))
    return None


def open_descriptor(fd: int) -> IO[str]:
    """A UTF-8 text stream on a copy of descriptor `fd` (inherited from the shell: take it before opening any
    file, so that a number the shell did not open cannot name one of rift's own)."""
    if fd < 0:
        raise OSError(9, "Bad file descriptor")
    return os.fdopen(os.dup(fd), "w", encoding="utf-8", newline="\n")


def write_output(path: Path, fill: Callable[[IO[str]], int]) -> int:
    """Write UTF-8 text to `path`. A regular file (new, or through a symlink to one) is filled beside its place
    and moved there once whole, keeping an existing file's mode: a failed export leaves no partial file that
    looks complete, and the earlier file as it was. Anything else that is not a regular file (a device, a
    pipe) is written as it is, and so is an existing file in a folder that may not be written. A file that may not
    be written is refused, as the shell's `>` refuses it.
    (A descriptor's path goes through `open_descriptor` instead.)"""
    given = path.expanduser()
    target = Path(os.path.realpath(given))
    if target.exists() and not target.is_file():
        with target.open("w", encoding="utf-8", newline="\n") as out:
            return fill(out)
    if target.exists() and not os.access(target, os.W_OK):
        raise PermissionError(13, "Permission denied", str(given))
    try:
        handle, temp = tempfile.mkstemp(prefix=".rift-export-", suffix=".partial", dir=target.parent)
    except PermissionError:
        if not target.exists():
            raise PermissionError(13, "Permission denied", str(given)) from None
        # A file it may write in a folder it may not (no room for the copy beside it): written in place, as
        # the shell's `>` writes it; a failure then leaves it partial.
        with target.open("w", encoding="utf-8", newline="\n") as out:
            return fill(out)
    try:
        if target.exists():
            shutil.copymode(target, temp)
        else:
            umask = os.umask(0)
            os.umask(umask)
            os.chmod(temp, 0o666 & ~umask)  # as a file the shell writes would be (mkstemp's is private)
        with os.fdopen(handle, "w", encoding="utf-8", newline="\n") as out:
            count = fill(out)
            out.flush()
            os.fsync(out.fileno())
        os.replace(temp, target)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise
    with contextlib.suppress(OSError):  # the rename itself survives a power cut once its folder is synced
        folder = os.open(target.parent, os.O_RDONLY)
        try:
            os.fsync(folder)
        finally:
            os.close(folder)
    return count
