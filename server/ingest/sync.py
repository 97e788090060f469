"""Bring a collection in line with files and folders.

A file's document id is its absolute (resolved) path, so ingesting a folder again updates it in place:
  - same size and mtime as stored                                    -> unchanged (not read)
  - same SHA-256 of its bytes, new mtime                             -> unchanged (its stored mtime is refreshed;
                                                                        nothing is embedded again)
  - different content                                                -> updated
  - new                                                              -> added
  - with prune=True, documents of files under a given folder that are gone, or now left out (.gitignore,
    binary, too large, no text)                                      -> removed
    (a removed file whose text this sync stored under one new path, whole or after a small edit: renamed or
    moved, so the searches logged on it go on training on that document; see Engine.delete_documents)
A file reached through a symlink in the folder is stored under its target's path, with the link in `via`:
the document belongs to the folder the link is in, so removing the link and pruning removes it.
A file that could not be read this time (permissions, a race) keeps its document.
A file named in the call is read whatever .gitignore or the glob say, also when a folder named with it leaves
it out: its own reading alone gives its status (listed once; prune removes it only when that reading leaves
it out: emptied, too large).
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import pathspec

from server.engine.engine import MAX_ID_CHARS, DocumentInput, check_collection_name
from server.errors import NotFoundError, RiftError
from server.ingest.extract import (
    SNIFF_BYTES,
    SkipFile,
    encodable,
    extract,
    extractor_version,
    looks_binary,
    synced_file_keys,
)
from server.ingest.filetypes import classify
from server.ingest.security import PathPolicy, read_file
from server.ingest.walker import Found, Skipped, compile_glob, walk

log = logging.getLogger(__name__)

Status = Literal["added", "updated", "unchanged", "skipped", "removed"]
MAX_PATHS = 100
BATCH_DOCS = 32
BATCH_CHARS = 500_000


def printable(text: str) -> str:
    """`text` as JSON and UTF-8 output can carry it: a file name that is not valid UTF-8 (surrogate escapes)
    shows its undecodable bytes as U+FFFD; a report names such files, and a reason can quote one."""
    try:
        return text.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
    except UnicodeEncodeError:  # a surrogate that no byte escaped
        return text.encode("utf-8", "replace").decode("utf-8")


# For a line of text output: C0 and C1 control characters and DEL (a file name can hold an escape sequence that
# colours or clears the terminal, or a newline that splits its line), the bytes of a name that is not valid UTF-8
# (surrogate escapes U+DC80-U+DCFF) and any other lone surrogate, each as a backslash escape; so are the
# characters that reorder or break a line.
_TEXT_ESCAPES = {
    **{c: f"\\x{c:02x}" for c in (*range(0x20), *range(0x7F, 0xA0))},
    # bidirectional overrides and isolates, and the line and paragraph separators: a name can reverse how the
    # rest of its line reads ("gnp.exe" shown as "exe.png") or break it
    **{c: f"\\u{c:04x}" for c in (*range(0x202A, 0x202F), *range(0x2066, 0x206A), 0x2028, 0x2029, 0x200E, 0x200F)},
    **{c: f"\\u{c:04x}" for c in range(0xD800, 0xE000)},
    **{c: f"\\x{c - 0xDC00:02x}" for c in range(0xDC80, 0xDD00)},
}


def printable_text(text: str) -> str:
    """`text` for human-readable output (`rift add` and `rift watch` list file names): control characters and
    undecodable bytes as \\xNN (the byte, as `os.fsencode(name).decode("utf-8", "backslashreplace")` shows it),
    so a name cannot colour the terminal or split its line; letters, accents, CJK and emoji are kept. JSON
    output keeps `printable`: json.dumps escapes control characters itself."""
    return text.translate(_TEXT_ESCAPES)


_DOCUMENT_ESCAPES = {c: e for c, e in _TEXT_ESCAPES.items() if c not in (0x09, 0x0A)}


def printable_document(text: str) -> str:
    """A stored document's text for the terminal (`rift get`): as `printable_text`, but its tabs and line
    breaks kept (a Windows line end read as one)."""
    return text.replace("\r\n", "\n").translate(_DOCUMENT_ESCAPES)


@dataclass
class FileResult:
    path: str
    status: Status
    reason: str | None = None
    chunks: int = 0


@dataclass
class SyncReport:
    collection: str
    files: list[FileResult] = field(default_factory=list)

    def counts(self) -> dict[str, int]:
        out = {s: 0 for s in ("added", "updated", "unchanged", "skipped", "removed")}
        for f in self.files:
            out[f.status] += 1
        return out


def _unsupported_reason(path: Path) -> str:
    try:
        head, _ = read_file(path, SNIFF_BYTES, head_only=True)
    except (OSError, ValueError):
        head = b""
    if looks_binary(head):
        return "binary file (contains NUL bytes)"
    return f"unsupported file type {path.suffix or path.name!r}"


# (files done, files in all, what is being done): files done may be fractional while a batch is embedded.
Progress = Callable[[float, int, str], None]
REPORT_EVERY_S = 1.0  # between reports while files are read (and a cancel is looked for)
# A stored file that reads empty and changed this recently is taken for one being saved in place (an editor's
# truncate-then-write, a shell's `>`): skipped as transient, so its document and the keys an agent set stay;
# `rift watch` syncs it again once it settles. Emptied for good, it goes at the first sync after that.
SETTLING_S = 2.0
SETTLING = "empty and just changed (a save in progress?): its document is kept until the file settles"


class _Sync:
    def __init__(
        self,
        engine: Any,
        collection: str,
        max_file_bytes: int,
        progress: Progress | None,
        policy: PathPolicy | None = None,
    ) -> None:
        self.engine = engine
        self.policy = policy
        self.collection = collection
        self.max_file_bytes = max_file_bytes
        self.max_chars = engine.settings.max_document_chars
        self.progress = progress
        self.read = 0  # files examined so far, of `total`
        self.total = 0
        self.reported = 0.0  # the progress last reported (in files): what is reported next never goes back
        self.last_report = time.monotonic()
        self.report = SyncReport(collection)
        self.keep: set[str] = set()  # documents that must survive pruning
        # Documents this run stored with new text (added, or updated): a pruned file whose whole text one of
        # them holds was renamed or moved to it, and its logged searches follow (Engine.delete_documents).
        self.written: list[str] = []
        # Only the stored metadata changes (same bytes and a new mtime, or a newer extractor's same text): why.
        self.refreshed: dict[str, str] = {}
        self.unread: list[
            Path
        ] = []  # could not be read this time: their documents (and those under them) stay
        self.skipped: dict[str, FileResult] = {}
        self.batch: list[DocumentInput] = []
        self.batch_chars = 0
        self.existing: dict[str, dict[str, Any]] = {}

    def skip(self, path: Path | str, reason: str, transient: bool = False) -> None:
        result = FileResult(str(path), "skipped", reason)
        self.report.files.append(result)
        self.skipped[str(path)] = result
        if transient:
            self.unread.append(Path(path))

    def one(self, path: Path, via: Path | None = None) -> None:
        key = str(path)
        kind = classify(path)
        if kind is None:
            self.skip(path, _unsupported_reason(path))
            return
        if len(key) > MAX_ID_CHARS:
            self.skip(path, f"path is longer than {MAX_ID_CHARS} characters (the document id limit)")
            return
        if not encodable(key) or (via is not None and not encodable(str(via))):
            self.skip(path, "its path is not valid UTF-8 (a document's id and source are text): rename it to store it")
            return
        old = self.existing.get(key)
        file_type, family = kind
        # Made by an earlier extractor: extract it again, whatever its bytes (the keys an agent set stay, as for a
        # touched file).
        reextract = bool(old) and old.get("extractor", 1) != extractor_version(family)
        try:
            info = path.stat()
        except OSError as exc:
            self.skip(path, f"cannot read file: {exc.strerror or exc}", transient=True)
            return
        if old and old.get("via") != (str(via) if via else None):
            old = {**old, "mtime": None}  # reached another way now: refresh the stored metadata
        if old and not reextract and old.get("size") == info.st_size and old.get("mtime") == info.st_mtime:
            self.unchanged(key)
            return
        try:
            data, info = read_file(path, self.max_file_bytes, self.policy)
        except ValueError as exc:
            self.skip(path, str(exc))
            return
        except OSError as exc:
            self.skip(path, f"cannot read file: {exc.strerror or exc}", transient=True)
            return
        digest = hashlib.sha256(data).hexdigest()
        same_bytes = bool(old) and old.get("sha256") == digest and old.get("size") == info.st_size
        if same_bytes and not reextract and old.get("mtime") == info.st_mtime:
            self.unchanged(key)
            return
        if same_bytes and not reextract:
            # A touch or a checkout: store the new mtime, so later syncs skip the file by its stat again and
            # mtime filters see it. The engine keeps every chunk's vector (same text); reported as unchanged.
            self.refreshed[key] = "same bytes, new mtime: metadata refreshed"
        try:
            extracted = extract(path, data, family, self.max_chars)
        except SkipFile as exc:
            if old and not data.strip() and time.time() - info.st_mtime < SETTLING_S:
                # (caught between a truncate and the write after it, it was removed and added back, losing the
                # keys an agent had set; found by helper BL)
                self.skip(path, SETTLING, transient=True)
                return
            self.skip(path, str(exc))
            return
        except Exception as exc:  # a parser's bug on one odd file must not abort the whole sync
            log.warning("cannot extract text from %s: %s: %s", path, type(exc).__name__, exc)
            log.debug("extractor failure on %s", path, exc_info=True)  # the traceback, with -v
            self.skip(path, f"cannot extract text: {type(exc).__name__}: {exc}"[:300])
            return
        if reextract and same_bytes and self._reads_as_stored(key, old, extracted, path):
            # The newer extractor reads this file as the old one did (most files after a decoding fix): relabel
            # it (its chunks keep their vectors) and do not report it as changed.
            self.refreshed[key] = "read again by a newer extractor: same text"
        if len(extracted.text) > self.max_chars:
            self.skip(
                path,
                f"extracted text is {len(extracted.text):,} characters; the limit is {self.max_chars:,} "
                "(max_document_chars)",
            )
            return
        metadata = {
            **extracted.metadata,
            "source": key,
            "name": path.name,
            "file_type": file_type,
            "size": info.st_size,
            "mtime": info.st_mtime,
            "title": extracted.title or path.name,
            "sha256": digest,
            "extractor": extractor_version(family),
        }
        if via is not None:
            metadata["via"] = str(via)
        if same_bytes:  # keys an agent set with update_metadata stay while the file's content does
            metadata = {k: v for k, v in old.items() if k not in synced_file_keys(key, old)} | metadata
        doc = DocumentInput(text=extracted.text, id=key, metadata=metadata)
        try:
            self.engine.validate_documents([doc])
        except RiftError as exc:
            self.skip(path, str(exc).replace("documents[0].", "file "))
            return
        if self.batch_chars + len(extracted.text) > self.engine.settings.max_chars_per_call:
            self.flush()  # one add_documents call must stay within the per-call budget
        self.batch.append(doc)
        self.batch_chars += len(extracted.text)
        if len(self.batch) >= min(BATCH_DOCS, self.engine.settings.max_documents_per_call) or (
            self.batch_chars >= BATCH_CHARS
        ):
            self.flush()

    def _reads_as_stored(self, key: str, old: dict[str, Any], extracted: Any, path: Path) -> bool:
        """Whether `extracted` gives the stored document's text, title and extracted metadata (front matter, a
        PDF's page count), not only its text: a decoding fix may change only a front-matter value or a title."""
        if (extracted.title or path.name) != old.get("title"):
            return False
        if any(old.get(k) != v for k, v in extracted.metadata.items()):
            return False
        stored = self.engine.state.document(self.collection, key)
        return stored is not None and stored[1] == extracted.text

    def left_out(self, key: str) -> bool:
        """Whether the file `key`, which has a stored document, was skipped this time for good (not a read
        error that may pass)."""
        return key in self.skipped and Path(key) not in self.unread and self.existing.get(key, {}).get("source") == key

    def unchanged(self, key: str) -> None:
        self.report.files.append(FileResult(key, "unchanged"))
        self.keep.add(key)

    def tell(self, files: float, message: str) -> None:
        """Report progress (also where a cancelled request stops the sync: before the batch it reads commits)."""
        if self.progress is not None:
            self.reported, self.last_report = max(self.reported, files), time.monotonic()
            self.progress(self.reported, self.total, message)

    def embedding(self) -> Callable[[int, int], None] | None:
        """The engine's progress while it embeds a batch, as progress in files: a batch of long files can take
        minutes, through which a client must hear that the call is alive (and may cancel it)."""
        if self.progress is None:
            return None
        start, files = self.reported, len(self.batch)

        def report(done: int, total: int) -> None:
            at = start + (self.read - start) * (done / total if total else 1.0)
            self.tell(at, f"embedding {files} files: {done}/{total} chunks")

        return report

    def flush(self) -> None:
        if not self.batch:
            return
        for status in self.engine.add_documents(self.collection, self.batch, self.embedding()):
            if status.id in self.refreshed:
                self.report.files.append(FileResult(status.id, "unchanged", self.refreshed[status.id]))
            else:
                self.report.files.append(FileResult(status.id, status.status, chunks=status.chunks))
                if status.status in ("added", "updated"):
                    self.written.append(status.id)
            self.keep.add(status.id)
        self.batch = []
        self.batch_chars = 0

    def vanished_under(
        self, gone: Path, recursive: bool, pattern: pathspec.PathSpec | None, doc_id: str
    ) -> bool:
        """Whether `doc_id` is the file document of `gone` (a path that no longer exists), or of a file in
        that folder within the sync's scope."""
        meta = self.existing[doc_id]
        if doc_id != meta.get("source"):
            return False
        path = _place(doc_id, meta)
        if path == gone:
            return True
        if not path.is_relative_to(gone) or (not recursive and path.parent != gone):
            return False
        return pattern is None or pattern.match_file(path.relative_to(gone).as_posix())

    def replaced_by_files(
        self, files: Collection[Path], recursive: bool, pattern: pathspec.PathSpec | None
    ) -> list[str]:
        """The documents of what the named `files` replaced: a synced folder's files (none can exist any more),
        or a file reached through a symlink that is now this file. One pass over the stored documents, each
        looked up by its place and the folders above it (a pass per named file took 80 s for 100 files named
        in a collection of 100,000 documents; helper DH)."""
        if not files:
            return []
        doomed = []
        for doc_id, meta in self.existing.items():
            if doc_id != meta.get("source"):
                continue
            place = _place(doc_id, meta)
            for at in (place, *place.parents):
                if at in files:
                    if doc_id != str(at) and self.vanished_under(at, recursive, pattern, doc_id):
                        doomed.append(doc_id)
                    break
        return doomed

    def prune(self, folder: Path, recursive: bool, pattern: pathspec.PathSpec | None) -> list[str]:
        doomed = []
        for doc_id, meta in self.existing.items():
            if doc_id != meta.get("source") or doc_id in self.keep:
                continue  # not a file document, or a file that is still there
            path = _place(doc_id, meta)
            if not path.is_relative_to(folder):
                continue  # (a document at the folder's own path was a file that is now this folder: gone)
            if any(path.is_relative_to(unread) for unread in self.unread):
                continue  # that file, or a folder above it, could not be read this time
            if not recursive and path.parent != folder:
                continue
            if pattern is not None and not pattern.match_file(path.relative_to(folder).as_posix()):
                continue
            doomed.append(doc_id)
        return doomed


