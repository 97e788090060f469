"""Folder walking: .gitignore rules (nested files, and those above the folder up to its repository root, or
up to the filesystem root outside a repository; none from outside the allowed roots; an unreadable one
leaves out what it governs), an optional gitignore-style glob, symlinks checked against the allowed roots, VCS
folders left out."""

from __future__ import annotations

import functools
import logging
import os
import re
import stat
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import pathspec

from server.errors import RiftError
from server.ingest.security import PathPolicy

log = logging.getLogger(__name__)
VCS_DIRS = frozenset({".git", ".hg", ".svn"})
MAX_GLOBS = 32
# os.walk recurses once per level before Python 3.12: a tree nested ~1,000 deep raised RecursionError and lost
# the whole sync. Deeper folders are reported and left out (kept as transient: pruning never removes their
# documents).
MAX_FOLDER_DEPTH = 100
# An unreadable .gitignore may be keeping secrets out: what it governs is left out (transient: pruning keeps
# its documents) rather than guessed at.
UNKNOWN_RULES = "the folder is left out, as the rules that apply to it are unknown"


@dataclass(frozen=True)
class Found:
    path: Path  # resolved: no symlink left in it
    via: Path | None = None  # the symlink in the folder it was reached through, if any


@dataclass(frozen=True)
class Skipped:
    path: Path
    reason: str
    transient: bool = False  # an error that may pass; pruning keeps such a file's document


def compile_glob(glob: str | Sequence[str] | None, where: str = "glob") -> pathspec.PathSpec | None:
    """Gitignore-style patterns matched against paths relative to the folder: '*.md' matches at any depth,
    'docs/**/*.py' from the folder down."""
    if glob is None:
        return None
    patterns = [glob] if isinstance(glob, str) else list(glob)
    if not patterns or len(patterns) > MAX_GLOBS:
        raise RiftError(f"{where} must be a pattern or a list of 1-{MAX_GLOBS} patterns")
    for i, p in enumerate(patterns):
        if not isinstance(p, str) or not p.strip() or "\x00" in p:
            raise RiftError(f"{where}[{i}] must be a non-empty pattern string")
    try:
        spec = pathspec.GitIgnoreSpec.from_lines(patterns)
    except Exception as exc:  # pathspec raises its own error types for malformed patterns
        raise RiftError(f"{where}: invalid pattern: {exc}") from None
    if all(compiled.include is False for compiled in spec.patterns):
        raise RiftError(
            f"{where} has only exclusions ('!…'), so it matches no file; start with what to include, "
            "e.g. ['*', '!*.log']"
        )
    for i, compiled in enumerate(spec.patterns):
        # gitignore syntax reads such a line as a comment or as nothing at all, so it would match no file.
        if compiled.include is None:
            raise RiftError(
                f"{where}[{i}] {patterns[i]!r} matches nothing in gitignore syntax (an unclosed '[', or a "
                "'#' comment); escape a literal character with a backslash, e.g. '\\[' or '\\#'"
            )
    return spec


class IgnoreRules:
    """.gitignore files by folder; a deeper file's matching rule overrides a shallower one, as in git."""

    def __init__(self) -> None:
        self._specs: dict[Path, pathspec.GitIgnoreSpec] = {}
        self._loaded: dict[Path, str | None] = {}

    def load(self, folder: Path) -> str | None:
        """Reads `folder`'s .gitignore, if any; returns why it cannot be read (its rules are then unknown, and
        the caller must leave out what they govern rather than guess: they may keep secrets out)."""
        if folder not in self._loaded:
            self._loaded[folder] = self._read(folder)
        return self._loaded[folder]

    def _read(self, folder: Path) -> str | None:
        rules = folder / ".gitignore"
        try:
            info = rules.stat()
        except (FileNotFoundError, NotADirectoryError):
            return None  # no .gitignore (or a dangling symlink named so): no rules
        except OSError as exc:
            return f"cannot read {rules}: {exc.strerror or exc}"
        if not stat.S_ISREG(info.st_mode):  # (a FIFO or a device would block the read forever)
            return f"cannot read {rules}: not a regular file"
        try:
            lines = rules.read_text(encoding="utf-8", errors="replace").splitlines()
        except OSError as exc:
            return f"cannot read {rules}: {exc.strerror or exc}"
        self._parse(folder, lines)
        return None

    def _parse(self, folder: Path, lines: list[str]) -> None:
        try:
            self._specs[folder] = pathspec.GitIgnoreSpec.from_lines(lines)
        except Exception:
            # git skips a line it cannot read and keeps the others; so must we, or one typo un-ignores secrets.
            good = []
            for number, line in enumerate(lines, 1):
                if _parses(line):
                    good.append(line)
                else:
                    log.warning(
                        "%s line %d ignored: not a valid pattern: %r", folder / ".gitignore", number, line
                    )
            self._specs[folder] = pathspec.GitIgnoreSpec.from_lines(good)

    def ignored(self, path: Path, is_dir: bool) -> bool:
        result = False
        for folder in reversed(path.parents):  # shallowest first, so deeper rules win
            spec = self._specs.get(folder)
            if spec is None:
                continue
            rel = path.relative_to(folder).as_posix()
            verdict = _verdict(spec, rel, is_dir)
            if verdict is not None:
                result = verdict
        return result


