"""The learning experiment's bookkeeping (`rift bench --learn`): the labelled reference, the breakdown of gains
by how well BM25 answered, and merging one-seed runs. The experiment itself is a benchmark, not a test."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from server.bench.learning_experiment import (
    ENSEMBLE_KEYS,
    FUSION_SWEEP,
    by_keyword_difficulty,
    denoise_pairs,
    ensemble_summary,
    fusion_sweep,
    half_labelled_triples,
    labelled_triples,
    merge_results,
    repeat_hard_positives,
    simulated_agent,
)
from server.cli import main
from tests.support.learning import FILL, q


def test_labelled_bound_uses_the_labels_for_the_same_logged_queries() -> None:
    """`--labelled-bound` (a reference, not label-free): the most relevant document is the positive even when
    neither side ranked it; negatives are the vector side's best non-relevant documents."""
    log = [
        q("1", "first", ["x", "a", "y", "z"], ["a", *FILL], ["a", "x"]),
        q("2", "second", ["b", "w"], ["w"], ["w", "b"]),
        q("3", "unlabelled", ["c"], ["c"], ["c"]),
    ]
    qrels = {"Q1": {"a": 1, "y": 2}, "Q2": {"m": 1, "b": 0}}
    got = labelled_triples(log, {"first": "Q1", "second": "Q2", "unlabelled": "Q3"}, qrels, 2)
    assert [(t.query, t.positive_doc, t.negative_doc, t.kind) for t in got] == [
        ("first", "y", "x", "labelled"),
        ("first", "y", "z", "labelled"),  # a is relevant (grade 1): never a negative
        ("second", "m", "b", "labelled"),
        ("second", "m", "w", "labelled"),
    ]
    assert got[0].positive_chunk == "y::h::0" and got[2].positive_chunk == ""


def test_half_labelled_triples_replace_only_the_positives_or_only_the_negatives() -> None:
    from server.learning.mining import Triple

    log = [q("1", "first", ["x", "a", "y", "z"], ["a", *FILL], ["a", "x"])]
    qrels = {"Q1": {"a": 1, "y": 2}}
    mined = [Triple("first", "c", "a", "a::h::0", n, f"{n}::h::0", "fused", "1") for n in ("x", "y")]
    positives = half_labelled_triples(mined, log, {"first": "Q1"}, qrels, "positives")
    # The labels' positive (y), the miner's negatives, less the one that is now the positive.
    assert [(t.positive_doc, t.negative_doc, t.kind) for t in positives] == [("y", "x", "fused")]
    negatives = half_labelled_triples(mined, log, {"first": "Q1"}, qrels, "negatives")
    assert [(t.positive_doc, t.negative_doc) for t in negatives] == [("a", "x"), ("a", "z")]


def test_hard_positives_are_repeated_and_easy_ones_kept_once() -> None:
    from server.learning.mining import Triple

    log = [q("1", "easy", ["a", "x"], ["a"], ["a"]), q("2", "hard", ["x", "b"], ["b"], ["b", "x"])]
    kept = [
        Triple("easy", "c", "a", "a::h::0", "x", "x::h::0", "fused", "1"),
        Triple("hard", "c", "b", "b::h::0", "x", "x::h::0", "fused", "2"),
    ]
    rows = [("easy", "A", "X"), ("hard", "B", "X")]
    got, hard = repeat_hard_positives(rows, kept, log, 3)
    assert hard == 1 and got == [*rows, ("hard", "B", "X"), ("hard", "B", "X")]


def test_the_references_that_use_labels_need_learn(tmp_path: Path) -> None:
    for flag in ("--labelled-bound", "--agent-feedback"):
        res = CliRunner().invoke(main, ["bench", "--data", str(tmp_path), flag])
        assert res.exit_code == 2 and "apply only with --learn" in res.output


def test_the_simulated_agent_judges_only_what_it_read() -> None:
    """`--agent-feedback` (NOT label-free): the agent reads top-down, confirms the first two relevant results,
    rejects the ones it read past before them, and stops; with nothing relevant shown it rejects what it read."""
    shown = ["a", "b", "c", "d", "e", "f"]
    assert simulated_agent(shown, {"c": 1, "e": 2, "f": 1}) == [
        ("a", False),
        ("b", False),
        ("c", True),
        ("d", False),
        ("e", True),
    ]
    assert simulated_agent(shown, {"a": 1}) == [("a", True)]
    assert simulated_agent(shown, {"a": 0, "zzz": 1}) == [("a", False), ("b", False), ("c", False)]
    assert simulated_agent([], {"a": 1}) == []


