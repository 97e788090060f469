"""`rift bench`: retrieval quality, speed and scale on a BEIR-format folder, through the engine the MCP tools use.

Prints one JSON line (stable keys, schema "rift-bench/1") and then a markdown rendering to stdout; progress goes
to stderr with -v. `--learn`, which runs for an hour or more on a CPU, always reports its phases on stderr.
"""

from __future__ import annotations

import importlib
import logging
import math
import os
import sys
import time
from pathlib import Path
from typing import Any, get_args

import click
from pydantic import ValidationError

from server.errors import RiftError

log = logging.getLogger(__name__)

MODES = ("keyword", "vector", "hybrid")


def _floats(value: str | None, option: str) -> list[float]:
    if not value:
        return []
    try:
        out = [float(v) for v in value.split(",") if v.strip()]
    except ValueError:
        out = [math.nan]
    if not all(math.isfinite(v) for v in out):
        raise click.BadParameter(f"{value!r} is not a comma-separated list of numbers", param_hint=option)
    return out


def _ints(value: str | None, option: str, minimum: int = 1) -> list[int]:
    out = _floats(value, option)
    if any(v != int(v) or v < minimum for v in out):
        raise click.BadParameter(f"{value!r} must be whole numbers >= {minimum}", param_hint=option)
    return [int(v) for v in out]


def _weights(values: tuple[str, ...]) -> list[tuple[float, float]]:
    out = []
    for value in values:
        pair = _floats(value, "--weights")
        if len(pair) != 2 or min(pair) < 0 or max(pair) == 0:
            raise click.BadParameter(f"{value!r} must be 'vector,keyword', e.g. 1,1", param_hint="--weights")
        out.append((pair[0], pair[1]))
    return out


def parse_overrides(values: tuple[str, ...]) -> dict[str, Any]:
    """`--set KEY=VALUE` items as settings overrides ("none" / "null": unset)."""
    out: dict[str, Any] = {}
    for item in values:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise click.BadParameter(f"{item!r} must be KEY=VALUE", param_hint="--set")
        out[key.strip()] = None if raw.strip().lower() in ("none", "null") else raw.strip()
    return out


def _echo_json(line: str, json_out: Path | None) -> None:
    """Print a result's JSON line (the first line of the output) and append it to `json_out` when given."""
    click.echo(line)
    if json_out:
        json_out.parent.mkdir(parents=True, exist_ok=True)
        with json_out.open("a", encoding="utf-8") as handle:
            handle.write(line + "\n")


def _emit(result: dict[str, Any], json_out: Path | None, plot_out: Path | None) -> None:
    from server.bench.report import json_line, markdown, plot

    _echo_json(json_line(result), json_out)
    click.echo("")
    click.echo(markdown(result))
    if plot_out:
        try:
            click.echo(f"plot written to {plot(result, plot_out)}", err=True)
        except RuntimeError as exc:
            raise click.ClickException(str(exc)) from None


def _flag(raw: str) -> bool:
    """A yes/no --set value: 1/0, true/false, yes/no."""
    word = raw.strip().lower()
    if word in ("1", "true", "yes"):
        return True
    if word in ("0", "false", "no"):
        return False
    raise ValueError(raw)