def _parses(line: str) -> bool:
    try:
        pathspec.GitIgnoreSpec.from_lines([line])
    except Exception:
        return False
    return True


def _verdict(spec: pathspec.GitIgnoreSpec, rel: str, is_dir: bool) -> bool | None:
    """Whether `spec`'s rules exclude the file or folder `rel` itself (None: no rule speaks of it); the last
    rule that matches wins. As in git, a rule matches a path by the path's own name, never through a parent
    folder: "build" or "!build" says nothing about "build/notes.md", which only the walk's pruning of an
    excluded "build" folder decides. (pathspec's own verdict also counts a rule that matched a parent
    folder, so "!*/" or "!build" re-included files that other rules exclude.)"""
    verdict = None
    for pattern in spec.patterns:
        if pattern.include is None or pattern.regex is None:
            continue
        regex = pattern.regex
        body = pattern.pattern.rstrip().removeprefix("!")
        if body.endswith("/**/"):
            # Folders strictly inside: pathspec compiles "keep/**/" as "keep/", which also names keep itself.
            if not is_dir:
                continue
            regex = _compiled(body[:-1])
        if _names(regex, rel, is_dir):
            verdict = pattern.include
    return verdict


@functools.lru_cache(maxsize=256)
def _compiled(rule: str) -> re.Pattern[str]:
    regex = pathspec.patterns.GitWildMatchPattern(rule).regex
    assert regex is not None
    return regex


def _names(regex: re.Pattern[str], rel: str, is_dir: bool) -> bool:
    """Whether a compiled gitignore rule matches `rel` itself. pathspec marks a match that ended at a folder
    separator with the group "ps_d": that is a match of a parent folder, unless it is the trailing "/" put
    after a folder's own path (which rules ending in "/" require)."""
    text = rel + "/" if is_dir else rel
    folder_group = "ps_d" in regex.groupindex
    pos = 0
    while pos <= len(text) and (m := regex.search(text, pos)) is not None:
        end_of_folder = m.end("ps_d") if folder_group else -1
        if end_of_folder == -1:
            # A whole-name match ("$"), or a rule about everything inside a folder ("docs/**"), which must
            # not get its match from the "/" added after a folder's own path ("docs/" is not inside docs).
            if not is_dir or m.end() <= len(rel):
                return True
        elif is_dir and end_of_folder == len(text):
            return True
        pos = m.start() + 1  # an unanchored rule may also match further along
    return False


def _load_ancestors(rules: IgnoreRules, folder: Path, policy: PathPolicy) -> str | None:
    """.gitignore files above `folder` that apply to its files: up to its repository root (the nearest folder
    holding .git), or up to the filesystem root outside any repository, so that a file's verdict does not
    depend on which folder above it is synced. Never from a folder outside the allowed roots. Returns why one
    of them cannot be read, if so."""
    if _holds_git(folder):
        return None  # the folder is its own repository root: as in git, nothing above applies
    chain: list[Path] = []
    for parent in folder.parents:
        if not policy.allows(parent):
            break  # those inside the roots still apply (a repository root further up is not ours to read)
        chain.append(parent)
        if _holds_git(parent):
            break
    for ancestor in reversed(chain):
        if (why := rules.load(ancestor)) is not None:
            return why
    return None


def _holds_git(folder: Path) -> bool:
    try:
        return (folder / ".git").exists()
    except OSError:  # a folder that cannot be searched: the walk reports it; the rules above still apply
        return False


def _symlink_target(path: Path, policy: PathPolicy) -> Path | Skipped:
    try:
        target = path.resolve(strict=True)
    except (OSError, RuntimeError):
        return Skipped(path, "broken or looping symlink")
    if not policy.allows(target):
        return Skipped(path, f"symlink leads outside the allowed roots (to {target})")
    return target


