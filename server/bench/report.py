"""Output of a bench run: one JSON line with stable keys, a markdown rendering, and an optional plot."""

from __future__ import annotations

import json
import os
import platform
import resource
from pathlib import Path
from typing import Any

SCHEMA = "rift-bench/1"


def machine() -> dict[str, Any]:
    try:
        import psutil

        memory_gib = round(psutil.virtual_memory().total / 2**30, 1)
    except ImportError:  # psutil comes with chromadb; tolerate its absence anyway
        memory_gib = None
    import torch

    return {
        "cpus": os.cpu_count(),
        "memory_gib": memory_gib,
        "platform": platform.platform(terse=True),
        "processor": platform.processor() or platform.machine(),
        "python": platform.python_version(),
        "torch_threads": torch.get_num_threads(),
    }


def peak_rss_mib() -> float:
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)  # Linux reports KiB


def json_line(result: dict[str, Any]) -> str:
    return json.dumps({"schema": SCHEMA, **result}, sort_keys=True, ensure_ascii=False, default=str)


def _table(headers: list[str], rows: list[list[Any]]) -> list[str]:
    def cell(v: Any) -> str:
        if v is None:
            return "–"
        if isinstance(v, float):
            return f"{v:.4f}" if abs(v) < 1 else f"{v:.1f}" if abs(v) >= 100 else f"{v:.2f}"
        return str(v)

    out = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    out += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return out


def markdown(result: dict[str, Any]) -> str:
    lines: list[str] = []
    ds = result.get("dataset")
    if ds:
        lines.append(
            f"**{ds['name']}** ({ds['split']}): {ds['documents']:,} documents, {ds.get('chunks', 0):,} chunks, "
            f"{ds['queries']:,} queries; model `{result.get('model')}`"
        )
        lines.append("")
    quality = result.get("quality") or []
    if quality:
        lines += _table(
            ["mode", "depth", "rrf_k", "weights (v,k)", "nDCG@10", "Recall@100", "MRR@10"],
            [
                [
                    r["mode"],
                    r["depth"],
                    f"{r['rrf_k']:g}" if r["mode"] == "hybrid" else None,
                    ",".join(f"{w:g}" for w in r["weights"]) if r["mode"] == "hybrid" else None,
                    r["ndcg@10"],
                    r["recall@100"],
                    r["mrr@10"],
                ]
                for r in quality
            ],
        )
        lines.append("")
    latency = result.get("latency")
    if latency:
        modes = latency["search"]
        parts = ["embed_ms", "vector_ms", "keyword_ms", "fusion_ms", "hydrate_ms", "log_ms"]
        lines += _table(
            [
                "mode (k=10, ms)",
                "p50",
                "p95",
                "p99",
                "CPU p50",
                *[p.removesuffix("_ms") + " p50" for p in parts],
            ],
            [
                [
                    mode,
                    m["total_ms"]["p50"],
                    m["total_ms"]["p95"],
                    m["total_ms"]["p99"],
                    m.get("cpu_ms", {}).get("p50"),
                    *[m["parts_p50_ms"].get(p) for p in parts],
                ]
                for mode, m in modes.items()
            ],
        )
        e = latency["embed_only_ms"]
        lines.append("")
        lines.append(
            f"Query embedding alone ({latency.get('backend', 'torch')}, mean of runs before and after the searches"
            + (
                f": p50 {latency['embed_only_p50_before_after_ms'][0]:.2f} and "
                f"{latency['embed_only_p50_before_after_ms'][1]:.2f} ms"
                if "embed_only_p50_before_after_ms" in latency
                else ""
            )
            + f"): p50 {e['p50']:.2f} ms, p99 {e['p99']:.2f} ms, "
            f"CPU p50 {e.get('cpu_p50', 0):.2f} ms; "
            f"hybrid p50 / embed p50 = {latency.get('hybrid_over_embed', 0):.2f} "
            f"({latency.get('hybrid_over_embed_part', 0):.2f} against the embed part of the same hybrid calls)"
        )
        lines.append("")
    ingest = result.get("ingest")
    if ingest:
        lines.append(
            f"Ingest ({ingest['documents']:,} docs, {ingest['chunks']:,} chunks, no cache, "
            f"{ingest.get('backend', 'torch')} backend, mean of {ingest.get('rounds', 1)} rounds "
            "alternating with raw encoding): "
            f"{ingest['ingest_docs_per_s']:.1f} docs/s, {ingest['ingest_chunks_per_s']:.1f} chunks/s; raw "
            f"`model.encode` (torch) {ingest['raw_encode_docs_per_s']:.1f} docs/s (truncated) and "
            f"{ingest['raw_encode_chunks_per_s']:.1f} chunks/s; ratio "
            f"{ingest['ratio_vs_raw_chunks']:.2f} vs the same chunks, {ingest['ratio_vs_raw_docs']:.2f} vs whole docs"
        )
        lines.append("")
    if result.get("index_bytes"):
        sizes = ", ".join(f"{k} {v / 2**20:.1f} MiB" for k, v in result["index_bytes"].items())
        lines.append(f"Index on disk: {sizes}. Peak RSS {result.get('peak_rss_mib', 0):,.0f} MiB.")
        lines.append("")
    scale = result.get("scale") or []
    if scale:
        lines += _table(
            [
                "chunks",
                "ingest s",
                "bm25 rebuild s",
                "HNSW recall@100",
                "vector search",
                "keyword p50/p99",
                "vector p50/p99",
                "hybrid p50/p99",
                "disk MiB",
                "RSS MiB",
            ],
            [
                [
                    f"{r['chunks']:,}",
                    f"{r['ingest_seconds']:.1f}",
                    f"{r['keyword_rebuild_seconds']:.2f}",
                    f"{r['hnsw_recall@100']:.3f}",
                    r.get("vector_search", "hnsw"),
                    _pp(r["latency"].get("keyword")),
                    _pp(r["latency"].get("vector")),
                    _pp(r["latency"].get("hybrid")),
                    f"{r['disk_bytes'] / 2**20:.0f}",
                    f"{r['rss_mib']:.0f}",
                ]
                for r in scale
            ],
        )
        lines.append("")
    load = result.get("load_average")
    if load:
        lines.append(
            f"Machine: {result['machine']['cpus']} CPUs, {result['machine']['memory_gib']} GiB; 1/5/15-min load average "
            f"{'/'.join(f'{x:g}' for x in load['start'])} at start, {'/'.join(f'{x:g}' for x in load['end'])} at end."
        )
        lines.append("")
    for note in result.get("notes") or []:
        lines.append(f"- {note}")
    return "\n".join(lines).rstrip() + "\n"


