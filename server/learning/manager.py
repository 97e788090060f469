"""Learning from use, as operations on a running `Rift`: feedback, retrain (mine -> train -> encode -> gate ->
switch) as a background job, rollback, re-index with any sentence-transformers model, the model registry, and
the optional periodic retrain policy.

Swap protocol: the candidate's vectors are built in their own Chroma collection (named by model version) while
searches go on against the serving one; the gate compares both; on acceptance every collection record and its
query embedder switch together under the engine's write lock (`Engine.switch_vectors`). The previous version's
vectors are kept (`learn_keep_versions`), so rollback to it only embeds chunks written since.
"""

from __future__ import annotations

import contextlib
import logging
import re
import shutil
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from server.config import RETRAIN_BOUNDS, LearnSearches
from server.engine.models import PACKAGED_ALIASES, describe_load_failure
from server.engine.onnx_backend import prune_exports
from server.errors import NotFoundError, RiftError, disk_full_problem
from server.learning import resume, training
from server.learning.gate import Gate, GateConfig, LabelledSet, asked_once, opened_once
from server.learning.jobs import Job, JobCancelled, JobRunner
from server.learning.mining import STRATEGIES, MiningConfig, logged_passages
from server.learning.pipeline import (
    Learnt,
    Passages,
    build_all,
    collect_and_mine,
    drop_built,
    held_out_signals,
    load_embedder,
    materialize,
    switch_all,
)
from server.learning.policy import Policy
from server.learning.query_log import is_query_id, normalized_query, not_logged
from server.learning.registry import WEIGHTS_DELETED, ModelVersion, Registry, model_key, new_version_id
from server.learning.resume import ResumePlan
from server.learning.training import TrainConfig, train_model

log = logging.getLogger(__name__)
# A re-index entry stays "failed" with this note suffix until it serves; a stop replaces the suffix with why.
IN_PROGRESS = ": in progress"
FINE_TUNE_DIR = re.compile(r"ft-\d{8}-\d{6}-[0-9a-f]{6}")  # new_version_id("fine-tune")
# In a fine-tune's folder from before its weights are saved until the registry names it: only such a folder
# is a killed job's leftover that start-up may delete.
UNREGISTERED = ".rift-unregistered"
MINING_WAIT_S = 5.0  # how long `retrain` waits for its job's mining before it returns (a small log's takes ms)


@contextlib.contextmanager
def _switched_back_on_failure(engine: Any, previous: Any, switched_to: Any, drop: bool = True) -> Iterator[None]:
    """Record a switch in the registry, or undo it: a registry that could not be written (a full disk) still
    names the previous version as serving, which the next start would load, re-embedding every collection,
    while this process served the new one under a job that said it failed. `drop`: the vectors switched to
    were built by this job (a candidate's), not kept for a rollback to them."""
    try:
        yield
    except BaseException:
        with _logged(f"switching back to {previous.version}"):
            switch_all(engine, previous, keep_old=True, check_room=False)
            if drop:
                drop_built(engine, switched_to.version)
        raise


@contextlib.contextmanager
def _logged(step: str) -> Iterator[None]:
    """A clean-up step after a job's failure: its own failure is logged, and the job's error stands."""
    try:
        yield
    except Exception:
        log.exception("%s failed", step)


def _mining_summary(mined: Any, examples: int) -> dict[str, Any]:
    """What mining found, as retrain and its dry run report it. The latest searches are held out for the gate:
    their feedback scores the candidate there instead of training it (`holdout_with_feedback` says how many)."""
    summary = mined.report.summary(examples)
    held = asked_once(mined.holdout, mined.feedback)  # (as the gate scores them: each text once)
    summary.update(
        train_queries=len(mined.train_queries),
        holdout_queries=len(held),
        holdout_with_feedback=sum(any(labels.values()) for _q, labels in held),
        holdout_with_opens=len(opened_once(mined.holdout, mined.feedback, mined.opened)),
    )
    if mined.evaluation_left_out:
        summary["evaluation_queries_left_out"] = mined.evaluation_left_out
    if mined.already_learnt:
        summary["already_learnt_queries"] = mined.already_learnt
    return summary


