"""Masking the query's words out of its training documents (server/learning/augment.py)."""

import re

from server.learning.augment import TermMasker, drop_shared_query_words, mask_shared_terms

ROW = (
    "Does vitamin D reduce fractures in older adults?",
    "Vitamin D supplementation and fracture risk in elderly adults: a trial of vitamins.",
    "Calcium intake reduces bone loss in women.",
)


def test_query_words_leave_both_documents_by_stem() -> None:
    [(query, pos, neg)] = mask_shared_terms([ROW])
    assert query == ROW[0]
    # vitamin/vitamins, D, fracture(s), adults share stems with the query; the rest of the positive stays
    assert pos == "supplementation and risk in elderly : a trial of ."
    # reduces shares a stem with reduce; "in" is a stopword, never a query term, so it stays
    assert neg == "Calcium intake bone loss in women."


def test_rate_zero_is_a_no_op_and_partial_rates_are_seeded() -> None:
    assert mask_shared_terms([ROW], rate=0.0) == [ROW]
    a = mask_shared_terms([ROW] * 20, rate=0.5, seed=3)
    assert a == mask_shared_terms([ROW] * 20, rate=0.5, seed=3)
    positives = {pos for _q, pos, _n in a}
    assert len(positives) > 1  # different stems masked on different rows


def test_a_document_left_without_words_keeps_its_text() -> None:
    row = ("vitamin fractures", "Vitamins, fractures.", "Bone loss.")
    assert mask_shared_terms([row]) == [row]


def test_without_a_stemmer_only_exact_words_match() -> None:
    masker = TermMasker(stemmer_language=None, stopwords=None)
    [(_, pos, _)] = mask_shared_terms([ROW], masker=masker)
    assert "vitamins" in pos and "Vitamin" not in pos and "adults" not in pos


def test_an_identifier_goes_when_its_parts_match_the_query() -> None:
    """The keyword index matches "keyword index" against `KeywordIndex` by its parts: masking must take it
    too, or the masked positive still shares terms with its query (found by helper BQ)."""
    [(_q, pos, neg)] = mask_shared_terms(
        [("keyword index", "class KeywordIndex: one collection's side", "def top_rows(vectors): the best")]
    )
    assert "KeywordIndex" not in pos and "collection" in pos and "top_rows" in neg


def test_dropping_shared_query_words_adds_a_harder_copy_of_each_row() -> None:
    """Each row stays, and its copy's query lacks some of the words it shares with the positive (by stem;
    stopwords are never query terms), never all of its words; the documents are untouched; seeded."""
    rows = drop_shared_query_words([ROW] * 10, rate=0.5, seed=1)
    assert rows[0] == ROW and rows == drop_shared_query_words([ROW] * 10, rate=0.5, seed=1)
    copies = [r for r in rows if r != ROW]
    assert copies and len(rows) == 10 + len(copies)
    query_words = set(re.findall(r"\w+", ROW[0]))
    for query, pos, neg in copies:
        assert (pos, neg) == ROW[1:] and set(re.findall(r"\w+", query)) < query_words
        assert query_words - set(re.findall(r"\w+", query)) <= {"vitamin", "D", "fractures", "adults"}
    assert len({q for q, _p, _n in copies}) > 1  # different words dropped on different rows
    assert drop_shared_query_words([ROW], rate=0.0) == [ROW]
    unshared = ("tide pools", ROW[1], ROW[2])  # nothing shared with the positive: no copy
    assert drop_shared_query_words([unshared], rate=1.0) == [unshared]
