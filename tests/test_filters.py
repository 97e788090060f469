"""The filter grammar: parse errors name the field or operator, and the keyword side's numpy mask selects
exactly what Chroma's `where` selects for the same filter (so both retrievers pre-filter identically)."""

from __future__ import annotations

import uuid
from typing import Any

import numpy as np
import pytest

from server.engine.filters import MetadataColumns, mask, parse_filters, to_chroma
from server.errors import RiftError

ROWS: list[dict[str, Any]] = [
    {"lang": "en", "year": 2018, "score": 0.5, "draft": False, "n": 1},
    {"lang": "en", "year": 2020, "score": 1.5, "draft": True, "n": 1.0},
    {"lang": "de", "year": 2021, "score": 2.5, "draft": False, "n": True},
    {"lang": "fr", "year": 2022, "score": 3.0},
    {"lang": "de", "year": 2019, "draft": True, "n": "1"},
    {"year": 2023, "score": 0.0, "n": 0},
    {"lang": "EN", "year": 2024, "score": 9.0, "draft": False},
    {"lang": 7, "year": 2025},
    {"big": 2**63 - 1},  # numbers at the ends of what Chroma compares exactly
    {"big": 9007199254740992.0},
    {"big": 2**53 + 1},
    {"big": -(2**63)},
]

FILTERS: list[dict[str, Any]] = [
    {"lang": "en"},
    {"lang": {"$eq": "de"}},
    {"lang": {"$ne": "en"}},
    {"lang": {"$in": ["de", "fr"]}},
    {"lang": {"$nin": ["de", "fr"]}},
    {"lang": {"$in": ["en", 7]}},
    {"year": 2020},
    {"year": {"$gte": 2021}},
    {"year": {"$gt": 2019, "$lt": 2022}},
    {"score": {"$lte": 1.5}},
    {"score": {"$gt": 2}},
    {"score": 3},  # int query, float value
    {"score": {"$ne": 0.5}},
    {"draft": True},
    {"draft": {"$ne": True}},
    {"draft": False},
    {"n": 1},  # int 1 is neither True nor "1"
    {"n": True},
    {"n": "1"},
    {"n": {"$in": [0, True]}},
    {"n": {"$in": [True, 0]}},
    {"n": {"$nin": [1, "1"]}},
    {"score": {"$in": [3, 0.5]}},
    {"score": {"$in": [0.5]}},  # one fraction: one condition (Chroma refuses a one-item $or)
    {"score": {"$nin": [1.5]}},
    {"year": {"$in": [2018, 2024]}},
    {"missing": "x"},
    {"missing": {"$ne": "x"}},
    {"lang": "en", "year": {"$gte": 2020}},
    {"$or": [{"lang": "fr"}, {"year": {"$lt": 2019}}]},
    {"$and": [{"lang": {"$in": ["en", "de"]}}, {"$or": [{"draft": True}, {"score": {"$gt": 5}}]}]},
    {"$or": [{"$and": [{"year": {"$gte": 2020}}, {"draft": False}]}, {"lang": "EN"}]},
    {"big": 2**53 + 1},  # int operand: exact against ints, as a float against the stored 2**53.0
    {"big": {"$gte": 2**53 + 1}},
    {"big": {"$lt": 2**53 + 1}},
    {"big": {"$in": [2**53 + 1, 5]}},
    {"big": {"$nin": [2**53 + 1, -(2**63)]}},
    {"big": 9007199254740992.0},
    {"big": {"$lt": 2**63 - 1}},
    {"big": {"$gt": 9.2e18}},
    {"big": {"$lte": -9.2e18}},
]


@pytest.fixture(scope="module")
def chroma_rows():
    import chromadb
    from chromadb.config import Settings as ChromaSettings

    client = chromadb.EphemeralClient(settings=ChromaSettings(anonymized_telemetry=False))
    coll = client.create_collection(f"filters-{uuid.uuid4().hex[:8]}", embedding_function=None)
    ids = [f"r{i}" for i in range(len(ROWS))]
    coll.add(ids=ids, embeddings=np.eye(len(ROWS), 4 + len(ROWS), dtype=np.float32), metadatas=ROWS)
    return coll, ids


@pytest.mark.parametrize("raw", FILTERS, ids=[str(f) for f in FILTERS])
def test_mask_selects_what_chroma_selects(chroma_rows, raw: dict[str, Any]) -> None:
    coll, ids = chroma_rows
    node = parse_filters(raw)
    chroma = set(coll.get(where=to_chroma(node), include=[])["ids"])
    ours = {ids[i] for i in np.flatnonzero(mask(node, MetadataColumns(ROWS)))}
    assert ours == chroma


def test_to_chroma_shapes() -> None:
    assert parse_filters(None) is None and parse_filters({}) is None and to_chroma(None) is None
    assert to_chroma(parse_filters({"a": 1})) == {"a": {"$eq": 1}}
    assert to_chroma(parse_filters({"a": 1, "b": {"$in": ["x"]}})) == {
        "$and": [{"a": {"$eq": 1}}, {"b": {"$in": ["x"]}}]
    }
    assert to_chroma(parse_filters({"y": {"$gt": 1, "$lt": 3}})) == {
        "$and": [{"y": {"$gt": 1}}, {"y": {"$lt": 3}}]
    }
    assert to_chroma(parse_filters({"$or": [{"a": 1}]})) == {"a": {"$eq": 1}}