BASE = {
    "keyword": {"easy": 1.0, "mid": 0.5, "hard1": 0.0, "hard2": 0.1},
    "vector": {"easy": 0.8, "mid": 0.4, "hard1": 0.5, "hard2": 0.3},
    "hybrid": {"easy": 1.0, "mid": 0.5, "hard1": 0.3, "hard2": 0.2},
}


def _run(vector: dict[str, float], hybrid: dict[str, float]) -> dict[str, dict[str, float]]:
    return {"vector": vector, "hybrid": hybrid}


def test_denoising_pairs_are_seeded_corpus_sentences_with_words_deleted() -> None:
    """`--set learn_denoise_weight=W` trains TSDAE beside the triples on these: sentences of six words or more
    from the corpus alone, each with a damaged copy that keeps its words in order, about 40 % of them."""
    documents = {
        "d1": "Title of one\nThe first sentence has exactly seven words here. Short one. A third sentence that "
        "is long enough to count!",
        "d2": "Another document whose single sentence runs past six words",
    }
    pairs = denoise_pairs(documents, 10, seed=3)
    originals = {
        "The first sentence has exactly seven words here.",
        "A third sentence that is long enough to count!",
        "Another document whose single sentence runs past six words",
    }
    assert {o for _, o in pairs} == originals  # (fewer sentences than asked: each once)
    for damaged, original in pairs:
        words = original.split()
        kept = damaged.split()
        assert kept and len(kept) < len(words)
        rest = iter(words)
        assert all(w in rest for w in kept)  # a subsequence: deleted, never reordered or invented
    assert denoise_pairs(documents, 10, seed=3) == pairs
    assert len(denoise_pairs(documents, 2, seed=0)) == 2


def test_gains_are_broken_down_by_how_well_bm25_answered() -> None:
    seed_a = _run(
        {"easy": 1.0, "mid": 0.6, "hard1": 0.3, "hard2": 0.3},
        {"easy": 1.0, "mid": 0.7, "hard1": 0.1, "hard2": 0.2},
    )
    seed_b = _run(
        {"easy": 1.0, "mid": 0.4, "hard1": 0.5, "hard2": 0.3},
        {"easy": 1.0, "mid": 0.5, "hard1": 0.3, "hard2": 0.2},
    )
    rows = by_keyword_difficulty(BASE, {m: [seed_a[m], seed_b[m]] for m in ("vector", "hybrid")})
    assert [(r["bucket"], r["queries"]) for r in rows] == [
        ("BM25 nDCG@10 >= 0.8", 1),
        ("0.3 <= BM25 < 0.8", 1),
        ("BM25 < 0.3", 2),
    ]
    easy, mid, hard = rows
    assert easy["vector"] == {"base": 0.8, "delta": 0.2, "share_of_mean_delta": 0.05}
    assert easy["hybrid"]["delta"] == 0.0  # nothing left to gain where BM25 already answers
    assert mid["vector"]["delta"] == 0.1 and mid["hybrid"]["delta"] == 0.1
    assert hard["vector"] == {"base": 0.4, "delta": -0.05, "share_of_mean_delta": -0.025}
    assert hard["hybrid"]["delta"] == -0.05
    # The shares add up to the overall mean delta.
    overall = sum(r["vector"]["share_of_mean_delta"] for r in rows)
    assert abs(overall - 0.05) < 1e-9
    assert by_keyword_difficulty({"vector": {}, "hybrid": {}}, {"vector": [], "hybrid": []}) == []


def test_one_seed_runs_merge_into_a_seed_averaged_summary() -> None:
    def result(seed: int, run: dict[str, dict[str, float]]) -> dict:
        return {
            "dataset": "d",
            "base_per_query": BASE,
            "seeds": [{"seed": seed, "per_query": run}],
            "modes": {},
        }

    up = _run({q: v + 0.1 for q, v in BASE["vector"].items()}, dict(BASE["hybrid"]))
    same = _run(dict(BASE["vector"]), dict(BASE["hybrid"]))
    merged = merge_results([result(0, up), result(1, same)])
    assert merged["fusion_sweep"] == []  # runs made before the sweep existed merge without one
    assert [s["seed"] for s in merged["seeds"]] == [0, 1]
    vector = merged["modes"]["vector"]
    assert [s["delta"] for s in vector["per_seed"]] == [0.1, 0.0]
    assert vector["seed_mean_delta"] == 0.05 and vector["seed_mean_ci95"] == [0.05, 0.05]
    assert merged["modes"]["hybrid"]["seed_mean_delta"] == 0.0
    assert merged["by_keyword_ndcg"][2]["vector"]["delta"] == 0.05

    # A run from another session has its own base (CPU floating point): its gain is taken against that base.
    shifted = {m: {q: v + 0.01 for q, v in BASE[m].items()} for m in BASE}
    later = {**result(2, _run({q: v + 0.11 for q, v in BASE["vector"].items()}, dict(BASE["hybrid"]))),
             "base_per_query": shifted}  # fmt: skip
    merged = merge_results([result(0, up), later])
    assert [s["delta"] for s in merged["modes"]["vector"]["per_seed"]] == [0.1, 0.1]
    assert merged["base_spread"]["vector"] == 0.01
    with pytest.raises(ValueError, match="a seed appears in more than one run"):
        merge_results([result(0, up), result(0, same)])
    with pytest.raises(ValueError, match="runs differ in dataset"):
        merge_results([result(0, up), {**result(1, same), "dataset": "other"}])


