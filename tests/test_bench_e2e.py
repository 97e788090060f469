"""A tiny end-to-end `rift bench` run with the tiny model: quality, latency, ingest, scale, outputs, cache."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from server.bench.learning_experiment import FUSION_SWEEP
from server.cli import main

DOCS = {
    "d1": ("Cats", "The cat sat on the mat in the house."),
    "d2": ("Dogs", "A dog ran down the road to the city."),
    "d3": ("Fish", "Fish swim in the river and the sea."),
    "d4": ("Coffee", "Coffee with milk and sugar is good."),
    "d5": ("Quantum", "Quantum physics and the strong force. " * 12),  # several chunks
    "d6": ("Bread", "Bread and salt on the table."),
}
QUERIES = {"q1": "cat mat", "q2": "dog road city", "q3": "river fish", "q4": "strong force quantum"}
QRELS = [("q1", "d1", 1), ("q2", "d2", 2), ("q3", "d3", 1), ("q4", "d5", 1), ("q4", "d3", 0)]


def write_beir(root: Path) -> Path:
    root.mkdir(parents=True)
    (root / "corpus.jsonl").write_text(
        "".join(json.dumps({"_id": i, "title": t, "text": x}) + "\n" for i, (t, x) in DOCS.items())
    )
    (root / "queries.jsonl").write_text(
        "".join(json.dumps({"_id": i, "text": q}) + "\n" for i, q in QUERIES.items())
    )
    (root / "qrels").mkdir()
    (root / "qrels" / "test.tsv").write_text(
        "query-id\tcorpus-id\tscore\n" + "".join(f"{q}\t{d}\t{s}\n" for q, d, s in QRELS)
    )
    return root


def run_bench(args: list[str]) -> tuple[dict, str]:
    first, rest, _ = run_bench_with_stderr(args)
    return first, rest


def run_bench_with_stderr(args: list[str]) -> tuple[dict, str, str]:
    result = CliRunner().invoke(main, ["bench", *args], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    first, _, rest = result.stdout.partition("\n")
    return json.loads(first), rest, result.stderr


@pytest.mark.slow
def test_bench_end_to_end(tmp_path: Path, tiny_model_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    user_dir = tmp_path / "user-data"
    monkeypatch.setenv("RIFT_DATA_DIR", str(user_dir))  # a real user's data dir must stay untouched
    data = write_beir(tmp_path / "tiny")
    cache = tmp_path / "cache"
    common = [
        "--data",
        str(data),
        "--split",
        "test",
        "--model",
        str(tiny_model_path),
        "--cache-dir",
        str(cache),
    ]
    common += ["--set", "chunk_tokens=24", "--set", "chunk_overlap=4"]
    out_json = tmp_path / "runs.jsonl"
    first, md = run_bench(
        [*common, "--latency", "--ingest-sample", "3", "--scale", "40,80", "--scale-batch", "30"]
        + ["--json-out", str(out_json), "--rrf-k", "60,10", "--weights", "1,1", "--weights", "1,2"]
    )
    assert first["schema"] == "rift-bench/1"
    assert first["dataset"]["documents"] == 6 and first["dataset"]["queries"] == 4
    assert first["dataset"]["chunks"] > 6  # d5 was chunked
    assert first["corpus_ingest"]["cache_misses"] == first["dataset"]["chunks"]
    rows = first["quality"]
    assert [r["mode"] for r in rows] == ["keyword", "vector"] + ["hybrid"] * 4
    by_mode = {r["mode"]: r for r in rows}
    # Every query shares a distinctive word with its relevant document: BM25 must rank it first.
    assert by_mode["keyword"]["ndcg@10"] == pytest.approx(1.0)
    assert by_mode["keyword"]["mrr@10"] == pytest.approx(1.0)
    for r in rows:  # only 6 documents: all of them are within the top 100 in every mode
        assert r["recall@100"] == pytest.approx(1.0)
    lat = first["latency"]
    assert set(lat["search"]) == {"keyword", "vector", "hybrid"}
    assert lat["search"]["hybrid"]["parts_p50_ms"].keys() >= {"embed_ms", "keyword_ms", "fusion_ms", "log_ms"}
    assert lat["embed_only_ms"]["p50"] > 0
    assert first["ingest"]["documents"] == 3 and first["ingest"]["ratio_vs_raw_chunks"] > 0
    scale = first["scale"]
    # Sizes count documents; --set chunk_tokens=24 reaches the scale index too, so some have several chunks.
    assert [r["chunks"] >= n for r, n in zip(scale, (40, 80), strict=True)] == [True, True]
    assert all(0 <= r["hnsw_recall@100"] <= 1 for r in scale)
    assert "| hybrid |" in md and "nDCG@10" in md and "chunks" in md
    assert json.loads(out_json.read_text().splitlines()[0])["quality"] == rows
    assert not (user_dir / "querylog.sqlite").exists()

    # Second run: every chunk vector comes from the cache.
    second, _ = run_bench([*common, "--mode", "keyword", "--mode", "hybrid", "--limit-queries", "2"])
    assert second["corpus_ingest"]["cache_misses"] == 0
    assert second["corpus_ingest"]["cache_hits"] == first["dataset"]["chunks"]
    assert [r["mode"] for r in second["quality"]] == ["keyword", "hybrid"]
    assert second["quality"][0]["queries"] == 2


def test_plot(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    from server.bench.report import plot

    lat = {"total_ms": {"p50": 1.0, "p95": 2.0, "p99": 3.0}, "parts_p50_ms": {}}
    result = {
        "dataset": {"name": "x", "split": "test"},
        "quality": [
            {
                "mode": "hybrid",
                "depth": 100,
                "rrf_k": 60.0,
                "weights": [1, 1],
                "ndcg@10": 0.5,
                "recall@100": 0.9,
                "mrr@10": 0.4,
            }
        ],
        "scale": [{"chunks": n, "latency": {"hybrid": lat}} for n in (10, 100)],
    }
    out = plot(result, tmp_path / "p.png")
    assert out.read_bytes()[:4] == b"\x89PNG"


def test_bad_input_is_a_clear_error(tmp_path: Path) -> None:
    runner = CliRunner()
    res = runner.invoke(main, ["bench", "--data", str(tmp_path), "--split", "test"])
    assert res.exit_code != 0 and "qrels" in res.output and "Traceback" not in res.output
    res = runner.invoke(main, ["bench"])
    assert res.exit_code == 2 and "--data" in res.output
    res = runner.invoke(main, ["bench", "--data", str(tmp_path), "--weights", "1"])
    assert res.exit_code == 2 and "vector,keyword" in res.output


def test_learn_without_the_module_says_so(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "server.bench.learning_experiment", None)
    res = CliRunner().invoke(main, ["bench", "--learn", "--data", str(tmp_path), "--usage-split", "train"])
    assert res.exit_code == 1 and "learning experiment is not available" in res.output
    res = CliRunner().invoke(main, ["bench", "--learn", "--data", str(tmp_path)])
    assert res.exit_code == 2 and "--usage-split" in res.output
    res = CliRunner().invoke(main, ["bench", "--learn", "--data", str(tmp_path), "--usage-split", "test"])
    assert res.exit_code == 2 and "give two different splits (both are test)" in res.output


def test_mining_analysis_and_learn_say_what_is_wrong_with_the_data(tmp_path: Path) -> None:
    """A BEIR folder that is empty or missing is one `Error:` line in every mode, never a traceback."""
    empty = tmp_path / "empty"
    empty.mkdir()
    for args, message in (
        (["--mining-analysis", "--data", str(empty)], "no " + str(empty / "qrels" / "train.tsv")),
        (["--learn", "--data", str(tmp_path / "missing")], "is not a folder"),
        (["--log-reach", "--data", str(tmp_path / "missing")], "is not a folder"),
    ):
        res = CliRunner().invoke(main, ["bench", *args, "--usage-split", "train"])
        assert res.exit_code == 1 and isinstance(res.exception, SystemExit), (args, res.exception)
        assert res.output.startswith("Error: ") and message in res.output, (args, res.output)


def test_options_a_mode_would_ignore_are_refused_before_any_work(tmp_path: Path) -> None:
    """Two modes at once, or an option the chosen mode does not read, is a usage error (exit 2) before the
    data is read (here it does not exist), never a run that silently drops part of what was asked."""
    missing = ["--data", str(tmp_path / "no-such-beir")]
    usage = [*missing, "--usage-split", "train"]
    for args, message in (
        ([*usage, "--mining-analysis", "--log-reach", "--learn", "--scale", "10", "--latency"],
         "--mining-analysis, --log-reach, --learn: separate runs"),
        ([*usage, "--log-reach", "--learn"], "--log-reach, --learn: separate runs"),
        ([*usage, "--learn", "--scale", "10", "--latency"], "--latency and --scale do not apply with --learn"),
        ([*usage, "--log-reach", "--set", "chunk_tokens=64"], "--set does not apply with --log-reach"),
        ([*usage, "--mining-analysis", "--split", "dev"], "--split does not apply with --mining-analysis"),
        ([*usage, "--mining-analysis", "--seeds", "1"], "--seeds does not apply with --mining-analysis"),
        ([*usage, "--mode", "hybrid"], "--usage-split does not apply to the quality run"),
        ([*missing, "--scale-only"], "--scale-only applies only with --scale"),
        ([*missing, "--scale-batch", "5"], "--scale-batch applies only with --scale"),
        ([*missing, "--ingest-sample", "5"], "--ingest-sample applies only with --latency"),
        ([*missing, "--scale", "10", "--scale-only", "--latency", "--rrf-k", "10"],
         "--scale-only skips the quality run that --latency, --rrf-k apply to"),
    ):
        res = CliRunner().invoke(main, ["bench", *args])
        assert res.exit_code == 2 and message in res.output, (args, res.output)
    # What each mode does read still reaches it (and fails on the missing folder, exit 1).
    for args in (
        [*usage, "--learn", "--split", "test", "--seeds", "0,1", "--set", "learn_epochs=1", "--agent-feedback"],
        [*usage, "--log-reach", "--split", "train"],
        [*usage, "--mining-analysis"],
        [*missing, "--scale", "10", "--scale-only", "--mode", "hybrid", "--scale-batch", "5", "--max-rss-gib", "3"],
        [*missing, "--latency", "--ingest-sample", "5", "--rrf-k", "10,60", "--limit-queries", "2", "--no-cache"],
    ):
        res = CliRunner().invoke(main, ["bench", *args, "--json-out", str(tmp_path / "out.jsonl")])
        assert res.exit_code == 1 and "no-such-beir is not a folder" in res.output, (args, res.output)


def test_learn_takes_only_learning_settings(tmp_path: Path) -> None:
    base = ["bench", "--learn", "--data", str(tmp_path), "--usage-split", "train"]
    res = CliRunner().invoke(main, [*base, "--set", "chunk_tokens=128"])
    assert res.exit_code == 2 and "does not apply to --learn" in res.output
    res = CliRunner().invoke(main, [*base, "--set", "learn_loss=contrastive"])
    assert res.exit_code == 2 and "learn_loss must be" in res.output
    res = CliRunner().invoke(main, [*base, "--set", "mining_mask_query_terms=1.5"])
    assert res.exit_code == 2 and "between 0 and 1" in res.output
    res = CliRunner().invoke(main, [*base, "--set", "agent_share=0.5"])
    assert res.exit_code == 2 and "only with --agent-feedback" in res.output
    res = CliRunner().invoke(main, [*base, "--agent-feedback", "--set", "agent_signal=clicks"])
    assert res.exit_code == 2 and "agent_signal must be feedback or opens" in res.output
    res = CliRunner().invoke(main, [*base, "--set", "mining_passed_over_negatives=maybe"])
    assert res.exit_code == 2 and "is not 1 or 0 (true / false)" in res.output
    res = CliRunner().invoke(main, [*base, "--set", "learn_epochs=many"])
    assert res.exit_code == 2 and "is not a number" in res.output
    res = CliRunner().invoke(main, [*base, "--set", "mining_positive_max_rank=top"])
    assert res.exit_code == 2 and "is not an integer" in res.output
    res = CliRunner().invoke(main, [*base, "--set", "labelled_scope=mined"])
    assert res.exit_code == 2 and "only with --labelled-bound" in res.output
    res = CliRunner().invoke(main, [*base, "--labelled-bound", "--set", "labelled_scope=some"])
    assert res.exit_code == 2 and "labelled_scope must be all, mined, positives or negatives" in res.output
    # Values training would fail on are refused before an hour of replay and encoding.
    for bad, message in (
        ("learn_strategy=bogus", "learn_strategy must be one of fused"),
        ("learn_epochs=nan", "learn_epochs must be between 0.01 and 20"),
        ("learn_learning_rate=inf", "learn_learning_rate must be between"),
        ("learn_batch_size=1", "learn_batch_size must be between 2 and 4096"),
        ("learn_negatives_per_query=0", "learn_negatives_per_query must be between 1 and 10"),
        ("learn_negative_source=checked", "checked needs mining_second_opinion_depth above 5"),
        ("mining_second_opinion_depth=-1", "mining_second_opinion_depth must be between 0 and 200"),
        ("learn_rounds=0", "learn_rounds must be between 1 and 10"),
        ("learn_searches=some", "learn_searches must be new or all"),
        ("learn_hardness_mode=harder", "learn_hardness_mode must be one of in_batch_negatives"),
        ("learn_hardness_strength=5", "learn_hardness_strength needs learn_hardness_mode"),
        ("learn_hardness_strength=-1", "learn_hardness_strength must be between 0 and 100"),
        ("learn_mnrl_directions=doc_to_query", "learn_mnrl_directions must list query_to_doc"),
        ("learn_mnrl_directions=query_to_doc,sideways", "learn_mnrl_directions must list query_to_doc"),
    ):
        res = CliRunner().invoke(main, [*base, "--set", bad])
        assert res.exit_code == 2 and message in res.output, (bad, res.output)
    both = ["--set", "learn_hardness_mode=hard_negatives", "--set", "learn_loss=triplet"]
    res = CliRunner().invoke(main, [*base, *both])
    assert res.exit_code == 2 and "applies only to learn_loss=mnrl" in res.output, res.output
    both = ["--set", "learn_mnrl_directions=query_to_doc,doc_to_query", "--set", "learn_loss=cached_mnrl"]
    res = CliRunner().invoke(main, [*base, *both])
    assert res.exit_code == 2 and "learn_mnrl_directions applies only" in res.output, res.output


def test_bench_settings_are_checked_before_any_work(tmp_path: Path) -> None:
    base = ["bench", "--data", str(tmp_path / "no-such-beir")]  # never read: the settings fail first
    res = CliRunner().invoke(main, [*base, "--set", "chunk_tokens=abc", "--set", "http_token=s3cret!"])
    assert res.exit_code == 1 and "invalid setting: chunk_tokens" in res.output
    assert "s3cret" not in res.output and "Traceback" not in res.output
    res = CliRunner().invoke(main, [*base, "--set", "data_dir=/x"])
    assert res.exit_code == 2 and "data_dir cannot be set here" in res.output


def test_mining_analysis_reports_every_variant(tmp_path: Path, tiny_model_path: Path) -> None:
    data = write_beir(tmp_path / "tiny")
    args = [
        "--mining-analysis",
        "--data",
        str(data),
        "--usage-split",
        "test",
        "--model",
        str(tiny_model_path),
    ]
    first, md = run_bench([*args, "--cache-dir", str(tmp_path / "cache")])
    assert first["kind"] == "mining-analysis" and first["usage_split"] == "test"
    assert "fused, BM25 margin 1.3, the hybrid's next 2 documents as negatives (the product's default)" in first[
        "variants"
    ] and "| variant | triples |" in md
    res = CliRunner().invoke(main, ["bench", "--mining-analysis", "--data", str(data)])
    assert res.exit_code == 2 and "--usage-split" in res.output


USAGE = {
    "u1": "milk sugar coffee",
    "u2": "salt bread table",
    "u3": "cat house",
    "u4": "dog city",
    "u5": "sea fish swim",
}
USAGE_QRELS = [("u1", "d4", 1), ("u2", "d6", 1), ("u3", "d1", 1), ("u4", "d2", 1), ("u5", "d3", 1)]


def write_beir_with_usage(root: Path) -> Path:
    """The tiny dataset plus a "train" split of usage queries (its labels judge only the agent / miners)."""
    data = write_beir(root)
    with (data / "queries.jsonl").open("a") as f:
        f.writelines(json.dumps({"_id": i, "text": t}) + "\n" for i, t in USAGE.items())
    (data / "qrels" / "train.tsv").write_text(
        "query-id\tcorpus-id\tscore\n" + "".join(f"{q}\t{d}\t{s}\n" for q, d, s in USAGE_QRELS)
    )
    return data


def test_log_reach_reports_what_similar_logged_searches_hold(tmp_path: Path, tiny_model_path: Path) -> None:
    data = write_beir_with_usage(tmp_path / "tiny")
    args = ["--log-reach", "--data", str(data), "--split", "test", "--usage-split", "train"]
    first, md = run_bench([*args, "--model", str(tiny_model_path), "--cache-dir", str(tmp_path / "cache")])
    assert first["kind"] == "log-reach" and first["usage_queries"] == len(USAGE)
    assert first["queries"] == len(QUERIES) and len(first["rows"]) == 8
    assert "| answer of a similar logged search |" in md
    # One split for both: 80 % of it is logged, the rest scored on its own labels.
    args = ["--log-reach", "--data", str(data), "--split", "train", "--usage-split", "train"]
    inside, _ = run_bench([*args, "--model", str(tiny_model_path), "--cache-dir", str(tmp_path / "cache")])
    logged = round(len(USAGE) * 0.8)
    assert inside["split"] == "train (internal 20%)" and inside["usage_queries"] == logged
    assert 0 < inside["queries"] <= len(USAGE) - logged


@pytest.mark.slow
def test_learn_with_a_simulated_agent_trains_on_its_feedback(tmp_path: Path, tiny_model_path: Path) -> None:
    """`--agent-feedback` (NOT label-free): the usage split's labels play an agent answering rift's feedback
    tool, and the product's own mining turns those judgements into the training triples."""
    data = write_beir_with_usage(tmp_path / "tiny")
    args = ["--learn", "--data", str(data), "--split", "test", "--usage-split", "train"]
    args += ["--model", str(tiny_model_path), "--cache-dir", str(tmp_path / "cache"), "--agent-feedback"]
    first, md = run_bench(args)
    assert first["agent_feedback"] is True and "simulated agent feedback" in first["strategy"]
    assert first["agent"] == {"share": 1.0, "error_rate": 0.0, "signal": "feedback"}
    [seed] = first["seeds"]
    judged = seed["agent_feedback"]
    assert judged == {"queries": 5, "relevant": 5, "not_relevant": judged["not_relevant"], "wrong": 0, "opened": 0}
    assert seed["mining"]["by_type"].get("feedback", 0) > 0
    assert "hybrid" in first["modes"] and "NOT label-free" in md
    # The hybrid re-fused at the default weight is the hybrid search itself.
    assert seed["per_query"]["hybrid@vector_weight=1"] == seed["per_query"]["hybrid"]
    assert [r["vector_weight"] for r in first["fusion_sweep"]] == list(FUSION_SWEEP)
    assert "| vector weight |" in md
    assert [r["base_weight"] for r in first["ensemble"]] == [1.0, 0.5, 0.5] and "| base weight |" in md
    # An agent that judges no search leaves mining to the margin rule.
    out = tmp_path / "learn.jsonl"
    quiet, _ = run_bench([*args, "--set", "agent_share=0", "--json-out", str(out)])
    assert quiet["seeds"][0]["agent_feedback"]["queries"] == 0
    assert "feedback" not in quiet["seeds"][0]["mining"]["by_type"]
    # An agent that only reads: it opens the results it finds relevant (get_document with the query_id) and
    # says nothing; mining takes each search's first opened document as its positive.
    reader, md = run_bench([*args, "--set", "agent_signal=opens"])
    assert "simulated agent reads (opened documents only)" in reader["strategy"] and "NOT label-free" in md
    assert reader["seeds"][0]["agent_feedback"]["opened"] == 5
    assert "feedback" not in reader["seeds"][0]["mining"]["by_type"]
    assert reader["seeds"][0]["mining"]["by_type"].get("fetched", 0) > 0
    assert reader["mining"]["passed_over_negatives"] is False
    res = CliRunner().invoke(main, ["bench", *args, "--labelled-bound"])
    assert res.exit_code == 2 and "choose one of --labelled-bound and --agent-feedback" in res.output
    # The labelled reference trains on the usage labels; the miner's skip counts would not describe it.
    bound, _ = run_bench(
        [*[a for a in args if a != "--agent-feedback"], "--labelled-bound", "--json-out", str(out)]
    )
    # --json-out gains one JSON line per finished run; the per-seed checkpoint beside it is gone.
    lines = out.read_text().splitlines()
    assert [json.loads(line)["labelled_bound"] for line in lines] == [False, True]
    assert json.loads(lines[1])["seeds"] == bound["seeds"] and not (tmp_path / "learn.jsonl.partial").exists()
    mining = bound["seeds"][0]["mining"]
    assert bound["labelled_bound"] is True and set(mining["by_type"]) == {"labelled"}
    assert mining["skipped"] == {}


