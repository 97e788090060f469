"""Load a BEIR-format folder: corpus.jsonl[.gz], queries.jsonl[.gz] and qrels/<split>.tsv.

Only what the benchmark needs is kept: document text (title + "\\n" + text, as rift indexes it), the split's
queries that have at least one relevant document, and their graded judgements.
"""

from __future__ import annotations

import csv
import gzip
import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from server.errors import RiftError
from server.ingest.jsonl import document_text  # (as `rift import` reads a BEIR corpus)


class BenchError(RiftError):
    """A benchmark input problem, reported to the user without a traceback."""


@dataclass
class BeirDataset:
    name: str
    split: str
    documents: dict[str, str]  # doc id -> "title\ntext"
    queries: dict[str, str]  # only queries judged in the split with a relevant document
    qrels: dict[str, dict[str, int]]  # query id -> doc id -> graded relevance
    skipped: dict[str, int] = field(default_factory=dict)  # why some input rows were left out

    def content_hash(self) -> str:
        """Stable across runs and file formats (.jsonl vs .jsonl.gz): hashes ids and texts in id order."""
        digest = hashlib.sha256()
        for doc_id in sorted(self.documents):
            digest.update(doc_id.encode())
            digest.update(b"\x00")
            digest.update(self.documents[doc_id].encode())
            digest.update(b"\x01")
        return digest.hexdigest()


def _find(folder: Path, stem: str) -> Path:
    for name in (f"{stem}.jsonl", f"{stem}.jsonl.gz"):
        if (folder / name).is_file():
            return folder / name
    raise BenchError(f"--data {folder}: no {stem}.jsonl or {stem}.jsonl.gz")


def _open(path: Path) -> IO[str]:
    if path.suffix == ".gz":
        return gzip.open(path, "rt", encoding="utf-8")
    return path.open(encoding="utf-8")


def _records(path: Path) -> Iterator[dict]:
    with _open(path) as handle:
        for line_no, line in enumerate(handle, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                raise BenchError(f"{path}:{line_no}: not valid JSON ({exc.msg})") from None
            if not isinstance(record, dict) or "_id" not in record:
                raise BenchError(f"{path}:{line_no}: each line must be an object with an '_id'")
            yield record


def load_qrels(path: Path) -> dict[str, dict[str, int]]:
    qrels: dict[str, dict[str, int]] = {}
    with path.open(encoding="utf-8", newline="") as handle:
        for line_no, row in enumerate(csv.reader(handle, delimiter="\t"), 1):
            if not row or (line_no == 1 and row[0] == "query-id"):
                continue
            if len(row) < 3:
                raise BenchError(f"{path}:{line_no}: expected query-id, corpus-id, score")
            try:
                score = int(float(row[2]))
            except ValueError:
                raise BenchError(f"{path}:{line_no}: score {row[2]!r} is not a number") from None
            qrels.setdefault(row[0], {})[row[1]] = score
    return qrels


def load_beir(folder: Path, split: str) -> BeirDataset:
    folder = Path(folder)
    if not folder.is_dir():
        raise BenchError(f"--data {folder} is not a folder")
    qrels_path = folder / "qrels" / f"{split}.tsv"
    if not qrels_path.is_file():
        have = sorted(p.stem for p in (folder / "qrels").glob("*.tsv")) if (folder / "qrels").is_dir() else []
        raise BenchError(f"--split {split}: no {qrels_path} (splits here: {', '.join(have) or 'none'})")

    skipped = {"empty_documents": 0, "queries_without_relevant": 0, "queries_missing_text": 0}
    documents: dict[str, str] = {}
    for record in _records(_find(folder, "corpus")):
        text = document_text(record.get("title"), record.get("text"))
        if text:
            documents[str(record["_id"])] = text
        else:
            skipped["empty_documents"] += 1

    all_queries = {str(r["_id"]): str(r.get("text") or "") for r in _records(_find(folder, "queries"))}
    qrels_all = load_qrels(qrels_path)
    queries: dict[str, str] = {}
    qrels: dict[str, dict[str, int]] = {}
    for qid, judged in qrels_all.items():
        if not any(score > 0 for score in judged.values()):
            # pytrec_eval/BEIR give such queries no meaningful score; they are left out, and counted.
            skipped["queries_without_relevant"] += 1
            continue
        text = all_queries.get(qid, "").strip()
        if not text:
            skipped["queries_missing_text"] += 1
            continue
        queries[qid] = text
        qrels[qid] = judged
    if not documents:
        raise BenchError(f"--data {folder}: the corpus has no documents")
    if not queries:
        raise BenchError(f"--data {folder} --split {split}: no query has a relevant document")
    return BeirDataset(folder.name, split, documents, queries, qrels, skipped)
