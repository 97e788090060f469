"""One background learning job at a time (retrain, rollback, reindex): phases, progress, cancellation.

Jobs run in a daemon thread; their state is polled (`retrain_status`) rather than pushed, because the MCP call
that started a job has already returned. Finished jobs stay listed (the last 50) until the process exits.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from server.errors import NotFoundError, RiftError, disk_full_problem

log = logging.getLogger(__name__)


class JobCancelled(Exception):
    pass


@dataclass
class Job:
    id: str
    kind: str
    params: dict[str, Any]
    status: str = "running"  # running | succeeded | rejected | failed | cancelled
    phase: str = "queued"
    done: int = 0
    total: int = 0
    started_at: float = field(default_factory=time.time)
    finished_at: float | None = None
    result: dict[str, Any] = field(default_factory=dict)
    error: str | None = None
    phases: list[dict[str, Any]] = field(default_factory=list)
    # Set when the process shuts down (not when a caller cancels): a retrain then keeps what it has done, to
    # continue at the next start (resume.py).
    shutting_down: bool = False
    _cancel: threading.Event = field(default_factory=threading.Event, repr=False)
    finished: threading.Event = field(default_factory=threading.Event, repr=False)  # set once its status is final
    _phase_lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    # Past this phase a cancel would leave the server half-way between two models: it is refused.
    UNCANCELLABLE = "switching"

    # --- called from the job's own thread ------------------------------------------------------------------

    def enter(self, phase: str, total: int = 0) -> None:
        with self._phase_lock:  # a cancel either lands before this phase starts or sees it
            self.check()
            now = time.time()
            self._close_phase(now)
            self.phases.append({"phase": phase, "started_at": now})
            self.phase, self.done, self.total = phase, 0, total

    def progress(self, done: int, total: int) -> None:
        self.done, self.total = done, total

    def finish(self, status: str, error: str | None, result: dict[str, Any] | None) -> None:
        """The job's end: status, phase and progress change under one hold of the lock, so a snapshot never
        reads a final status beside the last phase's counters."""
        with self._phase_lock:
            now = time.time()
            self._close_phase(now)
            if result is not None:
                self.result = result
            if error is not None:  # (else any the work gave, as a cancel's reason)
                self.error = error
            self.status, self.phase, self.finished_at = status, status, now
            self.done = self.total = 0
        self.finished.set()

    def _close_phase(self, now: float) -> None:
        """Record how long the current phase took and how far it counted (where a cancelled or failed job
        stopped stays readable after the job's own progress is cleared)."""
        if not self.phases or "seconds" in self.phases[-1]:
            return
        self.phases[-1]["seconds"] = round(now - self.phases[-1]["started_at"], 2)
        if self.total:
            self.phases[-1].update(done=self.done, total=self.total)

    def check(self) -> None:
        if self._cancel.is_set():
            raise JobCancelled()

    @property
    def cancelled(self) -> bool:
        return self._cancel.is_set()

    def snapshot(self) -> dict[str, Any]:
        with self._phase_lock:
            return self._snapshot()

    def _snapshot(self) -> dict[str, Any]:
        end = self.finished_at or time.time()
        phases = [
            {"phase": p["phase"], "seconds": p.get("seconds", round(end - p["started_at"], 2))}
            | ({"done": p["done"], "total": p["total"]} if "total" in p else {})
            for p in self.phases
        ]
        # (a total of 0 is not known yet, or a phase without steps: null, not "0 of 0" that reads as done;
        # an ended job has no current phase, so no progress either: `phases` keeps what each one counted)
        progress: dict[str, int | None] = {"done": None, "total": None}
        if self.finished_at is None:
            progress = {"done": self.done, "total": self.total or None}
            if phases and self.total:  # the current phase, counting
                phases[-1].update(done=self.done, total=self.total)
        return {
            "job_id": self.id,
            "kind": self.kind,
            "status": self.status,
            "phase": self.phase,
            "progress": progress,
            "elapsed_s": round(end - self.started_at, 2),
            "phases": phases,
            "params": self.params,
            "result": self.result,
            "error": self.error,
            # A cancel lands at the job's next check (a training step, a batch of chunks): until then it still
            # reads running, and this says it is stopping rather than carrying on.
            "cancel_requested": self.cancelled,
        }

    def busy(self) -> str:
        """Why no other job may start while this one runs."""
        if self.cancelled:
            return (
                f"a {self.kind} job (job_id {self.id}, phase {self.phase}) was cancelled and is still stopping: "
                "retrain_status(job_id, wait_seconds=...) waits for it to end, then try again"
            )
        return f"a {self.kind} job is already running (job_id {self.id}, phase {self.phase}); wait for it or cancel it"