def test_listing_cost_bench_times_each_listing() -> None:
    """`python -m server.bench.listing_cost` (the README's listing figures) runs rift's listing code."""
    from server.bench.listing_cost import main as listing_cost

    result = CliRunner().invoke(listing_cost, ["--documents", "120", "--repeat", "1"])
    assert result.exit_code == 0, result.output
    out = json.loads(result.output)
    assert out["documents"] == 120
    assert all(out[key] >= 0 for key in ("list_page_ms", "list_prefix_ms", "resources_list_page_ms"))


def test_snippet_cost_bench_compares_whole_chunks_with_max_chars(tmp_path: Path, tiny_model_path: Path) -> None:
    """`python -m server.bench.snippet_cost` (the README's max_chars figures) runs searches both ways."""
    from server.bench.snippet_cost import main as snippet_cost

    data = write_beir(tmp_path / "tiny")
    args = ["--data", str(data), "--split", "test", "--max-chars", "40", "--model", str(tiny_model_path)]
    result = CliRunner().invoke(snippet_cost, [*args, "--cache-dir", str(tmp_path / "cache")])
    assert result.exit_code == 0, result.output
    out = json.loads(result.output)
    assert out["queries"] == 4 and set(out) >= {"whole", "max_chars_40"}
    assert out["max_chars_40"]["mean_hits_json_chars"] < out["whole"]["mean_hits_json_chars"]
    assert 0 <= out["max_chars_40"]["query_terms_shown_by_a_plain_cut"] <= 1


