"""add_paths: ingest files and folders (Markdown, text, PDF, HTML, reStructuredText, source code)."""

from __future__ import annotations

from typing import Annotated, Literal

from mcp.server.mcpserver import Context
from mcp.server.mcpserver.exceptions import ToolError
from mcp.types import ToolAnnotations
from pydantic import BaseModel, Field

from server.ingest.security import PathPolicy
from server.ingest.sync import SyncReport, printable, sync_paths
from tools._common import COLLECTION_DESCRIPTION, ToolSpec, call_write, progress_reporter, rift_of
from tools.resources import announce

MAX_LISTED = 1000


class FileStatusOut(BaseModel):
    path: str
    status: Literal["added", "updated", "unchanged", "skipped", "removed"]
    reason: str | None = Field(None, description="Why a file was skipped or removed.")
    chunks: int = Field(0, description="Chunks written (0 unless added or updated).")


class AddPathsResult(BaseModel):
    collection: str
    added: int
    updated: int
    unchanged: int
    skipped: int
    removed: int
    files: list[FileStatusOut] = Field(
        description="Per-file status, removed and skipped first; an unchanged file is only counted, unless it "
        "has a reason (metadata refreshed, read again by a newer extractor)."
    )
    truncated: bool = Field(description=f"True when more than {MAX_LISTED} files were listed.")


async def add_paths(
    paths: Annotated[
        list[str],
        Field(min_length=1, max_length=100, description="Absolute paths of files or folders to ingest."),
    ],
    ctx: Context,
    collection: Annotated[str, Field(description=COLLECTION_DESCRIPTION)] = "default",
    recursive: Annotated[bool, Field(description="Descend into sub-folders.")] = True,
    glob: Annotated[
        str | list[str] | None,
        Field(
            description="Only files matching this gitignore-style pattern, or any of a list of them, e.g. "
            "'*.md' or ['docs/**/*.py', '*.rst']."
        ),
    ] = None,
    prune: Annotated[
        bool,
        Field(
            description="Also remove documents of files that are gone from (or now ignored in) the folders; with "
            "glob, only among files the pattern matches (documents of other files stay)."
        ),
    ] = False,
) -> AddPathsResult:
    rift = rift_of(ctx)
    policy = PathPolicy.for_server(rift.settings)
    report = SyncReport(collection)
    try:
        await call_write(
            lambda: sync_paths(
                rift.engine(),
                collection,
                paths,
                policy,
                recursive=recursive,
                glob=glob,
                prune=prune,
                progress=progress_reporter(ctx, "reading files"),
                report=report,
            )
        )
    except ToolError as exc:  # (a Chroma server gone, a full disk, ...): its earlier batches are stored all the same
        stored = _stored(report)
        if stored is None:
            raise
        raise ToolError(f"{exc}; {stored}") from None
    finally:  # batches committed before a failure or a cancel stay stored: announced too
        changed = [f.path for f in report.files if f.status in ("added", "updated", "removed")]
        await announce(ctx, collection, changed)
    order = {"removed": 0, "skipped": 1, "added": 2, "updated": 2, "unchanged": 3}
    # A re-sync of a large folder is mostly unchanged files: listing each cost the agent ~80 bytes of context
    # a file for nothing it could act on (the count says it).
    listed = [f for f in report.files if f.status != "unchanged" or f.reason is not None]
    files = sorted(listed, key=lambda f: order[f.status])
    counts = report.counts()
    return AddPathsResult(
        collection=collection,
        **counts,
        files=[
            FileStatusOut(
                path=printable(f.path),
                status=f.status,
                reason=None if f.reason is None else printable(f.reason),
                chunks=f.chunks,
            )
            for f in files
        ][:MAX_LISTED],
        truncated=len(files) > MAX_LISTED,
    )


def _stored(report: SyncReport) -> str | None:
    """What the batches before a failure committed, for the error that ends the call; None when nothing."""
    counts = report.counts()
    if not (counts["added"] or counts["updated"] or counts["removed"]):
        return None
    done = ", ".join(f"{counts[s]} {s}" for s in ("added", "updated", "removed") if counts[s])
    return (
        f"the files before the failure are stored ({done}): run add_paths again with the same arguments to "
        "finish (unchanged files are skipped)"
    )


TOOL = ToolSpec(
    fn=add_paths,
    name="add_paths",
    title="Add files and folders",
    description=(
        "Ingest files or whole folders from disk for hybrid_search: Markdown (front matter becomes metadata), "
        "plain text, PDF, HTML, reStructuredText and source code. Each file is one document, its id the absolute "
        "path, with metadata source, file_type, size, mtime and title. Run it again to sync: changed files are "
        "updated, unchanged ones skipped, and prune=true removes deleted files' documents. Honours .gitignore; "
        "binary and oversized files are skipped with a reason. Only paths under the server's allowed_roots."
    ),
    annotations=ToolAnnotations(
        title="Add files and folders",
        read_only_hint=False,
        destructive_hint=True,  # (MCP: False means "only additive updates"; this one replaces or removes)
        idempotent_hint=True,
        open_world_hint=False,
    ),
)