def test_usage_queries_with_an_evaluation_querys_text_are_left_out() -> None:
    """BEIR splits repeat a few texts under other ids (SciFact train 1291 = test 1292): replaying them would
    feed evaluation queries to the learning loop."""
    from server.bench.learning_experiment import usage_apart_from

    usage = {"1291": "No association between HNF4A and diabetes.", "7": "Obesity and sleep", "8": "Glycotoxins"}
    evaluation = {"1292": "no association between  HNF4A and diabetes.", "870": "glycotoxins"}
    assert usage_apart_from(usage, evaluation) == (["7"], ["1291", "8"])


def test_the_learning_result_renders_as_tables() -> None:
    from server.bench.report import learn_markdown

    up = _run({q: v + 0.1 for q, v in BASE["vector"].items()}, dict(BASE["hybrid"]))
    seeds = []
    for seed, gate in ((0, {"accepted": True}), (1, {"accepted": False, "reason": "known_item_mrr@10 fell"})):
        seeds.append(
            {"seed": seed, "per_query": up, "mining": {"materialized": 12}, "train_s": 3.0, "gate": gate}
        )
    result = merge_results(
        [
            {
                "dataset": "tiny",
                "eval_split": "test",
                "eval_queries": 4,
                "usage_split": "train",
                "usage_queries": 9,
                "strategy": "fused",
                "labelled_bound": True,
                "base_per_query": BASE,
                "seeds": [s],
            }
            for s in seeds
        ]
    )
    text = learn_markdown(result)
    assert "labelled bound (NOT label-free)" in text
    assert "| 0 | 12 | 3.00 | – | accepted | 0.6000, +0.1000 [+0.1000, +0.1000] |" in text
    assert "rejected: known_item_mrr@10 fell" in text
    assert "| mean |" in text and "s.d. 0.0" in text
    assert "| BM25 < 0.3 | 2 | 0.400, +0.1000 (share +0.0500) |" in text


def test_the_fusion_sweep_compares_each_weight_with_the_base_at_the_default_and_at_that_weight() -> None:
    """An oracle read-out (the weight is chosen on evaluation labels): does re-fusing with more weight on the
    retrained vector side turn its gain into a hybrid one?"""
    qids = ("a", "b")

    def per_query(default: float, heavy: float) -> dict[str, dict[str, float]]:
        out = {f"hybrid@vector_weight={w:g}": {q: default for q in qids} for w in FUSION_SWEEP}
        out["hybrid@vector_weight=2"] = {q: heavy for q in qids}
        return out

    base = per_query(0.5, 0.4)  # the base loses from more vector weight
    rows = fusion_sweep(base, [per_query(0.5, 0.6), per_query(0.5, 0.8)], seed=0)
    assert [r["vector_weight"] for r in rows] == list(FUSION_SWEEP)
    default = next(r for r in rows if r["vector_weight"] == 1.0)
    assert default["delta_vs_base_default"] == 0.0 == default["delta_vs_base_same_weight"]
    heavy = next(r for r in rows if r["vector_weight"] == 2.0)
    assert heavy["base"] == 0.4 and heavy["retrained"] == 0.7  # seed-averaged
    assert heavy["delta_vs_base_default"] == 0.2 and heavy["ci95_vs_base_default"] == [0.2, 0.2]
    assert heavy["delta_vs_base_same_weight"] == 0.3
    assert fusion_sweep({}, [], seed=0) == []


