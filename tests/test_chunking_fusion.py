"""Token-aware chunking (with the tiny model's real tokenizer) and reciprocal rank fusion."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from server.engine.chunking import chunk_text
from server.engine.fusion import rrf
from tests.support.tiny_model import WORDS


@pytest.fixture(scope="module")
def tokenizer(tiny_model_path: Path) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(tiny_model_path))


def n_tokens(tokenizer: Any, text: str) -> int:
    return len(tokenizer(text, add_special_tokens=False)["input_ids"])


def check_chunks(text: str, chunks: list[Any], tokenizer: Any, max_tokens: int, overlap: int) -> None:
    for ch in chunks:
        assert ch.text == text[ch.start : ch.end] and ch.text.strip() == ch.text and ch.text
        assert n_tokens(tokenizer, ch.text) <= max_tokens
    for prev, nxt in zip(chunks, chunks[1:], strict=False):
        assert prev.start < nxt.start and prev.end < nxt.end  # always moves forward
        if overlap == 0:
            assert nxt.start >= prev.end
    # Every word of the text lands in some chunk.
    covered = [False] * len(text)
    for ch in chunks:
        covered[ch.start : ch.end] = [True] * (ch.end - ch.start)
    assert all(covered[i] for i, c in enumerate(text) if not c.isspace())


def test_short_text_is_one_stripped_chunk(tokenizer: Any) -> None:
    text = "  the cat sat on the mat \n"
    (chunk,) = chunk_text(text, tokenizer, 48, 8)
    assert chunk.text == "the cat sat on the mat" and text[chunk.start : chunk.end] == chunk.text
    assert chunk_text("   \n\t ", tokenizer, 48, 8) == []
    with pytest.raises(ValueError):
        chunk_text("x", tokenizer, 0, 0)


def test_long_text_respects_the_token_limit_with_overlap(tokenizer: Any) -> None:
    text = " ".join(f"Sentence {i} is about the river near the city." for i in range(40))
    chunks = chunk_text(text, tokenizer, 48, 8)
    assert len(chunks) > 5
    check_chunks(text, chunks, tokenizer, 48, 8)
    # Overlap: each next chunk starts inside the previous one, by at most `overlap` tokens.
    for prev, nxt in zip(chunks, chunks[1:], strict=False):
        assert nxt.start < prev.end
        assert 1 <= n_tokens(tokenizer, text[nxt.start : prev.end]) <= 8
    # Cuts prefer sentence ends when one is near the window's end.
    assert sum(c.text.endswith(".") for c in chunks[:-1]) >= len(chunks) // 2


def test_unknown_words_and_punctuation_are_counted_as_the_model_sees_them(tokenizer: Any) -> None:
    text = "xylophone-zebra!? " * 30  # out-of-vocabulary words split into many word pieces
    chunks = chunk_text(text, tokenizer, 16, 0)
    check_chunks(text, chunks, tokenizer, 16, 0)
    assert len(chunks) >= n_tokens(tokenizer, text) / 16


word = st.sampled_from([*WORDS[:60], "quántum", "zebra", "x", ".", ",", "!", "\n", "42"])


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    words=st.lists(word, min_size=0, max_size=200),
    max_tokens=st.integers(8, 40),
    overlap=st.integers(0, 10),
    lines=st.booleans(),
)
def test_chunking_properties(tokenizer: Any, words: list[str], max_tokens: int, overlap: int, lines: bool) -> None:
    text = " ".join(words)
    chunks = chunk_text(text, tokenizer, max_tokens, overlap, lines)
    if not text.strip():
        assert chunks == []
        return
    check_chunks(text, chunks, tokenizer, max_tokens, min(overlap, max_tokens // 2))


def starts_mid_line(text: str, at: int) -> bool:
    return bool(text[:at].rsplit("\n", 1)[-1].strip())


def ends_mid_line(text: str, at: int) -> bool:
    # (a byte-level tokenizer's window may end with the line break itself: a line end too)
    return text[at - 1 : at] != "\n" and bool(text[at:].split("\n", 1)[0].strip())


def test_code_windows_start_and_end_on_line_boundaries(tokenizer: Any) -> None:
    """A window of code (lines=True) starts at the first line start inside the overlap and ends at a line end:
    windows started wherever the overlap began, so a chunk of code could begin mid-identifier. Prose windows
    keep starting there (README "Chunks are windows")."""
    rng = random.Random(3)
    body = ["    " + " ".join(rng.choice(WORDS[:60]) for _ in range(rng.randint(2, 6))) for _ in range(150)]
    text = "def f():\n" + "\n".join(body) + "\n"
    chunks = chunk_text(text, tokenizer, 48, 8, lines=True)
    assert len(chunks) > 5
    check_chunks(text, chunks, tokenizer, 48, 8)
    for prev, nxt in zip(chunks, chunks[1:], strict=False):
        assert not starts_mid_line(text, nxt.start) and not ends_mid_line(text, prev.end)
        assert nxt.start < prev.end and n_tokens(tokenizer, text[nxt.start : prev.end]) <= 8  # still overlapping
    prose = chunk_text(text, tokenizer, 48, 8)
    assert any(starts_mid_line(text, c.start) for c in prose)  # (the same text as prose: cut as before)
    # One line longer than the overlap: no line start inside it, so the window starts where the overlap does.
    long_line = "x = " + " ".join(WORDS[:60]) + "\ny = 1\n"
    check_chunks(long_line, chunk_text(long_line, tokenizer, 24, 4, lines=True), tokenizer, 24, 4)


def test_code_windows_follow_lines_with_a_byte_level_tokenizer_too() -> None:
    """RoBERTa's and GPT's byte-level BPE makes a line break a token of its own, so no break lies between two
    tokens' offsets and lines=True found no line start at all (found by helper BO): most windows began
    mid-line."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    code = "\n".join(f"def f{i}(a, b):\n    return a + b * {i}  # comment number {i}\n" for i in range(40))
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    bpe.post_processor = processors.ByteLevel(trim_offsets=True)
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    bpe.train_from_iterator([code] * 5, trainers.BpeTrainer(vocab_size=400, initial_alphabet=alphabet))
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=bpe)
    chunks = chunk_text(code, tokenizer, 64, 32, lines=True)  # (an overlap that holds a line start)
    assert len(chunks) > 5 and all(code[c.start : c.end] == c.text for c in chunks)
    for prev, nxt in zip(chunks, chunks[1:], strict=False):
        assert not starts_mid_line(code, nxt.start) and not ends_mid_line(code, prev.end), (prev.text, nxt.text)