def test_sentence_view_analysis_scores_each_view_against_the_hybrid(tmp_path: Path, tiny_model_path: Path) -> None:
    """`python -m server.bench.sentence_view` (the README's second-opinion figures) runs rift's own searches."""
    from server.bench.sentence_view import main as sentence_view

    data = write_beir(tmp_path / "tiny")
    args = ["--data", str(data), "--split", "test", "--model", str(tiny_model_path)]
    result = CliRunner().invoke(sentence_view, [*args, "--cache-dir", str(tmp_path / "cache")])
    assert result.exit_code == 0, result.output
    out = json.loads(result.output)
    assert out["queries"] == len(QUERIES)
    assert set(out["views"]) == {
        "vector", "keyword", "hybrid", "sentence", "hybrid + sentence", "keyword + sentence", "vector + sentence"
    }
    assert out["views"]["hybrid"]["vs_hybrid"] == [0.0, 0.0, 0.0]
    # Sentence vectors are kept apart from the corpus's chunk vectors, which other benchmarks reuse.
    assert list((tmp_path / "cache" / "sentences" / "embeddings").rglob("*.npz"))
    chunk_shards = list((tmp_path / "cache" / "embeddings").rglob("*.npz"))
    again = CliRunner().invoke(sentence_view, [*args, "--cache-dir", str(tmp_path / "cache")])
    assert json.loads(again.output) == out
    assert list((tmp_path / "cache" / "embeddings").rglob("*.npz")) == chunk_shards
    assert all(0.0 <= v["ndcg@10"] <= 1.0 for v in out["views"].values())