@pytest.mark.parametrize(
    ("raw", "needle"),
    [
        ("lang", "filters must be an object"),
        ({"year": {"$between": [1, 2]}}, "unknown operator '$between' on field 'year'"),
        ({"year": {"$gt": "2020"}}, "filters.year.$gt must be a number"),
        ({"year": {"$gt": True}}, "filters.year.$gt must be a number"),
        ({"lang": {"$in": []}}, "filters.lang.$in must be a non-empty list"),
        ({"lang": {"$in": "en"}}, "filters.lang.$in must be a non-empty list"),
        ({"lang": {"$in": ["en", ["x"]]}}, "filters.lang.$in[1]"),
        ({"lang": ["en"]}, 'filters.lang must be a string, number or boolean, got array; to match any of several values write {"lang": {"$in": [...]}}'),
        ({"lang": None}, "filters.lang must be a string, number or boolean, got null"),
        ({"lang": float("nan")}, "filters.lang must be a finite number"),
        ({"n": {"$lt": 1e19}}, "filters.n.$lt is 1e+19; numbers must lie within ±9.2e18"),
        ({"n": {"$in": [1, -1e300]}}, "filters.n.$in[1] is -1e+300"),
        ({"n": 2**63}, "filters.n is 9223372036854775808; numbers must lie within ±9.2e18"),
        # The last float below 2**63: Chroma may store it 1 ULP up, at 2**63, equal there to 2**63 - 1.
        ({"n": float(2**63 - 1024)}, "filters.n is 9.22337e+18; numbers must lie within ±9.2e18"),
        ({"n": {"$in": [1, -(2**70)]}}, "filters.n.$in[1] is -1180591620717411303424"),
        ({"lang": {}}, "filters.lang must name at least one operator"),
        ({"$or": {}}, "filters.$or must be a non-empty list"),
        ({"$and": []}, "filters.$and must be a non-empty list"),
        ({"$or": [{}]}, "filters.$or[0] must be a non-empty object"),
        ({"$not": [{"a": 1}]}, "unknown operator '$not'"),
        ({"": 1}, "field names must be non-empty strings"),
        ({"x": "a\x00"}, "filters.x contains a NUL character"),
        ({"x": {"$in": ["b", "c\x00"]}}, "filters.x.$in[1] contains a NUL character"),
        ({"x\x00": 1}, "field name 'x\\x00' contains a NUL character"),
        ({"#document": "x"}, "filters: '#document': no document has this field"),
        ({"$or": [{"chroma:document": {"$ne": "x"}}]}, "filters.$or[0]: 'chroma:document': no document has"),
    ],
)
def test_parse_errors_name_the_field_or_operator(raw: Any, needle: str) -> None:
    with pytest.raises(RiftError) as err:
        parse_filters(raw)
    assert needle in str(err.value) and "filters: filters" not in str(err.value)


def test_nesting_is_bounded() -> None:
    raw: dict[str, Any] = {"a": 1}
    for _ in range(10):
        raw = {"$and": [raw]}
    with pytest.raises(RiftError, match="nest deeper"):
        parse_filters(raw)


def test_mask_on_no_rows_and_no_filter() -> None:
    assert mask(None, MetadataColumns(ROWS)) is None
    empty = mask(parse_filters({"a": {"$ne": 1}}), MetadataColumns([]))
    assert empty is not None and empty.shape == (0,)


def test_mixed_type_lists_compile_to_single_type_conditions() -> None:
    assert to_chroma(parse_filters({"a": {"$in": ["x", 1]}})) == {
        "$or": [{"a": {"$eq": "x"}}, {"a": {"$eq": 1}}]
    }
    # Chroma cuts 1.5 to 1 against integer metadata, so "a != 1.5" also lets through a == 1 (which the first
    # condition still excludes here).
    assert to_chroma(parse_filters({"a": {"$nin": [1, 1.5]}})) == {
        "$and": [{"a": {"$ne": 1}}, {"$or": [{"a": {"$ne": 1.5}}, {"a": {"$eq": 1}}]}]
    }


def test_document_columns_give_each_document_its_own_folder_keys() -> None:
    """A $prefix filter over document metadata computes the folder keys once per folder; every document must
    still get exactly the keys of its own source path (as stored with its chunks), roots and odd paths too."""
    import random

    from server.engine.filters import DIR_KEY, document_columns, path_keys

    parts = ["a", "b", "é", "..", ".", "", "x y", "c.md"]
    rng = random.Random(7)
    sources = ["/", "//", "/x.md", "//a/b.md", "/a/", "/a/b/", "relative/c.md", 5, None]
    sources += ["/" + "/".join(rng.choice(parts) for _ in range(rng.randint(1, 5))) for _ in range(400)]
    metadatas = [{"source": s} if s is not None else {"other": 1} for s in sources]
    node = parse_filters({"source": {"$prefix": "/a"}})
    columns = document_columns(metadatas, node)
    fields = {f for m in metadatas for f in {**m, **path_keys(m)}}
    assert any(f.startswith(DIR_KEY) for f in fields)
    for field in fields:
        want = [({**m, **path_keys(m)}).get(field) for m in metadatas]
        assert list(columns.objects(field)) == want, field


def test_a_prefix_names_a_file_stored_under_an_unnormalized_path_by_that_path() -> None:
    """A `source` an agent wrote as "/corp//odd/./x.md" was matched only through its folders: its own path, even
    as literally stored, matched nothing (nor deleted anything through delete_documents)."""
    metadatas = [{"source": "/corp//odd/./x.md"}, {"source": "/corp/odd/z.md"}]

    def matched(operand: str) -> list[bool]:
        from server.engine.filters import path_keys

        columns = MetadataColumns([{**m, **path_keys(m)} for m in metadatas])
        return mask(parse_filters({"source": {"$prefix": operand}}), columns).tolist()

    assert matched("/corp/odd") == [True, True]
    assert matched("/corp//odd/./x.md") == [True, False]
    assert matched("/corp/odd/z.md") == [False, True]
