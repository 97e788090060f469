"""`rift stats` as a reader sees it: what the stats payload's states read as (no model, no store)."""

from __future__ import annotations

from typing import Any

from server.cli_stats import size, stats_text


def _payload(**changes: Any) -> dict[str, Any]:
    queries = {
        "logged_queries": 1200,
        "queries_not_compared": 3,
        "queries_without_keyword_terms": 2,
        "mean_top_overlap": 0.4167,
        "share_with_vector_blind_spots": 0.8,
        "share_with_keyword_blind_spots": 0.25,
        "mean_vector_blind_spots": 2.5,
        "mean_keyword_blind_spots": 0.5,
        "feedback_labels": 7,
    }
    payload = {
        "model": "/models/bge",
        "model_version": "v3",
        "dimension": 384,
        "query_prompt": "Represent this sentence for searching relevant passages: ",
        "query_prompt_because": "rift's table of known models",
        "data_dir": "/data",
        "vector_backend": "embedded",
        "chroma_unreachable": None,
        "index_bytes": {"chroma": 5 * 1024 * 1024 + 300, "state_sqlite": 2048, "query_log_sqlite": 0},
        "collections": [
            {"name": "docs", "documents": 1500, "chunks": 4200, "model_version": "v3", "queries": queries, "problem": None},
            {"name": "old", "documents": 2, "chunks": 2, "model_version": "v2", "queries": None, "problem": None},
        ],
        "queries": queries,
        "logging_enabled": True,
        "load_seconds": 1.25,
        "learning": {
            "serving_version": "v3",
            "versions": 4,
            "strategy": "fused",
            "running_job": None,
            "interrupted_retrain": None,
            "policy": {"enabled": False, "min_triples": 32},
        },
    }
    return payload | changes


def test_stats_reads_as_lines_and_a_table() -> None:
    head, rows, tail = stats_text(_payload())
    assert head[0] == "model        /models/bge (384-d, version v3)"
    assert head[1].startswith("query prompt 'Represent this") and head[1].endswith(": rift's table of known models")
    assert head[2] == "data dir     /data (embedded Chroma: 5.0 MiB vectors, 2 KiB state)"  # (an empty log is left out)
    assert rows[1] == ["docs", "1,500", "4,200", "1,200", "0.42", "80 %", "25 %", "7", ""]
    # a collection never searched has no figures; one still embedded with another version says so
    assert rows[2] == ["old", "2", "2", "-", "-", "-", "-", "-", "embedded with version v2"]
    assert tail[0] == "searches     1,200 logged, 7 feedback verdicts; 3 not compared (2 without keyword terms)"
    assert tail[1].startswith("disagreement top-k overlap 0.42; vector-only hits in 80 % of searches (2.5 a search)")
    assert tail[2].startswith("learning     serving v3 (4 versions in the registry")
    assert tail[3].startswith("periodic     off")
    assert tail[-1] == "started in   1.2 s"


def test_stats_text_names_jobs_problems_and_policy() -> None:
    learning = _payload()["learning"] | {
        "running_job": {
            "job_id": "ab12",
            "kind": "retrain",
            "status": "running",
            "phase": "training",
            "progress": {"done": 40, "total": 120},
            "elapsed_s": 95.4,
            "cancel_requested": True,
        },
        "interrupted_retrain": {
            "version": "v5",
            "triples": 640,
            "continues_from": "training step 96",
            "continues_at_next_server_start": True,
        },
        "policy": {
            "enabled": True,
            "after_queries": 500,
            "interval_hours": 24.0,
            "min_triples": 32,
            "last_retrain": None,
            "last_check": None,
            "last_outcome": None,
            "last_action": None,
            "new_queries_since_last_retrain": 123,
        },
    }
    collections = [_payload()["collections"][0] | {"problem": "the Chroma server lost its vectors"}]
    head, rows, tail = stats_text(
        _payload(
            learning=learning,
            collections=collections,
            chroma_unreachable="cannot reach http://chroma:8000",
            vector_backend="http",
            query_prompt="",
            query_prompt_because="",
        )
    )
    assert head[1] == "query prompt none"
    assert head[2].startswith("data dir     /data (a Chroma server")
    assert head[3] == "UNREACHABLE  cannot reach http://chroma:8000"
    assert rows[1][-1] == "the Chroma server lost its vectors"
    assert "job          retrain ab12 running (cancelled, stopping): training, 40 of 120, 95 s" in tail
    assert "interrupted  retrain v5 (640 triples): the next server start continues it from training step 96" in tail
    assert (
        "periodic     after 500 new searches (123 so far) or every 24 h with new searches, with at least 32 "
        "triples; last retrain never"
    ) in tail
    dropped = learning | {
        "running_job": None,
        "interrupted_retrain": {"version": "v5", "triples": 9, "dropped_at_next_server_start": "its trained weights were deleted"},
    }
    assert "interrupted  retrain v5 (9 triples): dropped at the next server start: its trained weights were deleted" in (
        stats_text(_payload(learning=dropped))[2]
    )


def test_stats_text_without_a_log_or_learning() -> None:
    _head, _rows, tail = stats_text(_payload(logging_enabled=False, queries=None, learning=None))
    assert tail == ["searches     not logged (log_queries is off): nothing to learn from", "started in   1.2 s"]


def test_sizes_read_in_binary_units() -> None:
    assert [size(n) for n in (0, 1023, 1024, 1536 * 1024, 3 * 1024**3)] == ["0 B", "1023 B", "1 KiB", "1.5 MiB", "3.0 GiB"]