# --set keys the learning experiment takes, and how each is read. "triplet" is allowed here (not in Settings):
# TripletLoss at lr 2e-5 for 3 epochs is the published collapse the gate must reject.
LEARN_OPTIONS: dict[str, tuple[str, Any]] = {
    "learn_strategy": ("strategy", str),
    "learn_epochs": ("epochs", float),
    "learn_learning_rate": ("learning_rate", float),
    "learn_batch_size": ("batch_size", int),
    "learn_max_seq_length": ("train_max_seq_length", int),
    "learn_negatives_per_query": ("negatives_per_query", int),
    "learn_positive_min_keyword_margin": ("positive_min_keyword_margin", float),
    "learn_negative_source": ("negative_source", str),
    "learn_loss": ("loss", str),
    "learn_merge_base": ("merge_base", float),
    # with --agent-feedback: the share of searches the simulated agent judges, and how often it judges wrongly
    "agent_share": ("agent_share", float),
    "agent_error_rate": ("agent_error_rate", float),
    # with --agent-feedback: "feedback" (verdicts) or "opens" (it only opens the documents it found relevant)
    "agent_signal": ("agent_signal", str),
    # an experiment, not a setting: an opened document's negatives start with the hits shown above it, not opened
    "mining_passed_over_negatives": ("passed_over_negatives", _flag),
    "train_merge_base": ("merge_base", float),  # learn_merge_base's earlier name
    # with --labelled-bound: label every logged training query ("all") or only those the miner used ("mined"),
    # or replace only the mined triples' positives ("positives") or negatives ("negatives") by the labels'
    "labelled_scope": ("labelled_scope", str),
    "mining_mask_query_terms": ("mask_query_terms", float),  # a variant measured in the README, not a setting
    "mining_drop_query_words": ("drop_query_words", float),  # an experiment, not a setting
    "mining_hard_positive_repeat": ("hard_positive_repeat", int),  # an experiment, not a setting
    # an experiment, not a setting: keep the unmined searches' (and their vector hits') embeddings near the base's
    "learn_anchor_weight": ("anchor_weight", float),
    "learn_anchor_docs": ("anchor_docs", int),
    # an experiment, not a setting: TSDAE on corpus sentences beside the triples (its loss weight; how many)
    "learn_denoise_weight": ("denoise_weight", float),
    "learn_denoise_texts": ("denoise_texts", int),
    # mining variants (README "Learning from use": label quality per variant)
    "mining_positive_max_rank": ("positive_max_rank", int),
    "mining_positive_min_keyword_margin": ("positive_min_keyword_margin", float),  # its earlier name
    "mining_positive_min_vector_margin": ("positive_min_vector_margin", float),
    "mining_negative_min_keyword_rank": ("negative_min_keyword_rank", int),
    "mining_negative_source": ("negative_source", str),  # its earlier name
    "mining_max_pseudo": ("max_pseudo", int),
    "mining_second_opinion_depth": ("second_opinion_depth", int),  # an experiment, not a setting
    # an experiment, not a setting: usage replayed in N parts, a retrain after each (the periodic policy)
    "learn_rounds": ("rounds", int),
    "learn_searches": ("searches", str),  # new (the product's default) | all: which searches each round mines
    # an experiment, not a setting: MNRL's hardness weighting of negatives (sentence-transformers' hardness_mode)
    "learn_hardness_mode": ("hardness_mode", str),
    "learn_hardness_strength": ("hardness_strength", float),
    # an experiment, not a setting: MNRL's directions, comma-separated (query_to_doc,doc_to_query: symmetric)
    "learn_mnrl_directions": ("mnrl_directions", str),
}


