"""Filters for file corpora: source-path prefix, file type, mtime ranges and front-matter fields, applied inside
both retrievers; a selective filter must not lose recall against filtering an exhaustive unfiltered ranking."""

from __future__ import annotations

import os
import random
from pathlib import Path

import pytest

from server.config import Settings
from server.engine.engine import DocumentInput
from server.engine.filters import MetadataColumns, mask, parse_filters, path_keys, to_chroma
from server.errors import RiftError
from server.ingest.security import PathPolicy
from server.ingest.sync import sync_paths
from server.service import Rift
from tests.support.corpus import build_corpus


def test_prefix_compiles_to_an_ancestor_key_on_both_sides() -> None:
    node = parse_filters({"source": {"$prefix": "/srv/notes/"}})
    assert to_chroma(node) == {
        "$or": [{"source": {"$eq": "/srv/notes"}}, {"_rift_dir_2": {"$eq": "/srv/notes"}}]
    }
    rows = [
        {"source": "/srv/notes/a.md"},
        {"source": "/srv/notes/deep/b.md"},
        {"source": "/srv/notes"},  # the path itself
        {"source": "/srv/notebook/c.md"},  # a string prefix, not a path prefix
        {"source": "/srv/other/notes/d.md"},
        {"title": "no source"},
        {"source": "relative/notes/e.md"},
    ]
    got = mask(node, MetadataColumns([{**r, **path_keys(r)} for r in rows]))
    assert got.tolist() == [True, True, True, False, False, False, False]
    assert path_keys({"source": "/a/b/c.md"}) == {
        "_rift_dir_0": "/",
        "_rift_dir_1": "/a",
        "_rift_dir_2": "/a/b",
    }
    assert path_keys({"source": "not/absolute.md"}) == {} and path_keys({"source": 3}) == {}


@pytest.mark.parametrize(
    ("filters", "message"),
    [
        ({"title": {"$prefix": "/x"}}, "only works on 'source'"),
        ({"source": {"$prefix": "docs/"}}, "absolute path"),
        ({"source": {"$prefix": 7}}, "absolute path"),
        ({"source": {"$startswith": "/x"}}, "$prefix"),  # the error lists the operators, $prefix included
    ],
)
def test_prefix_errors_name_the_problem(filters, message) -> None:
    with pytest.raises(RiftError, match=message.replace("$", r"\$")):
        parse_filters(filters)


@pytest.fixture
def app(tmp_path: Path, tiny_model_path: Path):
    settings = Settings(
        data_dir=tmp_path / "data",
        model=str(tiny_model_path),
        chunk_tokens=128,
        chunk_overlap=8,
        candidate_depth=20,
        max_k=1000,
        allowed_roots=[tmp_path / "root"],
    )
    rift = Rift(settings).start(background=False)
    yield rift
    rift.close()


def test_file_filters_inside_both_retrievers(app: Rift, tmp_path: Path) -> None:
    docs = build_corpus(tmp_path / "root", tmp_path / "outside")
    old = 1_000_000_000
    os.utime(docs / "guide.md", (old, old))
    sync_paths(app.engine(), "files", [str(docs)], PathPolicy.for_server(app.settings))

    def found(query: str, filters: dict, mode: str) -> set[str]:
        hits = app.search("files", query, k=10, mode=mode, filters=filters).outcome.hits
        return {str(Path(h.doc_id).relative_to(docs)) for h in hits}

    broad = "eruptions walrus harbour crevasses saguaro auroras"
    for mode in ("keyword", "vector", "hybrid"):
        assert found(broad, {"mtime": {"$lt": old + 1}}, mode) == {"guide.md"}
        assert found(broad, {"mtime": {"$gte": old + 1}}, mode) == {
            "notes/walrus.txt", "src/tides.py", "glacier.rst", "botany.html", "aurora.pdf"
        }  # fmt: skip
        assert found(broad, {"file_type": {"$in": ["pdf", "html"]}}, mode) == {"aurora.pdf", "botany.html"}
        assert found(broad, {"source": {"$prefix": str(docs / "notes")}}, mode) == {"notes/walrus.txt"}
        assert found(broad, {"source": {"$prefix": str(docs / "src" / "tides.py")}}, mode) == {"src/tides.py"}
        assert found(broad, {"version": {"$gte": 3}, "draft": False}, mode) == {"guide.md"}
        assert found(broad, {"source": {"$prefix": str(tmp_path / "outside")}}, mode) == set()
    hits = app.search(
        "files", "routes uphill valleys", k=5, mode="keyword", filters={"heading": "Evacuation"}
    )
    assert [h.metadata["heading"] for h in hits.outcome.hits] == ["Evacuation"]


def test_selective_filter_keeps_full_recall(app: Rift) -> None:
    """10 'rare' documents among 250, none of them strong matches: pre-filtering returns exactly the top of an
    exhaustive unfiltered ranking filtered afterwards, while filtering the usual depth-20 candidate list
    afterwards finds almost none of them."""
    rng = random.Random(7)
    words = [
        "delta",
        "silt",
        "levee",
        "estuary",
        "basin",
        "channel",
        "meander",
        "floodplain",
        "gravel",
        "tributary",
    ]
    inputs = []
    for i in range(250):
        rare = i % 25 == 0
        folder = "/corpus/rare" if rare else f"/corpus/common/{i % 4}"
        strong = "" if rare else " river sediment river sediment"
        text = f"river sediment{strong} " + " ".join(
            rng.choices(words, k=rng.randint(4, 30))
        )  # no score ties
        inputs.append(
            DocumentInput(text=text, id=f"{folder}/doc{i}.txt", metadata={"source": f"{folder}/doc{i}.txt"})
        )
    engine = app.engine()
    engine.add_documents("recall", inputs)
    rare = {d.id for d in inputs if d.id.startswith("/corpus/rare/")}
    flt = {"source": {"$prefix": "/corpus/rare"}}

    def ranked(outcome, mode: str) -> list[tuple[str, float]]:
        side = outcome.keyword if mode == "keyword" else outcome.vector
        return sorted(
            ((c.doc_id, round(c.score, 5)) for c in side), key=lambda c: (-c[1], c[0])
        )  # ties: by id

    for mode in ("keyword", "vector"):
        pre = ranked(engine.search("recall", "river sediment", k=10, mode=mode, filters=flt), mode)
        exhaustive = ranked(engine.search("recall", "river sediment", k=250, mode=mode, depth=1000), mode)
        post = [c for c in exhaustive if c[0] in rare]
        assert len(pre) >= 9 and {d for d, _ in pre} <= rare  # depth counts chunks; docs have 1-4
        assert pre[:5] == post[:5], mode  # same documents, same scores, same order
        shallow = engine.search("recall", "river sediment", k=10, mode=mode).hits  # depth 20, then filter
        assert len([h for h in shallow if h.doc_id in rare]) < 5, mode
    hybrid = engine.search("recall", "river sediment", k=10, mode="hybrid", filters=flt).hits
    assert {h.doc_id for h in hybrid} == rare