def test_feedback_teacher_analysis_scores_each_expanded_search_against_the_hybrid(
    tmp_path: Path, tiny_model_path: Path
) -> None:
    """`python -m server.bench.feedback_teacher` (the learning record's pseudo-relevance-feedback figures) runs
    rift's own searches, then the same query expanded with the hybrid's first documents on either side."""
    from server.bench.feedback_teacher import FEEDBACK_DOCS
    from server.bench.feedback_teacher import main as feedback_teacher

    data = write_beir(tmp_path / "tiny")
    args = ["--data", str(data), "--split", "test", "--model", str(tiny_model_path), "--cache-dir", str(tmp_path / "c")]
    result = CliRunner().invoke(feedback_teacher, args)
    assert result.exit_code == 0, result.output
    out = json.loads(result.output)
    assert out["queries"] == len(QUERIES) and 0 <= out["confident_queries"] <= len(QUERIES)
    expanded = {f"{side} feedback {m}" for m in FEEDBACK_DOCS for side in ("vector", "keyword", "both")}
    assert set(out["views"]) == {"vector", "keyword", "hybrid"} | expanded
    assert out["views"]["hybrid"]["vs_hybrid"] == [0.0, 0.0, 0.0]
    for view in out["views"].values():
        assert 0.0 <= view["ndcg@10"] <= 1.0 and 0.0 <= view["first_relevant"] <= 1.0


