"""`rift bench --learn`: does learning from use make retrieval better, with zero labels?

Protocol (per seed): index the corpus through rift; replay the usage split's query TEXTS through hybrid search
(logged in the experiment's own temporary data dir, exactly as an agent's searches would be); retrain from that
log with the product's own pipeline (time split, mining, training, candidate vectors, gate); switch; evaluate the
base and retrained models in vector and hybrid modes on the held-out evaluation split. Relevance labels are read
only to score the evaluation split and, after mining, to report how often a mined positive / negative was truly
relevant (the usage split's labels); they never reach mining, training or the gate.

Reported: mean nDCG@10 per mode, per-seed deltas with 95% paired-bootstrap CIs, the seed-averaged delta with
its CI, spread over seeds, triples mined by type, training and re-encoding time, the gate's decision, and where
the gain landed (evaluation queries grouped by BM25's own nDCG@10).

Two runs are exceptions to "zero labels", and say so in their output:
- `labelled_bound=True` (`--labelled-bound`) trains on the usage split's labels for the same logged queries,
  to show what perfect labels would give.
- `agent_feedback=True` (`--agent-feedback`) lets the usage split's labels play an agent that reads each
  search's results and tells rift's `feedback` what it found (`simulated_agent`). Mining, training and the gate
  then run unchanged: this is the product's own route for an agent's judgements, measured end to end. With
  `agent_signal="opens"` the agent says nothing: it only opens the results it found relevant
  (`get_document` with the search's query_id), the implicit signal an agent gives by reading.
"""

from __future__ import annotations

import json
import logging
import random
import re
import statistics
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from server.bench.beir import BenchError, load_beir
from server.bench.harness import COLLECTION, BenchIndex
from server.bench.metrics import ndcg_at_k
from server.config import Settings
from server.engine.fusion import rrf
from server.ingest.manage import get_document
from server.learning.augment import TermMasker, drop_shared_query_words, mask_shared_terms
from server.learning.gate import Gate, GateConfig
from server.learning.mining import MiningConfig, Triple
from server.learning.pipeline import (
    Learnt,
    build_all,
    collect_and_mine,
    load_embedder,
    materialize,
    switch_all,
)
from server.learning.query_log import normalized_query
from server.learning.training import TrainConfig, train_model

log = logging.getLogger(__name__)

MODES = ("vector", "hybrid")
# The experiment trains as `retrain` would by default: its defaults are the product's settings.
_PRODUCT = Settings.model_construct()


def paired_bootstrap(
    base: Sequence[float], new: Sequence[float], resamples: int = 10_000, seed: int = 0
) -> tuple[float, float, float]:
    """(mean delta, 2.5th, 97.5th percentile) of the mean per-query difference, queries resampled."""
    diff = np.asarray(new, dtype=np.float64) - np.asarray(base, dtype=np.float64)
    if diff.size == 0:
        return 0.0, 0.0, 0.0
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, diff.size, size=(resamples, diff.size))
    means = diff[idx].mean(axis=1)
    return float(diff.mean()), float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))


# Buckets of evaluation queries by the keyword side's own nDCG@10 (low, high exclusive, label): where BM25 already
# answers well, the hybrid has little left to gain; where it fails, the hybrid leans on the dense side.
KEYWORD_BUCKETS = (
    (0.8, 1.01, "BM25 nDCG@10 >= 0.8"),
    (0.3, 0.8, "0.3 <= BM25 < 0.8"),
    (0.0, 0.3, "BM25 < 0.3"),
)


# Vector-side RRF weights (keyword weight 1) at which the hybrid is also scored, to see whether re-fitting the
# fusion after a retrain would turn a dense gain into a hybrid one. The weight is read off the evaluation labels,
# so this is a ceiling for any re-fitting rule, never a result.
FUSION_SWEEP = (0.5, 0.75, 1.0, 1.25, 1.5, 2.0, 3.0)


def sweep_key(weight: float) -> str:
    return f"hybrid@vector_weight={weight:g}"


def _evaluate(
    engine: Any,
    queries: Mapping[str, str],
    qrels: Mapping[str, Mapping[str, int]],
    modes: Sequence[str] = MODES,
    sweep: Sequence[float] = FUSION_SWEEP,
    vector_lists: dict[str, list[str]] | None = None,
    ensemble_with: Mapping[str, Sequence[str]] | None = None,
) -> dict[str, dict[str, float]]:
    """Per-query nDCG@10 by mode, straight from the engine (not logged: evaluation never reaches the log).
    The hybrid search's own candidate lists are re-fused at each `sweep` weight (`sweep_key`), so the sweep
    costs no extra searches. `vector_lists` collects each query's vector candidate list (the base model's);
    `ensemble_with` fuses those base lists as a third RRF list next to this model's two (`ENSEMBLE_KEYS`)."""
    out: dict[str, dict[str, float]] = {m: {} for m in modes}
    keys = {w: sweep_key(w) for w in sweep} if "hybrid" in modes else {}
    out.update({key: {} for key in keys.values()})
    if ensemble_with is not None:
        out.update({key: {} for key in ENSEMBLE_KEYS})
    rrf_k, keyword_weight = engine.settings.rrf_k, engine.settings.keyword_weight
    for qid, text in queries.items():
        for mode in modes:
            res = engine.search(COLLECTION, text, 10, mode)
            out[mode][qid] = ndcg_at_k([h.doc_id for h in res.hits], qrels[qid], 10)
            if mode != "hybrid":
                continue
            lists = [[c.doc_id for c in res.vector], [c.doc_id for c in res.keyword]]
            if vector_lists is not None:
                vector_lists[qid] = lists[0]
            for weight, key in keys.items():
                fused = rrf(lists, k=rrf_k, weights=(weight, keyword_weight), limit=10)
                out[key][qid] = ndcg_at_k([doc for doc, _ in fused], qrels[qid], 10)
            if ensemble_with is not None:
                three = [lists[0], list(ensemble_with[qid]), lists[1]]
                for key, (w_new, w_base) in ENSEMBLE_KEYS.items():
                    fused = rrf(three, k=rrf_k, weights=(w_new, w_base, keyword_weight), limit=10)
                    out[key][qid] = ndcg_at_k([doc for doc, _ in fused], qrels[qid], 10)
    return out


