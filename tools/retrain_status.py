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
    rift = rift_of(ctx)
    learning = await call(learning_of, rift)
    if cancel:
        if job_id is None:
            job_id = (await call(learning.status))["job_id"]
        await call(learning.cancel, job_id)
    snap = await call(learning.status, job_id)
    deadline = time.monotonic() + wait_seconds
    sent = -1.0
    while snap["status"] == "running" and time.monotonic() < deadline and not rift.shutting_down:
        done, total = snap["progress"]["done"], snap["progress"]["total"] or 0
        # MCP progress must increase: one scale across the phases, each phase one unit; only news is sent.
        overall = PHASE_ORDER.get(snap["phase"], 0) + (min(done, total) / total if total else 0.0)
        if overall > sent:
            sent = overall
            with contextlib.suppress(Exception):  # progress is best effort
                message = f"{snap['kind']}: {snap['phase']}" + (f" {done}/{total}" if total else "")
                await ctx.report_progress(round(overall, 4), float(PHASE_ORDER["done"]), message)
        await anyio.sleep(min(0.5, max(0.0, deadline - time.monotonic())))
        snap = await call(learning.status, snap["job_id"])
    status = JobStatus(**snap)
    if wait_seconds and status.status == "running" and rift.shutting_down:
        # (the shutdown waits for calls in flight: this wait would hold it, and then end with no answer)
        status.warnings.append(
            "rift is shutting down, so this wait ended early and the job stops with it (an interrupted retrain "
            "continues from its last checkpoint when rift starts again): ask again once rift runs again"
        )
    return status


# Phases in the order a job passes them (rollback and reindex skip some); the last one ends the scale.
PHASE_ORDER = {
    "queued": 0,
    "mining": 0,
    "loading": 0,
    "training": 1,
    "encoding": 2,
    "gating": 3,
    "switching": 4,
    "re-chunking": 5,  # after a switch to a model that reads fewer tokens (else skipped)
    "done": 6,
}


TOOL = ToolSpec(
    fn=retrain_status,
    name="retrain_status",
    title="Learning job status",
    description=(
        "Report a learning job (retrain, rollback, reindex): phase, progress, triples used, training time, the "
        "gate's numbers, and whether the new model now serves or was rejected. wait_seconds waits for it with "
        "progress notifications; cancel=true stops it at its next step."
    ),
    annotations=ToolAnnotations(
        title="Learning job status",
        read_only_hint=False,
        destructive_hint=False,
        idempotent_hint=True,
        open_world_hint=False,
    ),
)