def test_feedback_expansion_adds_the_feedback_documents_top_terms_at_half_the_query_weight() -> None:
    """RM3-like: each query term keeps weight 1 per occurrence; the feedback documents' best tf·idf terms share
    half the query's length, a term the query already has gaining on top of its own weight."""
    from types import SimpleNamespace

    from server.bench.feedback_teacher import EXPANSION_TERMS, FeedbackSearch

    tokens = [("cat", "mat", "fur"), ("fur", "whisker"), ("dog",)]
    idf = {"cat": 1.0, "mat": 1.0, "fur": 2.0, "whisker": 3.0, "dog": 1.0}
    fake = SimpleNamespace(tokens=tokens, rows_of={"d1": [0, 1], "d2": [2]}, idf=idf)
    weights = FeedbackSearch.expansion(fake, ["cat", "cat", "mouse"], ["d1"])  # type: ignore[arg-type]
    assert weights["mouse"] == 1.0 and weights["cat"] > 2.0  # the query's own terms stay
    assert "dog" not in weights  # d2 was not a feedback document
    added = sum(weights.values()) - 3
    assert added == pytest.approx(0.5 * 3) and len(weights) <= 3 + EXPANSION_TERMS
    assert weights["whisker"] > weights["mat"]  # tf·idf: rarer terms weigh more


