"""What a retrain needs to continue in a later process: its plan on disk beside the registry.

A retrain on a CPU can take an hour, and MCP clients stop their servers whenever they quit. The job writes
its plan (the mined rows, the training settings, the held-out query ids, the model it started from) before
training, and training checkpoints into a folder beside it; the next server start continues from there
instead of mining and training again. The plan is removed when the job ends in any other way.

Files in the models dir: `.<version>.resume.json` (the plan) and `.<version>.trainer/` (the checkpoints).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

SUFFIX = ".resume.json"


@dataclass
class ResumePlan:
    version: str  # the candidate's version id (its weights folder)
    parent: str | None  # the version serving when the job started: it must still serve to continue
    base_location: str  # the weights training starts from
    query_prompt: str
    document_prompt: str
    config: dict[str, Any]  # TrainConfig fields
    rows: list[list[str]]  # (query, positive text, negative text)
    strategy: str
    triples_by_type: dict[str, int]
    holdout: list[str]  # query ids the gate scores
    params: dict[str, Any]  # the job's parameters, as retrain_status shows them
    result: dict[str, Any] = field(default_factory=dict)  # the job's result so far (mining summary)
    trained: bool = False  # the weights are saved and registered; only the gate and the switch remain
    # The collection each row was mined from, so a deleted collection's texts can leave the plan (empty in
    # plans from before rift recorded them).
    row_collections: list[str] = field(default_factory=list)
    # Rows were removed after training began: its checkpoints learnt from other data, so training starts again.
    restart: bool = False
    # The job's id, kept when it continues so the id `retrain` returned still answers `retrain_status` after a
    # restart (None in plans from before rift recorded it: the continued job gets a new one).
    job_id: str | None = None
    # The documents each row's texts came from, [positive, negative] (a corpus pseudo-query's or inverse-cloze
    # query is the positive document's text too), so a deleted or rewritten document's texts can leave the plan
    # (empty in plans from before rift recorded them).
    row_docs: list[list[str]] = field(default_factory=list)
    # What the candidate will have learnt of the log (`pipeline.Learnt.as_dict`), recorded with its weights so
    # the next retrain mines only what came after (empty in plans from before rift recorded it).
    learnt: dict[str, float] = field(default_factory=dict)

    def rows_of(self, collection: str) -> int:
        """How many rows came from `collection` (all of them when the plan does not say)."""
        if len(self.row_collections) != len(self.rows):
            return len(self.rows)
        return self.row_collections.count(collection)

    def drop_rows_of(self, collections: set[str]) -> int:
        """Remove the rows mined from `collections` (every row when the plan does not say); how many went."""
        if len(self.row_collections) != len(self.rows):
            return self._keep([False] * len(self.rows))
        return self._keep([c not in collections for c in self.row_collections])

    def drop_rows_of_documents(self, collection: str, doc_ids: set[str]) -> int:
        """Remove the rows whose texts came from documents `doc_ids` of `collection`; how many went. A plan that
        does not name its rows' documents loses every row of `collection` (every row when it does not name their
        collections either)."""
        if not self._names_documents:
            return self.drop_rows_of({collection})
        return self._keep(
            [
                c != collection or not doc_ids.intersection(docs)
                for c, docs in zip(self.row_collections, self.row_docs, strict=True)
            ]
        )

    def documents_of(self) -> dict[str, set[str]]:
        """The documents the rows' texts came from, by collection (none when the plan does not say)."""
        out: dict[str, set[str]] = {}
        if self._names_documents:
            for collection, docs in zip(self.row_collections, self.row_docs, strict=True):
                out.setdefault(collection, set()).update(docs)
        return out

    @property
    def _names_documents(self) -> bool:
        """Whether the plan says each row's collection and documents (plans from before rift kept them do not)."""
        return len(self.row_docs) == len(self.row_collections) == len(self.rows)

    def _keep(self, keep: list[bool]) -> int:
        """Keep the rows `keep` marks, with what the plan says of them; how many went."""
        before = len(self.rows)

        def kept(values: list[Any]) -> list[Any]:
            return [v for v, k in zip(values, keep, strict=True) if k] if len(values) == before else []

        self.rows, self.row_collections, self.row_docs = (
            kept(self.rows),
            kept(self.row_collections),
            kept(self.row_docs),
        )
        if len(self.rows) < before and not self.trained:
            self.restart = True
        return before - len(self.rows)


def plan_path(models_dir: Path, version: str) -> Path:
    return models_dir / f".{version}{SUFFIX}"


def checkpoint_dir(models_dir: Path, version: str) -> Path:
    return models_dir / f".{version}.trainer"


def save(models_dir: Path, plan: ResumePlan, keep_mtime: bool = False) -> None:
    """Write atomically: a process killed while writing leaves the previous plan or none, never half of one.
    `keep_mtime`: an edit, not a new plan (plans are ordered by their time: the newest one continues)."""
    models_dir.mkdir(parents=True, exist_ok=True)
    path = plan_path(models_dir, plan.version)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(asdict(plan)))
    if keep_mtime:
        with contextlib.suppress(OSError):
            was = path.stat()
            os.utime(tmp, ns=(was.st_atime_ns, was.st_mtime_ns))
    os.replace(tmp, path)


def pending(models_dir: Path, skip: str | None = None) -> list[ResumePlan]:
    """Plans left by jobs a process did not live to finish, oldest first; unreadable ones are dropped. `skip`:
    a version whose plan is not read (the running job's, which it holds)."""
    plans: list[ResumePlan] = []
    paths = [p for p in models_dir.glob(f".*{SUFFIX}") if skip is None or p != plan_path(models_dir, skip)]
    for path in sorted(paths, key=lambda p: p.stat().st_mtime):
        try:
            plans.append(ResumePlan(**json.loads(path.read_text())))
        except (OSError, ValueError, TypeError) as exc:
            log.warning("dropping an unreadable retrain plan %s: %s", path.name, exc)
            path.unlink(missing_ok=True)
    return plans


def versions(models_dir: Path) -> list[str]:
    """The versions with a plan on disk (from the file names: no plan is read)."""
    return [p.name[1 : -len(SUFFIX)] for p in models_dir.glob(f".*{SUFFIX}")]


def discard(models_dir: Path, version: str) -> None:
    """Forget a plan and its checkpoints (the job ended, or cannot continue)."""
    plan_path(models_dir, version).unlink(missing_ok=True)
    shutil.rmtree(checkpoint_dir(models_dir, version), ignore_errors=True)


def owned_scratch(models_dir: Path) -> set[Path]:
    """Checkpoint folders that belong to a pending plan (start-up cleanup must leave them)."""
    return {checkpoint_dir(models_dir, version) for version in versions(models_dir)}
