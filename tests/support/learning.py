"""Fixtures shared by the learning tests: crafted logged queries for the miner, and a tiny topical corpus with
queries for the tools, swap and job tests."""

from __future__ import annotations

from typing import Any

from server.learning.query_log import LoggedQuery
from server.service import Rift
from tests.support.helpers import docs
from tests.support.tiny_model import WORDS


def q(
    qid: str,
    text: str,
    vector: list[str],
    keyword: list[str],
    fused: list[str],
    ts: float = 0.0,
    collection: str = "c",
) -> LoggedQuery:
    v = [(d, f"{d}::h::0", 1.0 - i / 100) for i, d in enumerate(vector)]
    k = [(d, f"{d}::h::0", 10.0 - i) for i, d in enumerate(keyword)]
    vb = [d for d in vector[:5] if d not in keyword[:10]]
    kb = [d for d in keyword[:5] if d not in vector[:10]]
    overlap = len(set(vector[:5]) & set(keyword[:5])) / 5
    return LoggedQuery(qid, ts, text, collection, "m", 10, v, k, fused, overlap, vb, kb)


FILL = [f"f{i}" for i in range(40)]  # keyword-only filler so blind spots are far down the keyword list


TOPICS = [w for w in WORDS if len(w) > 3][:40]


def corpus() -> list[dict[str, Any]]:
    out = []
    for i in range(30):
        words = [TOPICS[(i * 3 + j) % len(TOPICS)] for j in range(4)]
        out.append({"id": f"d{i}", "text": f"{' '.join(words)} note {i} about {words[0]} and {words[1]}"})
    return out


def queries() -> list[str]:
    return [f"{TOPICS[(i * 3) % len(TOPICS)]} {TOPICS[(i * 3 + 1) % len(TOPICS)]} {i}" for i in range(60)]


def fill_two_collections(rift: Rift) -> None:
    rift.add_documents("default", docs(*[(d["id"], d["text"]) for d in corpus()]))
    rift.add_documents("other", docs(("o1", "quantum physics energy note"), ("o2", "coffee tea sugar milk")))
    for text in queries():
        rift.search("default", text)