def test_query_bank_analysis_scores_each_setting_against_the_plain_fusion(tmp_path: Path, tiny_model_path: Path) -> None:
    """`python -m server.bench.query_bank` (the README's querybank figures): usage texts form the bank, the
    evaluation split is scored; with one split for both, 80 % is the bank and the rest is scored."""
    from server.bench.query_bank import BETAS
    from server.bench.query_bank import main as query_bank

    data = write_beir_with_usage(tmp_path / "tiny")
    common = ["--data", str(data), "--model", str(tiny_model_path), "--cache-dir", str(tmp_path / "cache")]
    result = CliRunner().invoke(query_bank, [*common, "--split", "test", "--usage-split", "train"])
    assert result.exit_code == 0, result.output
    out = json.loads(result.output)
    assert (out["bank_queries"], out["queries"]) == (len(USAGE), len(QUERIES))
    assert len(out["rows"]) == 2 * len(BETAS) and 0.0 <= out["hybrid"] <= 1.0
    assert all(len(r["vector"]) == len(r["hybrid"]) == 3 for r in out["rows"])
    inside = CliRunner().invoke(query_bank, [*common, "--split", "train", "--usage-split", "train"])
    assert inside.exit_code == 0, inside.output
    assert (json.loads(inside.output)["bank_queries"], json.loads(inside.output)["queries"]) == (4, 1)