def test_log_reach_counts_neighbour_answers_inside_and_outside_the_top_10() -> None:
    """`--log-reach`: the answers of the logged searches most like an evaluation query, nearest first; the
    ones it already ranks, the ones it does not, and the hybrid with them fused in as a third list."""
    from server.bench.log_reach import THRESHOLDS, EvalQuery, neighbour_answers, reach_rows

    sims = np.array([0.9, 0.2, 0.75, 0.65])
    answers = ["a", "b", None, "a"]
    assert neighbour_answers(sims, answers, 0.6) == ["a"]  # None passed over, "a" once
    assert neighbour_answers(sims, ["a", "b", "c", "d"], 0.6) == ["a", "c", "d"]
    assert neighbour_answers(sims, ["a", "b", "c", "d"], 0.6, limit=2) == ["a", "c"]
    assert neighbour_answers(sims, answers, 0.95) == []

    usage = np.array([[1.0, 0.0], [0.0, 1.0]])
    # Query 1 is the first logged search itself (cosine 1): its answer "r" is relevant and not yet ranked.
    # Query 2 is most like the second logged search (cosine 0.8; 0.6 with the first), whose answer "s" it
    # already ranks first.
    evaluation = [
        EvalQuery(np.array([2.0, 0.0]), ["x", "y"], ["x", "y"], ["y", "x"], {"r": 1}),
        EvalQuery(np.array([0.6, 0.8]), ["s", "t"], ["s"], ["t"], {"s": 1}),
    ]
    rows = reach_rows(usage, {"fused top-1": ["r", "s"]}, evaluation, rrf_k=20.0)
    assert [r["threshold"] for r in rows] == list(THRESHOLDS)
    at_07 = rows[THRESHOLDS.index(0.7)]
    assert at_07["queries_with_a_neighbour"] == 2
    assert (at_07["outside_top10"], at_07["outside_relevant"]) == (1, 1)
    assert (at_07["inside_top10"], at_07["inside_relevant"]) == (1, 1)
    assert at_07["queries_gaining_a_relevant_document"] == 1
    # Fused in, "r" enters query 1's top 10: nDCG rises from 0 on that query.
    assert all(m["delta"] > 0 for m in at_07["memory"])
    # At 0.5 query 2 also reaches the first logged search (cosine 0.6), whose answer "r" is not relevant to it.
    at_05 = rows[THRESHOLDS.index(0.5)]
    assert (at_05["outside_top10"], at_05["outside_relevant"]) == (2, 1)


def test_log_reach_internal_split_keeps_scored_queries_out_of_the_log() -> None:
    """`--log-reach` with one split for both: 80 % logged, 20 % scored, and no scored text was logged."""
    from server.bench.log_reach import internal_split

    queries = {f"q{i}": f"text {i % 45}" for i in range(50)}  # q45..q49 repeat the texts of q0..q4
    logged, scored = internal_split(queries)
    assert len(logged) == 40 and not set(logged) & set(scored)
    assert {queries[q] for q in scored}.isdisjoint(queries[q] for q in logged)
    assert internal_split(queries) == (logged, scored)  # seeded


def test_the_ensemble_compares_three_list_fusion_with_the_base_hybrid() -> None:
    qids = ("a", "b")
    base = {"hybrid": {q: 0.5 for q in qids}}
    run = {key: {"a": 0.7, "b": 0.5} for key in ENSEMBLE_KEYS}
    rows = ensemble_summary(base, [run, run], seed=0)
    assert [(r["retrained_weight"], r["base_weight"]) for r in rows] == list(ENSEMBLE_KEYS.values())
    assert rows[0]["ndcg@10"] == 0.6 and rows[0]["delta_vs_base_hybrid"] == 0.1
    assert ensemble_summary(base, [{}], seed=0) == []  # runs made before the ensemble existed


def test_mining_cost_bench_mines_a_synthetic_log() -> None:
    """`python -m server.bench.mining_cost` (the README's mining figures) runs the product's mining."""
    from server.bench.mining_cost import main as mining_cost

    result = CliRunner().invoke(mining_cost, ["--searches", "60", "--candidates", "30"])
    assert result.exit_code == 0, result.output
    out = json.loads(result.output)
    assert out["searches"] == 60 and out["triples"] > 0 and out["holdout"] > 0 and out["mining_s"] >= 0