def _pp(m: dict[str, Any] | None) -> str:
    if not m:
        return "–"
    return f"{m['total_ms']['p50']:.1f} / {m['total_ms']['p99']:.1f}"


def plot(result: dict[str, Any], out: Path) -> Path:
    """Latency versus corpus size (when a scale sweep ran) and the quality table, in one figure."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as exc:
        raise RuntimeError("--plot needs matplotlib: pip install 'rift-mcp[bench]'") from exc

    scale = result.get("scale") or []
    quality = result.get("quality") or []
    panels = int(bool(scale)) + int(bool(quality)) or 1
    fig, axes = plt.subplots(1, panels, figsize=(6.5 * panels, 4.2), squeeze=False)
    ax_iter = iter(axes[0])
    if scale:
        ax = next(ax_iter)
        sizes = [r["chunks"] for r in scale]
        for mode in ("keyword", "vector", "hybrid"):
            if all(mode in r["latency"] for r in scale):
                for pct, style in (("p50", "-o"), ("p99", "--x")):
                    ys = [r["latency"][mode]["total_ms"][pct] for r in scale]
                    ax.plot(sizes, ys, style, label=f"{mode} {pct}")
        ax.set_xscale("log")
        ax.set_xlabel("chunks in the collection")
        ax.set_ylabel("search latency (ms)")
        ax.set_title("Latency vs corpus size")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
    if quality:
        ax = next(ax_iter)
        ax.axis("off")
        cols = ["mode", "depth", "rrf_k", "w(v,k)", "nDCG@10", "R@100", "MRR@10"]
        cells = [
            [
                r["mode"],
                r["depth"],
                f"{r['rrf_k']:g}" if r["mode"] == "hybrid" else "",
                ",".join(f"{w:g}" for w in r["weights"]) if r["mode"] == "hybrid" else "",
                f"{r['ndcg@10']:.4f}",
                f"{r['recall@100']:.4f}",
                f"{r['mrr@10']:.4f}",
            ]
            for r in quality
        ]
        table = ax.table(cellText=cells, colLabels=cols, loc="center")
        table.auto_set_font_size(False)
        table.set_fontsize(8)
        ds = result.get("dataset") or {}
        ax.set_title(f"Quality: {ds.get('name', '')} {ds.get('split', '')}")
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out


LEARN_MODES = ("vector", "hybrid")


def learn_markdown(result: dict[str, Any]) -> str:
    """The learning experiment as tables: each seed's triples, times, gate and deltas, the seed average, and
    where the gain landed (queries grouped by BM25's own nDCG@10)."""
    modes = result["modes"]
    what = f"strategy `{result['strategy']}`"
    if result.get("labelled_bound"):
        what = "labelled bound (NOT label-free)"
    elif result.get("agent_feedback"):
        said = "reads" if result.get("agent", {}).get("signal") == "opens" else "feedback"
        what = f"{what}, a simulated agent's {said} (NOT label-free)"
    lines = [
        f"**{result['dataset']}** ({result['eval_split']}, {result['eval_queries']} queries; usage = "
        f"{result['usage_split']}, {result['usage_queries']} queries), {what}",
        "",
    ]
    rows = []
    for i, seed in enumerate(result.get("seeds", [])):
        gate = seed.get("gate", {})
        decision = "accepted" if gate.get("accepted") else f"rejected: {gate.get('reason', '')}"
        cells = [
            seed["seed"],
            seed["mining"]["materialized"],
            seed.get("train_s"),
            seed.get("reencode_s"),
            decision,
        ]
        for m in LEARN_MODES:
            per = modes[m]["per_seed"][i]
            cells.append(f"{per['ndcg@10']:.4f}, {_delta(per['delta'], per['ci95'])}")
        rows.append(cells)
    if len(rows) > 1:
        mean = ["mean", "", "", "", ""]
        for m in LEARN_MODES:
            summary = modes[m]
            delta = _delta(summary["seed_mean_delta"], summary["seed_mean_ci95"])
            mean.append(f"{delta}, s.d. {summary['delta_std_over_seeds']}")
        rows.append(mean)
    headers = ["seed", "triples", "train s", "re-encode s", "gate"]
    headers += [f"{m} nDCG@10 (base {modes[m]['base']:.4f}), Δ [95 % CI]" for m in LEARN_MODES]
    lines += _table(headers, rows)
    rounds = [(s["seed"], r) for s in result.get("seeds", []) for r in s.get("rounds", [])]
    if len({r["round"] for _, r in rounds}) > 1:
        lines += ["", "Each round (usage replayed in parts, a retrain from the serving model after each):", ""]
        rows = [
            [seed, r["round"], r["usage_queries"], r["triples"], "accepted" if r["accepted"] else "rejected"]
            + [f"{r[f'{m}_ndcg@10']:.4f}" for m in LEARN_MODES]
            for seed, r in rounds
        ]
        headers = ["seed", "round", "usage queries", "triples", "gate"] + [f"{m} nDCG@10" for m in LEARN_MODES]
        lines += _table(headers, rows)
    buckets = result.get("by_keyword_ndcg") or []
    if buckets:
        lines += [
            "",
            "Where the gain landed (evaluation queries by BM25's own nDCG@10; seed-averaged deltas):",
            "",
        ]
        rows = [
            [
                b["bucket"],
                b["queries"],
                *(
                    f"{b[m]['base']:.3f}, {b[m]['delta']:+.4f} (share {b[m]['share_of_mean_delta']:+.4f})"
                    if m in b
                    else None
                    for m in LEARN_MODES
                ),
            ]
            for b in buckets
        ]
        lines += _table(["queries", "n", "vector base, Δ", "hybrid base, Δ"], rows)
    sweep = result.get("fusion_sweep") or []
    if sweep:
        lines += [
            "",
            "Hybrid at other vector-side RRF weights (keyword weight 1; seed-averaged). The weight is read off the "
            "evaluation labels, so the best row is a ceiling for re-fitting the fusion, not a result:",
            "",
        ]
        rows = [
            [
                f"{r['vector_weight']:g}",
                f"{r['base']:.4f}",
                f"{r['retrained']:.4f}",
                _delta(r["delta_vs_base_default"], r["ci95_vs_base_default"]),
                _delta(r["delta_vs_base_same_weight"], r["ci95_vs_base_same_weight"]),
            ]
            for r in sweep
        ]
        lines += _table(
            [
                "vector weight",
                "base",
                "retrained",
                "Δ vs base at the default weight",
                "Δ vs base at this weight",
            ],
            rows,
        )
    ensemble = result.get("ensemble") or []
    if ensemble:
        lines += [
            "",
            "Hybrid with the base model's vector list kept as a third RRF list (seed-averaged; Δ against the base "
            "hybrid):",
            "",
        ]
        lines += _table(
            ["retrained weight", "base weight", "nDCG@10", "Δ [95 % CI]"],
            [
                [
                    f"{r['retrained_weight']:g}",
                    f"{r['base_weight']:g}",
                    f"{r['ndcg@10']:.4f}",
                    _delta(r["delta_vs_base_hybrid"], r["ci95"]),
                ]
                for r in ensemble
            ],
        )
    return "\n".join(lines)


def _delta(delta: float, ci: list[float]) -> str:
    return f"{delta:+.4f} [{ci[0]:+.4f}, {ci[1]:+.4f}]"


def log_reach_markdown(result: dict[str, Any]) -> str:
    """The `--log-reach` table: what the answers of similar logged searches hold for each evaluation query."""
    headers = [
        "answer of a similar logged search",
        "cosine ≥",
        "queries with one",
        "inside top 10 (relevant)",
        "outside top 10 (relevant)",
        "queries gaining a relevant document",
        *[f"query memory, weight {m['weight']:g}: hybrid Δ [95 % CI]" for m in result["rows"][0]["memory"]],
    ]
    rows = [
        [
            r["answer"],
            f"{r['threshold']:g}",
            r["queries_with_a_neighbour"],
            f"{r['inside_top10']} ({r['inside_relevant']})",
            f"{r['outside_top10']} ({r['outside_relevant']})",
            r["queries_gaining_a_relevant_document"],
            *[_delta(m["delta"], m["ci95"]) for m in r["memory"]],
        ]
        for r in result["rows"]
    ]
    head = (
        f"\n**{result['dataset']}** {result['split']} ({result['queries']} queries, hybrid nDCG@10 "
        f"{result['hybrid']:.4f}); log: {result['usage_queries']} {result['usage_split']} queries replayed, "
        f"{result['confident_answers']} with a confident answer; up to {result['neighbours']} neighbours each\n"
    )
    return head + "\n" + "\n".join(_table(headers, rows))