def _unknown_job(job_id: str, latest: Job | None) -> str:
    """Why `job_id` is not known, and where to look instead: an id from before a restart is the usual cause."""
    now = (
        f"the latest job is {latest.id} ({latest.kind}, {latest.status})"
        if latest is not None
        else "no learning job has run since the server started"
    )
    return (
        f"unknown job_id {job_id!r}: {now}. Jobs are not kept across server restarts (a retrain the restart "
        "interrupted continues under its own job_id); list_models shows every model version, with its gate numbers"
    )


class JobRunner:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._jobs: dict[str, Job] = {}
        self._current: Job | None = None
        self._thread: threading.Thread | None = None

    def start(
        self,
        kind: str,
        params: dict[str, Any],
        work: Callable[[Job], dict[str, Any]],
        result: dict[str, Any] | None = None,
        job_id: str | None = None,
    ) -> Job:
        """Start `work` in the background; `result` seeds the job's result. `job_id`: the id of a job an
        earlier process started, continued here (a new one when None)."""

        with self._lock:
            if self._current is not None and self._current.status == "running":
                raise RiftError(self._current.busy())
            job = Job(id=job_id or uuid.uuid4().hex[:12], kind=kind, params=params, result=dict(result or {}))
            self._jobs.pop(job.id, None)  # (an id reused is the latest job: listed last, pruned last)
            self._jobs[job.id] = job
            if len(self._jobs) > 50:
                for old in list(self._jobs)[: len(self._jobs) - 50]:
                    if self._jobs[old].status != "running":
                        del self._jobs[old]
            self._current = job
            self._thread = threading.Thread(
                target=self._run, args=(job, work), name=f"rift-{kind}", daemon=True
            )
            self._thread.start()
            return job

    def _run(self, job: Job, work: Callable[[Job], dict[str, Any]]) -> None:
        status, error, result = job.status, None, None
        try:
            result = work(job)
            status = str(result.get("status", "succeeded"))
        except JobCancelled:
            status = "cancelled"
        except RiftError as exc:
            status, error = "failed", str(exc)
        except Exception as exc:  # reported through retrain_status; the server keeps serving
            log.exception("%s job %s failed", job.kind, job.id)
            status, error = "failed", disk_full_problem(exc) or f"{type(exc).__name__}: {exc}"
        finally:
            job.finish(status, error, result)

    def get(self, job_id: str | None = None) -> Job:
        with self._lock:
            if job_id is None:
                if self._current is None:
                    raise NotFoundError(
                        "no learning job has run since the server started (jobs are not kept across restarts: "
                        "list_models shows every model version, with its gate numbers)"
                    )
                return self._current
            job = self._jobs.get(job_id)
            latest = self._current
        if job is None:
            raise NotFoundError(_unknown_job(job_id, latest))
        return job

    def discard(self, job_id: str) -> None:
        """Forget a job that ended (a retrain whose refusal its caller already got): the latest job becomes
        the one before it."""
        with self._lock:
            job = self._jobs.get(job_id)
            if job is None or job.status == "running":
                return
            del self._jobs[job_id]
            if self._current is job:
                self._current = next(reversed(self._jobs.values()), None)

    def cancel(self, job_id: str) -> Job:
        job = self.get(job_id)
        with job._phase_lock:
            if job.status == "running" and job.phase == Job.UNCANCELLABLE:
                raise RiftError(
                    f"job {job_id} is already switching models and can no longer be cancelled; it finishes in "
                    "moments (rollback afterwards returns to the previous version)"
                )
            if job.status == "running":
                job._cancel.set()
        return job

    def stop(self, timeout: float, switch_timeout: float = 600.0, resumable: bool = True) -> Job | None:
        """For shutdown: cancel the running job and wait up to `timeout` s for it; a job already switching
        models cannot be cancelled, so let it finish (up to `switch_timeout` s) rather than cut it half-way.
        `resumable`: the job may keep its progress to continue at the next start (a person's Ctrl-C on a CLI
        command is a cancel instead)."""
        job = self.running
        if job is None:
            return None
        with job._phase_lock:
            switching = job.phase == Job.UNCANCELLABLE
            if not switching:
                job.shutting_down = resumable
                job._cancel.set()
        self.wait(switch_timeout if switching else timeout)
        return job

    @property
    def running(self) -> Job | None:
        current = self._current
        return current if current is not None and current.status == "running" else None

    def wait(self, timeout: float | None = None) -> None:
        thread = self._thread
        if thread is not None:
            thread.join(timeout)
