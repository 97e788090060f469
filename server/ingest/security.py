"""Which paths rift may read. The MCP server reads only under `allowed_roots` (none until the user sets them);
the CLI reads whatever its user can. A requested path is checked as written ('..' is refused outright), then
resolved (every symlink followed) and the result must lie inside a root, so neither a symlink nor '..' can lead
out. Files are opened with O_NOFOLLOW so a file swapped for a symlink after the check is not followed."""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from pathlib import Path, PurePath

from server.config import Settings
from server.errors import NotFoundError, RiftError

NO_ROOTS = (
    "reading files is disabled until allowed_roots is set: add the folders rift may read to allowed_roots in "
    "config.toml or RIFT_ALLOWED_ROOTS='[\"/path/to/notes\"]', then restart the server"
)


@dataclass(frozen=True)
class PathPolicy:
    roots: tuple[Path, ...] | None  # None = unrestricted (the CLI)

    @classmethod
    def for_server(cls, settings: Settings) -> PathPolicy:
        return cls(tuple(Path(r).resolve() for r in settings.allowed_roots))

    @classmethod
    def unrestricted(cls) -> PathPolicy:
        return cls(None)

    def allows(self, resolved: Path) -> bool:
        if self.roots is None:
            return True
        return any(resolved == root or resolved.is_relative_to(root) for root in self.roots)

    def describe_roots(self) -> str:
        return "any path" if self.roots is None else ", ".join(str(r) for r in self.roots) or "none"

    def vanished(self, raw: str, where: str) -> Path:
        """For pruning: the absolute path a file or folder that no longer exists had, when the caller may
        read there (the same rules as `check`, which the caller ran first and which raised NotFoundError)."""
        path = _expand_user(raw, where).resolve(strict=False)
        if not self.allows(path):
            raise RiftError(f"{where} {raw!r} is outside the allowed roots ({self.describe_roots()})")
        return path

    def check(self, raw: object, where: str) -> Path:
        """The resolved path of an existing file or folder the caller may read; RiftError naming `where`
        and the reason otherwise."""
        if not isinstance(raw, str) or not raw.strip():
            raise RiftError(f"{where} must be a non-empty path string")
        if "\x00" in raw:
            raise RiftError(f"{where} contains a NUL character")
        if self.roots is not None and not self.roots:
            raise RiftError(NO_ROOTS)
        path = _expand_user(raw, where)
        if self.roots is not None:
            if not path.is_absolute():
                raise RiftError(
                    f"{where} {raw!r} must be an absolute path (allowed roots: {self.describe_roots()})"
                )
            if ".." in PurePath(raw).parts:
                raise RiftError(
                    f"{where} {raw!r} must not contain '..'; give the folder's plain absolute path"
                )
        try:
            resolved = path.resolve(strict=True)
        except (OSError, RuntimeError) as exc:
            # Outside the roots, whether a path exists (or why it cannot be read) is not the caller's to learn.
            # (Resolved as far as it exists: roots are resolved, and a symlink on the way may lead out.)
            if not self.allows(_resolve_lenient(path)):
                raise RiftError(f"{where} {raw!r} is outside the allowed roots ({self.describe_roots()})") from None
            if isinstance(exc, FileNotFoundError):
                raise NotFoundError(f"{where} {raw!r} does not exist") from None
            if isinstance(exc, RuntimeError):
                raise RiftError(f"{where} {raw!r} is a symlink loop") from None
            raise RiftError(f"{where} {raw!r} cannot be read: {exc.strerror or exc}") from None
        if not self.allows(resolved):
            lexical = Path(os.path.normpath(path))
            if self.allows(lexical):
                raise RiftError(
                    f"{where} {raw!r} is a symlink that leads to {str(resolved)!r}, outside the allowed roots "
                    f"({self.describe_roots()})"
                )
            raise RiftError(f"{where} {raw!r} is outside the allowed roots ({self.describe_roots()})")
        if not (resolved.is_file() or resolved.is_dir()):
            raise RiftError(f"{where} {raw!r} is not a regular file or folder")
        return resolved


def read_file(
    path: Path, max_bytes: int, policy: PathPolicy | None = None, head_only: bool = False
) -> tuple[bytes, os.stat_result]:
    """A regular file's bytes and stat, read without following a symlink at its last component; OSError, or
    ValueError with the reason, on refusal. With `policy`, the opened file itself must lie inside its roots: a
    folder on the way swapped for a symlink after the walk checked it (O_NOFOLLOW guards the last component
    only) is refused. `head_only` reads the first `max_bytes` of a file of any size."""
    flags = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0)
    fd = os.open(path, flags)
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise ValueError("not a regular file")
        if policy is not None and policy.roots is not None:
            opened = _opened_path(fd, path)
            if not policy.allows(opened):
                raise ValueError(f"the file opened is {str(opened)!r}, outside the allowed roots")
        if head_only:
            return os.read(fd, max_bytes), info
        if info.st_size > max_bytes:
            raise ValueError(f"file is {info.st_size:,} bytes; the limit is {max_bytes:,} (max_file_bytes)")
        with os.fdopen(fd, "rb", closefd=True) as handle:
            fd = -1
            data = handle.read(max_bytes + 1)
    finally:
        if fd >= 0:
            os.close(fd)
    if len(data) > max_bytes:
        raise ValueError(f"file is over {max_bytes:,} bytes (max_file_bytes)")
    return data, info


def _opened_path(fd: int, path: Path) -> Path:
    """Where an open file really is: the kernel's own path for the descriptor (Linux /proc, macOS F_GETPATH),
    else the path resolved again and matched to the descriptor's device and inode."""
    proc = Path(f"/proc/self/fd/{fd}")
    try:
        return Path(os.readlink(proc))
    except OSError:
        pass
    try:
        import fcntl
    except ImportError:  # Windows
        fcntl = None  # type: ignore[assignment]
    getpath = getattr(fcntl, "F_GETPATH", None)
    if getpath is not None:
        raw = fcntl.fcntl(fd, getpath, b"\0" * 1024)
        return Path(os.fsdecode(raw.rstrip(b"\0")))
    resolved = Path(path).resolve()
    here, there = os.fstat(fd), os.stat(resolved)
    if (here.st_dev, here.st_ino) != (there.st_dev, there.st_ino):
        raise ValueError("the file changed while it was opened")
    return resolved


def _resolve_lenient(path: Path) -> Path:
    """`path` with the symlinks of its existing part resolved; its plain normal form on a symlink loop."""
    try:
        return path.resolve(strict=False)
    except (OSError, RuntimeError):
        return Path(os.path.normpath(path))


def _expand_user(raw: str, where: str) -> Path:
    """`~` and `~user` expanded; an unknown user is named rather than raised as Python's RuntimeError."""
    try:
        return Path(raw).expanduser()
    except RuntimeError:
        raise RiftError(f"{where} {raw!r}: cannot expand '~' (no such user, or no home directory)") from None
