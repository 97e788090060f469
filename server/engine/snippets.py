"""The part of a hit's text worth showing when the whole chunk is too long: the window of at most `max_chars`
characters, cut at word boundaries, that holds the most of the query's keyword terms. An agent pays for every
character of a search result in its context; a short window that shows why the hit matched costs a fraction
of the chunk, and `get_document` reads around it when the agent wants more."""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterator
from dataclasses import replace
from typing import Any

import regex

from server.engine.keyword_index import _CJK_CHAR, _SPACELESS_RUN, _grams, _words

# A word as it stands in the text: `_WORD`'s, with the invisible characters the keyword tokenizer drops inside
# it (a soft hyphen in "inter\u00adnational" does not end the word there), and an apostrophe between letters
# ("hit's", "don't", "l'eau"): the tokenizer makes two words of those, but a window must not start at the "s".
_RAW_PART = r"[\p{L}\p{N}_][\p{L}\p{M}\p{N}_\u00ad\u200c\u200d\u2060\ufeff]*"
_RAW_WORD = regex.compile(rf"{_RAW_PART}(?:['\u2019]{_RAW_PART})*")
_GRAPHEME = regex.compile(r"\X")


class _Terms:
    """The keyword terms of the text's words, as the keyword index makes them (NFKC, lower-case, stemmed),
    cached per word for one search's hits."""

    def __init__(self, stem: Callable[[str], str]) -> None:
        self._stem = stem
        self._seen: dict[str, tuple[str, ...]] = {}

    def of_word(self, word: str) -> tuple[str, ...]:
        found = self._seen.get(word)
        if found is None:
            found = self._seen[word] = tuple(g for w in _words(word) for g in _grams(self._stem(w)))
        return found


def _spans(text: str, terms: _Terms) -> Iterator[tuple[int, int, tuple[str, ...]]]:
    """(start, end, keyword terms) of the text's words, in order. A run of a script written without spaces is
    split as the index splits it: a CJK run into its characters (each with the bigram it starts), a Thai, Lao,
    Khmer or Myanmar run into its graphemes (each with the bigrams starting in it), so a window can start
    and end inside a long run, at the query's words."""
    for match in _RAW_WORD.finditer(text):
        word, base, at = match.group(), match.start(), 0
        for run in _SPACELESS_RUN.finditer(word):
            if run.start() > at:
                yield base + at, base + run.start(), terms.of_word(word[at : run.start()])
            yield from _run_spans(run.group(), base + run.start())
            at = run.end()
        if at < len(word):
            yield base + at, base + len(word), terms.of_word(word[at:])


def _run_spans(run: str, base: int) -> Iterator[tuple[int, int, tuple[str, ...]]]:
    if _CJK_CHAR.match(run):
        for i, char in enumerate(run):
            yield base + i, base + i + 1, (char, run[i : i + 2]) if i + 1 < len(run) else (char,)
        return
    if len(run) <= 2:
        yield base, base + len(run), (run,)
        return
    for g in _GRAPHEME.finditer(run):
        yield base + g.start(), base + g.end(), tuple(run[k : k + 2] for k in range(g.start(), min(g.end(), len(run) - 1)))


def _cut(text: str, start: int, max_chars: int) -> int:
    """The end of the longest run of whole graphemes from `start` within `max_chars` (at least one code
    point): a word longer than the budget is cut where no letter loses its marks."""
    end = start
    for g in _GRAPHEME.finditer(text, start, min(len(text), start + max_chars + 16)):
        if g.end() - start > max_chars:
            break
        end = g.end()
    return end if end > start else start + max_chars


def best_window(
    text: str, query_terms: Collection[str], stem: Callable[[str], str], max_chars: int, terms: _Terms | None = None
) -> tuple[int, int]:
    """(start, end) in `text`, at most `max_chars` characters: the whole text when it fits; else the run of
    words holding the most distinct query terms (then the most occurrences; the earliest on a tie), widened
    by whole words on both sides to use the rest of the budget; the first words when no term occurs. It cuts
    inside a word only when that one word is longer than `max_chars` (between graphemes)."""
    if len(text) <= max_chars:
        return 0, len(text)
    wanted = set(query_terms)
    spans = list(_spans(text, terms or _Terms(stem)))
    if not spans:
        return 0, _cut(text, 0, max_chars)
    found = [[t for t in span[2] if t in wanted] for span in spans]
    n = len(spans)
    best, best_score = (0, 1), (-1, -1)
    inside: dict[str, int] = {}  # the terms of words i .. j-1, with their counts
    occurrences = 0
    j = 0
    for i in range(n):
        j = max(j, i)
        while j < n and spans[j][1] - spans[i][0] <= max_chars:
            for term in found[j]:
                inside[term] = inside.get(term, 0) + 1
            occurrences += len(found[j])
            j += 1
        if j == i:  # word i alone is longer than the budget
            score, window = (len(set(found[i])), len(found[i])), (i, i + 1)
        else:
            score, window = (len(inside), occurrences), (i, j)
            for term in found[i]:  # word i leaves before the next start
                inside[term] -= 1
                if not inside[term]:
                    del inside[term]
            occurrences -= len(found[i])
        if score > best_score:
            best, best_score = window, score
    first, stop = best
    if best_score[0] > 0:  # from its first matched word to its last: the widening below centres them
        matched = [w for w in range(first, stop) if found[w]]
        first, stop = matched[0], matched[-1] + 1
    start = spans[first][0]
    end = spans[stop - 1][1] if spans[stop - 1][1] - start <= max_chars else _cut(text, start, max_chars)
    # The rest of the budget: half of it before the matched words (whole words), then all that fits after,
    # then before again (when the text ends first).
    before = (max_chars - (end - start)) // 2
    while first > 0 and start - spans[first - 1][0] <= before:
        first -= 1
    start = spans[first][0]
    while stop < n and spans[stop][1] - start <= max_chars:
        end = spans[stop][1]
        stop += 1
    while first > 0 and end - spans[first - 1][0] <= max_chars:
        first -= 1
    return spans[first][0], end


def clip_hits(hits: list[Any], query_terms: Collection[str], stem: Callable[[str], str], max_chars: int) -> list[Any]:
    """Search hits whose text is at most `max_chars` long (see `best_window`), their start and end moved to
    where that part lies in the document (when known), `truncated` set where the text was cut."""
    terms = _Terms(stem)
    out = []
    for hit in hits:
        a, b = best_window(hit.text, query_terms, stem, max_chars, terms)
        if (a, b) == (0, len(hit.text)):
            out.append(hit)
            continue
        moved = hit.start is not None
        out.append(
            replace(
                hit,
                text=hit.text[a:b],
                start=hit.start + a if moved else None,
                end=hit.start + b if moved else None,
                truncated=True,
            )
        )
    return out