# Three-list fusion: the retrained model's vector list, the base model's, and BM25's, at (retrained, base)
# vector weights; the keyword weight stays the product's.
ENSEMBLE_KEYS = {
    "hybrid@ensemble=1+1": (1.0, 1.0),
    "hybrid@ensemble=0.5+0.5": (0.5, 0.5),
    "hybrid@ensemble=1+0.5": (1.0, 0.5),
}


def fusion_sweep(
    base: Mapping[str, Mapping[str, float]], runs: Sequence[Mapping[str, Mapping[str, float]]], seed: int
) -> list[dict[str, Any]]:
    """Hybrid nDCG@10 of the base and the retrained models (seed-averaged) at each swept vector weight, with
    the retrained model's delta against the base at the default weight and against the base at the same
    weight (paired bootstrap). An oracle: the best row is chosen by the evaluation labels."""
    default = sweep_key(_PRODUCT.vector_weight)
    rows = []
    for weight in FUSION_SWEEP:
        key = sweep_key(weight)
        if not runs or any(key not in per or default not in per for per in (base, *runs)):
            continue
        qids = sorted(base[key])
        avg = [float(np.mean([run[key][q] for run in runs])) for q in qids]
        d0, lo0, hi0 = paired_bootstrap([base[default][q] for q in qids], avg, seed=seed)
        d1, lo1, hi1 = paired_bootstrap([base[key][q] for q in qids], avg, seed=seed)
        rows.append(
            {
                "vector_weight": weight,
                "base": round(float(np.mean([base[key][q] for q in qids])), 4),
                "retrained": round(float(np.mean(avg)), 4),
                "delta_vs_base_default": round(d0, 4),
                "ci95_vs_base_default": [round(lo0, 4), round(hi0, 4)],
                "delta_vs_base_same_weight": round(d1, 4),
                "ci95_vs_base_same_weight": [round(lo1, 4), round(hi1, 4)],
            }
        )
    return rows


def ensemble_summary(
    base: Mapping[str, Mapping[str, float]], runs: Sequence[Mapping[str, Mapping[str, float]]], seed: int
) -> list[dict[str, Any]]:
    """Hybrid nDCG@10 when the base model's vector list stays in the fusion next to the retrained model's
    (seed-averaged), against the base hybrid at the product's weights (paired bootstrap)."""
    rows = []
    for key, (w_new, w_base) in ENSEMBLE_KEYS.items():
        if not runs or any(key not in run for run in runs):
            continue
        qids = sorted(base["hybrid"])
        avg = [float(np.mean([run[key][q] for run in runs])) for q in qids]
        delta, lo, hi = paired_bootstrap([base["hybrid"][q] for q in qids], avg, seed=seed)
        rows.append(
            {
                "retrained_weight": w_new,
                "base_weight": w_base,
                "ndcg@10": round(float(np.mean(avg)), 4),
                "delta_vs_base_hybrid": round(delta, 4),
                "ci95": [round(lo, 4), round(hi, 4)],
            }
        )
    return rows


# What the simulated agent tells rift (--agent-feedback): verdicts through `feedback`, or only the documents it
# opens to read (get_document with the search's query_id), the signal an agent gives without being asked.
AGENT_SIGNALS = {"feedback": "feedback", "opens": "reads (opened documents only)"}


def simulated_agent(
    shown: Sequence[str], relevance: Mapping[str, int], confirm_at_most: int = 2, read_when_none: int = 3
) -> list[tuple[str, bool]]:
    """What an agent reading one search's results top-down tells `feedback` (the labels play its judgement;
    NOT label-free): it confirms the first `confirm_at_most` relevant documents it meets and rejects every
    one it read past before the last of them; when nothing shown is relevant it rejects the first
    `read_when_none` it read. It judges only what it was shown."""
    out: list[tuple[str, bool]] = []
    passed: list[str] = []
    confirmed = 0
    for doc in shown:
        if relevance.get(doc, 0) > 0:
            out.extend((d, False) for d in passed)
            passed = []
            out.append((doc, True))
            confirmed += 1
            if confirmed >= confirm_at_most:
                break
        else:
            passed.append(doc)
    if confirmed == 0:
        return [(doc, False) for doc in shown[:read_when_none]]
    return out