def _excluded_here(link: Path, target: Path, folder: Path, rules: IgnoreRules) -> Skipped | None:
    """Why a symlink's target inside `folder` is left out, or None: a link must not let in a file that
    .gitignore keeps out. `rules` already hold those above `folder` (walk loads them first); folders not walked
    yet are loaded here."""
    if not target.is_relative_to(folder):
        return None
    for parent in reversed(target.parents):
        if parent.is_relative_to(folder):
            if (why := rules.load(parent)) is not None:
                return Skipped(link, f"symlink to a file whose folder's rules are unknown: {why}", True)
            if parent != folder and rules.ignored(parent, is_dir=True):
                return Skipped(link, "symlink to a file in a folder ignored by .gitignore")
    if rules.ignored(target, is_dir=False):
        return Skipped(link, "symlink to a file ignored by .gitignore")
    return None


def _out_of_glob(target: Path, folder: Path, pattern: pathspec.PathSpec | None) -> bool:
    """Whether a symlink's target inside `folder` is one the glob does not match: a link must not let it in."""
    if pattern is None or not target.is_relative_to(folder):
        return False
    return not pattern.match_file(target.relative_to(folder).as_posix())


def walk(
    folder: Path, policy: PathPolicy, recursive: bool = True, pattern: pathspec.PathSpec | None = None
) -> Iterator[Found | Skipped]:
    """Every file under `folder` (already resolved and allowed) that is a candidate for ingestion, in a stable
    order, and every file or folder left out for a reason worth reporting. Files the glob does not match are
    out of scope and not reported."""
    rules = IgnoreRules()
    if (why := _load_ancestors(rules, folder, policy)) is not None:
        yield Skipped(folder, f"{why}; {UNKNOWN_RULES}", True)
        return
    errors: list[OSError] = []
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=False, onerror=errors.append):
        here = Path(dirpath)
        for err in errors:
            yield Skipped(Path(err.filename or here), f"cannot read folder: {err.strerror or err}", True)
        errors.clear()
        if (why := rules.load(here)) is not None:
            # Transient: pruning keeps the documents under it, as for a folder that cannot be listed.
            yield Skipped(here, f"{why}; {UNKNOWN_RULES}", True)
            dirnames.clear()
            continue
        keep: list[str] = []
        too_deep = len(here.relative_to(folder).parts) >= MAX_FOLDER_DEPTH
        for name in sorted(dirnames):
            sub = here / name
            if name in VCS_DIRS or not recursive:
                continue
            if too_deep:
                yield Skipped(sub, f"folder nested more than {MAX_FOLDER_DEPTH} levels deep", True)
                continue
            # A folder listed but not entered (no x permission) cannot stat its entries.
            try:
                linked = sub.is_symlink()
            except OSError as exc:
                yield Skipped(sub, f"cannot read folder: {exc.strerror or exc}", True)
                continue
            if linked:
                target = _symlink_target(sub, policy)
                yield target if isinstance(target, Skipped) else Skipped(sub, "symlinked folder not followed")
            elif rules.ignored(sub, is_dir=True):
                yield Skipped(sub, "ignored by .gitignore")
            else:
                keep.append(name)
        dirnames[:] = keep
        for name in sorted(filenames):
            path = here / name
            if pattern is not None and not pattern.match_file(path.relative_to(folder).as_posix()):
                continue
            if rules.ignored(path, is_dir=False):
                yield Skipped(path, "ignored by .gitignore")
                continue
            try:
                info = path.lstat()
            except OSError as exc:
                yield Skipped(path, f"cannot read file: {exc.strerror or exc}", True)
                continue
            if stat.S_ISLNK(info.st_mode):
                target = _symlink_target(path, policy)
                if isinstance(target, Skipped):
                    yield target
                elif not target.is_file():
                    yield Skipped(path, "symlink to something that is not a regular file")
                elif _out_of_glob(target, folder, pattern):
                    continue  # out of scope, as the file itself would be: not reported
                elif (excluded := _excluded_here(path, target, folder, rules)) is not None:
                    yield excluded
                else:
                    yield Found(target, via=path)
            elif stat.S_ISREG(info.st_mode):
                yield Found(path)
            else:
                yield Skipped(path, "not a regular file")
    # os.walk reports a folder it cannot list when it tries to enter it: after the loop for the last one.
    for err in errors:
        yield Skipped(Path(err.filename or folder), f"cannot read folder: {err.strerror or err}", True)