def _place(doc_id: str, meta: dict[str, Any]) -> Path:
    """Where a file document was found: the symlink it was reached through, else its own path."""
    via = meta.get("via")
    return Path(via) if isinstance(via, str) and via else Path(doc_id)


def sync_paths(
    engine: Any,
    collection: str,
    paths: Sequence[str],
    policy: PathPolicy,
    *,
    recursive: bool = True,
    glob: str | Sequence[str] | None = None,
    prune: bool = False,
    max_file_bytes: int | None = None,
    progress: Progress | None = None,
    first_index: int = 0,
    report: SyncReport | None = None,
    named_elsewhere: Collection[Path] = (),
) -> SyncReport:
    """Ingest files and folders into `collection` (created if needed); see the module docstring.
    `first_index`: where `paths` starts in the caller's list (an error names paths[i] by that list).
    `report`: the report to fill (returned), file by file as batches commit, so a caller whose sync failed or
    was cancelled part way still knows which documents it stored.
    `named_elsewhere`: files (resolved) that the caller names in its other calls of one command (the CLI's
    groups of MAX_PATHS paths): a folder walk here leaves them to their own call, as it does the files named in
    this one (neither read nor reported here, and never pruned by it)."""
    check_collection_name(collection)
    if isinstance(paths, str) or not isinstance(paths, Sequence) or not paths:
        raise RiftError("paths must be a non-empty list of files or folders")
    if len(paths) > MAX_PATHS:
        raise RiftError(f"paths has {len(paths)} items; the limit per call is {MAX_PATHS}")
    pattern = compile_glob(glob)
    targets: list[Path] = []
    vanished: dict[Path, NotFoundError] = {}  # with prune: a folder (or file) deleted since the last sync
    for i, raw in enumerate(paths):
        try:
            targets.append(policy.check(raw, f"paths[{first_index + i}]"))
        except NotFoundError as exc:
            if not prune:
                raise
            vanished[policy.vanished(raw, f"paths[{first_index + i}]")] = exc
    targets = list(dict.fromkeys(targets))

    run = _Sync(engine, collection, max_file_bytes or engine.settings.max_file_bytes, progress, policy)
    if report is not None:
        run.report = report
    # With a shared Chroma server, compare the files with what every process stored, not this one's last
    # view: a document deleted elsewhere read as unchanged and stayed gone, and metadata an agent had set
    # elsewhere was merged away.
    engine.follow_others(force=True)
    if collection in engine.collection_names():
        run.existing = dict(engine.state.list_documents(collection, -1, 0))
    gone_docs: list[str] = []
    for path, missing in vanished.items():
        under = [doc_id for doc_id in run.existing if run.vanished_under(path, recursive, pattern, doc_id)]
        if not under:
            raise missing  # nothing of it was ever synced here: a typo, not a deletion
        gone_docs += under
    created = engine.create_collection(collection, implicit=True)  # (dropped at the next start if killed unwritten)
    try:
        # rift's own files (the query log, registry, SQLite state) are never documents, even in a synced folder.
        own = Path(engine.settings.data_dir).resolve()
        # file -> the symlink it was reached through (None: directly)
        candidates: dict[Path, Path | None] = {}
        # Files named in the call: what a folder walk also says of one (found, or left out by .gitignore or
        # the glob, which do not apply to it) is not its status: it gets one entry in the report, from its own
        # reading, and prune never takes a walk's skip of it for the file being left out.
        named = {target for target in targets if target.is_file()}
        not_walked = named | set(named_elsewhere)
        run.keep.update(str(path) for path in named_elsewhere)  # their own call reads (and may prune) them
        for target in targets:
            if target in named:
                if target.is_relative_to(own):
                    run.skip(target, "one of rift's own files (in its data dir)")
                    continue
                candidates[target] = None  # named explicitly: no glob or .gitignore applies
                continue
            for item in walk(target, policy, recursive, pattern):
                if item.path in not_walked:
                    continue
                if isinstance(item, Found):
                    if not item.path.is_relative_to(own):
                        # Found directly somewhere (in this call, or stored so by an earlier one), it is that
                        # file's document, whatever links to it: a link's removal must not prune it.
                        stored = run.existing.get(str(item.path))
                        direct = stored is not None and stored.get("source") == str(item.path) and not stored.get("via")
                        via = candidates.get(item.path, item.via) if item.via and not direct else None
                        candidates[item.path] = via
                elif isinstance(item, Skipped):
                    run.skip(item.path, item.reason, item.transient)

        run.total = total = len(candidates)
        for done, (path, via) in enumerate(candidates.items(), 1):
            run.read = done
            run.one(path, via)
            if progress is not None and (done % BATCH_DOCS == 0 or done == total):
                run.flush()
                run.tell(done, f"reading files: {done}/{total}")
            elif progress is not None and time.monotonic() - run.last_report >= REPORT_EVERY_S:
                run.tell(done, f"reading files: {done}/{total}")  # (long PDFs: the call is alive)
        run.flush()

        if not prune:
            for key, result in run.skipped.items():
                if run.left_out(key):
                    result.reason = f"{result.reason}; its earlier version stays indexed (prune removes it)"
        if prune:
            doomed: list[str] = []
            files: set[Path] = set()
            for target in targets:
                if target.is_dir():
                    doomed.extend(run.prune(target, recursive, pattern))
                else:
                    if run.left_out(str(target)):
                        # Named itself and now left out for good (empty, too large, binary): as a folder's would be.
                        doomed.append(str(target))
                    files.add(target)
            doomed.extend(run.replaced_by_files(files, recursive, pattern))
            doomed.extend(gone_docs)
            # A document this call read and stored (or found unchanged) is a file that is there: no prune of
            # another path takes it, though its stored `via` names a link that is gone or a file now (the
            # link replaced by a copy, or deleted, with the file it led to named beside it; helper DH).
            doomed = [doc_id for doc_id in dict.fromkeys(doomed) if doc_id not in run.keep]
            if doomed:
                deleted, _ = engine.delete_documents(collection, doomed, rename_targets=run.written)
                for doc_id in deleted:
                    earlier = run.skipped.get(doc_id)
                    if earlier is not None:
                        earlier.status = "removed"
                        earlier.reason = f"{earlier.reason}; its document was removed"
                    else:
                        via = run.existing.get(doc_id, {}).get("via")
                        try:
                            gone = not Path(doc_id).is_file()
                            became_folder = gone and Path(doc_id).is_dir()
                            unlinked = bool(via) and not Path(via).is_symlink()
                        except OSError:  # is_file() raises on EACCES: it is there, only left out
                            gone = unlinked = became_folder = False
                        if became_folder:
                            reason = "replaced by a folder of the same name"
                        elif gone:
                            reason = "file no longer exists"
                        elif unlinked:
                            reason = f"the symlink it was reached through ({via}) is gone"
                        else:
                            reason = "left out of the folder now (e.g. .gitignore)"
                        run.report.files.append(FileResult(doc_id, "removed", reason))
        # Finished: it stays, even with nothing stored (an empty folder); so does one that another call (a sync
        # still reading) made, as this sync's caller was told it synced into it.
        engine.settle_created(collection)
        return run.report
    except BaseException:
        # A sync that made the collection and stopped (cancelled, failed) before committing any document
        # leaves no empty collection behind; batches it committed stay, as a re-run skips them.
        if created:
            engine.drop_collection_if_empty(collection)
        raise
