"""The BEIR loader on a tiny folder made here: gz and plain files, title + text, judged queries only."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest

from server.bench.beir import BenchError, load_beir


def write_beir(root: Path, gz: bool = True) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    corpus = [
        {"_id": "d1", "title": "Cats", "text": "The cat sat on the mat."},
        {"_id": "d2", "title": "", "text": "Dogs chase the cat."},
        {"_id": "d3", "title": "Only a title", "text": ""},
        {"_id": "d4", "title": " ", "text": "  "},
    ]
    queries = [
        {"_id": "q1", "text": "where did the cat sit"},
        {"_id": "q2", "text": "what do dogs do"},
        {"_id": "q3", "text": "unjudged relevant-free query"},
    ]
    lines_c = "\n".join(json.dumps(r) for r in corpus) + "\n"
    lines_q = "\n".join(json.dumps(r) for r in queries) + "\n"
    if gz:
        with gzip.open(root / "corpus.jsonl.gz", "wt", encoding="utf-8") as f:
            f.write(lines_c)
    else:
        (root / "corpus.jsonl").write_text(lines_c)
    (root / "queries.jsonl").write_text(lines_q)
    (root / "qrels").mkdir(exist_ok=True)
    (root / "qrels" / "test.tsv").write_text(
        "query-id\tcorpus-id\tscore\nq1\td1\t2\nq1\td2\t0\nq2\td2\t1\nq3\td1\t0\nq9\td1\t1\n"
    )
    return root


@pytest.mark.parametrize("gz", [True, False])
def test_loads_documents_queries_and_graded_qrels(tmp_path: Path, gz: bool) -> None:
    ds = load_beir(write_beir(tmp_path / "tiny", gz), "test")
    assert ds.name == "tiny"
    assert ds.documents == {
        "d1": "Cats\nThe cat sat on the mat.",
        "d2": "Dogs chase the cat.",
        "d3": "Only a title",
    }
    assert ds.queries == {"q1": "where did the cat sit", "q2": "what do dogs do"}
    assert ds.qrels == {"q1": {"d1": 2, "d2": 0}, "q2": {"d2": 1}}
    assert ds.skipped == {"empty_documents": 1, "queries_without_relevant": 1, "queries_missing_text": 1}


def test_content_hash_ignores_file_format_but_not_text(tmp_path: Path) -> None:
    a = load_beir(write_beir(tmp_path / "a", gz=True), "test")
    b = load_beir(write_beir(tmp_path / "b", gz=False), "test")
    assert a.content_hash() == b.content_hash()
    b.documents["d1"] += "!"
    assert a.content_hash() != b.content_hash()


def test_clear_errors(tmp_path: Path) -> None:
    root = write_beir(tmp_path / "tiny")
    with pytest.raises(BenchError, match=r"--split dev: .*splits here: test"):
        load_beir(root, "dev")
    with pytest.raises(BenchError, match="is not a folder"):
        load_beir(tmp_path / "missing", "test")
    (root / "queries.jsonl").write_text("{not json}\n")
    with pytest.raises(BenchError, match=r"queries.jsonl:1: not valid JSON"):
        load_beir(root, "test")
    (root / "queries.jsonl").unlink()
    with pytest.raises(BenchError, match="no queries.jsonl or queries.jsonl.gz"):
        load_beir(root, "test")