def labelled_triples(
    queries: Sequence[Any],
    qids_by_text: Mapping[str, str],
    qrels: Mapping[str, Mapping[str, int]],
    negatives_per_query: int,
    negative_depth: int = 10,
) -> list[Triple]:
    """The reference that is NOT label-free (`--labelled-bound`): for the same logged training queries the miner
    saw, the positive is the query's most relevant document by the usage split's labels (ties: the one the
    vector side ranked best) and the negatives are the vector side's best-ranked documents the labels call
    non-relevant. It bounds what perfect labels for the same usage would give this recipe."""
    out: list[Triple] = []
    for q in queries:
        rel = qrels.get(qids_by_text.get(q.query, ""), {})
        relevant = [d for d, grade in rel.items() if grade > 0]
        if not relevant:
            continue
        vector_rank = {doc: i for i, (doc, _chunk, _s) in enumerate(q.vector)}
        positive = min(relevant, key=lambda d: (-rel[d], vector_rank.get(d, len(vector_rank)), d))
        chunk_of = {doc: chunk for doc, chunk, _s in [*q.keyword, *q.vector]}
        negatives = [doc for doc, _c, _s in q.vector[:negative_depth] if rel.get(doc, 0) <= 0]
        for negative in negatives[:negatives_per_query]:
            out.append(
                Triple(
                    q.query,
                    q.collection,
                    positive,
                    chunk_of.get(positive, ""),
                    negative,
                    chunk_of[negative],
                    "labelled",
                    q.query_id,
                    1.0,
                )
            )
    return out


def half_labelled_triples(
    mined: Sequence[Triple],
    queries: Sequence[Any],
    qids_by_text: Mapping[str, str],
    qrels: Mapping[str, Mapping[str, int]],
    labelled_part: str,
) -> list[Triple]:
    """Diagnostics, NOT label-free (`--labelled-bound --set labelled_scope=...`): the miner's triples with one
    part replaced by what the labels say, for the same queries. "positives": the labels' positive with the
    miner's negatives; "negatives": the miner's positive with the vector side's best non-relevant documents.
    Which half closes the gap to the fully labelled triples says whether mining's positives or its negatives
    limit it."""
    by_id = {q.query_id: q for q in queries}
    per_query: dict[str, list[Triple]] = {}
    for t in mined:
        per_query.setdefault(t.query_id, []).append(t)
    out: list[Triple] = []
    for qid, group in per_query.items():
        q = by_id.get(qid)
        if q is None:
            continue
        labelled = labelled_triples([q], qids_by_text, qrels, len(group) + 1)
        if not labelled:
            continue
        if labelled_part == "positives":
            pos, chunk = labelled[0].positive_doc, labelled[0].positive_chunk
            out += [
                replace(t, positive_doc=pos, positive_chunk=chunk) for t in group if t.negative_doc != pos
            ]
        else:
            mined_pos = group[0].positive_doc
            out += [
                replace(t, negative_doc=lt.negative_doc, negative_chunk=lt.negative_chunk)
                for t, lt in zip(group, [lt for lt in labelled if lt.negative_doc != mined_pos], strict=False)
            ]
    return out


def repeat_hard_positives(
    rows: Sequence[tuple[str, str, str]], kept: Sequence[Triple], queries: Sequence[Any], times: int
) -> tuple[list[tuple[str, str, str]], int]:
    """An experiment (`--set mining_hard_positive_repeat=N`, not a setting): the triples whose positive the
    vector side did not rank first (BM25 was sure of a document the dense model put lower: the disagreement
    the dense side can learn from) are trained `times` times; the rest once. Returns the rows and how many
    triples were hard."""
    vector_top = {q.query_id: q.vector[0][0] for q in queries if q.vector}
    hard = [
        row
        for row, t in zip(rows, kept, strict=True)
        if vector_top.get(t.query_id, t.positive_doc) != t.positive_doc
    ]
    return [*rows, *(hard * (times - 1))], len(hard)


def anchor_texts(
    log: Any, engine: Any, mined: Any, docs: int, query_prompt: str, document_prompt: str
) -> list[str]:
    """An experiment (`--set learn_anchor_weight=W`, not a setting): the texts whose embeddings training keeps
    near the base model's. The logged training searches the miner made no triple of (no confident positive:
    mostly those where BM25 is unsure, where the hybrid leans on the dense side), and the vector side's first
    `docs` chunks of each: the trained model drifts towards what BM25 confirms, and lost ground on the queries
    BM25 fails (server/bench/LEARNING.md, "Where the gain lands"); anchoring these keeps the dense side's own
    view there."""
    used = {t.query_id for t in mined.report.triples}
    heads = [q.query_id for q in mined.train_queries if q.query_id not in used]
    texts: dict[str, None] = {}
    wanted: dict[str, list[str]] = {}
    for q in log.by_ids(heads):
        texts[query_prompt + q.query] = None
        wanted.setdefault(q.collection, []).extend(chunk for _doc, chunk, _score in q.vector[:docs])
    for collection, ids in wanted.items():
        for row in engine.state.chunks_by_id(collection, sorted(set(ids))).values():
            texts[document_prompt + row.text] = None
    return list(texts)


def denoise_pairs(documents: Mapping[str, str], count: int, seed: int, keep: float = 0.4) -> list[tuple[str, str]]:
    """An experiment (`--set learn_denoise_weight=W`, not a setting): `count` sentences drawn (seeded) from the
    corpus, each with a damaged copy that keeps `keep` of its words (TSDAE's noise: deletion), for training
    the dense side on the corpus's own language beside the mined triples. Only the corpus is read."""
    rng = random.Random(seed)
    sentences = [
        sentence.strip()
        for doc_id in sorted(documents)
        for sentence in re.split(r"(?<=[.!?])\s+|\n+", documents[doc_id])
        if len(sentence.split()) >= 6
    ]
    pairs = []
    for sentence in rng.sample(sentences, min(count, len(sentences))):
        words = sentence.split()
        kept = [w for w in words if rng.random() < keep] or [rng.choice(words)]
        pairs.append((" ".join(kept), sentence))
    return pairs


