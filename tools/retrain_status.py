"""retrain_status: phase, progress and results of a learning job (retrain, rollback, reindex); cancel it."""

from __future__ import annotations

import contextlib
import time
from typing import Annotated

import anyio
from mcp.server.mcpserver import Context
from mcp.types import ToolAnnotations
from pydantic import Field

from tools._common import ToolSpec, call, rift_of
from tools._learning import JobStatus, learning_of


async def retrain_status(
    ctx: Context,
    job_id: Annotated[
        str | None, Field(description="The job to report; the latest job when omitted.")
    ] = None,
    wait_seconds: Annotated[
        float,
        Field(ge=0, le=300, description="Wait up to this long for the job to finish, sending progress."),
    ] = 0,
    cancel: Annotated[bool, Field(description="Cancel the job (the serving model is untouched).")] = False,
) -> JobStatus:
    learning = await call(learning_of, rift_of(ctx))
    if cancel:
        if job_id is None:
            job_id = (await call(learning.status))["job_id"]
        await call(learning.cancel, job_id)
    snap = await call(learning.status, job_id)
    deadline = time.monotonic() + wait_seconds
    while snap["status"] == "running" and time.monotonic() < deadline:
        done, total = snap["progress"]["done"], snap["progress"]["total"]
        with contextlib.suppress(Exception):  # progress is best effort
            await ctx.report_progress(done, total or None, f"{snap['kind']}: {snap['phase']} {done}/{total}")
        await anyio.sleep(min(0.5, max(0.0, deadline - time.monotonic())))
        snap = await call(learning.status, snap["job_id"])
    return JobStatus(**snap)


TOOL = ToolSpec(
    fn=retrain_status,
    name="retrain_status",
    title="Learning job status",
    description=(
        "Report a learning job (retrain, rollback, reindex): its phase (mining, training, encoding, gating, "
        "switching), progress, triples used, training time and the gate's numbers, and whether the new model "
        "now serves or was rejected. wait_seconds waits for it with progress notifications; cancel=true stops it."
    ),
    annotations=ToolAnnotations(
        title="Learning job status",
        read_only_hint=False,
        destructive_hint=False,
        idempotent_hint=True,
        open_world_hint=False,
    ),
)