class LearningManager:
    def __init__(self, rift: Any) -> None:
        self.rift = rift
        self.settings = rift.settings
        self.registry = Registry(self.settings.models_dir)
        self.jobs = JobRunner()
        self.policy = Policy(self)
        self.gate_overrides: dict[str, Any] = {}  # GateConfig fields without a setting (tests, experiments)
        self._labelled_data: tuple[tuple[str, str], Any] | None = None  # gate_eval_data, read once
        # The running retrain and its plan; the lock orders a deleted collection's removal from plans with the
        # job's own saves and discards of its plan.
        self._live: tuple[Job, ResumePlan] | None = None
        self._plan_lock = threading.Lock()
        # While a retrain mines (before its plan exists): collection -> documents deleted or rewritten meanwhile,
        # whose rows the plan drops when the job starts (mining may have read their old texts).
        self._mining_gone: dict[str, set[str]] | None = None

    def start(self, engine: Any, resume_jobs: bool = False) -> None:
        """`engine` is the one being opened (the app is not ready yet, so `self.engine` would wait for it).
        `resume_jobs`: continue a retrain the last process left unfinished (a server does; a one-off CLI
        command, which would stop it again moments later, does not, and leaves it for the next server). The
        periodic policy runs in a server only, for the same reason: a long `rift add` must not start, and then
        cut short, a retrain of its own."""
        self._clear_interrupted(engine)
        if resume_jobs:
            self._prune_successors(engine)
            self._resume_interrupted(engine)
            self.policy.start()

    def _prune_successors(self, engine: Any) -> None:
        """Forget the chunk ids renamed before the oldest logged search (no search the log keeps can name them;
        a minute's slack for searches still on their way to the log). Never raises: they only cost space."""
        try:
            oldest = self.log.oldest_ts()
            before = min(time.time() if oldest is None else oldest, time.time()) - 60.0
            if gone := engine.state.prune_successors(before):
                log.info("forgot %d renamed chunk ids older than the query log", gone)
        except Exception:
            log.exception("could not prune the renamed chunk ids")

    def _clear_interrupted(self, engine: Any) -> None:
        """A job the process did not live to finish left its candidate marked "being evaluated" and, maybe, half
        its vectors: say what happened, and drop those vectors (only serving or retired versions keep any)."""
        plans = resume.pending(self.settings.models_dir)
        # The newest plan a server start continues: its candidate is not over, whichever process ran it (a
        # killed `rift retrain` too), so `rift models` says so rather than "failed" alone (found by helper BI).
        continues = plans[-1].version if plans and self._why_not_continued(plans[-1]) == (False, None) else None
        for v in self.registry.all():
            if v.status == "failed" and v.note == "candidate being evaluated":
                note = (
                    "interrupted: continues at the next server start (rift serve)"
                    if v.version == continues
                    else "interrupted: the server stopped during the job"
                )
                self.registry.update(v.version, note=note)
            elif v.status == "failed" and v.note and v.note.endswith(IN_PROGRESS):
                self.registry.update(
                    v.version,
                    note=v.note.replace(IN_PROGRESS, ": interrupted: the server stopped during the job"),
                )
        with contextlib.suppress(Exception):  # a cleanup: never a reason not to start
            self._prune(engine)
            prune_exports(self.settings.models_dir / "onnx")  # of weights deleted (by hand, or by a crash)
            keep = resume.owned_scratch(self.settings.models_dir)  # checkpoints a retrain continues from
            for scratch in self.settings.models_dir.glob(".*.trainer"):  # a killed training's work folder
                if scratch not in keep:
                    shutil.rmtree(scratch, ignore_errors=True)
            self._delete_orphan_weights()

    def _delete_orphan_weights(self) -> list[str]:
        """Fine-tuned weights no registry entry names and no interrupted retrain continues from: a process
        killed between saving a candidate and registering it (without `learn_resume_interrupted`) left them,
        about 90 MB each for MiniLM, which nothing else would ever delete. Only folders still marked
        UNREGISTERED go: a registered fine-tune's folder stays even when the registry no longer names it (a
        damaged registry moved aside, as its error message suggests), and so does the configured `model`'s."""
        known = {v.version for v in self.registry.all()} | set(resume.versions(self.settings.models_dir))
        configured = model_key(self.settings.model_location)
        deleted = []
        for folder in sorted(self.settings.models_dir.glob("ft-*")):
            if folder.name in known or not FINE_TUNE_DIR.fullmatch(folder.name):
                continue
            if folder.is_symlink() or not (folder / UNREGISTERED).is_file() or model_key(str(folder)) == configured:
                continue
            if folder.is_dir():
                log.warning("deleting %s: weights no model version names (a job killed midway)", folder)
                shutil.rmtree(folder, ignore_errors=True)
                deleted.append(folder.name)
        return deleted

    def close(self) -> None:
        self.policy.stop()
        self.jobs.stop(30)

    @property
    def engine(self) -> Any:
        return self.rift.engine()

    @property
    def log(self) -> Any:
        if self.rift.log is None:
            raise RiftError("the query log is not open")
        return self.rift.log

    # --- feedback ------------------------------------------------------------------------------------------

    def feedback(self, query_id: str, doc_id: str, relevant: bool) -> dict[str, Any]:
        (judged,) = self.judge(query_id, [(doc_id, relevant)])
        return {"query_id": query_id, **judged}

    def judge(
        self, query_id: str, judgements: Sequence[tuple[str, bool]], listed: bool = False
    ) -> list[dict[str, Any]]:
        """Record verdicts on documents one search showed: all of them, or none when one is wrong. Returns
        each as {doc_id, relevant, replaced, stored}: `stored` False when the passage the search ranked for
        it is gone (its document deleted, or rewritten, since), so the verdict trains nothing unless it comes
        back. `listed`: they came as a list (errors name judgments[i])."""
        if not isinstance(query_id, str) or not query_id.strip():
            raise RiftError("query_id must be the query_id returned by hybrid_search")
        if not judgements:
            raise RiftError("give a doc_id and relevant, or judgments with at least one verdict")
        many = listed or len(judgements) > 1

        def where(i: int) -> str:  # how an error names the verdict
            return f"judgments[{i}]." if many else ""

        seen: set[str] = set()
        for i, (doc_id, relevant) in enumerate(judgements):
            if not isinstance(doc_id, str) or not doc_id.strip():
                raise RiftError(f"{where(i)}doc_id must be a document id from that search's results")
            if not isinstance(relevant, bool):
                raise RiftError(f"{where(i)}relevant must be true or false")
            if doc_id in seen:
                raise RiftError(f"{where(i)}doc_id {doc_id!r} is judged twice; give each document one verdict")
            seen.add(doc_id)
        if not self.settings.log_queries:
            raise RiftError(
                "feedback needs the query log, and it is off (setting log_queries, RIFT_LOG_QUERIES): searches "
                "return no query_id to give feedback on"
            )
        if not is_query_id(query_id):
            raise RiftError(
                f"query_id {query_id!r} is not one hybrid_search returns (32 hexadecimal digits): give the "
                "query_id of the search that showed these results"
            )
        logged = self.log.get(query_id)
        if logged is None:
            raise NotFoundError(f"{not_logged(query_id, self.log.max_queries)}; nothing was recorded")
        for i, (doc_id, _) in enumerate(judgements):
            if doc_id not in logged.shown:
                raise RiftError(
                    f"{where(i)}doc_id {doc_id!r} was not among the results (or listed blind spots) of query "
                    f"{query_id!r}; results were: {', '.join(logged.fused[:10]) or 'none'}"
                    + ("; nothing was recorded" if many else "")
                )
        # (Read before recording: a failure here leaves nothing recorded, as the call says.)
        stored = self._still_stored(logged, [d for d, _ in judgements])
        replaced = self.log.add_judgements(query_id, judgements)
        if replaced is None:
            raise NotFoundError(
                f"query {query_id!r} left the log just now (past log_max_queries the oldest searches go, and a "
                "deleted collection's searches go with it): nothing was recorded"
            )
        return [
            {"doc_id": d, "relevant": r, "replaced": again, "stored": stored[d]}
            for (d, r), again in zip(judgements, replaced, strict=True)
        ]

    def _still_stored(self, logged: Any, doc_ids: Sequence[str]) -> dict[str, bool]:
        """doc id -> whether the passage `logged` ranked for it can still be trained on (as `materialize`
        reads it): stored under its id or a successor's. A verdict on a document deleted since is kept all the
        same (it trains once that text is back: a branch switched back), but the agent is told."""
        chunks = logged_passages(logged, doc_ids)
        passages = Passages(self.engine, {logged.collection: set(chunks.values())})
        return {d: isinstance(passages.find(logged.collection, d, c), tuple) for d, c in chunks.items()}

    # --- retrain -------------------------------------------------------------------------------------------

    def _configs(self, strategy: str | None, negatives: int | None) -> tuple[MiningConfig, GateConfig]:
        s = self.settings
        strategy = strategy or s.learn_strategy
        if strategy not in STRATEGIES:
            raise RiftError(f"strategy must be one of {', '.join(STRATEGIES)}")
        mining = MiningConfig.from_settings(
            s, strategy=strategy, negatives_per_query=negatives or s.learn_negatives_per_query
        )
        return mining, self._gate_config()

    def mine(
        self,
        strategy: str | None = None,
        negatives_per_query: int | None = None,
        progress: Callable[[int, int], None] | None = None,
        dry_run: bool = False,
        searches: LearnSearches | None = None,
    ) -> tuple[Any, list, list]:
        mining, gate = self._configs(strategy, negatives_per_query)
        # A configured labelled set's queries are never trained on, even when they were searched: the gate then
        # scores the candidate on texts it did not learn. (A dry run still shows triples when the set cannot be
        # read; a retrain refuses before mining.)
        try:
            evaluation = self._evaluation_set()
        except RiftError:
            if not dry_run:
                raise
            evaluation = None
        never = {normalized_query(q) for q in evaluation.queries.values()} if evaluation is not None else set()
        learnt = self.learnt_by_serving() if (searches or self.settings.learn_searches) == "new" else None
        mined = collect_and_mine(
            self.log, self.engine, mining, gate, progress=progress, never_train=never, learnt=learnt
        )
        rows, kept = materialize(self.engine, mined.report.triples, mined.report.skipped)
        mined.report.triples = kept
        self._prune_successors(self.engine)
        return mined, rows, kept

    def learnt_by_serving(self) -> Learnt:
        """What the serving model has learnt of the log: a fine-tune's record of it; nothing for a base model,
        a re-index (another model) or a fine-tune from before rift recorded it."""
        entry = self.registry.serving()
        if entry is None or entry.kind != "fine-tune":
            return Learnt()
        return Learnt.of(entry.train)

    def retrain(
        self,
        strategy: str | None = None,
        epochs: float | None = None,
        learning_rate: float | None = None,
        batch_size: int | None = None,
        min_triples: int | None = None,
        negatives_per_query: int | None = None,
        merge_base: float | None = None,
        dry_run: bool = False,
        examples: int = 5,
        source: str = "mcp",
        wait_for_mining: float | None = MINING_WAIT_S,
        searches: LearnSearches | None = None,
    ) -> dict[str, Any]:
        """Start a retrain job. `wait_for_mining`: seconds the call waits for the job's mining (None: until it
        ends); when mining ends within them, the result has its counts, and a refusal (too few triples) or a
        failure is raised here and leaves no job. After them the call returns with `mining` None; the job's
        status has the counts, or the refusal, once mining ends."""
        s = self.settings
        asked = {"epochs": epochs, "learning_rate": learning_rate, "batch_size": batch_size}
        asked |= {"min_triples": min_triples, "merge_base": merge_base}
        for name, (low, high) in RETRAIN_BOUNDS.items():
            if asked[name] is not None and not (low <= asked[name] <= high):
                raise RiftError(f"{name} must be between {low} and {high}")
        if not dry_run:
            self._check_can_start()
        self._configs(strategy, negatives_per_query)  # an unknown strategy fails now, not in the job
        if searches not in (None, "new", "all"):
            raise RiftError(f"searches must be 'new' or 'all', not {searches!r}")
        searches = searches or s.learn_searches
        need = min_triples if min_triples is not None else s.learn_min_triples
        if dry_run:
            mined, rows, _ = self.mine(strategy, negatives_per_query, dry_run=True, searches=searches)
            # What the real call would answer, in its order, so an agent need not start it to learn that it
            # would be refused.
            refusal = None
            try:
                self._check_can_start()
            except RiftError as exc:
                refusal = str(exc)
            if refusal is None and len(rows) < need:
                refusal = self._too_few_triples(len(rows), mined, need)
            return {
                "job_id": None,
                "status": "dry_run",
                "mining": _mining_summary(mined, examples),
                "would_train": refusal is None,
                "refusal": refusal,
            }
        cfg = TrainConfig(
            epochs=epochs or s.learn_epochs,
            learning_rate=learning_rate or s.learn_learning_rate,
            batch_size=batch_size or s.learn_batch_size,
            loss=s.learn_loss,
            max_seq_length=s.learn_max_seq_length,
            device=s.device,
            merge_base=s.learn_merge_base if merge_base is None else merge_base,
        )
        params = {"strategy": strategy or s.learn_strategy, "searches": searches, "source": source, **asdict(cfg)}
        # Mining reads the whole log (seconds at the default 20,000 searches), so it runs in the job; the call
        # waits for it a little, so a small log's counts, or its refusal, still come back with the call.
        mined_out: dict[str, Any] = {}
        mining_over = threading.Event()

        def work(job: Job) -> dict[str, Any]:
            with self._plan_lock:
                self._mining_gone = {}
            try:
                job.enter("mining")

                def progress(done: int, total: int) -> None:
                    job.progress(done, total)
                    job.check()  # a cancel, or a shutdown, need not wait for a long log's mining

                mined, rows, kept = self.mine(strategy, negatives_per_query, progress, searches=searches)
                job.check()
                summary = _mining_summary(mined, examples)
                mined_out["summary"] = summary
                job.result = {"mining": {k: v for k, v in summary.items() if k != "examples"}}
                if len(rows) < need:
                    raise RiftError(self._too_few_triples(len(rows), mined, need))
                serving = self.engine.embedder
                parent = self.registry.serving()
                plan = ResumePlan(
                    version=new_version_id("fine-tune"),
                    parent=parent.version if parent else None,
                    base_location=serving.spec.location,
                    query_prompt=serving.query_prompt,
                    document_prompt=serving.document_prompt,
                    config=asdict(cfg),
                    rows=[list(row) for row in rows],
                    row_collections=[t.collection for t in kept],
                    row_docs=[[t.positive_doc, t.negative_doc] for t in kept],
                    learnt=mined.learnt.as_dict(),
                    strategy=mined.report.strategy,
                    triples_by_type=mined.report.counts_by_type(),
                    holdout=[q.query_id for q in mined.holdout],
                    params=params,
                    result=dict(job.result),
                    job_id=job.id,
                )
                self.policy.note_started()
            except BaseException as exc:
                mined_out["error"] = exc
                with self._plan_lock:
                    self._mining_gone = None
                raise
            finally:
                mining_over.set()
            return self._retrain_job(job, plan, mined.holdout, mined.feedback, mined.opened)

        job = self.jobs.start("retrain", params, work)
        mining_over.wait(wait_for_mining)
        failed = mined_out.get("error")
        if failed is not None and not isinstance(failed, JobCancelled):
            # Refused (too few triples) or failed while the caller still waits: the call says why, as it did
            # when mining ran in the call, and no job is left behind for it.
            job.finished.wait(30)
            self.jobs.discard(job.id)
            raise failed
        return {"job_id": job.id, "status": job.status, "mining": mined_out.get("summary")}

    def _resume_interrupted(self, engine: Any) -> None:
        """Continue a retrain the last process did not live to finish (a shutdown or a crash), from its
        last checkpoint, or from the gate when its weights were already saved. Only while the model it
        started from still serves: anything else would train on one model and gate against another."""
        models_dir = self.settings.models_dir
        plans = resume.pending(models_dir)
        serving = self.registry.serving()
        for plan in plans[:-1]:  # one job at a time; only the newest can still be current
            self._drop_plan(plan, "a later retrain was started after it")
        if not plans:
            return
        plan = plans[-1]
        ended, why_not = self._why_not_continued(plan)
        if ended:  # stopped after its gate had decided
            log.info("retrain %s had ended when the last process stopped (%s)", plan.version, why_not)
            resume.discard(models_dir, plan.version)
            return
        if why_not is not None:
            self._drop_plan(plan, why_not)
            return
        if not plan.trained:
            try:
                self._check_room_to_train(engine, self.registry.location_of(serving) if serving else plan.base_location)
            except RiftError as exc:  # the plan and its checkpoints stay for a start with room
                log.warning("not continuing interrupted retrain %s now: %s", plan.version, exc)
                return
        step = self._checkpoint(plan)
        log.info(
            "continuing retrain %s interrupted by the last shutdown (%s)",
            plan.version,
            "weights trained, gate next"
            if plan.trained
            else f"from training step {training.checkpoint_step(step)}"
            if step
            else "training from its start, no checkpoint was saved",
        )

        def work(job: Job) -> dict[str, Any]:
            # The serving model is the one the plan started from; read its weights from where they are now
            # (a data dir moved since keeps its fine-tunes, not their old absolute paths).
            plan.base_location = self.engine.embedder.spec.location
            plan.job_id = job.id  # (a plan from before rift kept ids: its next continuation keeps this one)
            holdout = [q for q in (self.log.get(qid) for qid in plan.holdout) if q is not None]
            # (as a retrain's gate reads them: a verdict on a document renamed or deleted since moves or goes)
            feedback, opened = held_out_signals(self.engine, holdout, self.log)
            return self._retrain_job(job, plan, holdout, feedback, opened)

        params = {**plan.params, "resumed": True}
        self.jobs.start("retrain", params, work, result=plan.result, job_id=plan.job_id)

    def _check_can_start(self) -> None:
        """RiftError for what refuses a retrain before mining: a job running, then a wrong gate_eval_data (now,
        not after training and re-encoding), then a disk that cannot take the new weights."""
        running = self.jobs.running
        if running is not None:
            raise RiftError(running.busy())
        self._labelled()
        self._check_room_to_train(self.engine, self.engine.embedder.spec.location)

    def _too_few_triples(self, triples: int, mined: Any, need: int) -> str:
        """Why a retrain is refused, with the advice that can help: searching more cannot while the log is off,
        and a filter that left out most searches is named with its setting."""
        held = len(mined.holdout)
        said = (
            f"only {triples} training triples from {len(mined.train_queries)} logged queries"
            + (f" ({held} more are held out for the gate: the latest, and earlier askings of their texts)" if held else "")
            + f"; min_triples is {need}"
        )
        if mined.already_learnt:
            said += (
                f" ({mined.already_learnt} older searches were left out: the serving model was trained on them; "
                "searches='all' trains on them again)"
            )
        if not self.settings.log_queries:
            return (
                f"{said}. The query log is off (setting log_queries, RIFT_LOG_QUERIES): searches leave nothing to "
                "learn from; turn it on and search, or lower min_triples"
            )
        skipped = mined.report.skipped
        reason = max(skipped, key=skipped.get, default=None)
        if reason == "positive_small_keyword_margin" and skipped[reason] * 2 >= mined.report.queries_seen:
            return (
                f"{said}. {skipped[reason]} of {mined.report.queries_seen} searches had no clear best document "
                f"(setting learn_positive_min_keyword_margin, {self.settings.learn_positive_min_keyword_margin}: "
                "0 turns that filter off, at the cost of noisier triples); search more, give feedback on results, "
                "or lower min_triples"
            )
        if reason in ("document_deleted", "passage_changed"):
            what = "documents deleted" if reason == "document_deleted" else "passages rewritten"
            return (
                f"{said}. {skipped[reason]} triples named {what} since their searches; search the "
                "documents stored now, give feedback on results, or lower min_triples"
            )
        return f"{said}. Search more, give feedback, or lower min_triples"

    def _checkpoint(self, plan: ResumePlan) -> str | None:
        """The checkpoint a plan's training continues from (none when its rows changed since)."""
        if plan.restart:
            return None
        return training.latest_checkpoint(resume.checkpoint_dir(self.settings.models_dir, plan.version))

    def forget_collection(self, collection: str) -> None:
        """After `collection` was deleted: no retrain plan keeps its texts (the query log no longer does). A
        retrain that has not finished training on them is cancelled, saying why; an interrupted one drops those
        rows and trains again from its start on the rest (or is dropped when none is left); one already trained
        only forgets them (its weights cannot)."""
        models_dir = self.settings.models_dir
        with self._plan_lock:
            live_version = None
            if self._live is not None:
                job, plan = self._live
                live_version = plan.version
                taken = plan.rows_of(collection)
                if taken and not plan.trained and job.status == "running":
                    some = (
                        f"{taken} of the {len(plan.rows)} training triples came from it"
                        if len(plan.row_collections) == len(plan.rows)
                        else "its training triples may have come from it (an interrupted plan that does not say)"
                    )
                    why = f"cancelled: collection {collection!r} was deleted, and {some}; start a new retrain"
                    self.jobs.cancel(job.id)  # (lands at its next check: a training step, or the phase after this)
                    job.error = why
                    log.warning("retrain job %s %s", job.id, why)
                if plan.drop_rows_of({collection}) and resume.plan_path(models_dir, plan.version).exists():
                    resume.save(models_dir, plan, keep_mtime=True)
            self._scrub_pending(
                live_version,
                lambda plan: plan.drop_rows_of({collection}),
                f"its training triples came from collection {collection!r}, since deleted",
            )

    def forget_documents(self, collection: str, doc_ids: Sequence[str]) -> None:
        """After documents of `collection` were deleted, or written again with other text (by this process or,
        followed here, by another one sharing the Chroma server): no retrain plan keeps the rows whose texts
        came from them (a plan from before rift recorded rows' documents loses every row of `collection`). An
        interrupted retrain drops those rows and trains again from its start on the rest (its checkpoints
        learnt from them), or is dropped with a note when none is left; one already trained only forgets them.
        Unlike a deleted collection, a retrain still training is not cancelled: a routine file sync that prunes
        or edits a file would otherwise end an hour-long retrain. It trains on what it holds in memory, while
        its plan on disk loses those rows at once, so a shutdown meanwhile continues without them, from the
        start of training. Only a retrain left with no row at all is cancelled."""
        gone = set(doc_ids)
        models_dir = self.settings.models_dir
        if not gone or (self._live is None and self._mining_gone is None and not resume.versions(models_dir)):
            return  # (the common case, on every write that replaces a document: no plan, nothing read)
        with self._plan_lock:
            if self._mining_gone is not None:  # (a retrain mining: its plan, made next, drops them)
                self._mining_gone.setdefault(collection, set()).update(gone)
            live_version = None
            if self._live is not None:
                job, plan = self._live
                live_version = plan.version
                taken = plan.drop_rows_of_documents(collection, gone)
                if taken and resume.plan_path(models_dir, plan.version).exists():
                    resume.save(models_dir, plan, keep_mtime=True)
                if taken and not plan.rows and not plan.trained and job.status == "running":
                    why = (
                        f"cancelled: every training triple came from documents of collection {collection!r} "
                        "deleted or rewritten since mining; start a new retrain"
                    )
                    self.jobs.cancel(job.id)  # (lands at its next check: a training step)
                    job.error = why
                    log.warning("retrain job %s %s", job.id, why)
                elif taken:
                    log.info(
                        "retrain job %s: %d training triples came from documents of collection %r deleted or "
                        "rewritten; they left its plan (it goes on training on what it holds)",
                        job.id,
                        taken,
                        collection,
                    )
            self._scrub_pending(
                live_version,
                lambda plan: plan.drop_rows_of_documents(collection, gone),
                f"its training triples came from documents of collection {collection!r}, since deleted or rewritten",
            )

    def _scrub_pending(self, live_version: str | None, drop: Callable[[ResumePlan], int], why: str) -> None:
        """Apply `drop` to the plans on disk other than the running job's (under `_plan_lock`): an edited plan is
        saved, its checkpoints removed when it must train again from its start, and one left with nothing to
        train on is dropped with a note (`why`)."""
        models_dir = self.settings.models_dir
        for plan in resume.pending(models_dir, skip=live_version):
            if not drop(plan):
                continue
            if not plan.trained and not plan.rows:
                self._drop_plan(plan, why)
                continue
            if plan.restart:  # (its checkpoints learnt from the removed rows: never used again)
                shutil.rmtree(resume.checkpoint_dir(models_dir, plan.version), ignore_errors=True)
            resume.save(models_dir, plan, keep_mtime=True)  # (the newest plan is the one that continues)

    def _drop_plan(self, plan: ResumePlan, why: str) -> None:
        log.warning("not continuing interrupted retrain %s: %s", plan.version, why)
        resume.discard(self.settings.models_dir, plan.version)
        entry = self.registry.get(plan.version)
        if entry is None:  # stopped during training: the registry had no entry yet, so say so in a new one
            folder = self.settings.models_dir / plan.version
            if (folder / UNREGISTERED).is_file():  # (holds no registered weights)
                shutil.rmtree(folder, ignore_errors=True)
            note = f"interrupted during training; not continued: {why}"
            self.registry.add(self._candidate_entry(plan, dict(plan.config), note))  # (no weights were saved)
        elif entry.status == "failed":
            self.registry.update(plan.version, note=f"interrupted; not continued: {why}")

    def _gate_config(self) -> GateConfig:
        s = self.settings
        base = {
            "holdout_fraction": s.gate_holdout_fraction,
            "tolerance": s.gate_tolerance,
            "guard_tolerance": s.gate_guard_tolerance,
        }
        return GateConfig(**{**base, **self.gate_overrides})

    def _labelled(self) -> LabelledSet | None:
        s = self.settings
        ds = self._evaluation_set()
        if ds is None:
            return None
        if s.gate_eval_collection not in self.engine.collection_names():
            raise RiftError(
                f"gate_eval_collection {s.gate_eval_collection!r} does not exist; index gate_eval_data's corpus "
                "into it (document ids = the BEIR _id) or unset gate_eval_data"
            )
        return LabelledSet(s.gate_eval_collection, ds.queries, ds.qrels, f"{ds.name}/{s.gate_eval_split}")

    def _evaluation_set(self) -> Any:
        """The labelled set `gate_eval_data` names (read once; a `BeirDataset`), or None."""
        s = self.settings
        if s.gate_eval_data is None:
            return None
        from server.bench.beir import BenchError, load_beir

        key = (str(s.gate_eval_data), s.gate_eval_split)
        if self._labelled_data is None or self._labelled_data[0] != key:
            try:
                self._labelled_data = (key, load_beir(Path(s.gate_eval_data), s.gate_eval_split))
            except BenchError as exc:
                raise RiftError(
                    f"gate_eval_data {s.gate_eval_data} with gate_eval_split {s.gate_eval_split!r} cannot be read "
                    f"({exc}); fix or unset them"
                ) from None
        return self._labelled_data[1]

    def _retrain_job(
        self,
        job: Job,
        plan: ResumePlan,
        holdout: list,
        feedback: dict[str, dict[str, bool]],
        opened: dict[str, dict[str, bool]],
    ) -> dict[str, Any]:
        """Train (continuing from a checkpoint when there is one), gate and switch. The plan stays on disk
        while the job runs; it is removed when the job ends, unless a shutdown stopped it."""
        models_dir = self.settings.models_dir
        out_dir = models_dir / plan.version
        resumable = self.settings.learn_resume_interrupted
        cfg = TrainConfig(**plan.config)
        result: dict[str, Any] = dict(job.result)
        keep = False
        try:
            with self._plan_lock:
                self._live = (job, plan)
                # Collections deleted since mining (or while no server ran): their texts leave the plan.
                gone = set(plan.row_collections) - set(self.engine.collection_names())
                if gone:
                    plan.drop_rows_of(gone)
                # ... and documents deleted or rewritten while it mined (it may have read their old texts) ...
                written_meanwhile, self._mining_gone = self._mining_gone or {}, None
                for collection, docs in written_meanwhile.items():
                    plan.drop_rows_of_documents(collection, docs)
                # ... and documents deleted since (by a process that could not scrub the plan: one killed
                # between its deletion and the scrub).
                for collection, docs in plan.documents_of().items():
                    missing = docs - self.engine.state.doc_hashes(collection, sorted(docs)).keys()
                    if missing:
                        plan.drop_rows_of_documents(collection, missing)
                if plan.restart:  # (its checkpoints learnt from rows since removed)
                    shutil.rmtree(resume.checkpoint_dir(models_dir, plan.version), ignore_errors=True)
                    plan.restart = False
                if not plan.rows and not plan.trained:
                    raise RiftError("every training triple came from collections or documents deleted since mining")
                if resumable:
                    resume.save(models_dir, plan)
                    # (Under the lock: a scrub that read an older plan must not save it back after this.)
                    for older in resume.pending(models_dir, skip=plan.version):  # (left by a CLI command)
                        self._drop_plan(older, "a later retrain was started after it")
            entry = self.registry.get(plan.version) if plan.trained else None
            # What the weights learnt, for the gate: rows that leave the plan while training (a document
            # deleted meanwhile: see forget_documents) were learnt all the same.
            learnt = [tuple(row) for row in plan.rows]
            if entry is None:
                out_dir.mkdir(parents=True, exist_ok=True)
                (out_dir / UNREGISTERED).touch()
                job.enter("training")
                trained = train_model(
                    plan.base_location,
                    learnt,
                    out_dir,
                    cfg,
                    plan.query_prompt,
                    plan.document_prompt,
                    progress=job.progress,
                    should_stop=lambda: job.cancelled,
                    checkpoint_dir=resume.checkpoint_dir(models_dir, plan.version) if resumable else None,
                )
                if trained.cancelled:
                    raise JobCancelled()
                result["train"] = {
                    "triples": trained.examples,
                    "steps": trained.steps,
                    "seconds": round(trained.seconds, 2),
                    "device": trained.device,
                    "final_loss": trained.train_loss,  # (not "loss": that key names the loss function)
                    **({"resumed_at_step": trained.resumed_at_step} if trained.resumed_at_step else {}),
                }
                entry = self.registry.add(
                    self._candidate_entry(
                        plan, {**plan.config, **result["train"], **plan.learnt}, "candidate being evaluated"
                    )
                )
                (out_dir / UNREGISTERED).unlink(missing_ok=True)
                with self._plan_lock:  # (a deleted collection's rows no longer cancel it: it learnt them)
                    plan.trained, plan.result = True, dict(result)
                    if resumable:  # from here on a restart gates the saved weights instead of training again
                        resume.save(models_dir, plan)
                if resumable:
                    shutil.rmtree(resume.checkpoint_dir(models_dir, plan.version), ignore_errors=True)
            else:
                self.registry.update(plan.version, status="failed", note="candidate being evaluated")
                result = {**plan.result, **result}
            candidate = load_embedder(
                str(out_dir), plan.version, self.settings, self.registry.origin_model(entry)
            )
            entry.dimension = candidate.dimension
            trained = {normalized_query(row[0]) for row in learnt}
            return self._gate_and_switch(
                job, candidate, entry, holdout, feedback, result, force=False, trained_texts=trained, opened=opened
            )
        except BaseException as exc:
            # A shutdown, at any step, leaves the plan for the next start; a cancel or a failure does not. (A
            # job still running when the shutdown stops waiting for it fails on the closed stores instead of
            # stopping: that failure is the shutdown's too.)
            keep = resumable and job.shutting_down
            job.result = result  # what it got to (training, gate numbers) stays readable in retrain_status
            if not keep and self.registry.get(plan.version) is None:
                shutil.rmtree(out_dir, ignore_errors=True)
            elif not keep and disk_full_problem(exc):  # (a registered candidate that never served)
                with _logged("deleting the failed candidate's weights"):
                    self.delete_unservable_weights(versions={plan.version})
            raise
        finally:
            with self._plan_lock:
                self._live = None
                if not keep:
                    resume.discard(models_dir, plan.version)

    def _check_room_to_train(self, engine: Any, base_location: str) -> None:
        """Refuse a retrain on a disk that cannot take its weights (about 90 MB for MiniLM) and, with
        learn_resume_interrupted, its checkpoints on top of min_free_disk_mb: it failed only once it came to
        encoding, its weights written anyway."""
        folder = Path(base_location)
        try:
            weights = sum(
                f.stat().st_size for f in folder.rglob("*") if f.suffix in (".safetensors", ".bin") and f.is_file()
            )
        except OSError:
            weights = 0
        if not weights:  # a hub id (its files are in the hub's cache): the loaded model's own size
            with contextlib.suppress(Exception):
                model = engine.embedder.model
                weights = sum(p.numel() * p.element_size() for p in model.parameters())
        # Checkpoints hold the weights and the optimizer's two moments (3x), and the next is written before
        # the last goes: 7x at the peak, with the candidate's own weights.
        copies = 7 if self.settings.learn_resume_interrupted else 1
        engine.check_room(weights * copies, "a retrain")

    def _candidate_entry(self, plan: ResumePlan, train: dict[str, Any], note: str) -> ModelVersion:
        """A retrain's registry entry, "failed" until its gate and switch succeed."""
        return ModelVersion(
            version=plan.version,
            kind="fine-tune",
            location=plan.version,  # relative to the models dir (Registry.location_of)
            base_model=self._base_model_of(plan.parent),
            status="failed",
            created_at=time.time(),
            parent=plan.parent,
            strategy=plan.strategy,
            triples=int(train.get("triples", len(plan.rows))),  # (trained on; rows may leave the plan after)
            triples_by_type=plan.triples_by_type,
            train=train,
            note=note,
        )

    def _base_model_of(self, version: str | None) -> str:
        parent = self.registry.get(version) if version else None
        return parent.base_model if parent else self.settings.model

    def _gate_and_switch(
        self,
        job: Job,
        candidate: Any,
        entry: ModelVersion,
        holdout: list,
        feedback: dict,
        result: dict[str, Any],
        force: bool,
        trained_texts: set[str] | None = None,
        opened: dict | None = None,
    ) -> dict[str, Any]:
        engine = self.engine

        def progress(done: int, total: int) -> None:
            job.progress(done, total)
            job.check()

        try:
            job.enter("encoding")
            build_all(engine, candidate, progress)
            job.enter("gating", total=len(holdout))
            gate = Gate(engine, self._gate_config()).score(
                engine.embedder,
                candidate,
                holdout,
                feedback,
                self._labelled(),
                lambda: job.cancelled,
                job.progress,
                trained_texts or (),
                opened,
            )
            job.check()
            result["gate"] = gate.as_dict()
            if not gate.accepted and not force:
                drop_built(engine, candidate.version)
                self.registry.update(
                    entry.version,
                    status="rejected",
                    gate=gate.as_dict(),
                    note=gate.reason,
                    dimension=candidate.dimension,
                )
                result.update(status="rejected", version=entry.version)
                with _logged("deleting older rejected fine-tunes' weights"):
                    self._prune_unservable(decided=entry.version)  # (with learn_keep_rejected = 0, its own too)
                return result
            job.enter("switching")
            previous = switch_all(engine, candidate, keep_old=True)
        except BaseException as exc:
            # Each clean-up step on its own: on a full disk the registry's write fails too, and that must
            # neither leave the candidate's vectors behind nor replace the job's own error.
            current = self.registry.get(entry.version)
            cancelled = isinstance(exc, JobCancelled)
            why = "cancelled" if cancelled else f"interrupted ({type(exc).__name__}: {exc})"
            if current is not None and current.status == "failed" and entry.kind == "reindex":
                with _logged("noting the failed re-index in the registry"):
                    self.registry.update(
                        entry.version, note=(current.note or "").replace(IN_PROGRESS, f": {why}")
                    )
            resumes = job.shutting_down and self.settings.learn_resume_interrupted  # (see _retrain_job)
            if current is not None and current.status != "serving" and entry.kind == "fine-tune":
                note = "cancelled" if cancelled else f"failed ({type(exc).__name__}: {exc})"
                if resumes:
                    note = "interrupted by a shutdown: the gate runs again at the next start"
                with _logged("noting the failed candidate in the registry"):
                    self.registry.update(entry.version, status="failed", note=note)
                # Nothing of a cancelled candidate is worth keeping, nor of one a full disk stopped: its
                # weights go (about 90 MB for MiniLM).
                if (cancelled or disk_full_problem(exc)) and not resumes:
                    with _logged("deleting the failed candidate's weights"):
                        self.delete_unservable_weights(versions={entry.version})
            with _logged("dropping the candidate's vectors"):
                drop_built(engine, candidate.version)
            raise
        try:
            with _switched_back_on_failure(engine, previous, candidate):
                self.registry.update(
                    entry.version,
                    status="serving",
                    gate=result.get("gate", {}),
                    note=None,
                    dimension=candidate.dimension,
                )
        except BaseException as exc:
            # Else its note stayed "being evaluated" / "in progress", which the next start reads as a job the
            # server did not live to finish.
            with _logged("noting the undone switch in the registry"):
                # (The undo itself may have failed, logged: then say the candidate serves until a restart.)
                serving = engine.embedder.version == candidate.version
                how = "could not be undone: it serves until a restart" if serving else "was undone"
                undone = f"failed: its switch {how} ({type(exc).__name__}: {exc})"
                current = self.registry.get(entry.version)
                if entry.kind == "reindex" and current is not None and IN_PROGRESS in (current.note or ""):
                    undone = (current.note or "").replace(IN_PROGRESS, f": {undone}")
                self.registry.update(entry.version, status="failed", gate=result.get("gate", {}), note=undone)
            raise
        with _logged("deleting older versions' vectors and weights"):  # the next swap or start does it
            self._prune()
        self._rechunk(engine, job)
        result.update(status="succeeded", version=entry.version)
        return result

    def _rechunk(self, engine: Any, job: Job) -> None:
        """A model with a shorter sequence limit caps the chunk size: split stored documents again for it
        (a fine-tune keeps its base's limit, so after a retrain this is a no-op). The switch has happened,
        so this is a phase of its own that a cancel or a shutdown may cut short; a failure is logged; either
        way the next start finishes it."""
        if engine.shared is not None:
            return
        names = []
        for name in engine.collection_names():
            with contextlib.suppress(NotFoundError):
                if engine.chunking_changed(name):
                    names.append(name)
        if not names:  # (a fine-tune: its base's limit, nothing to do)
            return
        # Counted in documents across the collections, as the other phases count theirs: a large store takes
        # minutes here, and retrain_status should show it moving.
        counts = {name: engine.state.document_count(name) for name in names}
        total = sum(counts.values())
        try:
            job.enter("re-chunking", total=total)
        except JobCancelled:
            return
        before = 0
        for name in names:

            def progress(done: int, _of: int, before: int = before, name: str = name) -> None:
                # (clamped to the count taken above: documents added meanwhile must not push it past total)
                job.progress(before + min(done, counts[name]), total)

            try:
                engine.rechunk_if_changed(name, lambda: job.cancelled, progress)
            except NotFoundError:
                pass
            except Exception:
                log.exception("re-chunking collection %r for the new model failed; the next start retries", name)
            if job.cancelled:
                return
            before += counts[name]
            job.progress(before, total)  # (a collection deleted meanwhile, or cut already, counts as done)

    def _prune(self, engine: Any = None) -> None:
        """Keep Chroma vectors only for the most recently served versions (fast rollback to them), and the
        weights of the newest `learn_keep_weights` retired fine-tunes: each accepted retrain otherwise left
        ~90 MB on disk for good."""
        engine = engine or self.engine
        served = [v for v in self.registry.all() if v.status in ("serving", "retired")]
        served.sort(key=lambda v: v.served_at or v.created_at, reverse=True)
        keep = {v.version for v in self.registry.newest_served(self.settings.learn_keep_versions)}
        for v in self.registry.all():
            if v.version not in keep:
                drop_built(engine, v.version)
        # Retired versions that load weights from the models dir: fine-tunes, and re-indexes to a fine-tune's
        # folder (`rift reindex --model <data>/models/ft-…`). The newest learn_keep_weights of them keep theirs.
        registry = self.registry
        holders = [v for v in served if v.status == "retired" and registry.holds(registry.location_of(v))]
        keep |= {v.version for v in holders[: self.settings.learn_keep_weights]}
        kept = {registry.location_key(v) for v in holders if v.version in keep}
        # A folder something still loads stays: the configured `model` may name a fine-tune's folder (a base
        # version of that path then serves while the fine-tune's own entry is retired).
        in_use = kept | self._loaded_locations()
        deleted = [
            v.version
            for v in holders
            if v.kind == "fine-tune"
            and registry.location_key(v) not in in_use
            and self._delete_weights(v) is not None
        ]
        if deleted:
            prune_exports(self.settings.models_dir / "onnx")
            log.info("deleted the weights of %d older retired fine-tunes (learn_keep_weights)", len(deleted))
        self._prune_unservable()

    def _prune_unservable(self, decided: str | None = None) -> None:
        """Delete the weights of rejected and failed fine-tunes past the newest `learn_keep_rejected`: a server
        retraining on a policy otherwise kept ~90 MB (MiniLM) for every rejection, which `rift models --prune`
        could free only once the server stopped (found by helper BT). Never a candidate a job is evaluating or
        an interrupted retrain continues (`delete_unservable_weights` keeps folders a re-index loads). `decided`:
        the running job's candidate, just rejected: no longer pending, so it counts like the others."""
        pending = set(resume.versions(self.settings.models_dir))
        if self._live is not None:
            pending.add(self._live[1].version)
        pending.discard(decided)
        registry = self.registry
        unservable = [
            v
            for v in registry.all()
            if v.kind == "fine-tune"
            and v.status in ("rejected", "failed")
            and Path(registry.location_of(v)).is_dir()
        ]
        unservable.sort(key=lambda v: v.created_at, reverse=True)
        older = {
            v.version
            for v in unservable[self.settings.learn_keep_rejected :]
            if v.version not in pending and v.note != "candidate being evaluated"
        }
        if older and (deleted := self.delete_unservable_weights(older)["deleted"]):
            log.info(
                "deleted the weights of %d older rejected or failed fine-tunes (learn_keep_rejected)", len(deleted)
            )

    def _loaded_locations(self) -> set[str]:
        """Model folders something loads now or at the next start: the configured `model`, every serving
        version's location, and the folder this process's model was loaded from."""
        # And the folder the process serves from now: after a switch whose undo failed too, a failed fine-tune
        # serves until a restart, and later retrains read that folder as their base.
        engine = getattr(self.rift, "_engine", None)
        spec = getattr(getattr(engine, "embedder", None), "spec", None)
        now = {model_key(spec.location)} if spec is not None else set()
        return now | {model_key(self.settings.model_location)} | {
            self.registry.location_key(v) for v in self.registry.all() if v.status == "serving"
        }

    # --- rollback / reindex --------------------------------------------------------------------------------

    def rollback(self, version: str | None = None) -> dict[str, Any]:
        target = self.registry.rollback_target(version, self.settings.model)

        def work(job: Job) -> dict[str, Any]:
            job.enter("loading")
            origin = self.registry.origin_model(target) if target.kind == "fine-tune" else None
            location = self.registry.location_of(target)
            moved = target.version if target.kind == "base" and location != target.version else None
            try:
                embedder = load_embedder(location, target.version, self.settings, origin, moved)
            except Exception as exc:
                raise RiftError(
                    f"cannot load version {target.version!r} from {location}: {describe_load_failure(location, exc)}"
                ) from None

            def progress(done: int, total: int) -> None:
                job.progress(done, total)
                job.check()

            job.enter("encoding")
            build_all(self.engine, embedder, progress)
            job.enter("switching")
            previous = switch_all(self.engine, embedder, keep_old=True)
            with _switched_back_on_failure(self.engine, previous, embedder, drop=False):
                self.registry.set_serving(target.version)
            with _logged("deleting older versions' vectors and weights"):
                self._prune()
            self._rechunk(self.engine, job)
            return {"status": "succeeded", "version": target.version}

        job = self.jobs.start("rollback", {"version": target.version}, work)
        return {"job_id": job.id, "status": job.status, "version": target.version}

    def reindex(self, model: str) -> dict[str, Any]:
        """Re-embed every collection with any sentence-transformers model (hub name or folder) and serve it.
        The user chose the model, so the gate's numbers are recorded but do not block the swap."""
        if not isinstance(model, str) or not model.strip():
            raise RiftError("model must be a sentence-transformers model name or a local folder")
        parent = self.registry.serving()
        version = new_version_id("reindex")

        def work(job: Job) -> dict[str, Any]:
            job.enter("loading")
            try:
                embedder = load_embedder(model, version, self.settings)
            except Exception as exc:
                raise RiftError(f"cannot load model {model!r}: {describe_load_failure(model, exc)}") from None
            # The packaged model by its name, as the configured default is: its folder lies inside the venv,
            # whose path changes when the venv is made again (another Python), so the path would not load then.
            packaged = model.strip().lower() in PACKAGED_ALIASES
            entry = self.registry.add(
                ModelVersion(
                    version=version,
                    kind="reindex",
                    location=model.strip() if packaged else embedder.spec.location,
                    base_model=parent.base_model if parent else self.settings.model,
                    status="failed",
                    created_at=time.time(),
                    parent=parent.version if parent else None,
                    dimension=embedder.dimension,
                    note=f"re-index with {model}{IN_PROGRESS}",
                )
            )
            holdout = list(self.log.by_ids([q.query_id for q in self.log.heads()[-200:]]))
            feedback, opened = held_out_signals(self.engine, holdout, self.log)
            return self._gate_and_switch(job, embedder, entry, holdout, feedback, {}, force=True, opened=opened)

        job = self.jobs.start("reindex", {"model": model, "version": version}, work)
        return {"job_id": job.id, "status": job.status, "version": version}

    # --- reporting -----------------------------------------------------------------------------------------

    def status(self, job_id: str | None = None) -> dict[str, Any]:
        return self.jobs.get(job_id).snapshot()

    def cancel(self, job_id: str) -> dict[str, Any]:
        return self.jobs.cancel(job_id).snapshot()

    def models(self) -> list[dict[str, Any]]:
        return [asdict(v) for v in reversed(self.registry.all())]

    def delete_unservable_weights(self, versions: set[str] | None = None) -> dict[str, Any]:
        """Delete the weight folders of rejected and failed fine-tunes (or of the named ones among them), which
        can never serve (rollback refuses them): about 90 MB each for MiniLM. Their registry entries, with the
        gate's numbers, stay."""
        if versions is None and self.jobs.running is not None:
            raise RiftError("a retrain, rollback or reindex is running; prune once it has finished")
        deleted: list[dict[str, Any]] = []
        pending = set(resume.versions(self.settings.models_dir)) if versions is None else set()
        # A re-index may serve (or, retired, serve again) from a rejected candidate's folder: those stay.
        in_use = self._loaded_locations() | {
            self.registry.location_key(v)
            for v in self.registry.all()
            if v.kind != "fine-tune" and v.status == "retired"
        }
        for v in self.registry.all():
            if v.kind != "fine-tune" or v.status not in ("rejected", "failed") or v.version in pending:
                continue  # (a pending one is an interrupted retrain's candidate: the next server gates it)
            if versions is not None and v.version not in versions:
                continue
            if self.registry.location_key(v) in in_use:
                continue
            size = self._delete_weights(v)
            if size is not None:
                deleted.append({"version": v.version, "status": v.status, "bytes": size})
        if deleted:
            prune_exports(self.settings.models_dir / "onnx")  # their ONNX exports (embed_backend = "onnx")
        return {"deleted": deleted, "freed_bytes": sum(d["bytes"] for d in deleted)}

    def _delete_weights(self, v: ModelVersion) -> int | None:
        """Delete a fine-tune's weight folder and note it in the registry; the bytes freed, or None when it was
        already gone or is not a folder rift made."""
        path = Path(self.registry.location_of(v))
        if not path.is_dir() or not self.registry.holds(path):
            return None
        size = sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
        shutil.rmtree(path)
        gone = model_key(str(path))
        for other in self.registry.all():  # itself, and any re-index that loaded this folder
            if other.version == v.version or self.registry.location_key(other) == gone:
                self.registry.update(other.version, note="; ".join(n for n in (other.note, WEIGHTS_DELETED) if n))
        return size

    def stats(self) -> dict[str, Any]:
        serving = self.registry.serving()
        running = self.jobs.running
        return {
            "serving_version": serving.version if serving else None,
            "versions": len(self.registry.all()),
            "strategy": self.settings.learn_strategy,
            "running_job": running.snapshot() if running else None,
            "interrupted_retrain": self._interrupted(running),
            "policy": self.policy.describe(),
        }

    def _why_not_continued(self, plan: ResumePlan) -> tuple[bool, str | None]:
        """Whether the newest plan `plan` had already ended (its gate decided before the stop), and why the next
        server start does not continue it; (False, None) when it does."""
        entry = self.registry.get(plan.version)
        if entry is not None and entry.status in ("serving", "rejected"):
            return True, f"its candidate was {'switched in' if entry.status == 'serving' else 'rejected'}"
        if not self.settings.learn_resume_interrupted:
            return False, "learn_resume_interrupted is off"
        serving = self.registry.serving()
        if (serving.version if serving else None) != plan.parent:
            return False, f"the model it started from ({plan.parent}) no longer serves"
        if plan.trained and not (self.settings.models_dir / plan.version).is_dir():
            return False, "its trained weights were deleted"
        return False, None

    def _interrupted(self, running: Job | None) -> dict[str, Any] | None:
        """A retrain the next server start continues (none while a job runs: that is the one continuing), or
        one it drops, saying why."""
        if running is not None:
            return None
        plans = resume.pending(self.settings.models_dir)
        if not plans:
            return None
        plan = plans[-1]
        ended, why_not = self._why_not_continued(plan)
        if ended:  # (its plan is only left over: the next start removes it)
            return None
        if why_not is not None:
            return {"version": plan.version, "triples": len(plan.rows), "dropped_at_next_server_start": why_not}
        step = self._checkpoint(plan)
        return {
            "version": plan.version,
            "triples": len(plan.rows),
            "continues_from": "the gate (weights trained)"
            if plan.trained
            else f"training step {training.checkpoint_step(step)}"
            if step
            else "the start of training",
            "continues_at_next_server_start": self.settings.learn_resume_interrupted,
        }
