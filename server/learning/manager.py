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
import shutil
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from server.engine.models import describe_load_failure
from server.errors import NotFoundError, RiftError
from server.learning.gate import Gate, GateConfig, LabelledSet
from server.learning.jobs import Job, JobCancelled, JobRunner
from server.learning.mining import STRATEGIES, MiningConfig
from server.learning.pipeline import (
    build_all,
    collect_and_mine,
    drop_built,
    load_embedder,
    materialize,
    switch_all,
)
from server.learning.policy import Policy
from server.learning.registry import ModelVersion, Registry, new_version_id
from server.learning.training import TrainConfig, train_model

log = logging.getLogger(__name__)
# A re-index entry stays "failed" with this note suffix until it serves; a stop replaces the suffix with why.
IN_PROGRESS = ": in progress"


class LearningManager:
    def __init__(self, rift: Any) -> None:
        self.rift = rift
        self.settings = rift.settings
        self.registry = Registry(self.settings.models_dir)
        self.jobs = JobRunner()
        self.policy = Policy(self)
        self.gate_overrides: dict[str, Any] = {}  # GateConfig fields without a setting (tests, experiments)
        self._labelled_data: tuple[tuple[str, str], Any] | None = None  # gate_eval_data, read once

    def start(self, engine: Any) -> None:
        """`engine` is the one being opened (the app is not ready yet, so `self.engine` would wait for it)."""
        self._clear_interrupted(engine)
        self.policy.start()

    def _clear_interrupted(self, engine: Any) -> None:
        """A job the process did not live to finish left its candidate marked "being evaluated" and, maybe, half
        its vectors: say what happened, and drop those vectors (only serving or retired versions keep any)."""
        for v in self.registry.all():
            if v.status == "failed" and v.note == "candidate being evaluated":
                self.registry.update(v.version, note="interrupted: the server stopped during the job")
            elif v.status == "failed" and v.note and v.note.endswith(IN_PROGRESS):
                self.registry.update(
                    v.version,
                    note=v.note.replace(IN_PROGRESS, ": interrupted: the server stopped during the job"),
                )
        with contextlib.suppress(Exception):  # a cleanup: never a reason not to start
            self._prune(engine)
            for scratch in self.settings.models_dir.glob(".*.trainer"):  # a killed training's work folder
                shutil.rmtree(scratch, ignore_errors=True)

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
        if not isinstance(query_id, str) or not query_id.strip():
            raise RiftError("query_id must be the query_id returned by hybrid_search")
        if not isinstance(doc_id, str) or not doc_id.strip():
            raise RiftError("doc_id must be a document id from that search's results")
        if not isinstance(relevant, bool):
            raise RiftError("relevant must be true or false")
        logged = self.log.get(query_id)
        if logged is None:
            raise NotFoundError(
                f"unknown query_id {query_id!r}: give the query_id a hybrid_search result returned "
                "(searches in vector or keyword mode are not logged)"
            )
        shown = set(logged.fused) | {d for d, _, _ in logged.vector} | {d for d, _, _ in logged.keyword}
        if doc_id not in shown:
            raise RiftError(
                f"doc_id {doc_id!r} was not among the results or candidates of query {query_id!r}; "
                f"results were: {', '.join(logged.fused[:10]) or 'none'}"
            )
        replaced = self.log.add_feedback(query_id, doc_id, relevant)
        return {"query_id": query_id, "doc_id": doc_id, "relevant": relevant, "replaced": replaced}

    # --- retrain -------------------------------------------------------------------------------------------

    def _configs(self, strategy: str | None, negatives: int | None) -> tuple[MiningConfig, GateConfig]:
        s = self.settings
        strategy = strategy or s.learn_strategy
        if strategy not in STRATEGIES:
            raise RiftError(f"strategy must be one of {', '.join(STRATEGIES)}")
        mining = MiningConfig(
            strategy=strategy,
            negatives_per_query=negatives or s.learn_negatives_per_query,
            positive_min_keyword_margin=s.learn_positive_min_keyword_margin,
            negative_source=s.learn_negative_source,
            fusion_k=s.rrf_k,
            fusion_weights=(s.vector_weight, s.keyword_weight),
        )
        return mining, self._gate_config()

    def mine(
        self, strategy: str | None = None, negatives_per_query: int | None = None
    ) -> tuple[Any, list, list]:
        mining, gate = self._configs(strategy, negatives_per_query)
        mined = collect_and_mine(self.log, self.engine, mining, gate)
        rows, kept = materialize(self.engine, mined.report.triples)
        mined.report.triples = kept
        return mined, rows, kept

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
    ) -> dict[str, Any]:
        s = self.settings
        for name, value, low, high in (
            ("epochs", epochs, 0.01, 20),
            ("learning_rate", learning_rate, 1e-8, 1e-3),
            ("batch_size", batch_size, 2, 4096),
            ("min_triples", min_triples, 1, 10_000_000),
            ("merge_base", merge_base, 0.0, 1.0),
        ):
            if value is not None and not (low <= value <= high):
                raise RiftError(f"{name} must be between {low} and {high}")
        running = self.jobs.running
        if running is not None and not dry_run:
            raise RiftError(
                f"a {running.kind} job is already running (job_id {running.id}); one job at a time"
            )
        if not dry_run:
            self._labelled()  # a wrong gate_eval_data fails now, not after training and re-encoding
        mining_started = time.perf_counter()
        mined, rows, kept = self.mine(strategy, negatives_per_query)
        summary = mined.report.summary(examples)
        summary.update(train_queries=len(mined.train_queries), holdout_queries=len(mined.holdout))
        if dry_run:
            return {"job_id": None, "status": "dry_run", "mining": summary}
        need = min_triples if min_triples is not None else s.learn_min_triples
        if len(rows) < need:
            raise RiftError(
                f"only {len(rows)} training triples from {len(mined.train_queries)} logged queries; min_triples is "
                f"{need}. Search more, give feedback, or lower min_triples"
            )
        cfg = TrainConfig(
            epochs=epochs or s.learn_epochs,
            learning_rate=learning_rate or s.learn_learning_rate,
            batch_size=batch_size or s.learn_batch_size,
            loss=s.learn_loss,
            max_seq_length=s.learn_max_seq_length,
            device=s.device,
            merge_base=s.learn_merge_base if merge_base is None else merge_base,
        )
        params = {"strategy": mined.report.strategy, "source": source, **asdict(cfg)}
        self.policy.note_started()

        def work(job: Job) -> dict[str, Any]:
            return self._retrain_job(job, mined, rows, cfg)

        job = self.jobs.start(
            "retrain",
            params,
            work,
            done_phases={"mining": time.perf_counter() - mining_started},
            result={"mining": {k: v for k, v in summary.items() if k != "examples"}},
        )
        return {"job_id": job.id, "status": job.status, "mining": summary}

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
        ds = self._labelled_data[1]
        if s.gate_eval_collection not in self.engine.collection_names():
            raise RiftError(
                f"gate_eval_collection {s.gate_eval_collection!r} does not exist; index gate_eval_data's corpus "
                "into it (document ids = the BEIR _id) or unset gate_eval_data"
            )
        return LabelledSet(s.gate_eval_collection, ds.queries, ds.qrels, f"{ds.name}/{s.gate_eval_split}")

    def _retrain_job(self, job: Job, mined: Any, rows: list, cfg: TrainConfig) -> dict[str, Any]:
        engine = self.engine
        serving = engine.embedder
        parent = self.registry.serving()
        version = new_version_id("fine-tune")
        out_dir = self.settings.models_dir / version
        job.enter("training")
        result: dict[str, Any] = dict(job.result)
        try:
            trained = train_model(
                serving.spec.location,
                rows,
                out_dir,
                cfg,
                serving.query_prompt,
                serving.document_prompt,
                progress=job.progress,
                should_stop=lambda: job.cancelled,
            )
            if trained.cancelled:
                raise JobCancelled()
        except BaseException:
            shutil.rmtree(out_dir, ignore_errors=True)
            raise
        result["train"] = {
            "triples": trained.examples,
            "steps": trained.steps,
            "seconds": round(trained.seconds, 2),
            "device": trained.device,
            "loss": trained.train_loss,
        }
        entry = self.registry.add(
            ModelVersion(
                version=version,
                kind="fine-tune",
                location=version,  # relative to the models dir (Registry.location_of)
                base_model=parent.base_model if parent else self.settings.model,
                status="failed",
                created_at=time.time(),
                parent=parent.version if parent else None,
                strategy=mined.report.strategy,
                triples=len(rows),
                triples_by_type=mined.report.counts_by_type(),
                train={**asdict(cfg), **result["train"]},
                note="candidate being evaluated",
            )
        )
        candidate = load_embedder(str(out_dir), version, self.settings)
        entry.dimension = candidate.dimension
        return self._gate_and_switch(
            job, candidate, entry, mined.holdout, mined.feedback, result, force=False
        )

    def _gate_and_switch(
        self,
        job: Job,
        candidate: Any,
        entry: ModelVersion,
        holdout: list,
        feedback: dict,
        result: dict[str, Any],
        force: bool,
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
                engine.embedder, candidate, holdout, feedback, self._labelled(), lambda: job.cancelled
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
                return result
            job.enter("switching")
            switch_all(engine, candidate, keep_old=True)
        except BaseException as exc:
            current = self.registry.get(entry.version)
            cancelled = isinstance(exc, JobCancelled)
            why = "cancelled" if cancelled else f"interrupted ({type(exc).__name__}: {exc})"
            if current is not None and current.status == "failed" and entry.kind == "reindex":
                self.registry.update(
                    entry.version, note=(current.note or "").replace(IN_PROGRESS, f": {why}")
                )
            if current is not None and current.status != "serving" and entry.kind == "fine-tune":
                self.registry.update(
                    entry.version, status="failed", note="cancelled" if cancelled else "interrupted"
                )
                if cancelled:  # nothing of a cancelled candidate is worth keeping: its weights go now
                    with contextlib.suppress(Exception):
                        self.delete_unservable_weights(versions={entry.version})
            drop_built(engine, candidate.version)
            raise
        self.registry.update(
            entry.version,
            status="serving",
            gate=result.get("gate", {}),
            note=None,
            dimension=candidate.dimension,
        )
        self._prune()
        result.update(status="succeeded", version=entry.version)
        return result

    def _prune(self, engine: Any = None) -> None:
        """Keep Chroma vectors only for the most recently served versions (fast rollback to them)."""
        engine = engine or self.engine
        served = [v for v in self.registry.all() if v.status in ("serving", "retired")]
        served.sort(key=lambda v: v.served_at or v.created_at, reverse=True)
        keep = {v.version for v in served[: self.settings.learn_keep_versions]}
        for v in self.registry.all():
            if v.version not in keep:
                drop_built(engine, v.version)

    # --- rollback / reindex --------------------------------------------------------------------------------

    def rollback(self, version: str | None = None) -> dict[str, Any]:
        target = self.registry.rollback_target(version)

        def work(job: Job) -> dict[str, Any]:
            job.enter("loading")
            embedder = load_embedder(self.registry.location_of(target), target.version, self.settings)

            def progress(done: int, total: int) -> None:
                job.progress(done, total)
                job.check()

            job.enter("encoding")
            build_all(self.engine, embedder, progress)
            job.enter("switching")
            switch_all(self.engine, embedder, keep_old=True)
            self.registry.set_serving(target.version)
            self._prune()
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
            entry = self.registry.add(
                ModelVersion(
                    version=version,
                    kind="reindex",
                    location=embedder.spec.location,
                    base_model=parent.base_model if parent else self.settings.model,
                    status="failed",
                    created_at=time.time(),
                    parent=parent.version if parent else None,
                    dimension=embedder.dimension,
                    note=f"re-index with {model}{IN_PROGRESS}",
                )
            )
            holdout = list(self.log.iter_queries())[-200:]
            return self._gate_and_switch(
                job, embedder, entry, holdout, self.log.feedback_map(), {}, force=True
            )

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
        for v in self.registry.all():
            if v.kind != "fine-tune" or v.status not in ("rejected", "failed"):
                continue
            if versions is not None and v.version not in versions:
                continue
            path = Path(self.registry.location_of(v))
            if not path.is_dir() or self.registry.dir.resolve() not in path.resolve().parents:
                continue  # already gone, or not a folder rift made
            size = sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
            shutil.rmtree(path)
            note = "; ".join(n for n in (v.note, "weights deleted") if n)
            self.registry.update(v.version, note=note)
            deleted.append({"version": v.version, "status": v.status, "bytes": size})
        return {"deleted": deleted, "freed_bytes": sum(d["bytes"] for d in deleted)}

    def stats(self) -> dict[str, Any]:
        serving = self.registry.serving()
        running = self.jobs.running
        return {
            "serving_version": serving.version if serving else None,
            "versions": len(self.registry.all()),
            "strategy": self.settings.learn_strategy,
            "running_job": running.snapshot() if running else None,
            "policy": self.policy.describe(),
        }
