"""The part of a hit's text worth showing when the whole chunk is too long: the window of at most `max_chars`
characters, cut at word boundaries, that holds the most of the query's keyword terms. An agent pays for every
character of a search result in its context; a short window that shows why the hit matched costs a fraction
of the chunk, and `get_document` reads around it when the agent wants more."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Collection
from dataclasses import replace
from typing import Any

from server.engine.keyword_index import _WORD, _grams


def terms_in(word: str, stem: Callable[[str], str]) -> tuple[str, ...]:
    """The keyword terms one word of a text stands for: its stem, or a spaceless run's characters and bigrams
    (as the keyword index splits them)."""
    lowered = word.lower()
    grams = _grams(lowered)
    return (stem(word),) if tuple(grams) == (lowered,) else tuple(grams)


def best_window(
    text: str, query_terms: Collection[str], stem: Callable[[str], str], max_chars: int
) -> tuple[int, int]:
    """(start, end) in `text`, at most `max_chars` characters: the whole text when it fits; else the run of
    words holding the most distinct query terms (then the most occurrences; the earliest on a tie), widened
    by whole words on both sides to use the rest of the budget; the first words when no term occurs. It cuts
    inside a word only when that one word is longer than `max_chars`."""
    if len(text) <= max_chars:
        return 0, len(text)
    spans = [(m.start(), m.end()) for m in _WORD.finditer(text)]
    if not spans:
        return 0, max_chars
    wanted = set(query_terms)
    found = [[t for t in terms_in(text[a:b], stem) if t in wanted] if wanted else [] for a, b in spans]
    n = len(spans)
    best, best_score = (0, 1), (-1, -1)
    inside: Counter[str] = Counter()  # the terms of words i .. j-1
    occurrences = 0
    j = 0
    for i in range(n):
        j = max(j, i)
        while j < n and spans[j][1] - spans[i][0] <= max_chars:
            inside.update(found[j])
            occurrences += len(found[j])
            j += 1
        if j == i:  # word i alone is longer than the budget
            score, window = (len(set(found[i])), len(found[i])), (i, i + 1)
        else:
            score, window = (len(inside), occurrences), (i, j)
            inside.subtract(found[i])  # word i leaves before the next start
            inside += Counter()  # (drops the terms now at zero)
            occurrences -= len(found[i])
        if score > best_score:
            best, best_score = window, score
    first, stop = best
    if best_score[0] > 0:  # from its first matched word to its last: the widening below centres them
        matched = [w for w in range(first, stop) if found[w]]
        first, stop = matched[0], matched[-1] + 1
    start, end = spans[first][0], min(spans[stop - 1][1], spans[first][0] + max_chars)
    # The rest of the budget: half of it before the matched words (whole words), then all that fits after,
    # then before again (when the text ends first).
    before = (max_chars - (end - start)) // 2
    while first > 0 and start - spans[first - 1][0] <= before:
        first -= 1
    start = spans[first][0]
    while stop < n and spans[stop][1] - start <= max_chars:
        stop += 1
    end = max(end, spans[stop - 1][1]) if spans[stop - 1][1] - start <= max_chars else end
    while first > 0 and end - spans[first - 1][0] <= max_chars:
        first -= 1
    return spans[first][0], end


def clip_hits(hits: list[Any], query_terms: Collection[str], stem: Callable[[str], str], max_chars: int) -> list[Any]:
    """Search hits whose text is at most `max_chars` long (see `best_window`), their start and end moved to
    where that part lies in the document (when known), `truncated` set where the text was cut."""
    out = []
    for hit in hits:
        a, b = best_window(hit.text, query_terms, stem, max_chars)
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