def test_engine_caps_chunks_at_the_model_sequence_length(rift) -> None:
    embedder = rift.engine().embedder
    assert embedder.max_seq_length == 64
    assert embedder.max_chunk_tokens(8192) == 62  # room for [CLS] and [SEP]
    assert embedder.max_chunk_tokens(48) == 48


# --- fusion ------------------------------------------------------------------------------------------------


def test_rrf_scores_and_order() -> None:
    fused = rrf([["a", "b", "c"], ["c", "a", "d"]], k=60)
    scores = dict(fused)
    assert scores["a"] == pytest.approx(1 / 61 + 1 / 62)
    assert scores["c"] == pytest.approx(1 / 63 + 1 / 61)
    assert scores["b"] == pytest.approx(1 / 62) and scores["d"] == pytest.approx(1 / 63)
    assert [key for key, _ in fused] == ["a", "c", "b", "d"]


def test_rrf_weights_k_and_ties() -> None:
    assert [key for key, _ in rrf([["a"], ["b"]])] == ["a", "b"]  # tie: first seen wins
    assert [key for key, _ in rrf([["a"], ["b"]], weights=[1.0, 2.0])] == ["b", "a"]
    assert rrf([["a"], ["b"]], weights=[1.0, 0.0]) == [("a", pytest.approx(1 / 61))]
    assert dict(rrf([["a"]], k=1))["a"] == pytest.approx(0.5)
    assert rrf([[], []]) == []
    lists = [["a", "b", "c", "d"], ["d", "c", "e", "a"]]
    for limit in range(6):  # the best `limit`, in the same order (ties included) as the full fusion
        assert rrf(lists, limit=limit) == rrf(lists)[:limit]
    assert [key for key, _ in rrf([["a", "b"], ["b", "a"]], limit=1)] == ["a"]  # a tie keeps first seen
    with pytest.raises(ValueError):
        rrf([["a"]], weights=[1.0, 1.0])
