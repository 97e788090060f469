"""Mine (query, positive, hard negative) triples from the disagreement log.

Every strategy reads only what rift itself logged (the two ranked candidate lists and the fused list it
returned) plus the agent's explicit feedback, never an evaluation label. Measured on SciFact/NFCorpus (see
README "Learning from use"): the fused top-1 is the cleanest label-free positive; a keyword blind spot is
almost never relevant and teaches noise, so that strategy exists only to show it.

Strategies (setting `learn_strategy`):
  fused          positive = fused top-1 when both retrievers returned it near the top; negatives from
                 `negative_source` (setting `learn_negative_source`): the product default "fused" takes the
                 documents fusion ranked right after the positive; "vector" takes vector blind spots (vector
                 top, keyword never near the top)
  agreement      positive = the best document both sides put in their top-5; negatives = vector blind spots the
                 vector side ranked above it
  keyword_blind  positive = a keyword blind spot; negatives = vector blind spots (measured harmful)
  fused+pseudo   fused, plus corpus pseudo-queries (a document's title or first sentence -> the document)
  fused+ict      fused, plus inverse-cloze pairs (Lee et al. 2019): a sentence of a document -> the rest of
                 that document, the sentence cut out, so the pair cannot be matched on shared words alone

Feedback is applied on top of every strategy: a document the agent marked relevant becomes the positive of
that query (high confidence), one marked not relevant becomes a negative, and a mined positive the agent
rejected is dropped. A document the agent opened after the search (get_document with its query_id) is the
next-best positive.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from itertools import zip_longest
from typing import Any, cast, get_args

from server.config import LearnStrategy, NegativeSource, Settings
from server.engine.fusion import rrf
from server.engine.keyword_index import SENTENCE_BREAK, length_in_words
from server.learning.query_log import LoggedQuery, QueryHead, normalized_query

STRATEGIES: tuple[str, ...] = get_args(LearnStrategy)
CORPUS_SUPPLEMENTS: tuple[str, ...] = ("pseudo", "ict")
# "checked" needs the second opinion, an experiment of `rift bench --learn` (not a setting: measured no better).
NEGATIVE_SOURCES: tuple[str, ...] = (*get_args(NegativeSource), "checked")


@dataclass(frozen=True)
class MiningConfig:
    strategy: str = "fused"
    # Positive confidence: the fused top-1 must be within this rank on BOTH sides (agreement of two
    # independent retrievers is what makes an unlabelled positive believable).
    positive_max_rank: int = 10
    # ... and, when above 0, BM25 must prefer it clearly: its keyword score at least this many times the next
    # document's (also applied to a keyword blind-spot positive). A confidence the log already holds: with
    # 1.3, fused positives were truly relevant 87 % / 71 % of the time on SciFact / NFCorpus usage queries,
    # against 59 % / 47 % without, but a third as many were kept (README "Learning from use").
    positive_min_keyword_margin: float = 0.0
    # An experiment, not a setting: where the BM25 margin refuses a query, take the vector side's first document
    # instead when its cosine beats the next document's by at least this much (0 = off). Positives the dense
    # side is sure of, not only those BM25 is sure of (server/bench/LEARNING.md, more variants).
    positive_min_vector_margin: float = 0.0
    # False-negative guard: a negative must be absent from the keyword side's top `negative_min_keyword_rank`
    # (docs both sides like are too often relevant, e.g. NFCorpus has ~35 relevant docs per query) ...
    negative_min_keyword_rank: int = 30
    # ... and within the vector side's top `negative_max_vector_rank` (so it is hard, not random).
    negative_max_vector_rank: int = 5
    negatives_per_query: int = 1
    # Which side's blind spots become negatives: "vector" (above), "keyword" (keyword top
    # `negative_max_vector_rank`, absent from the vector top `negative_min_keyword_rank`: documents that only
    # share words with the query, so training makes the dense side less like BM25), "both", alternating, or
    # "fused": the documents fusion ranked right after the positive (the hybrid's own runners-up, unguarded).
    # The product passes its setting `learn_negative_source` ("fused" since it measured best for the hybrid);
    # this bare default keeps the miner's earlier behaviour for the mining-analysis variants that name none.
    negative_source: str = "vector"
    agreement_depth: int = 5
    # An experiment, not a setting (measured no better; server/bench/LEARNING.md): a second opinion of the
    # model, each candidate scored by its best sentence (server/learning/second_opinion.py), over the first
    # `second_opinion_depth` documents of both sides (0 = off). A mined positive must be that view's first as
    # well, and negative source "checked" takes the vector side's best documents that the view ranks below its
    # first `negative_min_opinion_rank` (the dense side's own wrong answers, which the other view doubts).
    second_opinion_depth: int = 0
    negative_min_opinion_rank: int = 5
    # An experiment, not a setting: a search's first opened document (get_document with its query_id) takes as
    # negatives first the hits shown above it that the agent did not open, which it read past (a "skip above"
    # click model, Joachims et al. 2005), then the mined ones.
    passed_over_negatives: bool = False
    # How the search fused its lists (the product passes its settings): the logged fused list holds only the k
    # hits returned, and "fused" negatives continue past them by re-fusing the logged candidate lists.
    fusion_k: float = 20.0
    fusion_weights: tuple[float, float] = (1.0, 1.0)
    pseudo_per_document: int = 1
    max_pseudo: int = 2000
    seed: int = 0

    @classmethod
    def from_settings(cls, settings: Settings, **overrides: Any) -> MiningConfig:
        """How a retrain mines under `settings` (the learn_* and fusion settings), with `overrides`."""
        return cls(
            **{
                "strategy": settings.learn_strategy,
                "negatives_per_query": settings.learn_negatives_per_query,
                "positive_min_keyword_margin": settings.learn_positive_min_keyword_margin,
                "negative_source": settings.learn_negative_source,
                "fusion_k": settings.rrf_k,
                "fusion_weights": (settings.vector_weight, settings.keyword_weight),
                **overrides,
            }
        )


@dataclass(frozen=True)
class Triple:
    query: str
    collection: str
    positive_doc: str
    positive_chunk: str
    negative_doc: str
    negative_chunk: str
    kind: str  # which rule produced it: fused, vector_sure, agreement, keyword_blind, feedback, fetched, pseudo, ict
    query_id: str | None = None
    confidence: float = 0.5
    # The positive's training text when it is not a stored chunk (an inverse-cloze passage).
    positive_text: str | None = None


@dataclass
class MiningReport:
    strategy: str
    queries_seen: int = 0
    triples: list[Triple] = field(default_factory=list)
    skipped: Counter = field(default_factory=Counter)

    def counts_by_type(self) -> dict[str, int]:
        return dict(Counter(t.kind for t in self.triples))

    def summary(self, examples: int = 5) -> dict[str, Any]:
        return {
            "strategy": self.strategy,
            "queries_seen": self.queries_seen,
            "triples": len(self.triples),
            "by_type": self.counts_by_type(),
            "skipped": dict(self.skipped),
            "examples": [asdict(t) for t in self.triples[:examples]],
        }


def _ranks(items: Sequence[tuple[str, str, float]]) -> dict[str, tuple[int, str]]:
    """doc id -> (1-based rank, best chunk id), in rank order; the lists are already grouped by document when
    logged."""
    out: dict[str, tuple[int, str]] = {}
    for i, (doc, chunk, _score) in enumerate(items, 1):
        out.setdefault(doc, (i, chunk))
    return out


def _chunk_of(doc: str, v: Mapping[str, tuple[int, str]], k: Mapping[str, tuple[int, str]]) -> str:
    if doc in v:
        return v[doc][1]
    if doc in k:
        return k[doc][1]
    return ""


def logged_passages(q: LoggedQuery, doc_ids: Iterable[str]) -> dict[str, str]:
    """doc id -> the chunk a triple on it would train on (its best chunk on the vector side, else on the
    keyword side; "" when neither side ranked it)."""
    v, k = _ranks(q.vector), _ranks(q.keyword)
    return {d: _chunk_of(d, v, k) for d in doc_ids}


def _negatives(
    q: LoggedQuery,
    positive: str,
    cfg: MiningConfig,
    v: Mapping[str, tuple[int, str]],
    k: Mapping[str, tuple[int, str]],
    above: int | None = None,
    opinion_ranks: Mapping[str, int] | None = None,
) -> list[str]:
    """Negatives from `cfg.negative_source`, best rank first. "vector", "keyword" and "both" (alternating) take
    blind spots that pass the false-negative guard (the other side does not rank them near the top); "fused"
    (the hybrid's runners-up) and "checked" are unguarded by the keyword side: "checked" takes the vector side's
    best documents that `opinion_ranks` (doc id -> 1-based rank by the second opinion) places below
    `cfg.negative_min_opinion_rank`."""

    def blind_spots(side: Mapping[str, tuple[int, str]], other: Mapping[str, tuple[int, str]]) -> list[str]:
        out = []
        for doc, (rank, _chunk) in side.items():  # (`_ranks` keeps rank order)
            if rank > cfg.negative_max_vector_rank or (above is not None and rank >= above):
                break
            if doc == positive or (doc in other and other[doc][0] <= cfg.negative_min_keyword_rank):
                continue
            out.append(doc)
        return out

    if cfg.negative_source == "fused":
        order = _fused_order(q, cfg)
        after = order[order.index(positive) + 1 :] if positive in order else []
        picked = after[: cfg.negative_max_vector_rank]
    elif cfg.negative_source == "checked":
        ranks = opinion_ranks or {}
        in_order = list(v)[: cfg.second_opinion_depth]  # (`_ranks` keeps rank order)
        picked = [
            d for d in in_order if d != positive and d in ranks and ranks[d] > cfg.negative_min_opinion_rank
        ]
    elif cfg.negative_source == "vector":
        picked = blind_spots(v, k)
    elif cfg.negative_source == "keyword":
        picked = blind_spots(k, v)
    else:
        pairs = zip_longest(blind_spots(v, k), blind_spots(k, v))
        picked = list(dict.fromkeys(d for pair in pairs for d in pair if d is not None))
    return picked[: cfg.negatives_per_query]


def _fused_order(q: LoggedQuery, cfg: MiningConfig) -> list[str]:
    """The hits the search returned, then the rest of its candidates in the order fusion would have ranked
    them: a search with k=1, or an opened last hit, still has runners-up."""
    tail = rrf(
        [[d for d, _c, _s in q.vector], [d for d, _c, _s in q.keyword]],
        k=cfg.fusion_k,
        weights=cfg.fusion_weights,
    )
    return list(dict.fromkeys([*q.fused, *(d for d, _score in tail)]))


def _keyword_margin(q: LoggedQuery, doc: str) -> float:
    """`doc`'s BM25 score over the best other document's (inf when no other document scored); below 1 when
    BM25 ranks another document first."""
    mine_ = max((s for d, _c, s in q.keyword if d == doc), default=0.0)
    other = max((s for d, _c, s in q.keyword if d != doc), default=0.0)
    return mine_ / other if other > 0 else float("inf") if mine_ > 0 else 0.0


def _vector_sure(q: LoggedQuery, margin: float) -> str | None:
    """The vector side's first document when its score beats the next document's by `margin` (off at 0)."""
    if margin <= 0 or not q.vector:
        return None
    first_doc, _chunk, first = q.vector[0]
    runner_up = next((score for doc, _c, score in q.vector[1:] if doc != first_doc), None)
    return first_doc if runner_up is None or first - runner_up >= margin else None


def _positive(
    q: LoggedQuery, cfg: MiningConfig, v: Mapping[str, tuple[int, str]], k: Mapping[str, tuple[int, str]]
) -> tuple[str | None, str, str]:
    """(positive doc, kind, reason-if-none)."""
    if cfg.strategy in ("fused", "fused+pseudo", "fused+ict"):
        if not q.fused:
            return None, "fused", "no_results"
        top = q.fused[0]
        if top not in v or top not in k:
            return None, "fused", "positive_one_sided"
        if v[top][0] > cfg.positive_max_rank or k[top][0] > cfg.positive_max_rank:
            return None, "fused", "positive_low_confidence"
        if cfg.positive_min_keyword_margin > 0 and _keyword_margin(q, top) < cfg.positive_min_keyword_margin:
            sure = _vector_sure(q, cfg.positive_min_vector_margin)
            if sure is not None:
                return sure, "vector_sure", ""
            return None, "fused", "positive_small_keyword_margin"
        return top, "fused", ""
    if cfg.strategy == "agreement":
        both = [d for d in v if v[d][0] <= cfg.agreement_depth and d in k and k[d][0] <= cfg.agreement_depth]
        if not both:
            return None, "agreement", "no_agreement"
        return min(both, key=lambda d: v[d][0] + k[d][0]), "agreement", ""
    if cfg.strategy == "keyword_blind":
        if not q.keyword_blind:
            return None, "keyword_blind", "no_keyword_blind_spot"
        pos = q.keyword_blind[0]
        if cfg.positive_min_keyword_margin > 0 and _keyword_margin(q, pos) < cfg.positive_min_keyword_margin:
            return None, "keyword_blind", "positive_small_keyword_margin"
        return pos, "keyword_blind", ""
    raise ValueError(f"unknown strategy {cfg.strategy!r}; choose one of {', '.join(STRATEGIES)}")


def _opinion_ranks(
    q: LoggedQuery,
    cfg: MiningConfig,
    v: Mapping[str, tuple[int, str]],
    k: Mapping[str, tuple[int, str]],
    positive: str,
    opinion: Any,
) -> dict[str, int]:
    """doc id -> 1-based rank by the second opinion among both sides' first `second_opinion_depth` documents and
    the positive."""
    depth = cfg.second_opinion_depth  # (`_ranks` keeps rank order)
    scores = opinion.scores(q.collection, q.query, [positive, *list(v)[:depth], *list(k)[:depth]])
    return {d: i for i, d in enumerate(sorted(scores, key=lambda d: -scores[d]), 1)}


def mined_positive(q: LoggedQuery, config: MiningConfig | None = None) -> str | None:
    """The document `config`'s strategy takes as `q`'s positive, before feedback and negatives (None when its
    confidence rules refuse every candidate)."""
    cfg = config or MiningConfig()
    return _positive(q, cfg, _ranks(q.vector), _ranks(q.keyword))[0]


def mine(
    queries: Iterable[LoggedQuery | QueryHead],
    config: MiningConfig | None = None,
    feedback: Mapping[str, Mapping[str, bool]] | None = None,
    fetched: Mapping[str, Sequence[str]] | None = None,
    load: Callable[[Sequence[str]], Iterable[LoggedQuery]] | None = None,
    progress: Callable[[int, int], None] | None = None,
    opinion: Any = None,
) -> MiningReport:
    """Triples from logged queries. `feedback` maps query_id -> {doc_id: relevant}.

    `fetched` maps query_id -> documents the agent opened (get_document with that query_id) after the search:
    an implicit positive, preferred to the mined one but weaker than explicit feedback.

    `load`: `queries` are heads (`QueryLog.heads`), and load(query_ids) yields the full records of those it
    still holds, in that order: a long log is then mined a page at a time instead of held whole. `progress`
    (done, total) is called every hundred queries; it may raise to stop mining (a cancelled job).

    Repeated query texts count once (the latest record wins), so an agent asking the same thing twenty times
    does not weigh it twenty-fold; triples are deduplicated on (query, positive, negative).

    `opinion`: the second opinion (`second_opinion.SentenceOpinion`) that `cfg.second_opinion_depth` asks for."""
    cfg = config or MiningConfig()
    if cfg.second_opinion_depth > 0 and opinion is None:
        raise ValueError("second_opinion_depth needs a second opinion to ask")
    if cfg.negative_source == "checked" and cfg.second_opinion_depth <= cfg.negative_min_opinion_rank:
        # (Ranks reach only as far as the candidates: with fewer, no document could ever be a negative.)
        raise ValueError(
            f"negative source 'checked' needs second_opinion_depth above negative_min_opinion_rank "
            f"({cfg.negative_min_opinion_rank})"
        )
    if cfg.strategy not in STRATEGIES:
        raise ValueError(f"unknown strategy {cfg.strategy!r}; choose one of {', '.join(STRATEGIES)}")
    if cfg.negative_source not in NEGATIVE_SOURCES:
        raise ValueError(
            f"unknown negative source {cfg.negative_source!r}; choose one of {', '.join(NEGATIVE_SOURCES)}"
        )
    feedback = feedback or {}
    fetched = fetched or {}
    report = MiningReport(cfg.strategy)
    latest: dict[tuple[str, str], LoggedQuery | QueryHead] = {}
    for q in queries:
        report.queries_seen += 1
        key = (q.collection, normalized_query(q.query))
        previous = latest.get(key)
        if previous is not None:
            report.skipped["duplicate_query"] += 1
            # Keep feedback from any repeat: merge by preferring the record that has feedback.
            if q.query_id not in feedback and previous.query_id in feedback:
                continue
        latest[key] = q

    seen: set[tuple[str, str, str, str]] = set()
    chosen = list(latest.values())
    records = load([h.query_id for h in chosen]) if load is not None else cast(list[LoggedQuery], chosen)
    done = 0
    for q in records:
        if progress is not None and done % 100 == 0:
            progress(done, len(chosen))
        done += 1
        v, k = _ranks(q.vector), _ranks(q.keyword)
        labels = dict(feedback.get(q.query_id, {}))
        liked = [d for d, rel in labels.items() if rel]
        disliked = {d for d, rel in labels.items() if not rel}
        triples: list[Triple] = []

        def triple(pos: str, neg: str, kind: str, conf: float, q=q, v=v, k=k) -> Triple:
            return Triple(
                q.query,
                q.collection,
                pos,
                _chunk_of(pos, v, k),
                neg,
                _chunk_of(neg, v, k),
                kind,
                q.query_id,
                conf,
            )

        def ranks_for(pos: str, q=q, v=v, k=k) -> dict[str, int] | None:
            if cfg.second_opinion_depth <= 0:
                return None
            return _opinion_ranks(q, cfg, v, k, pos, opinion)

        if liked:
            negs = [d for d in disliked if d not in liked]
            for pos in liked:
                ranks = ranks_for(pos) if not negs and cfg.negative_source == "checked" else None
                against = [n for n in negs or _negatives(q, pos, cfg, v, k, opinion_ranks=ranks) if n not in liked]
                if not against:
                    report.skipped["feedback_without_negative"] += 1
                triples.extend(triple(pos, neg, "feedback", 1.0) for neg in against)
        else:
            opened = [d for d in fetched.get(q.query_id, ()) if d not in disliked]
            if opened:
                pos, kind, reason = opened[0], "fetched", ""
            else:
                pos, kind, reason = _positive(q, cfg, v, k)
            if pos is None:
                report.skipped[reason] += 1
                continue
            if pos in disliked:
                report.skipped["positive_rejected_by_feedback"] += 1
                continue
            ranks = ranks_for(pos)
            if ranks is not None and kind != "fetched" and ranks.get(pos) != 1:
                # (No score at all: the document is gone or blank, or the model gave none.)
                report.skipped["positive_second_opinion_disagrees" if pos in ranks else "positive_unscored"] += 1
                continue
            above = v[pos][0] if cfg.strategy == "agreement" and pos in v else None
            negs = [n for n in _negatives(q, pos, cfg, v, k, above, ranks) if n not in opened]
            # The agent's own negatives, all kept: those it rejected, and (the experiment) those it read past.
            known = sorted(disliked)
            if kind == "fetched" and cfg.passed_over_negatives and pos in q.fused:
                known += [d for d in q.fused[: q.fused.index(pos)] if d not in opened and d not in disliked]
            negs = list(dict.fromkeys([*known, *negs]))[: max(cfg.negatives_per_query, len(known))]
            if not negs:
                report.skipped["no_hard_negative"] += 1
                continue
            for neg in negs:
                conf = 1.0 if neg in disliked else 0.8 if kind == "fetched" else 0.5
                triples.append(triple(pos, neg, kind, conf))
        for t in triples:
            if t.positive_doc == t.negative_doc:  # never pair a document with itself
                report.skipped["self_pair"] += 1
                continue
            key = (normalized_query(t.query), t.collection, t.positive_doc, t.negative_doc)
            if key in seen:
                report.skipped["duplicate_triple"] += 1
                continue
            seen.add(key)
            report.triples.append(t)
    if done < len(chosen):  # dropped from the log (its size limit, a deleted collection) while mining read it
        report.skipped["gone_from_log"] += len(chosen) - done
    # Feedback first, then documents the agent opened: when a budget cuts the list, these are kept.
    report.triples.sort(key=lambda t: {"feedback": 0, "fetched": 1}.get(t.kind, 2))
    return report


def _corpus_pairs(
    documents: Iterable[tuple[str, str, str, Mapping[str, Any]]],
    collection: str,
    negatives_from: Callable[[str, str], tuple[str, str] | None],
    cfg: MiningConfig,
    kind: str,
    make: Callable[[random.Random, str, Mapping[str, Any]], tuple[str, str | None] | None],
) -> list[Triple]:
    """Shuffle the documents (seeded), turn each into (query, positive text or None) with `make`, add the
    vector side's hard negative, and stop at `cfg.max_pseudo` pairs."""
    rng = random.Random(cfg.seed)
    pool = list(documents)
    rng.shuffle(pool)
    out: list[Triple] = []
    for doc_id, chunk_id, text, meta in pool:
        if len(out) >= cfg.max_pseudo:
            break
        made = make(rng, text, meta)
        if made is None:
            continue
        query, passage = made
        neg = negatives_from(query, doc_id)
        if neg is None or neg[0] == doc_id:
            continue
        out.append(Triple(query, collection, doc_id, chunk_id, neg[0], neg[1], kind, None, 0.5, passage))
    return out


def pseudo_queries(
    documents: Iterable[tuple[str, str, str, Mapping[str, Any]]],
    collection: str,
    negatives_from: Callable[[str, str], tuple[str, str] | None],
    config: MiningConfig | None = None,
) -> list[Triple]:
    """Corpus pseudo-queries: a document's title (metadata 'title', else its first line when the text has a
    title line) or its first sentence -> that document's first chunk. `documents` yields
    (doc_id, first chunk id, text, metadata); `negatives_from(query, doc_id)` returns a hard negative as
    (doc_id, chunk_id), e.g. the vector side's best other document, or None."""

    def make(_rng: random.Random, text: str, meta: Mapping[str, Any]) -> tuple[str, None] | None:
        title = meta.get("title") if isinstance(meta.get("title"), str) else None
        lines = text.split("\n", 1)
        if title is None and len(lines) == 2 and 3 <= length_in_words(lines[0]) <= 30:
            title = lines[0]
        query = title or SENTENCE_BREAK.split(text.strip(), 1)[0]
        if not query or length_in_words(query) < 3 or len(query) > 300:
            return None
        return query, None

    return _corpus_pairs(documents, collection, negatives_from, config or MiningConfig(), "pseudo", make)


def corpus_supplement(strategy: str) -> str | None:
    """The corpus-derived supplement a strategy adds to the mined triples ("pseudo", "ict"), if any."""
    _, _, extra = strategy.partition("+")
    return extra if extra in CORPUS_SUPPLEMENTS else None


def ict_queries(
    documents: Iterable[tuple[str, str, str, Mapping[str, Any]]],
    collection: str,
    negatives_from: Callable[[str, str], tuple[str, str] | None],
    config: MiningConfig | None = None,
) -> list[Triple]:
    """Inverse-cloze pairs: one sentence of a document's first chunk is the query, the chunk with that
    sentence cut out is the positive. Unlike a title -> document pair, the query's words are not in the
    positive, so the pair teaches meaning rather than word overlap (the part BM25 already covers).
    `documents` and `negatives_from` are as for `pseudo_queries`; the first sentence of a chunk that starts
    with a title line is never chosen, and a chunk needs three sentences so the rest still says something.
    Measured harmful at 2,000 pairs on SciFact (server/bench/LEARNING.md); kept to show it."""

    def make(rng: random.Random, text: str, _meta: Mapping[str, Any]) -> tuple[str, str] | None:
        title, sep, body = text.strip().partition("\n")
        if not sep:
            title, body = "", title
        sentences = [s.strip() for s in SENTENCE_BREAK.split(body.strip()) if s.strip()]
        usable = [i for i, s in enumerate(sentences) if 6 <= length_in_words(s) <= 60]
        if len(sentences) < 3 or not usable:
            return None
        pick = rng.choice(usable)
        rest = ""
        for s in (s for i, s in enumerate(sentences) if i != pick):
            # CJK sentences join without a space, as they were written.
            rest += s if not rest or rest[-1] in "。！？" else f" {s}"
        return sentences[pick], f"{title}\n{rest}" if title else rest

    return _corpus_pairs(documents, collection, negatives_from, config or MiningConfig(), "ict", make)
