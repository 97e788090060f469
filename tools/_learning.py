"""Shared by the learning tools: reach the app's LearningManager once the engine is loaded."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field

from server.errors import RiftError
from server.service import Rift


def learning_of(rift: Rift) -> Any:
    rift.engine()  # waits for start-up, or raises its error
    if rift.learning is None:
        raise RiftError("learning is not available: the server did not finish starting")
    return rift.learning


class JobStatus(BaseModel):
    job_id: str
    kind: str = Field(description="retrain, rollback or reindex.")
    status: str = Field(description="running, succeeded, rejected (gate said no), failed or cancelled.")
    phase: str = Field(
        description="mining, training, encoding, gating, switching, loading, re-chunking, or the final status."
    )
    progress: dict[str, int | None] = Field(
        description="done/total in the current phase; total null while not known, both null once ended."
    )
    elapsed_s: float
    phases: list[dict[str, Any]] = Field(description="Each phase: seconds taken, done/total if counted.")
    params: dict[str, Any]
    result: dict[str, Any] = Field(
        description="Triples used, training time, the gate's numbers, new version."
    )
    error: str | None
    cancel_requested: bool = Field(
        description="A cancel was asked for (cancel=true, or a shutdown): while status is still running, the "
        "job is stopping (at its next training step or batch of chunks), and no other job can start until then."
    )
    warnings: list[str] = []  # why a wait ended before the job did (a shutdown); undescribed: tools/list's budget
