"""`rift stats` for a reader: the JSON that the `stats` tool returns, as a few labelled lines and a table of
collections (`rift stats --json` prints the JSON itself)."""

from __future__ import annotations

import time
from typing import Any


def size(n: int) -> str:
    """Bytes as a reader counts them (binary units, one decimal past KiB)."""
    if n < 1024:
        return f"{n} B"
    value = float(n)
    for unit in ("KiB", "MiB", "GiB", "TiB"):
        value /= 1024
        if value < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "KiB" else f"{value:.1f} {unit}"
    raise AssertionError("unreachable")


def share(value: float | None) -> str:
    return "-" if value is None else f"{value * 100:.0f} %"


def when(at: float | None) -> str:
    return "never" if at is None else time.strftime("%Y-%m-%d %H:%M", time.localtime(at))


def collection_rows(collections: list[dict[str, Any]], serving: str | None) -> list[list[str]]:
    """The collections table: a header, then one row per collection. The last column names a collection's
    problem, else a model version other than the one serving (a re-embed not finished), else nothing."""
    rows = [["COLLECTION", "DOCUMENTS", "CHUNKS", "SEARCHES", "OVERLAP", "VECTOR-ONLY", "KEYWORD-ONLY", "FEEDBACK", "NOTE"]]
    for c in collections:
        q = c.get("queries") or {}
        overlap = q.get("mean_top_overlap")
        note = c.get("problem") or ""
        if not note and serving is not None and c.get("model_version") not in (None, serving):
            note = f"embedded with version {c['model_version']}"
        rows.append(
            [
                c["name"],
                f"{c['documents']:,}",
                f"{c['chunks']:,}",
                f"{q.get('logged_queries', 0):,}" if q else "-",
                "-" if overlap is None else f"{overlap:.2f}",
                share(q.get("share_with_vector_blind_spots")),
                share(q.get("share_with_keyword_blind_spots")),
                f"{q.get('feedback_labels', 0):,}" if q else "-",
                note,
            ]
        )
    return rows


def search_lines(q: dict[str, Any] | None, logging_enabled: bool) -> list[str]:
    if not logging_enabled:
        return ["searches     not logged (log_queries is off): nothing to learn from"]
    if not q:
        return []
    n = q["logged_queries"]
    lines = [
        f"searches     {n:,} logged, {q['feedback_labels']:,} feedback verdicts"
        + (
            f"; {q['queries_not_compared']:,} not compared ({q['queries_without_keyword_terms']:,} without keyword terms)"
            if q["queries_not_compared"]
            else ""
        )
    ]
    if q.get("mean_top_overlap") is not None:
        lines.append(
            f"disagreement top-k overlap {q['mean_top_overlap']:.2f}; vector-only hits in "
            f"{share(q['share_with_vector_blind_spots'])} of searches ({q['mean_vector_blind_spots']:.1f} a search), "
            f"keyword-only in {share(q['share_with_keyword_blind_spots'])} ({q['mean_keyword_blind_spots']:.1f})"
        )
    return lines


def policy_line(p: dict[str, Any]) -> str:
    if not p.get("enabled"):
        return "periodic     off (learn_auto_after_queries, learn_auto_interval_hours)"
    due = []
    if p.get("after_queries") is not None:
        so_far = p.get("new_queries_since_last_retrain")
        due.append(f"after {p['after_queries']:,} new searches" + (f" ({so_far:,} so far)" if so_far is not None else ""))
    if p.get("interval_hours") is not None:
        due.append(f"every {p['interval_hours']:g} h with new searches")
    line = f"periodic     {' or '.join(due)}, with at least {p['min_triples']:,} triples; last retrain {when(p.get('last_retrain'))}"
    if p.get("last_check") is not None:
        line += f"; checked {when(p['last_check'])}: {p.get('last_outcome')}"
    action = p.get("last_action")
    if action and action.get("outcome") != p.get("last_outcome"):
        line += f"; last started or skipped {when(action.get('at'))}: {action.get('outcome')}"
    return line


def learning_lines(learning: dict[str, Any] | None) -> list[str]:
    if learning is None:
        return []
    versions = learning["versions"]
    lines = [
        f"learning     serving {learning['serving_version']} ({versions:,} version{'s' if versions != 1 else ''} "
        f"in the registry: rift models); mining strategy {learning['strategy']}"
    ]
    job = learning.get("running_job")
    if job:
        progress = job.get("progress") or {}
        counted = f", {progress['done']:,} of {progress['total']:,}" if progress.get("total") else ""
        stopping = " (cancelled, stopping)" if job.get("cancel_requested") else ""
        lines.append(f"job          {job['kind']} {job['job_id']} {job['status']}{stopping}: {job['phase']}{counted}, {job['elapsed_s']:.0f} s")
    cut = learning.get("interrupted_retrain")
    if cut:
        if "dropped_at_next_server_start" in cut:
            fate = f"dropped at the next server start: {cut['dropped_at_next_server_start']}"
        elif cut.get("continues_at_next_server_start"):
            fate = f"the next server start continues it from {cut['continues_from']}"
        else:
            fate = f"stopped at {cut['continues_from']}"
        lines.append(f"interrupted  retrain {cut['version']} ({cut['triples']:,} triples): {fate}")
    if learning.get("policy"):
        lines.append(policy_line(learning["policy"]))
    return lines


def stats_text(s: dict[str, Any]) -> tuple[list[str], list[list[str]], list[str]]:
    """The lines above the collections table, the table's rows, and the lines below it."""
    prompt = s.get("query_prompt") or ""
    head = [
        f"model        {s['model']} ({s['dimension']}-d, version {s['model_version']})",
        f"query prompt {prompt!r}" if prompt else "query prompt none",
    ]
    if s.get("query_prompt_because"):
        head[-1] += f": {s['query_prompt_because']}"
    sizes = s.get("index_bytes") or {}
    where = "embedded Chroma" if s.get("vector_backend") == "embedded" else "a Chroma server"
    stored = ", ".join(
        f"{size(sizes[k])} {label}"
        for k, label in (("chroma", "vectors"), ("state_sqlite", "state"), ("query_log_sqlite", "search log"))
        if sizes.get(k)
    )
    head.append(f"data dir     {s['data_dir']} ({where}{': ' + stored if stored else ''})")
    if s.get("chroma_unreachable"):
        head.append(f"UNREACHABLE  {s['chroma_unreachable']}")
    serving = (s.get("learning") or {}).get("serving_version") or s.get("model_version")
    rows = collection_rows(s.get("collections") or [], serving)
    tail = search_lines(s.get("queries"), s.get("logging_enabled", True)) + learning_lines(s.get("learning"))
    tail.append(f"started in   {s.get('load_seconds', 0):.1f} s")
    return head, rows, tail