def test_compare_pairs_each_query_of_the_defaults_and_the_changed_settings(tmp_path: Path, tiny_model_path: Path) -> None:
    """`python -m server.bench.compare`: the same queries through two stores, the change paired per query."""
    from server.bench.compare import main as compare

    data = write_beir(tmp_path / "tiny")
    common = ["--data", str(data), "--split", "test", "--model", str(tiny_model_path), "--cache-dir", str(tmp_path / "c")]
    same = CliRunner().invoke(compare, [*common, "--set", "rrf_k=20", "--mode", "hybrid", "--mode", "keyword"])
    assert same.exit_code == 0, same.output
    out = json.loads(same.output)
    assert out["queries"] == len(QUERIES) and set(out["ndcg@10"]) == {"hybrid", "keyword"}
    for row in out["ndcg@10"].values():  # the default is 20: nothing moves
        assert row["base"] == row["changed"] and row["delta"] == 0.0 and row["queries_moved"] == 0
    # A real change, in one mode only.
    other = CliRunner().invoke(compare, [*common, "--set", "stemmer_language=none", "--mode", "keyword"])
    assert other.exit_code == 0, other.output
    assert set(json.loads(other.output)["ndcg@10"]) == {"keyword"}
    bad = CliRunner().invoke(compare, [*common, "--set", "stopwords=klingon"])
    assert bad.exit_code == 2 and "unknown stopword list 'klingon'" in bad.output and "Traceback" not in bad.output


@pytest.mark.slow
def test_learn_can_anchor_the_unmined_searches_to_the_base_model(tmp_path: Path, tiny_model_path: Path) -> None:
    """`--set learn_anchor_weight=W` (an experiment, not a setting): the logged training searches the miner made
    no triple of, and their vector hits, are trained to keep the base model's embeddings beside the triples."""
    data = write_beir_with_usage(tmp_path / "tiny")
    # A first usage search no document answers by its words: no confident positive, so no triple of it.
    queries = data / "queries.jsonl"
    queries.write_text(json.dumps({"_id": "u0", "text": "purple elephant violin"}) + "\n" + queries.read_text())
    qrels = data / "qrels" / "train.tsv"
    head, *rest = qrels.read_text().splitlines(keepends=True)
    qrels.write_text("".join([head, "u0\td5\t1\n", *rest]))
    args = ["--learn", "--data", str(data), "--split", "test", "--usage-split", "train"]
    args += ["--model", str(tiny_model_path), "--cache-dir", str(tmp_path / "cache")]
    args += ["--set", "learn_anchor_weight=1"]
    result, _ = run_bench(args)
    [seed] = result["seeds"]
    assert result["train"]["anchor_weight"] == 1.0 and result["train"]["anchor_docs"] == 3
    assert seed["mining"]["anchors"] > 0 and seed["train_s"] >= 0, seed["mining"]


@pytest.mark.slow
def test_learn_can_train_a_denoising_autoencoder_on_corpus_sentences_beside_the_triples(
    tmp_path: Path, tiny_model_path: Path
) -> None:
    """`--set learn_denoise_weight=W` (an experiment, not a setting): TSDAE on sentences of the corpus, trained
    beside the mined triples; the saved model is the encoder alone and is evaluated like any candidate."""
    data = write_beir_with_usage(tmp_path / "tiny")
    args = ["--learn", "--data", str(data), "--split", "test", "--usage-split", "train"]
    args += ["--model", str(tiny_model_path), "--cache-dir", str(tmp_path / "cache")]
    args += ["--set", "learn_denoise_weight=0.5", "--set", "learn_denoise_texts=5"]
    result, _ = run_bench(args)
    [seed] = result["seeds"]
    assert result["train"]["denoise_weight"] == 0.5 and result["train"]["denoise_texts"] == 5
    assert 0 < seed["mining"]["denoise_pairs"] <= 5 and seed["train_s"] >= 0, seed["mining"]
    assert 0.0 <= seed["hybrid_ndcg@10"] <= 1.0


