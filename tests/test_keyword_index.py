"""The incremental keyword index scores exactly like a fresh bm25s index over the same rows.

After any add (or `compact()`), the snapshot's rows are the live rows in order and every score equals that of
`bm25s.BM25().index(tokens)`; a delete alone only masks rows, so until the next add the scores are those of
the index before the delete with the deleted rows masked out."""

from __future__ import annotations

import re
import time
import unicodedata
from collections.abc import Callable
from typing import Any

import bm25s
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from server.engine import keyword_index
from server.engine.filters import Node, parse_filters
from server.engine.keyword_index import KeywordIndex, KeywordRow, KeywordTokenizer, length_in_words

WORDS = [f"w{i}" for i in range(12)]
QUERIES = [["w0"], ["w1", "w2"], ["w3", "w3", "w4"], ["w5", "nope"], WORDS, ["w11", "w7", "w0"], ["nope"]]
# Each filter with the rows it should let through, written out independently of filters.mask.
FILTERS: list[tuple[Node | None, Callable[[dict[str, Any]], bool]]] = [
    (None, lambda m: True),
    (parse_filters({"g": 1}), lambda m: m.get("g") == 1),
    (parse_filters({"g": {"$ne": 0}}), lambda m: m.get("g") != 0),
]


def reference(rows: list[KeywordRow]) -> bm25s.BM25 | None:
    if not any(r.tokens for r in rows):
        return None
    ref = bm25s.BM25()
    ref.index([list(r.tokens) for r in rows], show_progress=False)
    return ref


def expected_search(
    ref: bm25s.BM25 | None, rows: list[KeywordRow], weights: np.ndarray, query: list[str], depth: int
) -> list[tuple[str, float]]:
    """What search() should return: a bm25s index rebuilt from the snapshot's rows scores every row; the
    allowed rows with a positive score rank by score, ties in row order, and the first `depth` are kept."""
    if ref is None:
        return []
    tokens = [t for t in query if t in ref.vocab_dict]
    if not tokens or not weights.any():
        return []
    scores = ref.get_scores(tokens) * weights
    ranked = sorted((i for i in range(len(rows)) if scores[i] > 0), key=lambda i: -scores[i])
    return [(rows[i].chunk_id, float(scores[i])) for i in ranked[:depth]]


def check(index: KeywordIndex, live: dict[str, KeywordRow]) -> None:
    snap = index.snapshot
    assert index.chunk_ids() == set(live)
    assert snap.live_count == len(live)
    assert snap.row_of == {r.chunk_id: i for i, r in enumerate(snap.rows)}
    ref = reference(snap.rows)
    for query in QUERIES:
        if ref is not None and snap.bm25 is not None:
            known = [t for t in query if t in ref.vocab_dict]
            if known:  # the whole score vector, not just the top
                np.testing.assert_array_equal(snap.bm25.get_scores(known), ref.get_scores(known))
        for node, allows in FILTERS:
            weights = snap.alive & np.array([allows(dict(r.metadata)) for r in snap.rows], bool)
            for depth in (1, 3, 50):
                got = [(r.chunk_id, s) for r, s in index.search(query, depth, node)]
                assert got == expected_search(ref, snap.rows, weights, query, depth), (query, node, depth)


row_tokens = st.lists(st.sampled_from(WORDS), max_size=8)
operation = st.tuples(
    st.lists(
        st.tuples(st.integers(0, 14), row_tokens, st.integers(0, 2)), max_size=4
    ),  # (id, tokens, g) to add
    st.lists(st.integers(0, 14), max_size=3),  # ids to delete
    st.booleans(),  # compact afterwards
)


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    initial=st.lists(st.tuples(row_tokens, st.integers(0, 2)), max_size=6),
    ops=st.lists(operation, max_size=6),
)
def test_random_adds_and_deletes_score_like_a_fresh_bm25s_index(
    initial: list[tuple[list[str], int]], ops: list[tuple[list[tuple[int, list[str], int]], list[int], bool]]
) -> None:
    live = {f"c{i}": KeywordRow(f"c{i}", f"d{i}", tuple(t), {"g": g}) for i, (t, g) in enumerate(initial)}
    index = KeywordIndex(list(live.values()))
    check(index, live)
    for adds, deletes, compact in ops:
        rows = list({f"c{i}": KeywordRow(f"c{i}", f"d{i}", tuple(t), {"g": g}) for i, t, g in adds}.values())
        removed = {f"c{i}" for i in deletes}
        for chunk_id in removed:
            live.pop(chunk_id, None)
        live.update((r.chunk_id, r) for r in rows)
        index.apply(remove=removed, add=rows)
        if rows:  # deleted rows are gone, not just masked: the index is a fresh one over the live rows
            assert index.snapshot.alive.all()
        if compact:
            index.compact()
            assert index.snapshot.alive.all()
        check(index, live)


