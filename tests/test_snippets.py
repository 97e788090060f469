"""A search's max_chars: each hit's text is the part of its chunk with the most query words."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
from mcp import Client

from server.app import create_server
from server.engine.engine import DocumentInput
from server.engine.keyword_index import _WORD, KeywordTokenizer
from server.engine.snippets import best_window
from server.errors import RiftError
from tests.support.helpers import make_settings

TOKENIZER = KeywordTokenizer()


def window(text: str, query: str, max_chars: int) -> str:
    a, b = best_window(text, TOKENIZER.tokenize([query])[0], TOKENIZER.stem, max_chars)
    return text[a:b]


FILLER = " ".join(f"plain filler sentence number {i} about nothing much." for i in range(20))


def test_the_window_holds_the_query_words_within_the_budget() -> None:
    text = f"{FILLER} The river floods the valley every spring, and the farmers move uphill. {FILLER}"
    got = window(text, "when does the river flood", 80)
    assert "river floods" in got and len(got) <= 80  # (stemmed: "flood" matches "floods")
    assert got == got.strip() and text.index(got) > 0
    # Context on both sides of the matched words, not only after them.
    assert got.index("river") > 10 and len(got) - got.index("floods") > 15
    # Fits: the whole text; nothing matches: its first words.
    assert window("short text", "river", 80) == "short text"
    assert window(FILLER, "volcano", 40) == "plain filler sentence number 0 about"
    # More distinct query words beat one word repeated; on a tie, the earliest.
    text = f"volcano volcano volcano volcano. {FILLER} a volcano near the river. {FILLER}"
    assert "volcano near the river" in window(text, "volcano river", 40)
    assert window(f"{FILLER} gold here. {FILLER} gold there. {FILLER}", "gold", 20) == "much. gold here"
    # A word longer than the budget is cut (the only way to show it).
    assert window("x" * 50 + " end", "x", 10) == "x" * 10


def test_spaceless_scripts_match_by_their_characters() -> None:
    """A run of CJK or Thai text is split as the keyword index splits it, so a window can lie inside a run
    longer than the budget, at the query's words (it showed the run's first characters)."""
    text = "这是一个很长的句子没有意思。" * 8 + "机器学习很有趣。" + "这是一个很长的句子没有意思。" * 8
    assert "机器学习" in window(text, "机器学习", 20)
    text = "在过去的几十年里，人工智能领域经历了许多重大的变革以及令人瞩目的突破性进展，这些进展改变了世界。"
    assert "突破" in window(text, "突破", 20) and len(window(text, "突破", 20)) <= 20
    assert "量子コンピュータ" in window("東京大学の研究チームは新しい量子コンピュータの開発に成功したと発表しました", "量子コンピュータ", 20)
    thai = "ประเทศไทยมีประวัติศาสตร์อันยาวนานและวัฒนธรรมที่หลากหลายซึ่งดึงดูดนักท่องเที่ยวจากทั่วโลก"
    got = window(thai, "วัฒนธรรม", 30)
    assert "วัฒนธรรม" in got and len(got) <= 30 and thai.index(got) > 0


def test_words_match_as_the_keyword_index_reads_them() -> None:
    """Soft hyphens, a dotted capital I, Latin letters run into CJK and identifiers' parts, as the index
    normalises them."""
    filler = "filler " * 10
    assert "national" in window(f"{filler}inter\u00adnational {filler}", "international", 30)
    assert "İstanbul" in window(f"{filler}İstanbul {filler}", "Istanbul", 30)
    assert "机器学习" in window(f"{filler}Python3机器学习 {filler}", "机器学习", 30)
    assert "ｶﾀｶﾅ" in window(f"{filler}ｶﾀｶﾅ {filler}", "カタカナ", 30)  # (half-width: NFKC makes it CJK)
    assert "top_rows" in window(f"{filler}def top_rows(x): {filler}", "top rows", 30)  # an identifier's parts
    # No word at all: cut between graphemes (an emoji sequence or a letter's marks stay whole).
    family = "\U0001f468\u200d\U0001f469\u200d\U0001f467"
    assert window(family * 10, "x", 12) == family * 2  # (5 code points each)


def test_a_window_never_starts_inside_a_word_with_an_apostrophe() -> None:
    """"hit's" is two keyword words, but a window that starts at its "s" shows a fragment (found by helper BH:
    a snippet began "s text worth showing")."""
    text = (
        "The part of a hit's text worth showing when the whole chunk is too long: the window of at most "
        "max_chars characters, cut at word boundaries."
    )
    for query in ("text worth showing", "chunk too long", "window"):
        for budget in range(20, 120):
            got = window(text, query, budget)
            assert not got.startswith("s "), (query, budget, got)
    curly = f"{FILLER} l\u2019eau de la rivi\u00e8re coule vers la mer. {FILLER}"
    assert not window(curly, "eau rivi\u00e8re", 40).startswith("eau")
    # The words after the apostrophe still match as the index reads them.
    assert "don't panic" in window(f"{FILLER} don't panic now {FILLER}", "panic", 20)


def test_random_texts_give_whole_words_within_the_budget() -> None:
    rng = random.Random(7)
    vocabulary = ["river", "flood", "stone", "x", "über", "naïve", "C++", "a-b", "机器", "—", "3.14", "r2d2"]
    for _ in range(400):
        text = " ".join(rng.choice(vocabulary) for _ in range(rng.randint(1, 60)))
        budget = rng.randint(1, 80)
        query = " ".join(rng.sample(vocabulary, 2))
        a, b = best_window(text, TOKENIZER.tokenize([query])[0], TOKENIZER.stem, budget)
        assert 0 <= a < b <= len(text) and b - a <= budget, (text, budget)
        if len(text) > budget:
            cjk = {i for i, c in enumerate(text) if "\u4e00" <= c <= "\u9fff"}  # (a CJK run splits anywhere)
            starts = {m.start() for m in _WORD.finditer(text)} | cjk
            ends = {m.end() for m in _WORD.finditer(text)} | {i + 1 for i in cjk}
            longest = max(m.end() - m.start() for m in _WORD.finditer(text))
            assert a in starts and (b in ends or longest > budget), (text, budget, a, b)


@pytest.fixture
def cfg(tmp_path: Path, tiny_model_path: Path):
    return make_settings(tmp_path / "data", tiny_model_path, chunk_tokens=200)


def test_a_hits_start_and_end_locate_its_part_in_the_document(rift) -> None:
    text = f"{FILLER} The river floods the valley every spring. {FILLER}"
    rift.add_documents("kb", [DocumentInput(text=text, id="d")])
    whole = rift.search("kb", "river floods valley", k=1).outcome.hits[0]
    short = rift.search("kb", "river floods valley", k=1, max_chars=60).outcome.hits[0]
    assert not whole.truncated and short.truncated and len(short.text) <= 60
    assert "river floods the valley" in short.text
    stored = rift.engine().get_document("kb", "d")[0]
    assert stored[short.start : short.end] == short.text and whole.start <= short.start < short.end <= whole.end
    roomy = rift.search("kb", "river floods valley", k=1, max_chars=100_000).outcome.hits[0]
    assert roomy.text == whole.text and not roomy.truncated
    for bad in (0, 19, True, 2.5, "60"):
        with pytest.raises(RiftError, match="max_chars must be an integer of at least 20"):
            rift.search("kb", "river", max_chars=bad)


@pytest.mark.anyio
async def test_hybrid_search_takes_max_chars(cfg) -> None:
    long = f"{FILLER} The river floods the valley every spring. {FILLER}"
    async with Client(create_server(cfg), raise_exceptions=False) as client:
        added = await client.call_tool("add_documents", {"documents": [{"id": "d", "text": long}]})
        assert not added.is_error
        result = await client.call_tool("hybrid_search", {"query": "river floods", "max_chars": 80})
        hits = json.loads(result.content[0].text)["hits"]  # type: ignore[union-attr]
        assert hits and all(len(h["text"]) <= 80 and h["truncated"] for h in hits)
        assert "river floods" in hits[0]["text"]
        whole = json.loads((await client.call_tool("hybrid_search", {"query": "river floods"})).content[0].text)  # type: ignore[union-attr]
        assert not whole["hits"][0]["truncated"] and len(whole["hits"][0]["text"]) > 80
        bad = await client.call_tool("hybrid_search", {"query": "river", "max_chars": 5})
        assert bad.is_error and "max_chars" in bad.content[0].text  # type: ignore[union-attr]


@pytest.mark.anyio
async def test_the_server_default_applies_when_a_search_gives_no_max_chars(tmp_path: Path, tiny_model_path: Path) -> None:
    """search_max_chars: one setting makes every search's hits short, unless a call asks otherwise."""
    from pydantic import ValidationError

    cfg = make_settings(tmp_path / "data", tiny_model_path, chunk_tokens=200, search_max_chars=60)
    long = f"{FILLER} The river floods the valley every spring. {FILLER}"
    async with Client(create_server(cfg), raise_exceptions=False) as client:
        assert not (await client.call_tool("add_documents", {"documents": [{"id": "d", "text": long}]})).is_error

        async def hit(**args) -> dict:
            result = await client.call_tool("hybrid_search", {"query": "river floods", **args})
            return json.loads(result.content[0].text)["hits"][0]  # type: ignore[union-attr]

        short = await hit()
        assert short["truncated"] and len(short["text"]) <= 60 and "river floods" in short["text"]
        assert not (await hit(max_chars=1_000_000))["truncated"]
        assert len((await hit(max_chars=30))["text"]) <= 30
    with pytest.raises(ValidationError, match="must be 0 \\(whole chunks\\) or at least 20"):
        make_settings(tmp_path / "data", tiny_model_path, search_max_chars=5)