def test_query_bank_normalisation_discounts_a_chunk_near_every_logged_query() -> None:
    """`python -m server.bench.query_bank`: a hub (a chunk close to every bank query) loses its lead; with
    `dynamic`, only queries whose nearest chunk is some bank query's nearest chunk are changed."""
    from server.bench.query_bank import bank_penalty, document_ranking, normalized

    # Chunks: 0 the hub (doc "h"), 1 and 2 two chunks of doc "a", 3 of doc "b".
    bank_scores = np.array([[0.9, 0.1, 0.0, 0.2], [0.8, 0.0, 0.1, 0.3], [0.85, 0.2, 0.1, 0.0]])
    owners = ["h", "a", "a", "b"]
    query = np.array([0.7, 0.6, 0.65, 0.1])
    assert document_ranking(query, owners) == ["h", "a", "b"]  # a document scores as its best chunk
    assert document_ranking(query, owners, depth=2) == ["h", "a"]
    penalty = bank_penalty(bank_scores, beta=10.0)
    expected = [np.log(np.exp(10.0 * bank_scores[:, j]).sum()) for j in range(4)]
    assert np.allclose(penalty, expected)
    assert document_ranking(normalized(query, penalty, 10.0), owners)[0] == "a"
    hubs = set(np.argmax(bank_scores, axis=1).tolist())
    assert hubs == {0}
    assert document_ranking(normalized(query, penalty, 10.0, hubs), owners)[0] == "a"  # its nearest is the hub
    elsewhere = np.array([0.1, 0.6, 0.2, 0.5])  # nearest chunk is no bank query's nearest: left as it was
    assert normalized(elsewhere, penalty, 10.0, hubs) is elsewhere
    # Large scores do not overflow: the penalty is computed from the bank's best score down.
    assert np.isfinite(bank_penalty(bank_scores, beta=5000.0)).all()


def test_in_batch_negatives_counts_relevant_candidates_and_what_a_flag_would_mask() -> None:
    """`python -m server.bench.in_batch_negatives`: batches never repeat a text; each row is scored against the
    other rows' documents, and a flag's masks are counted against the labels."""
    import random

    from server.bench.in_batch_negatives import Row, batches, in_batch_false_negatives

    rows = [Row("q1", "a", "x"), Row("q1", "a", "y"), Row("q2", "b", "x"), Row("q3", "c", "z")]
    for drawn in (batches(rows, 4, random.Random(s)) for s in range(20)):
        assert sorted(map(repr, (r for b in drawn for r in b))) == sorted(map(repr, rows))  # every row, once
        for batch in drawn:
            texts = [t for r in batch for t in (f"q:{r.query}", f"d:{r.positive}", f"d:{r.negative}")]
            assert len(texts) == len(set(texts))
    # Two rows that share nothing, one batch: q1 meets b and y; b is relevant to q1, and the keyword flag masks it.
    pair = [Row("q1", "a", "x"), Row("q2", "b", "y")]
    out = in_batch_false_negatives(pair, {"q1": {"a", "b"}}, {"kw": {"q1": {"b", "y"}}}, batch_size=2, trials=3)
    assert out["candidates_per_row"] == 2 and out["relevant_share_of_candidates"] == 0.25
    assert out["rows_with_a_relevant_candidate"] == 0.5
    assert out["flags"]["kw"] == {"masked_per_row": 1.0, "relevant_share_of_masked": 0.5, "relevant_caught": 1.0}


def test_routing_reads_label_free_features_and_scores_a_per_query_choice(tmp_path: Path) -> None:
    """`python -m server.bench.routing`: features come off the search's own lists; the routed system takes the
    retrained model's score only where the rule holds."""
    from server.bench.beir import BenchError
    from server.bench.routing import features, read_runs, routed
    from server.learning.query_log import LoggedQuery

    logged = LoggedQuery(
        "1", 0.0, "q", "c", "m", 10,
        [("a", "a#0", 0.9), ("c", "c#0", 0.8)], [("a", "a#0", 6.0), ("b", "b#0", 3.0)], ["b", "a"],
        0.5, [], [],
    )  # fmt: skip
    f = features(logged)
    assert f == {"keyword_margin": 2.0, "first_agree": 1.0, "overlap": 0.1, "fused_first_keyword_rank": 1.0}
    base, new = {"1": 0.5, "2": 0.5}, {"1": 1.0, "2": 0.0}
    assert routed(base, new, {"1": True, "2": False})["hybrid"][0] == 0.25
    assert routed(base, new, {"1": True, "2": True}) == {"retrained_queries": 2, "hybrid": [0.0, -0.5, 0.5]}
    other = tmp_path / "quality.jsonl"
    other.write_text('{"kind": "quality"}\n')
    with pytest.raises(BenchError, match="not a `rift bench --learn"):
        read_runs([other])
    other.write_text("query-id\tcorpus-id\n")
    with pytest.raises(BenchError, match="not a `rift bench --learn"):
        read_runs([other])
