"""What `rift retrain`, `rift rollback` and `rift reindex` print for a reader when their job ends (and `rift
retrain --dry-run`): a headline, then the mining, training and gate figures, one labelled line each. `--json`
prints the job's status as the `retrain_status` tool returns it."""

from __future__ import annotations

from typing import Any


def counts(by: dict[str, int] | None) -> str:
    return ", ".join(f"{k} {v:,}" for k, v in (by or {}).items())


def mining_lines(m: dict[str, Any]) -> list[str]:
    """The miner's counts: triples by kind, searches read and held out, and why searches gave none."""
    by_type = counts(m.get("by_type"))
    held = f"{m.get('holdout_queries', 0):,} held out for the gate"
    signals = [f"{m[k]:,} with {what}" for k, what in (("holdout_with_feedback", "feedback"), ("holdout_with_opens", "opens")) if m.get(k)]
    if signals:
        held += f" ({', '.join(signals)})"
    lines = [
        f"mined     {m.get('triples', 0):,} triples{f' ({by_type})' if by_type else ''} from "
        f"{m.get('train_queries', m.get('queries_seen', 0)):,} searches; {held}"
    ]
    left = [
        f"{m[k]:,} {what}"
        for k, what in (
            ("already_learnt_queries", "searches the serving model already learnt"),
            ("evaluation_queries_left_out", "searches of the labelled evaluation set's queries"),
        )
        if m.get(k)
    ]
    if left:
        lines.append(f"left out  {'; '.join(left)}")
    if m.get("skipped"):
        lines.append(f"skipped   {counts(m['skipped'])}")
    return lines


def gate_lines(g: dict[str, Any]) -> list[str]:
    """The gate's verdict, its basis and reason, then each signal before and after."""
    lines = [
        f"gate      {'accepted' if g.get('accepted') else 'rejected'} ({g.get('basis', '?')}, "
        f"{g.get('holdout_queries', 0):,} held-out searches): {g.get('reason', '')}"
    ]
    serving, candidate, delta = g.get("serving") or {}, g.get("candidate") or {}, g.get("delta") or {}
    figures = [
        f"{k} {serving[k]:.4f} → {candidate[k]:.4f} ({delta[k]:+.4f})"
        for k in delta
        if isinstance(serving.get(k), int | float) and isinstance(candidate.get(k), int | float)
    ]
    if isinstance(g.get("stability@10"), int | float):
        figures.append(f"stability@10 {g['stability@10']:.2f}")
    if figures:
        lines.append("          " + "; ".join(figures))
    return lines


def job_lines(snap: dict[str, Any]) -> list[str]:
    """A finished job's status (`retrain_status`'s payload) for a reader."""
    kind, status = snap.get("kind", "job"), snap.get("status")
    result = snap.get("result") or {}
    version = result.get("version")
    head = f"{kind} {snap.get('job_id')} {status} in {snap.get('elapsed_s', 0):.1f} s"
    if status == "succeeded":
        head += f": {version} serves" if version else ""
    elif status == "rejected":
        head += f": {version} is kept as rejected, the serving model is unchanged" if version else ""
    elif snap.get("error"):
        head += f": {snap['error']}"
    lines = [head]
    if result.get("mining"):
        lines += mining_lines(result["mining"])
    train = result.get("train")
    if train:
        params = snap.get("params") or {}
        recipe = ", ".join(
            f"{label} {params[k]:g}" for k, label in (("epochs", "epochs"), ("learning_rate", "lr"), ("batch_size", "batch")) if k in params
        )
        lines.append(
            f"trained   {train.get('triples', 0):,} triples, {train.get('steps', 0):,} steps in "
            f"{train.get('seconds', 0):.1f} s on {train.get('device', '?')}{f' ({recipe})' if recipe else ''}"
        )
    if result.get("gate"):
        lines += gate_lines(result["gate"])
    phases = snap.get("phases") or []
    if phases:
        lines.append("phases    " + ", ".join(f"{p['phase']} {p.get('seconds', 0):.1f} s" for p in phases))
    return lines


def dry_run_lines(dry: dict[str, Any]) -> list[str]:
    """`retrain(dry_run=true)`'s answer for a reader: whether it would train, the counts, a few examples."""
    lines = ["would train: yes" if dry.get("would_train") else f"would train: no: {dry.get('refusal')}"]
    mining = dry.get("mining") or {}
    lines += mining_lines(mining)
    for i, ex in enumerate(mining.get("examples") or []):
        label = "examples  " if i == 0 else "          "
        against = f" over {ex['negative_doc']}" if ex.get("negative_doc") else ""
        lines.append(f"{label}{ex.get('query')!r}: {ex.get('positive_doc')}{against} ({ex.get('kind')})")
    return lines