def test_real_text_scores_match_bm25s_bit_for_bit() -> None:
    texts = [
        "Vitamin D deficiency is associated with an increased risk of fractures in elderly patients.",
        "The deficiency of iron causes anaemia; iron supplements reduce the risk.",
        "Fractures of the hip are common in elderly women with osteoporosis.",
        "Randomised trials of vitamin supplements show no effect on mortality.",
        "Smoking increases the risk of lung cancer and heart disease.",
        "Exercise reduces the risk of heart disease in elderly patients.",
    ]
    tokens = KeywordTokenizer().tokenize(texts)
    rows = [KeywordRow(f"c{i}", f"d{i}", tuple(t), {}) for i, t in enumerate(tokens)]
    index = KeywordIndex(rows[:3])
    index.apply(add=rows[3:5])
    index.apply(remove=["c1"], add=[rows[5]])
    live = [rows[0], rows[2], rows[3], rows[4], rows[5]]
    assert index.snapshot.rows == live
    query = KeywordTokenizer().tokenize(["risk of fractures in the elderly with vitamin deficiency"])[0]
    ref = reference(live)
    assert ref is not None
    got = index.search(query, 10)
    docs, scores = ref.retrieve([query], k=5, show_progress=False)
    assert [(r.chunk_id, s) for r, s in got] == [
        (live[int(d)].chunk_id, float(s)) for d, s in zip(docs[0], scores[0], strict=True) if s > 0
    ]
    assert got[0][0].chunk_id == "c0"


def test_rows_without_tokens_are_counted_but_never_match() -> None:
    index = KeywordIndex([KeywordRow("a", "a", (), {}), KeywordRow("b", "b", (), {})])
    assert index.search(["w1"], 5) == []
    index.apply(add=[KeywordRow("c", "c", ("w1", "w2"), {})])
    check(index, {r.chunk_id: r for r in index.snapshot.rows})
    assert [r.chunk_id for r, _ in index.search(["w1"], 5)] == ["c"]