def _learn_options(overrides: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, raw in overrides.items():
        if key not in LEARN_OPTIONS:
            raise click.BadParameter(
                f"{key} does not apply to --learn; use one of {', '.join(LEARN_OPTIONS)}", param_hint="--set"
            )
        name, kind = LEARN_OPTIONS[key]
        try:
            out[name] = kind(raw)
        except (TypeError, ValueError):
            what = {int: "an integer", float: "a number", _flag: "1 or 0 (true / false)"}.get(kind, kind.__name__)
            raise click.BadParameter(f"{key}={raw!r} is not {what}", param_hint="--set") from None
    from server.learning.mining import NEGATIVE_SOURCES

    if out.get("negative_source", NEGATIVE_SOURCES[0]) not in NEGATIVE_SOURCES:
        choices = ", ".join(NEGATIVE_SOURCES)
        raise click.BadParameter(f"learn_negative_source must be one of {choices}", param_hint="--set")
    for key, name in (
        ("mining_mask_query_terms", "mask_query_terms"),
        ("mining_drop_query_words", "drop_query_words"),
        ("learn_merge_base", "merge_base"),
        ("agent_share", "agent_share"),
        ("agent_error_rate", "agent_error_rate"),
    ):
        if not 0.0 <= out.get(name, 0.0) <= 1.0:
            raise click.BadParameter(f"{key} must be between 0 and 1", param_hint="--set")
    if not 1 <= out.get("rounds", 1) <= 10:
        raise click.BadParameter("learn_rounds must be between 1 and 10", param_hint="--set")
    if out.get("searches", "new") not in ("new", "all"):
        raise click.BadParameter("learn_searches must be new or all", param_hint="--set")
    if not 0 <= out.get("second_opinion_depth", 0) <= 200:
        raise click.BadParameter("mining_second_opinion_depth must be between 0 and 200", param_hint="--set")
    from server.learning.mining import MiningConfig

    floor = MiningConfig().negative_min_opinion_rank  # (ranks reach only as far as the candidates)
    if out.get("negative_source") == "checked" and out.get("second_opinion_depth", 0) <= floor:
        raise click.BadParameter(
            f"learn_negative_source=checked needs mining_second_opinion_depth above {floor}", param_hint="--set"
        )
    if out.get("hard_positive_repeat", 1) < 1:
        raise click.BadParameter("mining_hard_positive_repeat must be 1 or more", param_hint="--set")
    if out.get("agent_signal", "feedback") not in ("feedback", "opens"):
        raise click.BadParameter("agent_signal must be feedback or opens", param_hint="--set")
    if out.get("labelled_scope", "all") not in ("all", "mined", "positives", "negatives"):
        raise click.BadParameter(
            "labelled_scope must be all, mined, positives or negatives", param_hint="--set"
        )
    from server.learning.training import HARDNESS_MODES, MNRL_DIRECTIONS, Loss

    if out.get("loss", "mnrl") not in get_args(Loss):
        raise click.BadParameter(f"learn_loss must be one of {', '.join(get_args(Loss))}", param_hint="--set")

    if "hardness_mode" in out:
        if out["hardness_mode"] not in HARDNESS_MODES:
            modes = ", ".join(HARDNESS_MODES)
            raise click.BadParameter(f"learn_hardness_mode must be one of {modes}", param_hint="--set")
        if out.get("loss", "mnrl") != "mnrl":
            raise click.BadParameter("learn_hardness_mode applies only to learn_loss=mnrl", param_hint="--set")
    if not 0.0 <= out.get("hardness_strength", 0.0) <= 100.0:
        raise click.BadParameter("learn_hardness_strength must be between 0 and 100", param_hint="--set")
    if out.get("hardness_strength", 0.0) > 0 and "hardness_mode" not in out:
        raise click.BadParameter("learn_hardness_strength needs learn_hardness_mode", param_hint="--set")
    if "mnrl_directions" in out:
        given = out["mnrl_directions"].split(",")
        if "query_to_doc" not in given or not set(given) <= set(MNRL_DIRECTIONS) or len(set(given)) < len(given):
            others = ", ".join(d for d in MNRL_DIRECTIONS if d != "query_to_doc")
            raise click.BadParameter(
                f"learn_mnrl_directions must list query_to_doc and any of {others}, comma-separated",
                param_hint="--set",
            )
        if out.get("loss", "mnrl") != "mnrl":
            raise click.BadParameter("learn_mnrl_directions applies only to learn_loss=mnrl", param_hint="--set")
    from server.learning.mining import STRATEGIES

    if out.get("strategy", STRATEGIES[0]) not in STRATEGIES:
        raise click.BadParameter(f"learn_strategy must be one of {', '.join(STRATEGIES)}", param_hint="--set")
    # The ranges `retrain` takes (an hour of CPU must not start on a value that fails at training time).
    from server.config import RETRAIN_BOUNDS

    bounds = {f"learn_{name}": (name, *RETRAIN_BOUNDS[name]) for name in ("epochs", "learning_rate", "batch_size")}
    bounds |= {"learn_negatives_per_query": ("negatives_per_query", 1, 10)}
    bounds |= {"learn_max_seq_length": ("train_max_seq_length", 8, 8192)}
    for key, (name, low, high) in bounds.items():
        if name in out and not low <= out[name] <= high:  # (NaN fails both comparisons)
            raise click.BadParameter(f"{key} must be between {low} and {high}", param_hint="--set")
    return out


def _check_settings(overrides: dict[str, Any], model: str | None) -> None:
    """--set values as Settings reads them, before any work (a corpus loads and encodes for minutes first)."""
    from pydantic import ValidationError

    from server.bench.harness import bench_settings
    from server.cli import settings_error

    try:
        bench_settings(Path("/nonexistent/rift-bench-check"), model, **overrides)
    except RiftError as exc:  # data_dir or model among them
        raise click.BadParameter(str(exc), param_hint="--set") from None
    except ValidationError as exc:
        raise click.ClickException(f"invalid setting: {settings_error(exc)}") from None


def _run_log_reach(
    data: Path | None,
    split: str,
    usage_split: str | None,
    model: str | None,
    cache_dir: Path,
    out: Path | None,
) -> None:
    if data is None or usage_split is None:
        raise click.UsageError("--log-reach needs --data and --usage-split")
    from server.bench.log_reach import run_log_reach
    from server.bench.report import json_line, log_reach_markdown

    try:
        result = run_log_reach(data, split, usage_split, model, cache_dir)
    except RiftError as exc:
        raise click.ClickException(str(exc)) from None
    _echo_json(json_line({"kind": "log-reach", **result}), out)
    click.echo(log_reach_markdown(result))


def _run_mining_analysis(
    data: Path | None, usage_split: str | None, model: str | None, cache_dir: Path, out: Path | None
) -> None:
    if data is None or usage_split is None:
        raise click.UsageError("--mining-analysis needs --data and --usage-split")
    from server.bench.learning_experiment import run_mining_analysis
    from server.bench.report import _table, json_line

    try:
        result = run_mining_analysis(data, usage_split, model, cache_dir)
    except RiftError as exc:  # BenchError (the data) among them, as in the other modes
        raise click.ClickException(str(exc)) from None
    _echo_json(json_line({"kind": "mining-analysis", **result}), out)
    rows = []
    for name, v in result["variants"].items():
        judged = [q for q in v["quality"].values() if q["judged"]]
        n = sum(q["judged"] for q in judged) or 1
        pos = sum(q["positive_precision"] * q["judged"] for q in judged) / n
        neg = sum(q["negative_false_rate"] * q["judged"] for q in judged) / n
        rows.append([name, f"{v['triples']:,}", f"{v['queries_used']:,}", f"{pos:.1%}", f"{neg:.1%}"])
    headers = ["variant", "triples", "queries", "positives truly relevant", "negatives truly relevant"]
    click.echo(f"\n**{result['dataset']}** ({usage_split} queries replayed as usage)\n")
    click.echo("\n".join(_table(headers, rows)))


def _run_learn(
    data: Path | None,
    split: str,
    usage_split: str | None,
    model: str | None,
    seeds: str,
    cache_dir: Path,
    out: Path | None,
    overrides: dict[str, Any],
    labelled_bound: bool = False,
    agent_feedback: bool = False,
) -> None:
    if data is None or usage_split is None:
        raise click.UsageError(
            "--learn needs --data and --usage-split (the split whose queries simulate usage)"
        )
    if usage_split == split:  # the experiment would refuse it only after loading both, with a traceback
        raise click.UsageError(
            f"--learn replays --usage-split and evaluates on --split: give two different splits (both are {split})"
        )
    try:
        module = importlib.import_module("server.bench.learning_experiment")
    except ModuleNotFoundError as exc:
        if exc.name != "server.bench.learning_experiment":
            raise
        raise click.ClickException(
            "the learning experiment is not available in this build (server/bench/learning_experiment.py is missing)"
        ) from None
    options = _learn_options(overrides)
    if not agent_feedback and {"agent_share", "agent_error_rate", "agent_signal"} & set(options):
        raise click.UsageError("agent_share, agent_error_rate and agent_signal apply only with --agent-feedback")
    if not labelled_bound and "labelled_scope" in options:
        raise click.UsageError("labelled_scope applies only with --labelled-bound")
    # A run takes hours on a CPU: the experiment rewrites a checkpoint of the seeds done so far beside
    # --json-out, and only the finished result is appended to it as one JSON line, as in the other modes.
    checkpoint = out.with_name(out.name + ".partial") if out else None
    seed_list = _ints(seeds, "--seeds", minimum=0) if seeds else [0]
    started = time.monotonic()

    def phase(message: str) -> None:
        # stderr, timed: hours of silence would look like a hang (stdout carries only the result).
        minutes, seconds = divmod(int(time.monotonic() - started), 60)
        click.echo(f"rift bench --learn [{minutes:d}:{seconds:02d}] {message}", err=True)

    try:
        result = module.run_learning_experiment(
            data=data,
            eval_split=split,
            usage_split=usage_split,
            model=model,
            seeds=seed_list,
            cache_dir=cache_dir,
            out=checkpoint,
            labelled_bound=labelled_bound,
            agent_feedback=agent_feedback,
            progress=phase,
            **options,
        )
    except RiftError as exc:  # BenchError (the data) among them, as in the other modes
        raise click.ClickException(str(exc)) from None
    from server.bench.report import json_line, learn_markdown

    _echo_json(json_line({"kind": "learn", **result}), out)
    if checkpoint is not None:
        checkpoint.unlink(missing_ok=True)
    click.echo("\n" + learn_markdown(result))


# The options each mode reads besides --data, --model, --cache-dir and --json-out, which all of them read, by
# parameter name (None: the quality / latency / scale run). An option given to a mode that does not read it is
# refused before any work: a run of hours must not start while silently dropping part of what was asked.
_MODE_FLAGS = {"mining_analysis": "--mining-analysis", "log_reach": "--log-reach", "learn": "--learn"}
_EVERY_MODE = {"data", "model", "cache_dir", "json_out"}
_QUALITY_RUN = ("latency", "ingest_sample", "rrf_k", "depth", "weights", "limit_queries")  # what --scale-only skips
_MODE_READS: dict[str | None, set[str]] = {
    None: {*_QUALITY_RUN, "split", "modes", "settings_set", "plot_out", "no_cache"}
    | {"scale", "scale_batch", "scale_only", "max_rss_gib"},
    "learn": {"split", "usage_split", "seeds", "settings_set", "labelled_bound", "agent_feedback"},
    "log_reach": {"split", "usage_split"},
    "mining_analysis": {"usage_split"},
}
# Options of the quality run that mean something only beside another one.
_NEEDS = {"scale_only": "scale", "scale_batch": "scale", "max_rss_gib": "scale", "ingest_sample": "latency"}


def _check_modes(ctx: click.Context) -> None:
    """Refuse (exit 2) two modes at once, and options the chosen mode would silently ignore."""
    from click.core import ParameterSource

    flag = {p.name: p.opts[0] for p in ctx.command.params if p.name}
    given = {name for name in flag if ctx.get_parameter_source(name) not in (None, ParameterSource.DEFAULT)}
    modes = [name for name in _MODE_FLAGS if name in given]
    if len(modes) > 1:
        names = ", ".join(_MODE_FLAGS[m] for m in modes)
        raise click.UsageError(f"{names}: separate runs, give one of them (or none, for the quality run)")
    mode = modes[0] if modes else None
    ignored = [flag[name] for name in flag if name in given - _MODE_READS[mode] - set(_MODE_FLAGS) - _EVERY_MODE]
    if ignored:
        names = " and ".join([", ".join(ignored[:-1]), ignored[-1]] if len(ignored) > 1 else ignored)
        where = f"with {_MODE_FLAGS[mode]}" if mode else "to the quality run (no --learn, --log-reach or --mining-analysis)"
        raise click.UsageError(f"{names} {'does' if len(ignored) == 1 else 'do'} not apply {where}")
    if mode is not None:
        return
    for name, needed in _NEEDS.items():
        if name in given and not ctx.params[needed]:
            raise click.UsageError(f"{flag[name]} applies only with {flag[needed]}")
    skipped = [flag[name] for name in _QUALITY_RUN if name in given]
    if ctx.params["scale_only"] and skipped:
        raise click.UsageError(f"--scale-only skips the quality run that {', '.join(skipped)} apply to")


@click.command()
@click.option("--data", type=click.Path(path_type=Path, file_okay=False), help="A BEIR-format folder.")
@click.option(
    "--split", default="test", show_default=True, help="qrels/<split>.tsv to evaluate (test, dev, ...)."
)
@click.option(
    "--mode", "modes", multiple=True, type=click.Choice(MODES), help="Repeatable; default all three."
)
@click.option("--model", default=None, help="Embedding model name or folder (default: the settings' model).")
@click.option("--rrf-k", default=None, help="RRF k, or a comma list to compare (default: setting rrf_k).")
@click.option(
    "--depth", default=None, help="Candidates per retriever, or a comma list (default: setting candidate_depth)."
)
@click.option("--weights", multiple=True, help="'vector,keyword' RRF weights; repeat to compare.")
@click.option(
    "--limit-queries", type=click.IntRange(min=1), default=None, help="Evaluate only the first N queries."
)
@click.option("--latency", is_flag=True, help="Also measure warm latency per mode and ingest throughput.")
@click.option(
    "--ingest-sample",
    type=click.IntRange(min=1),
    default=500,
    show_default=True,
    help="Documents ingested without the cache for the throughput comparison.",
)
@click.option(
    "--scale",
    default=None,
    help="Synthetic corpus sizes in documents (one chunk each at default settings), e.g. 10000,100000.",
)
@click.option(
    "--scale-batch",
    type=click.IntRange(min=1),
    default=10_000,
    show_default=True,
    help="Documents per add_documents call in the scale sweep.",
)
@click.option(
    "--scale-only", is_flag=True, help="With --scale: skip the quality run (--data supplies the text)."
)
@click.option(
    "--max-rss-gib",
    type=float,
    default=20.0,
    show_default=True,
    help="Stop the scale sweep above this peak RSS.",
)
@click.option(
    "--set",
    "settings_set",
    multiple=True,
    help="Override a setting for this run, e.g. --set chunk_tokens=128; with --learn, the learn_* settings "
    "(learn_loss also takes triplet; learn_rounds=N replays usage in N parts, retraining after each) and the miner's "
    + ", ".join(key for key in LEARN_OPTIONS if key.startswith("mining_"))
    + " (learn_negative_source, earlier mining_negative_source: fused, vector, keyword, both, or checked with "
    "mining_second_opinion_depth).",
)
@click.option(
    "--plot", "plot_out", type=click.Path(path_type=Path, dir_okay=False), default=None, help="Write a PNG."
)
@click.option(
    "--json-out",
    type=click.Path(path_type=Path, dir_okay=False),
    default=None,
    help="Append the JSON line to this file.",
)
@click.option(
    "--cache-dir",
    type=click.Path(path_type=Path, file_okay=False),
    default=Path(".bench_cache"),
    show_default=True,
)
@click.option("--no-cache", is_flag=True, help="Encode the corpus even when cached vectors exist.")
@click.option("--learn", is_flag=True, help="Run the learning experiment instead (needs --usage-split).")
@click.option(
    "--usage-split",
    default=None,
    help="With --learn, --log-reach or --mining-analysis: the split whose queries simulate usage.",
)
@click.option("--seeds", default="0", show_default=True, help="With --learn: comma list of seeds.")
@click.option(
    "--labelled-bound",
    is_flag=True,
    help="With --learn: NOT label-free, a reference only. Train on the usage split's relevance labels (each "
    "usage query's most relevant document as the positive, the vector side's best non-relevant documents as "
    "negatives) instead of mined triples, to show what perfect labels for the same queries would give.",
)
@click.option(
    "--agent-feedback",
    is_flag=True,
    help="With --learn: NOT label-free. The usage split's labels play an agent that confirms the relevant "
    "results it was shown and rejects those it read past, through rift's feedback; mining, training and the "
    "gate (which then decides on that feedback) run unchanged.",
)
@click.option(
    "--mining-analysis",
    is_flag=True,
    help="No training: replay --usage-split's queries, mine with each strategy variant, and report how often "
    "mined positives / negatives are truly relevant (labels read only to judge the miners).",
)
@click.option(
    "--log-reach",
    is_flag=True,
    help="No training: replay --usage-split's queries, then report for each --split query what the answers "
    "of the most similar logged searches hold (inside / outside its hybrid top 10, how often relevant) and "
    "the hybrid with them fused in as a query memory (evaluation labels read only to score). With --split "
    "equal to --usage-split, 80 % of that split is logged and the other 20 % scored.",
)
def bench(
    data: Path | None,
    split: str,
    modes: tuple[str, ...],
    model: str | None,
    rrf_k: str | None,
    depth: str | None,
    weights: tuple[str, ...],
    limit_queries: int | None,
    latency: bool,
    ingest_sample: int,
    scale: str | None,
    scale_batch: int,
    scale_only: bool,
    max_rss_gib: float,
    settings_set: tuple[str, ...],
    plot_out: Path | None,
    json_out: Path | None,
    cache_dir: Path,
    no_cache: bool,
    learn: bool,
    usage_split: str | None,
    seeds: str,
    labelled_bound: bool,
    agent_feedback: bool,
    mining_analysis: bool,
    log_reach: bool,
) -> None:
    """Measure retrieval quality (nDCG@10, Recall@100, MRR@10), latency and scale on BEIR data."""
    if (labelled_bound or agent_feedback) and not learn:
        raise click.UsageError("--labelled-bound and --agent-feedback apply only with --learn")
    if labelled_bound and agent_feedback:
        raise click.UsageError("choose one of --labelled-bound and --agent-feedback")
    _check_modes(click.get_current_context())
    if mining_analysis:
        _run_mining_analysis(data, usage_split, model, cache_dir, json_out)
        return
    if log_reach:
        _run_log_reach(data, split, usage_split, model, cache_dir, json_out)
        return
    if learn:
        overrides = parse_overrides(settings_set)
        _run_learn(
            data,
            split,
            usage_split,
            model,
            seeds,
            cache_dir,
            json_out,
            overrides,
            labelled_bound,
            agent_feedback,
        )
        return
    if data is None and not scale:
        raise click.UsageError("give --data PATH (a BEIR folder) and/or --scale SIZES")
    from server.bench.quality import FusionConfig

    depths = _ints(depth, "--depth") or [None]
    ks = _floats(rrf_k, "--rrf-k") or [None]
    if any(k is not None and k <= 0 for k in ks):
        raise click.BadParameter("must be positive", param_hint="--rrf-k")
    ws = _weights(weights) or [None]
    configs = [FusionConfig(d, k, w) for d in depths for k in ks for w in ws]
    sizes = _ints(scale, "--scale")
    overrides = parse_overrides(settings_set)
    _check_settings(overrides, model)
    try:
        result = _run(
            data,
            split,
            list(modes) or list(MODES),
            model,
            configs,
            limit_queries,
            latency,
            ingest_sample,
            sizes,
            scale_batch,
            max_rss_gib,
            overrides,
            None if no_cache else cache_dir,
            scale_only,
        )
    except RiftError as exc:
        raise click.ClickException(str(exc)) from None
    except ValidationError as exc:  # --set values and --model are validated by Settings
        from server.cli import settings_error

        raise click.ClickException(f"invalid setting: {settings_error(exc)}") from None
    _emit(result, json_out, plot_out)


def _run(
    data: Path | None,
    split: str,
    modes: list[str],
    model: str | None,
    configs: list[Any],
    limit: int | None,
    latency: bool,
    ingest_sample: int,
    sizes: list[int],
    scale_batch: int,
    max_rss_gib: float,
    overrides: dict[str, Any],
    cache_dir: Path | None,
    scale_only: bool = False,
) -> dict[str, Any]:
    from server.bench.beir import load_beir
    from server.bench.harness import BenchIndex
    from server.bench.report import machine, peak_rss_mib

    started = time.perf_counter()
    load_start = [round(x, 2) for x in os.getloadavg()]  # other work on the machine skews latency: say so
    result: dict[str, Any] = {
        "command": "rift " + " ".join(sys.argv[1:]),
        "machine": machine(),
        "notes": [],
    }
    dataset = load_beir(data, split) if data else None
    if dataset is not None and not (scale_only and sizes):
        with BenchIndex(model, cache_dir, overrides) as index:
            s = index.settings
            result["model"] = s.model
            result["settings"] = {
                "chunk_tokens": index.engine.embedder.max_chunk_tokens(s.chunk_tokens),
                "chunk_overlap": s.chunk_overlap,
                "stemmer_language": s.stemmer_language,
                "stopwords": s.stopwords,
                "embed_backend": getattr(s, "embed_backend", "torch"),
                **{k: str(v) for k, v in overrides.items()},
            }
            ingest = index.ingest(dataset)
            result["dataset"] = {
                "name": dataset.name,
                "split": split,
                "documents": ingest.documents,
                "chunks": ingest.chunks,
                "queries": min(limit, len(dataset.queries)) if limit else len(dataset.queries),
                "content_hash": dataset.content_hash()[:16],
                "skipped": dataset.skipped,
            }
            result["corpus_ingest"] = {
                "seconds": round(ingest.seconds, 2),
                "encode_seconds": round(ingest.encode_seconds, 2),
                "cache_hits": ingest.cache_hits,
                "cache_misses": ingest.cache_misses,
                "keyword_rebuild_ms": round(ingest.keyword_rebuild_ms, 1),
            }
            from server.bench.quality import run_quality

            result["quality"] = run_quality(index, dataset, modes, configs, limit)
            if latency:
                result["latency"] = _latency(index, dataset, modes, configs[0], limit)
                from server.bench.latency import measure_ingest

                result["ingest"] = measure_ingest(index, dataset, min(ingest_sample, len(dataset.documents)))
            result["index_bytes"] = index.index_bytes()
    if sizes:
        from server.bench.scale import run_scale

        texts = list(dataset.documents.values()) if dataset else _default_texts()
        queries = list(dataset.queries.values()) if dataset else ["hybrid retrieval of documents"]
        result["scale"] = run_scale(
            sizes,
            model,
            texts,
            queries,
            cache_dir,
            batch=scale_batch,
            max_rss_gib=max_rss_gib,
            modes=modes,
            settings_overrides=overrides,
        )
        result["notes"] += [r["stopped"] for r in result["scale"] if r.get("stopped")]
    result["peak_rss_mib"] = peak_rss_mib()
    result["load_average"] = {"start": load_start, "end": [round(x, 2) for x in os.getloadavg()]}
    result["seconds"] = round(time.perf_counter() - started, 1)
    return result


def _latency(index: Any, dataset: Any, modes: list[str], config: Any, limit: int | None) -> dict[str, Any]:
    from server.bench.latency import measure_embed, measure_search

    queries = list(dataset.queries.values())[:limit] if limit else list(dataset.queries.values())
    # Embedding alone is measured before and after the searches and averaged: this machine's speed drifts by
    # ±10 % within minutes, which would otherwise move the ratio below by as much.
    before = measure_embed(index.embedder, queries)
    search = measure_search(index, queries, modes, config.knobs())
    after = measure_embed(index.embedder, queries)
    embed = {key: round((before[key] + after[key]) / 2, 3) for key in before}
    out: dict[str, Any] = {
        "backend": getattr(index.settings, "embed_backend", "torch"),
        "embed_only_ms": embed,
        "embed_only_p50_before_after_ms": [before["p50"], after["p50"]],
        "search": search,
    }
    if "hybrid" in search and embed.get("p50"):
        out["hybrid_over_embed"] = round(search["hybrid"]["total_ms"]["p50"] / embed["p50"], 3)
        # The same ratio against the embedding measured inside the hybrid calls (same moment, same load).
        inner = search["hybrid"]["parts_p50_ms"].get("embed_ms")
        if inner:
            out["hybrid_over_embed_part"] = round(search["hybrid"]["total_ms"]["p50"] / inner, 3)
    return out


def _default_texts() -> list[str]:
    raise RiftError("--scale needs --data: its corpus supplies the synthetic documents' sentences")