def _label_quality(
    triples: Sequence[Any], qids_by_text: Mapping[str, str], qrels: Mapping[str, Mapping[str, int]]
) -> dict[str, Any]:
    """After mining only: how often mined positives / negatives are truly relevant (usage-split labels)."""
    by_kind: dict[str, list[tuple[bool, bool]]] = {}
    for t in triples:
        qid = qids_by_text.get(t.query)
        if qid is None or qid not in qrels:
            continue
        rel = qrels[qid]
        by_kind.setdefault(t.kind, []).append(
            (rel.get(t.positive_doc, 0) > 0, rel.get(t.negative_doc, 0) > 0)
        )
    return {
        kind: {
            "judged": len(v),
            "positive_precision": round(sum(p for p, _ in v) / len(v), 4),
            "negative_false_rate": round(sum(n for _, n in v) / len(v), 4),
        }
        for kind, v in by_kind.items()
        if v
    }


def _summary(base: Mapping[str, float], runs: Sequence[Mapping[str, float]], seed: int) -> dict[str, Any]:
    qids = sorted(base)
    b = [base[q] for q in qids]
    per_seed = []
    for run in runs:
        n = [run[q] for q in qids]
        d, lo, hi = paired_bootstrap(b, n, seed=seed)
        per_seed.append(
            {
                "ndcg@10": round(float(np.mean(n)), 4),
                "delta": round(d, 4),
                "ci95": [round(lo, 4), round(hi, 4)],
            }
        )
    avg = [float(np.mean([run[q] for run in runs])) for q in qids]
    d, lo, hi = paired_bootstrap(b, avg, seed=seed)
    deltas = [s["delta"] for s in per_seed]
    return {
        "base": round(float(np.mean(b)), 4),
        "per_seed": per_seed,
        "seed_mean_delta": round(d, 4),
        "seed_mean_ci95": [round(lo, 4), round(hi, 4)],
        "delta_std_over_seeds": round(statistics.stdev(deltas), 4) if len(deltas) > 1 else 0.0,
    }