@pytest.mark.slow
def test_learn_in_rounds_retrains_from_the_serving_model_on_what_it_did_not_learn(
    tmp_path: Path, tiny_model_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`--set learn_rounds=2` (an experiment, not a setting): the usage queries are replayed in two parts with a
    retrain after each, as the periodic policy would run: the second trains from the model that serves (the first
    round's candidate if the gate accepted it) on the searches that model did not learn, as the product does
    (setting learn_searches "new"); `learn_searches=all` mines the whole log again."""
    import server.bench.learning_experiment as experiment

    started_from: list[str] = []
    real_train = experiment.train_model

    def recording(location: str, *args: object, **kwargs: object) -> object:
        started_from.append(str(location))
        return real_train(location, *args, **kwargs)

    monkeypatch.setattr(experiment, "train_model", recording)
    data = write_beir_with_usage(tmp_path / "tiny")
    args = ["--learn", "--data", str(data), "--split", "test", "--usage-split", "train"]
    args += ["--model", str(tiny_model_path), "--cache-dir", str(tmp_path / "cache"), "--set", "learn_rounds=2"]
    result, md, progress = run_bench_with_stderr(args)
    # A run of hours reports its phases on stderr without -v (stdout is the result alone).
    assert "] tiny seed 0 round 2/2: training on " in progress and progress.startswith("rift bench --learn [0:"), progress
    [seed] = result["seeds"]
    first, second = seed["rounds"]
    assert result["train"]["rounds"] == 2
    assert first["usage_queries"] + second["usage_queries"] == result["usage_queries"]
    assert started_from[0] == str(tiny_model_path)
    assert (started_from[1] != str(tiny_model_path)) == first["accepted"], (started_from, first)
    # The reported model is the last round's candidate.
    assert seed["hybrid_ndcg@10"] == second["hybrid_ndcg@10"]
    assert "Each round" in md and "| 0 | 2 |" in md
    assert result["train"]["searches"] == "new"
    # Round 1's searches again only when its candidate was rejected: the serving model did not learn them.
    assert (second["queries_trained_before"] == 0) == first["accepted"], (first, second)
    assert second["triples"] > 0
    result, _ = run_bench([*args, "--set", "learn_searches=all", "--cache-dir", str(tmp_path / "cache2")])
    first, second = result["seeds"][0]["rounds"]
    assert result["train"]["searches"] == "all"
    assert second["triples"] >= first["triples"] > 0  # mined from the whole log, not the second part alone
    assert second["queries_trained_before"] > 0  # the whole log again, round 1's searches with it


def test_learn_refuses_usage_and_evaluation_splits_that_share_a_query(tmp_path: Path) -> None:
    """The learning loop must never see an evaluation query: splits sharing a query id are refused in one
    line (it was a ValueError traceback), before any model loads."""
    from server.bench.beir import BenchError
    from server.bench.learning_experiment import run_learning_experiment

    data = write_beir_with_usage(tmp_path / "tiny")
    shared = next(iter(QUERIES))
    with (data / "qrels" / "train.tsv").open("a") as f:
        f.write(f"{shared}\td1\t1\n")
    with pytest.raises(BenchError, match="--usage-split train and --split test share 1 query ids"):
        run_learning_experiment(data, "test", "train", None, [0], tmp_path / "cache", None)


@pytest.mark.parametrize("module", ["compare", "snippet_cost", "sentence_view", "query_bank", "feedback_teacher"])
def test_bench_modules_name_a_bad_data_folder_in_one_line(tmp_path: Path, module: str) -> None:
    """`python -m server.bench.<module>` on a folder with no such split says so as `rift bench` does, in one
    'Error:' line with exit 1, not a BenchError traceback (found by helper DS)."""
    import importlib

    command = importlib.import_module(f"server.bench.{module}").main
    args = {"compare": ["--set", "rrf_k=30"], "query_bank": ["--usage-split", "train"]}.get(module, [])
    result = CliRunner().invoke(command, ["--data", str(tmp_path), "--split", "test", *args])
    assert result.exit_code == 1, result.output
    assert result.output.startswith("Error: --split test: no ") and "Traceback" not in result.output


@pytest.mark.slow
def test_learning_diagnostics_run_on_a_beir_folder(tmp_path: Path, tiny_model_path: Path) -> None:
    """The two analyses of what a retrain could use (no training): in-batch negatives, and per-query routing
    between the base and a retrained model, each a `python -m` command printing one JSON line."""
    from server.bench import in_batch_negatives, routing

    data = write_beir_with_usage(tmp_path / "tiny")
    common = ["--data", str(data), "--split", "test", "--model", str(tiny_model_path)]
    common += ["--cache-dir", str(tmp_path / "cache")]
    res = CliRunner().invoke(in_batch_negatives.main, [*common, "--usage-split", "train"], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout)
    assert out["triples"] == out["rows"] and set(out["flags"]) == {"keyword list", "any logged list"}
    run = tmp_path / "learn.jsonl"
    base = {q: 0.5 for q in QUERIES}
    seed = {"seed": 0, "per_query": {"hybrid": {q: 1.0 for q in QUERIES}}}
    run.write_text(json.dumps({"kind": "learn", "base_per_query": {"hybrid": base}, "seeds": [seed]}) + "\n")
    res = CliRunner().invoke(routing.main, [*common, "--run", str(run)], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    rules = json.loads(res.stdout)["rules"]
    assert rules["everywhere"] == [{"seed": 0, "retrained_queries": len(QUERIES), "hybrid": [0.5, 0.5, 0.5]}]
    assert all(row["hybrid"][0] == row["retrained_queries"] * 0.5 / len(QUERIES) for r in rules.values() for row in r)
    res = CliRunner().invoke(routing.main, [*common, "--run", str(data / "corpus.jsonl")])
    assert res.exit_code == 1 and "not a `rift bench --learn" in res.output and "Traceback" not in res.output
    run.write_text(json.dumps({"kind": "learn", "base_per_query": {"hybrid": {"other": 0.5}}, "seeds": []}) + "\n")
    res = CliRunner().invoke(routing.main, [*common, "--run", str(run)])
    assert res.exit_code == 1 and "scored other queries than tiny test's" in res.output, res.output