def test_unused_terms_are_pruned_and_old_snapshots_stay_valid(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(keyword_index, "_PRUNE_MIN", 4)
    base = [KeywordRow(f"b{i}", f"b{i}", ("shared", f"base{i}"), {}) for i in range(3)]
    index = KeywordIndex(base)
    index.apply(add=[KeywordRow(f"x{i}", f"x{i}", ("shared", f"gone{i}", f"gone{i}"), {}) for i in range(6)])
    before = index.snapshot
    hits_before = index.search(["gone1", "shared"], 5)
    assert hits_before[0][0].chunk_id == "x1"
    assert len(before.postings.vocab) == 10
    index.apply(remove=[f"x{i}" for i in range(6)], add=[KeywordRow("n", "n", ("shared", "new"), {})])
    assert set(index.snapshot.postings.vocab) == {"shared", "base0", "base1", "base2", "new"}
    check(index, {r.chunk_id: r for r in base} | {"n": index.snapshot.rows[-1]})
    # A reader still holding the old snapshot sees it unchanged: nothing published is ever mutated.
    assert len(before.postings.vocab) == 10
    assert not before.postings.docs.flags.writeable
    scores = before.bm25.get_scores(["gone1", "shared"]) if before.bm25 else None
    assert scores is not None and float(scores.max()) == hits_before[0][1]


@pytest.mark.parametrize(
    ("text", "query"),
    [
        ("我的猫很可爱", "猫"),  # one Chinese character inside a run is a term
        ("明日は時々雨が降ります", "時々"),  # 々 belongs to the run
        ("佐々木さんに会った", "佐々木"),
        ("물을 마셨다", "물"),
        ("二〇二四年の計画", "二〇二四"),
        ("İstanbul'da bir gün", "istanbul"),  # "İ".lower() carries a combining dot
        ("दिल्ली की यात्रा", "दिल्ली"),  # vowel signs and viramas stay in the word
        ("bilgisayar ve infor\u00admation", "information"),  # a soft hyphen splits no word
        ("iPhone手机的battery很好", "battery"),
        ("ฉันชอบเรียนภาษาไทยมาก", "ภาษาไทย"),  # Thai, Lao, Khmer, Myanmar: no spaces between words
        ("ຂ້ອຍມັກຮຽນພາສາລາວ", "ພາສາລາວ"),
        ("ខ្ញុំចូលចិត្តភាសាខ្មែរ", "ភាសាខ្មែរ"),
        ("ကျွန်တော်မြန်မာစာကိုကြိုက်တယ်", "မြန်မာစာ"),
        ("Pythonภาษาโปรแกรม", "python"),
    ],
)
def test_multilingual_words_are_keyword_terms(text: str, query: str) -> None:
    tok = KeywordTokenizer()
    doc, q = tok.tokenize([text, query])
    assert q and set(q) <= set(doc), (q, doc)


@pytest.mark.parametrize(
    ("text", "low", "high"),
    [
        ("the cat sat on the mat", 6, 6),
        ("我的猫很可爱", 2.5, 3.5),  # Chinese: about two characters a word
        ("ฉันชอบเรียนภาษาไทยมาก", 4, 7),  # Thai, one run of seven words (ฉัน ชอบ เรียน ภาษา ไทย มาก)
        ("ខ្ញុំចូលចិត្តភាសាខ្មែរ", 3, 7),  # Khmer, one run of four words
        ("read ภาษาไทย today", 3.5, 5),
    ],
)
def test_length_in_words_counts_words_in_scripts_without_spaces(text: str, low: float, high: float) -> None:
    # The miner's and the gate's length filters read it: a run without spaces is not one word.
    assert low <= length_in_words(text) <= high


def test_kana_punctuation_is_no_term_and_cjk_stopwords_apply_to_whole_words() -> None:
    assert "・" not in KeywordTokenizer().tokenize(["ジョン・スミス"])[0]
    # Korean separates words by spaces: its stopwords (그리고 "and", 하지만 "but") go before runs are split.
    korean = KeywordTokenizer(None, "ko").tokenize(["그리고 데이터를 하지만 결국"])[0]
    assert "그리" not in korean and "하지" not in korean and "데이" in korean


def test_english_tokens_are_bm25s_own_with_lone_letters_and_digits() -> None:
    # For Latin text the tokens are those of bm25s' tokenizer with a one-character word pattern (its default,
    # \w\w+, drops "R", "C" or "3").
    import Stemmer

    texts = ["Running dogs jumped over the lazy fox in 2024.", "The ﬁnance of C++ and R: naïve résumés"]
    expected = bm25s.tokenize(
        [unicodedata.normalize("NFKC", t) for t in texts],
        stopwords="en",
        stemmer=Stemmer.Stemmer("english"),
        token_pattern=r"(?u)\b\w+\b",
        return_ids=False,
        show_progress=False,
    )
    assert KeywordTokenizer().tokenize(texts) == expected
    assert {"c", "r"} <= set(expected[1])


@pytest.mark.parametrize(
    ("text", "query"),
    [("plots in R with ggplot", "R"), ("templates in C++", "C++"), ("runs on Python 3", "3")],
)
def test_one_character_names_are_keyword_terms(text: str, query: str) -> None:
    doc, q = KeywordTokenizer().tokenize([text, query])
    assert q and set(q) <= set(doc)


def test_identifiers_are_terms_whole_and_by_their_parts() -> None:
    """A word with "_" or a change of case is indexed whole and as its parts, which go through the same
    stopwords and stemmer as other words; plural acronyms, gene names and words in one case stay whole."""
    tok = KeywordTokenizer(None, "en_questions")
    assert tok.tokenize(["top_rows"])[0] == ["top_rows", "top", "rows"]
    assert tok.tokenize(["KeywordIndex"])[0] == ["keywordindex", "keyword", "index"]
    assert tok.tokenize(["parseHTTPResponse"])[0] == ["parsehttpresponse", "parse", "http", "response"]
    # Digits may end a run of capitals (found by helper BQ): S3Client and HTTP2Server stayed one term.
    assert tok.tokenize(["S3Client HTTP2Server"])[0] == ["s3client", "http2server", "s3", "client", "http2", "server"]
    assert tok.tokenize(["HTTP_SERVER __init__ base64Encode"])[0] == [
        "http_server", "__init__", "base64encode", "http", "server", "init", "base64", "encode"
    ]
    assert tok.tokenize(["RNAs URLs IDs BRCA1 utf8 Keyword keyword HTTP IL-6"])[0] == [
        "rnas", "urls", "ids", "brca1", "utf8", "keyword", "keyword", "http", "il", "6"
    ]
    # Parts are words like any other: stopwords drop, the stemmer stems.
    assert KeywordTokenizer().tokenize(["get_the_rows"])[0] == ["get_the_row", "get", "row"]
    assert "words1+marks+parts" in tok.signature  # stored chunks re-tokenize once (test_engine)


def test_identifiers_in_import_statements_are_terms_whole_only() -> None:
    """An import names what it neither defines nor uses: its identifiers are indexed whole, without their
    parts, so a file that imports `GateConfig` does not match "gate config" as the class does. Python's
    forms, a bracketed list to its closing line, JS/TS and Go; the code around keeps its parts, and so does a
    line of prose that starts "Import" (a capital: no statement)."""
    tok = KeywordTokenizer(None, None)
    code = (
        "from server.gate import GateConfig, run_gate  # keep_this\n"
        "from .store import (\n    StateStore,\n    chunk_rows,\n)\n"
        "import numpy.linalg as np_linalg\n"
        "    import top_rows\n"
        'import {\n  fooBar,\n} from "./keywordIndex";\n'
        'import (\n    "net/http_util"\n)\n'
        "def make_gate(cfg: GateConfig) -> StateStore:\n"
        "    return run_gate(cfg)\n"
    )
    terms = tok.tokenize([code])[0]
    words = [w.lower() for w in re.findall(r"\w+", code)]
    assert terms[: len(words)] == words  # every word whole ...
    # ... then the parts, only of the code after the imports: make_gate, GateConfig, StateStore, run_gate.
    assert terms[len(words) :] == ["make", "gate", "gate", "config", "state", "store", "run", "gate"]
    assert tok.tokenize(["Import duties on key_words rose"])[0] == [
        "import", "duties", "on", "key_words", "rose", "key", "words"
    ]
    assert tok.tokenize(["importantThing"])[0] == ["importantthing", "important", "thing"]
    assert "words1+marks+parts-imports" in tok.signature  # stored chunks re-tokenize once (test_engine)


def test_an_import_statement_left_open_is_bounded() -> None:
    """A bracket that never closes ends the statement at its line; many of them cost linear time."""
    tok = KeywordTokenizer(None, None)
    assert tok.tokenize(["from a import (b_c\nd_e"])[0] == ["from", "a", "import", "b_c", "d_e", "d", "e"]
    text = "from a import (x_y\n" * 20_000
    started = time.perf_counter()
    assert len(keyword_index._words(text)) == 80_000
    assert time.perf_counter() - started < 5


def test_a_query_finds_an_identifier_by_its_parts_and_the_identifier_ranks_first() -> None:
    texts = [
        "def top_rows(vectors, query, allowed, depth):",
        "class KeywordIndex:\n    One collection's keyword side.",
        "the top of the table has more rows than columns",
        "an index of keywords for the book",
    ]
    tok = KeywordTokenizer()
    index = KeywordIndex(KeywordRow(f"c{i}", f"d{i}", tuple(t), {}) for i, t in enumerate(tok.tokenize(texts)))

    def found(query: str) -> list[str]:
        return [r.doc_id for r, _ in index.search(tok.tokenize([query])[0], 10)]

    assert sorted(found("top rows")) == ["d0", "d2"]  # before, only the prose: `top_rows` was one term
    assert found("top_rows") == ["d0", "d2"]  # whole word and parts: the identifier first
    assert sorted(found("keyword index")) == ["d1", "d3"]
    assert found("KeywordIndex") == ["d1", "d3"]


def test_en_questions_drops_what_an_agents_question_says_about_itself_not_its_topic() -> None:
    """rift's own list: bm25s' English one plus question words, auxiliaries and pronouns; the letters the
    tokenizer splits off and words that carry a query's meaning stay terms."""
    from bm25s.stopwords import STOPWORDS_EN

    from server.engine.keyword_index import RIFT_STOPWORDS, stopword_list

    asked = KeywordTokenizer("english", "en_questions").tokenize(["How do I configure my Chroma server?"])[0]
    assert asked == ["configur", "chroma", "server"]
    assert KeywordTokenizer("english", "en").tokenize(["How do I configure my Chroma server?"])[0] == [
        "how", "do", "i", "configur", "my", "chroma", "server"
    ]
    kept = KeywordTokenizer(None, "en_questions").tokenize(["T cells need vitamin D more after exercise"])[0]
    assert kept == ["t", "cells", "need", "vitamin", "d", "more", "after", "exercise"]
    assert set(STOPWORDS_EN) < set(RIFT_STOPWORDS["en_questions"])
    assert (stopword_list(None), stopword_list(""), stopword_list("de")) == ([], [], "de")
    assert KeywordTokenizer(None, "en_questions").signature != KeywordTokenizer(None, "en").signature