def run_learning_experiment(
    data: Path,
    eval_split: str,
    usage_split: str,
    model: str | None,
    seeds: list[int],
    cache_dir: Path,
    out: Path | None,
    *,
    strategy: str = _PRODUCT.learn_strategy,
    epochs: float = _PRODUCT.learn_epochs,
    learning_rate: float = _PRODUCT.learn_learning_rate,
    batch_size: int = _PRODUCT.learn_batch_size,
    train_max_seq_length: int | None = _PRODUCT.learn_max_seq_length,
    negatives_per_query: int = _PRODUCT.learn_negatives_per_query,
    positive_max_rank: int = 10,
    positive_min_keyword_margin: float = _PRODUCT.learn_positive_min_keyword_margin,
    positive_min_vector_margin: float = 0.0,
    negative_min_keyword_rank: int = 30,
    negative_source: str = _PRODUCT.learn_negative_source,
    max_pseudo: int = 2000,
    second_opinion_depth: int = 0,
    loss: str = _PRODUCT.learn_loss,
    mask_query_terms: float = 0.0,
    drop_query_words: float = 0.0,
    hard_positive_repeat: int = 1,
    anchor_weight: float = 0.0,
    anchor_docs: int = 3,
    denoise_weight: float = 0.0,
    denoise_texts: int = 2000,
    merge_base: float = _PRODUCT.learn_merge_base,
    hardness_mode: str | None = None,
    hardness_strength: float = 0.0,
    mnrl_directions: str = "query_to_doc",
    destroyed_check: bool = False,
    labelled_bound: bool = False,
    labelled_scope: str = "all",
    agent_feedback: bool = False,
    agent_share: float = 1.0,
    agent_error_rate: float = 0.0,
    agent_signal: str = "feedback",
    passed_over_negatives: bool = False,
    rounds: int = 1,
    searches: str = _PRODUCT.learn_searches,
    progress: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    say = progress or (lambda msg: log.info("%s", msg))
    if labelled_bound and agent_feedback:
        raise ValueError("choose one of labelled_bound and agent_feedback")
    if agent_signal not in AGENT_SIGNALS:
        raise ValueError(f"unknown agent_signal {agent_signal!r}; choose one of {', '.join(AGENT_SIGNALS)}")
    data = Path(data)
    eval_ds = load_beir(data, eval_split)
    usage_ds = load_beir(data, usage_split)
    overlap = set(usage_ds.queries) & set(eval_ds.queries)
    if overlap:
        raise BenchError(
            f"--usage-split {usage_split} and --split {eval_split} share {len(overlap)} query ids: the learning "
            "loop must never see an evaluation query, so give splits apart"
        )
    usage_ids, dropped = usage_apart_from(usage_ds.queries, eval_ds.queries)
    if dropped:
        say(f"{len(dropped)} usage queries left out: their text is an evaluation query's ({', '.join(dropped)})")
    texts_to_qid = {usage_ds.queries[q]: q for q in usage_ids}
    mining = MiningConfig(
        strategy=strategy,
        negatives_per_query=negatives_per_query,
        positive_max_rank=positive_max_rank,
        positive_min_keyword_margin=positive_min_keyword_margin,
        positive_min_vector_margin=positive_min_vector_margin,
        negative_min_keyword_rank=negative_min_keyword_rank,
        negative_source=negative_source,
        max_pseudo=max_pseudo,
        second_opinion_depth=second_opinion_depth,
        passed_over_negatives=passed_over_negatives,
        fusion_k=_PRODUCT.rrf_k,
        fusion_weights=(_PRODUCT.vector_weight, _PRODUCT.keyword_weight),
    )
    train_cfg = TrainConfig(
        epochs=epochs,
        learning_rate=learning_rate,
        batch_size=batch_size,
        max_seq_length=train_max_seq_length,
        loss=loss,
        merge_base=merge_base,
        hardness_mode=hardness_mode,
        hardness_strength=hardness_strength,
        directions=tuple(mnrl_directions.split(",")),
    )
    result: dict[str, Any] = {
        "dataset": eval_ds.name,
        "eval_split": eval_split,
        "usage_split": usage_split,
        "usage_queries": len(usage_ids),
        "usage_queries_left_out": dropped,  # their text is an evaluation query's, under another id
        "eval_queries": len(eval_ds.queries),
        "documents": len(eval_ds.documents),
        "strategy": f"labelled bound (usage-split relevance labels, {labelled_scope} queries)"
        if labelled_bound
        else f"{strategy} + simulated agent {AGENT_SIGNALS[agent_signal]} (usage-split relevance labels)"
        if agent_feedback
        else strategy,
        "labelled_bound": labelled_bound,
        "agent_feedback": agent_feedback,
        **(
            {"agent": {"share": agent_share, "error_rate": agent_error_rate, "signal": agent_signal}}
            if agent_feedback
            else {}
        ),
        "mining": {
            "positive_max_rank": positive_max_rank,
            "positive_min_keyword_margin": positive_min_keyword_margin,
            "positive_min_vector_margin": positive_min_vector_margin,
            "negative_min_keyword_rank": negative_min_keyword_rank,
            "negative_source": negative_source,
            "negatives_per_query": negatives_per_query,
            "max_pseudo": max_pseudo,
            "second_opinion_depth": second_opinion_depth,
            "passed_over_negatives": passed_over_negatives,
        },
        "train": {
            "epochs": epochs,
            "learning_rate": learning_rate,
            "batch_size": batch_size,
            "max_seq_length": train_max_seq_length,
            "negatives_per_query": negatives_per_query,
            "loss": loss,
            "mask_query_terms": mask_query_terms,
            "drop_query_words": drop_query_words,
            "hard_positive_repeat": hard_positive_repeat,
            "anchor_weight": anchor_weight,
            "anchor_docs": anchor_docs,
            "denoise_weight": denoise_weight,
            "denoise_texts": denoise_texts,
            "merge_base": merge_base,
            "hardness_mode": hardness_mode,
            "hardness_strength": hardness_strength,
            "mnrl_directions": mnrl_directions,
            "rounds": rounds,
            "searches": searches,
        },
        "seeds": [],
    }
    base_eval: dict[str, dict[str, float]] | None = None
    base_vectors: dict[str, list[str]] = {}
    runs: dict[str, list[dict[str, float]]] = {m: [] for m in MODES}
    for seed in seeds:
        random.seed(seed)
        np.random.seed(seed)
        seed_info: dict[str, Any] = {"seed": seed}
        with BenchIndex(model, cache_dir) as index, tempfile.TemporaryDirectory(prefix="rift-learn-") as tmp:
            t0 = time.perf_counter()
            index.ingest(eval_ds)
            seed_info["ingest_s"] = round(time.perf_counter() - t0, 1)
            engine = index.engine
            if base_eval is None:
                say(f"{eval_ds.name}: evaluating the base model")
                base_eval = _evaluate(
                    engine, eval_ds.queries, eval_ds.qrels, (*MODES, "keyword"), vector_lists=base_vectors
                )
            judged = {"queries": 0, "relevant": 0, "not_relevant": 0, "wrong": 0, "opened": 0}
            agent_rng = random.Random(seed)
            # Rounds: the usage queries in `rounds` interleaved parts, each replayed then retrained from the
            # serving model on the whole log, as the periodic policy would (a rejected candidate does not serve
            # the next round). The reported model is the last round's candidate, as with one round.
            # With `searches` "new" (the product's default), a round mines only the searches the serving model
            # has not learnt, as the product does (`Learnt`); "all" mines the whole log again.
            parts = [usage_ids[r::rounds] for r in range(rounds)]
            seed_info["rounds"] = []
            learnt_queries: set[str] = set()
            learnt = Learnt()  # what the serving model learnt of the log: nothing, for the base model
            replay_s = 0.0
            for r, part in enumerate(parts):
                tag = f"seed {seed}" + (f" round {r + 1}/{rounds}" if rounds > 1 else "")
                say(f"{eval_ds.name} {tag}: replaying {len(part)} usage queries")
                t0 = time.perf_counter()
                agent = (agent_rng, agent_share, agent_error_rate, judged) if agent_feedback else None
                _replay(index.rift, usage_ds, part, agent, opens_only=agent_signal == "opens")
                replay_s += time.perf_counter() - t0
                seed_info["replay_s"] = round(replay_s, 1)
                if agent_feedback:
                    seed_info["agent_feedback"] = judged

                gate_cfg = GateConfig(seed=seed)
                mined = collect_and_mine(
                    index.rift.log,
                    engine,
                    MiningConfig(**{**mining.__dict__, "seed": seed}),
                    gate_cfg,
                    learnt=learnt if searches == "new" else None,
                )
                if labelled_bound:
                    # "mined": label only the queries the miner made triples for, to tell whether the limit
                    # is which queries label-free mining can use, or how right its positives are on them.
                    used = {t.query_id for t in mined.report.triples}
                    heads = [q for q in mined.train_queries if labelled_scope == "all" or q.query_id in used]
                    scope = list(index.rift.log.by_ids([q.query_id for q in heads]))
                    if labelled_scope in ("positives", "negatives"):
                        mined.report.triples[:] = half_labelled_triples(
                            mined.report.triples, scope, texts_to_qid, usage_ds.qrels, labelled_scope
                        )
                    else:
                        mined.report.triples[:] = labelled_triples(
                            scope, texts_to_qid, usage_ds.qrels, negatives_per_query
                        )
                    mined.report.skipped.clear()  # the miner's skips do not describe the labelled triples
                round_queries = {t.query_id for t in mined.report.triples}
                again = len(round_queries & learnt_queries)  # searches an earlier round trained on already
                learnt_queries |= round_queries
                rows, kept = materialize(engine, mined.report.triples)
                seed_info["mining"] = {**mined.report.summary(examples=3), "materialized": len(rows)}
                seed_info["mining"]["train_queries"] = len(mined.train_queries)
                seed_info["mining"]["holdout_queries"] = len(mined.holdout)
                seed_info["label_quality"] = _label_quality(kept, texts_to_qid, usage_ds.qrels)
                if hard_positive_repeat > 1:
                    train = list(index.rift.log.by_ids([q.query_id for q in mined.train_queries]))
                    rows, hard = repeat_hard_positives(rows, kept, train, hard_positive_repeat)
                    seed_info["mining"]["hard_positive_triples"] = hard
                masker = TermMasker(index.settings.stemmer_language, index.settings.stopwords)
                rows = mask_shared_terms(rows, mask_query_terms, masker, seed)
                rows = drop_shared_query_words(rows, drop_query_words, masker, seed)
                say(f"{eval_ds.name} {tag}: training on {len(rows)} triples")
                serving = engine.embedder  # the base model in the first round
                anchors: list[str] = []
                if anchor_weight > 0:
                    anchors = anchor_texts(
                        index.rift.log, engine, mined, anchor_docs, serving.query_prompt,
                        serving.document_prompt,
                    )
                    seed_info["mining"]["anchors"] = len(anchors)
                denoise = denoise_pairs(eval_ds.documents, denoise_texts, seed) if denoise_weight > 0 else []
                if denoise:
                    seed_info["mining"]["denoise_pairs"] = len(denoise)
                trained = train_model(
                    serving.spec.location,
                    rows,
                    Path(tmp) / f"model-{r}",
                    TrainConfig(**{**train_cfg.__dict__, "seed": seed}),
                    serving.query_prompt,
                    serving.document_prompt,
                    anchors=anchors,
                    anchor_weight=anchor_weight,
                    denoise=denoise,
                    denoise_weight=denoise_weight,
                )
                seed_info["train_s"] = round(trained.seconds, 1)
                seed_info["train_triples_per_s"] = round(len(rows) * epochs / max(trained.seconds, 1e-9), 2)
                seed_info["train_device"] = trained.device
                candidate = load_embedder(str(trained.path), f"learned-seed{seed}-{r}", index.settings)
                say(f"{eval_ds.name} {tag}: re-encoding the corpus with the candidate")
                t0 = time.perf_counter()
                build_all(engine, candidate)
                seed_info["reencode_s"] = round(time.perf_counter() - t0, 1)
                t0 = time.perf_counter()
                gate = Gate(engine, gate_cfg).score(
                    serving,
                    candidate,
                    mined.holdout,
                    mined.feedback,
                    trained_texts={normalized_query(row[0]) for row in rows},
                    opened=mined.opened,
                )
                seed_info["gate"] = gate.as_dict()
                seed_info["gate_s"] = round(time.perf_counter() - t0, 1)
                if destroyed_check and seed == seeds[0] and r == 0:
                    seed_info["destroyed_gate"] = _destroyed_gate(
                        engine, serving, mined, gate_cfg, Path(tmp), index.settings
                    )
                switch_all(engine, candidate, keep_old=True)
                say(f"{eval_ds.name} {tag}: evaluating the retrained model")
                evaluated = _evaluate(engine, eval_ds.queries, eval_ds.qrels, ensemble_with=base_vectors)
                seed_info["rounds"].append(
                    {
                        "round": r + 1,
                        "usage_queries": len(part),
                        "triples": len(rows),
                        "queries_trained_before": again,
                        "train_s": seed_info["train_s"],
                        "accepted": gate.accepted,
                        **{f"{m}_ndcg@10": round(float(np.mean(list(evaluated[m].values()))), 4) for m in MODES},
                    }
                )
                if gate.accepted:
                    learnt = mined.learnt
                elif r < rounds - 1:
                    switch_all(engine, serving, keep_old=True)  # the rejected candidate never served
            seed_info["per_query"] = {
                m: {q: round(v, 5) for q, v in per.items()} for m, per in evaluated.items()
            }
            for m in MODES:
                runs[m].append(evaluated[m])
                seed_info[f"{m}_ndcg@10"] = round(float(np.mean(list(evaluated[m].values()))), 4)
        result["seeds"].append(seed_info)
        assert base_eval is not None
        result["base_per_query"] = {
            m: {q: round(v, 5) for q, v in per.items()} for m, per in base_eval.items()
        }
        result["modes"] = {m: _summary(base_eval[m], runs[m], seeds[0]) for m in MODES}
        result["by_keyword_ndcg"] = by_keyword_difficulty(base_eval, runs)
        result["fusion_sweep"] = fusion_sweep(
            result["base_per_query"], [s["per_query"] for s in result["seeds"]], seeds[0]
        )
        result["ensemble"] = ensemble_summary(
            result["base_per_query"], [s["per_query"] for s in result["seeds"]], seeds[0]
        )
        if out is not None:
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_text(json.dumps(result, indent=2))
        say(
            f"{eval_ds.name} seed {seed}: "
            + json.dumps({m: result["modes"][m]["per_seed"][-1] for m in MODES})
        )
    return result


def _replay(
    rift: Any,
    usage: Any,
    qids: Sequence[str],
    agent: tuple[random.Random, float, float, dict[str, int]] | None,
    opens_only: bool = False,
) -> None:
    """Search each usage query as an agent would. With `agent` (rng, share, error rate, counts), the simulated
    agent judges a share of its searches and may judge wrongly: each verdict flips with probability `error
    rate` (both draws seeded); `counts` tallies what it said. With `opens_only` it tells `feedback` nothing
    and opens (get_document with the query_id) the documents it judged relevant, in the order it met them."""
    for qid in qids:
        found = rift.search(COLLECTION, usage.queries[qid], 10, "hybrid", source="usage")
        if agent is None:
            continue
        rng, share, error_rate, judged = agent
        if rng.random() >= share:
            continue
        shown = [hit.doc_id for hit in found.outcome.hits]
        said = simulated_agent(shown, usage.qrels.get(qid, {}))
        for doc_id, relevant in said:
            if rng.random() < error_rate:
                relevant = not relevant
                judged["wrong"] += 1
            if opens_only:
                if relevant:
                    get_document(rift, COLLECTION, doc_id, query_id=found.query_id, max_chars=1)
                    judged["opened"] += 1
            else:
                rift.learning.feedback(found.query_id, doc_id, relevant)
            judged["relevant" if relevant else "not_relevant"] += 1
        judged["queries"] += bool(said)


def by_keyword_difficulty(
    base: Mapping[str, Mapping[str, float]], runs: Mapping[str, Sequence[Mapping[str, float]]]
) -> list[dict[str, Any]]:
    """Where the learning gain lands: evaluation queries grouped by the keyword side's nDCG@10 (the base
    run's; BM25 does not change with the model), with each mode's seed-averaged delta in the group and its
    share of the overall mean delta (delta x group size / all queries)."""
    keyword = base.get("keyword")
    if not keyword:
        return []
    total = len(keyword)
    out = []
    for low, high, label in KEYWORD_BUCKETS:
        qids = [q for q, v in keyword.items() if low <= v < high]
        row: dict[str, Any] = {"bucket": label, "queries": len(qids)}
        for m in MODES:
            if not qids or not runs[m]:
                continue
            delta = float(np.mean([np.mean([run[q] - base[m][q] for run in runs[m]]) for q in qids]))
            row[m] = {
                "base": round(float(np.mean([base[m][q] for q in qids])), 4),
                "delta": round(delta, 4),
                "share_of_mean_delta": round(delta * len(qids) / total, 4),
            }
        out.append(row)
    return out


def usage_apart_from(
    usage: Mapping[str, str], evaluation: Mapping[str, str]
) -> tuple[list[str], list[str]]:
    """(usage query ids to replay, those left out). A usage query whose text is an evaluation query's (BEIR
    splits repeat a few texts under other ids: SciFact train 1291 = test 1292) would feed an evaluation query
    to the learning loop, so it is left out, compared as the query log compares repeats."""
    held = {normalized_query(text) for text in evaluation.values()}
    kept = [q for q in sorted(usage) if normalized_query(usage[q]) not in held]
    return kept, sorted(set(usage) - set(kept))


def merge_results(results: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Combine runs of the same dataset made one seed at a time into one result with seed-spread summaries.
    Each seed's gain is taken against its own run's base (CPU floating point moves a re-run's base by up to
    ~0.0005); the other summaries use the first run's base, and `base_spread` says how far the bases differ."""
    first = results[0]
    for key in ("dataset", "eval_split", "usage_split", "strategy"):
        if len({str(r.get(key)) for r in results}) > 1:
            raise ValueError(f"runs differ in {key}: {sorted({str(r.get(key)) for r in results})}")
    seeds = [s["seed"] for r in results for s in r["seeds"]]
    if len(set(seeds)) < len(seeds):
        raise ValueError(f"a seed appears in more than one run: {seeds}")
    merged = {k: v for k, v in first.items() if k not in ("seeds", "modes")}
    merged["seeds"] = [s for r in results for s in r["seeds"]]
    base = first["base_per_query"]
    # Per seed, its score shifted by the first base minus its own: the gain against its own run's base.
    own = [
        {m: {q: v - r["base_per_query"][m][q] + base[m][q] for q, v in s["per_query"][m].items()} for m in MODES}
        for r in results
        for s in r["seeds"]
    ]
    merged["modes"] = {m: _summary(base[m], [o[m] for o in own], merged["seeds"][0]["seed"]) for m in MODES}
    def mean(scores: Mapping[str, float]) -> float:
        return float(np.mean(list(scores.values())))

    merged["base_spread"] = {
        m: round(max(abs(mean(r["base_per_query"][m]) - mean(base[m])) for r in results), 5) for m in MODES
    }
    runs = {m: [s["per_query"][m] for s in merged["seeds"]] for m in MODES}
    merged["by_keyword_ndcg"] = by_keyword_difficulty(base, runs)
    merged["fusion_sweep"] = fusion_sweep(
        base, [s["per_query"] for s in merged["seeds"]], merged["seeds"][0]["seed"]
    )
    merged["ensemble"] = ensemble_summary(
        base, [s["per_query"] for s in merged["seeds"]], merged["seeds"][0]["seed"]
    )
    return merged


def _destroyed_gate(
    engine: Any, base: Any, mined: Any, gate_cfg: GateConfig, tmp: Path, settings: Any
) -> dict[str, Any]:
    """The gate must reject a destroyed model: the base architecture with re-initialised weights."""
    import torch
    from sentence_transformers import SentenceTransformer

    torch.manual_seed(gate_cfg.seed)
    model = SentenceTransformer(base.spec.location, device="cpu")
    for module in model.modules():
        if hasattr(module, "reset_parameters"):
            module.reset_parameters()
    path = tmp / "destroyed"
    model.save(str(path), create_model_card=False)
    destroyed = load_embedder(str(path), "destroyed", settings)
    build_all(engine, destroyed)
    report = Gate(engine, gate_cfg).score(
        engine.embedder, destroyed, mined.holdout, mined.feedback, opened=mined.opened
    )
    for name in engine.collection_names():
        engine.drop_vectors(name, "destroyed")
    return report.as_dict()


MINING_VARIANTS: dict[str, dict[str, Any]] = {
    # (The miner's bare defaults, which the product's settings narrow: its default is the row "fused, BM25
    # margin 1.3, the hybrid's next 2 documents as negatives".)
    "fused, no margin, 1 vector negative (the miner's bare defaults)": {"strategy": "fused"},
    "fused, no positive filter": {"strategy": "fused", "positive_max_rank": 10_000},
    "fused, both sides top-3": {"strategy": "fused", "positive_max_rank": 3},
    "fused, weak negative guard (keyword top-10)": {"strategy": "fused", "negative_min_keyword_rank": 10},
    "fused, strict negative guard (absent from keyword top-100)": {
        "strategy": "fused",
        "negative_min_keyword_rank": 100,
    },
    "fused, 3 negatives per query": {"strategy": "fused", "negatives_per_query": 3},
    "fused, BM25 margin 1.3": {"strategy": "fused", "positive_min_keyword_margin": 1.3},
    "fused, BM25 margin 1.3, 2 negatives": {
        "strategy": "fused",
        "positive_min_keyword_margin": 1.3,
        "negatives_per_query": 2,
    },
    "fused, BM25 margin 1.3, the hybrid's next 2 documents as negatives (the product's default)": {
        "strategy": "fused",
        "positive_min_keyword_margin": 1.3,
        "negatives_per_query": 2,
        "negative_source": "fused",
    },
    "fused, keyword blind spot as negative": {"strategy": "fused", "negative_source": "keyword"},
    "fused, one negative from each side": {
        "strategy": "fused",
        "negative_source": "both",
        "negatives_per_query": 2,
    },
    "agreement (both top-5)": {"strategy": "agreement", "negatives_per_query": 1},
    "keyword blind spot as positive": {"strategy": "keyword_blind"},
    "keyword blind spot as positive, BM25 margin 1.3": {
        "strategy": "keyword_blind",
        "positive_min_keyword_margin": 1.3,
    },
}


def run_mining_analysis(
    data: Path,
    usage_split: str,
    model: str | None,
    cache_dir: Path,
    variants: Mapping[str, Mapping[str, Any]] | None = None,
) -> dict[str, Any]:
    """No training: replay the usage queries, mine with each variant, and report how many triples it yields and
    how often its positives / negatives are truly relevant by the usage split's labels (read only here, after
    mining, to judge the miners)."""
    usage_ds = load_beir(Path(data), usage_split)
    usage_ids = sorted(usage_ds.queries)
    texts_to_qid = {usage_ds.queries[q]: q for q in usage_ids}
    out: dict[str, Any] = {"dataset": usage_ds.name, "usage_split": usage_split, "variants": {}}
    with BenchIndex(model, cache_dir) as index:
        index.ingest(usage_ds)
        for qid in usage_ids:
            index.rift.search(COLLECTION, usage_ds.queries[qid], 10, "hybrid", source="usage")
        for name, overrides in (variants or MINING_VARIANTS).items():
            mined = collect_and_mine(index.rift.log, index.engine, MiningConfig(**overrides), GateConfig())
            quality = _label_quality(mined.report.triples, texts_to_qid, usage_ds.qrels)
            out["variants"][name] = {
                "triples": len(mined.report.triples),
                "queries_used": len({t.query for t in mined.report.triples}),
                "train_queries": len(mined.train_queries),
                "quality": quality,
            }
    return out
