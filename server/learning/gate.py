"""The honest gate: a candidate model may serve only if, on queries it was not trained on, it is not worse than
the serving model.

What is scored (serving vs candidate, both over their own fully built vectors of the same collections):
  feedback_ndcg@10   hybrid nDCG@10 against the agent's own feedback labels, on held-out queries that have
                     feedback. Real labels; the strongest label-free-of-benchmark signal there is. Scored on
                     condensed lists (`feedback_ndcg`: only the documents the agent judged, in each model's
                     order), because the agent judged the serving model's results: counting every unjudged
                     document as not relevant would refuse a candidate for surfacing relevant documents the
                     agent was never shown.
  opened_ndcg@10     hybrid nDCG@10 with the documents the agent opened from a held-out search's results
                     (`get_document` with its query_id) as the relevant ones, on the whole ranking: an open is
                     no verdict on the results it passed over, only a sign the document was worth reading. The
                     agent opened what the serving model showed it, so the measure leans towards the serving
                     model; a candidate must still rank what the agent read at least as high.
  labelled_ndcg@10   hybrid (and vector) nDCG@10 on a BEIR-format evaluation set the user configures
                     (`gate_eval_data`, `gate_eval_split`), searched in the collection that holds its corpus.
  keyword_recall@10  of the keyword side's top-3 documents for each held-out query, the share found in the
                     model's vector top-10. The keyword retriever is independent of both models, so this does
                     not reward a model for agreeing with itself; it falls sharply when a model collapses.
  known_item_mrr@10  a sample of stored documents, each searched by its title or first sentence: the MRR of
                     the document itself in the vector ranking (a catastrophe detector, independent of the log).
  stability@10       overlap of the two models' hybrid top-10 on the held-out queries (reported; a guard
                     against a model that upends everything).

Held-out queries are the most recent logged query texts (a time split), each scored once: training uses only older ones.
Decision: with a labelled set, the candidate must not lose labelled hybrid nDCG@10; with enough held-out
feedback, it must not lose feedback nDCG@10; else, with enough held-out searches the agent opened documents
from, it must not lose opened nDCG@10; stability must stay above `min_stability`. No label-free signal
may drop by more than `tolerance` when no labels decide, or by more than `guard_tolerance` when they do.
Label-free signals catch a damaged model; only labels (feedback, opens or an evaluation set) can show that a
model is better, and the report says which applied. They cannot tell "finds what BM25 misses" from "damaged": a model
trained on real labels lost 0.035 of keyword agreement while gaining 0.022 labelled nDCG@10, and a harmful one
lost 0.027 (server/bench/LEARNING.md, "Where the gain lands"). So where labels decide, the proxies only guard
against collapse.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

from server.bench.metrics import ndcg_at_k
from server.engine.fusion import rrf
from server.engine.keyword_index import SENTENCE_BREAK, length_in_words
from server.errors import NotFoundError
from server.learning.query_log import LoggedQuery, QueryHead, normalized_query

log = logging.getLogger(__name__)
Q = TypeVar("Q", LoggedQuery, QueryHead)  # a logged search, with or without its candidate lists


# The signals that need no labels of any kind; the others (feedback, opens, a labelled set) decide when present.
LABEL_FREE = ("keyword_recall@10", "known_item_mrr@10")


def opened_ndcg(ranking: Sequence[str], opened: Collection[str], k: int = 10) -> float:
    """nDCG@k of `ranking` with the documents the agent opened as the relevant ones, every other one counted as
    not relevant: unlike a verdict, an open says nothing of the documents passed over, so there is nothing to
    condense to."""
    return ndcg_at_k(list(ranking[:k]), dict.fromkeys(opened, 1), k)


def feedback_ndcg(ranking: Sequence[str], labels: Mapping[str, bool], k: int = 10) -> float:
    """nDCG@k of `ranking` condensed to the judged documents (Sakai 2007's condensed lists for incomplete
    judgments): how well a model orders what the agent confirmed above what it rejected. Unjudged documents
    are dropped, not counted as misses; a confirmed document the model does not retrieve still costs it."""
    judged = [d for d in ranking if d in labels]
    return ndcg_at_k(judged[:k], {d: 1 if rel else 0 for d, rel in labels.items()}, k)


@dataclass(frozen=True)
class GateConfig:
    holdout_fraction: float = 0.2
    max_holdout: int = 300
    min_holdout: int = 3
    tolerance: float = 0.01
    # Where labels decide, a label-free signal only vetoes a collapse; a worse model fails the labels anyway.
    guard_tolerance: float = 0.1
    min_stability: float = 0.5
    # 1,000 rather than 200: with 200 the paired delta's standard error (about 0.01) equalled the tolerance, so
    # a decision could turn on the sample. Costs ~30 s more per gate on NFCorpus (server/bench/LEARNING.md).
    known_items: int = 1000
    min_feedback_queries: int = 5
    # An open says less than a verdict (an agent also opens what turns out beside the point), so more held-out
    # searches must carry one before opens decide.
    min_opened_queries: int = 10
    depth: int = 100
    seed: int = 0


@dataclass
class LabelledSet:
    collection: str
    queries: dict[str, str]
    qrels: dict[str, dict[str, int]]
    name: str = "eval"


@dataclass
class GateReport:
    accepted: bool
    reason: str
    basis: str  # labelled | feedback | opened | label-free
    holdout_queries: int
    serving: dict[str, float] = field(default_factory=dict)
    candidate: dict[str, float] = field(default_factory=dict)
    delta: dict[str, float] = field(default_factory=dict)
    stability: float | None = None
    feedback_queries: int = 0  # held-out queries with a confirmed document (the ones feedback nDCG scores)
    opened_queries: int = 0  # held-out queries the agent opened a document from

    def as_dict(self) -> dict[str, Any]:
        return {
            "accepted": self.accepted,
            "reason": self.reason,
            "basis": self.basis,
            "holdout_queries": self.holdout_queries,
            "serving": self.serving,
            "candidate": self.candidate,
            "delta": self.delta,
            "stability@10": self.stability,
            "feedback_queries": self.feedback_queries,
            "opened_queries": self.opened_queries,
        }


def time_split(queries: Sequence[Q], cfg: GateConfig) -> tuple[list[Q], list[Q]]:
    """(older queries for training, most recent queries held out for the gate). A query asked again later is
    held out with every earlier asking of it: the gate must score texts the candidate was not trained on, and
    an agent repeats itself (with feedback, the gate would otherwise decide on its training labels)."""
    ordered = sorted(queries, key=lambda q: q.ts)
    # Sized and taken in different texts, not searches: an agent that asked one question five times in a row
    # must not shrink the gate's sample to one text. By text alone: one model serves every collection, so a
    # text asked in another collection trains it too.
    keys = [normalized_query(q.query) for q in ordered]
    texts = len(set(keys))
    n = min(cfg.max_holdout, max(cfg.min_holdout, round(texts * cfg.holdout_fraction)))
    if texts < 2 * cfg.min_holdout:
        n = min(texts // 2, n)
    if n <= 0:
        return ordered, []
    held: set[str] = set()
    start = len(ordered)
    while len(held) < n:  # (n never exceeds the texts: this stops at the oldest search at the latest)
        start -= 1
        held.add(keys[start])
    train = [q for q, key in zip(ordered[:start], keys, strict=False) if key not in held]
    return train, ordered[start:]


_KNOWN_ITEM_CHARS = 600  # 32 English words never reach it; it cuts an unspaced CJK sentence


def known_item_query(text: str, meta: Mapping[str, Any]) -> str | None:
    title = meta.get("title")
    if isinstance(title, str) and length_in_words(title) >= 3:
        return title
    first = text.strip().split("\n", 1)[0]
    first = SENTENCE_BREAK.split(first, 1)[0]
    if length_in_words(first) < 4:
        return None
    return " ".join(first.split()[:32])[:_KNOWN_ITEM_CHARS]


def asked_once(
    holdout: Sequence[LoggedQuery], feedback: Mapping[str, Mapping[str, bool]]
) -> list[tuple[LoggedQuery, dict[str, bool]]]:
    """Each held-out text once per collection, as last asked, with the verdicts given on any of its askings (a
    later asking's verdict on a document replaces an earlier one's). A question asked five times is one query
    to the gate: it must not weigh five times, nor count five times towards `min_feedback_queries`."""
    out: dict[tuple[str, str], tuple[LoggedQuery, dict[str, bool]]] = {}
    for q in sorted(holdout, key=lambda q: q.ts):
        key = asked_as(q)
        labels = out[key][1] if key in out else {}
        labels.update(feedback.get(q.query_id) or {})
        out.pop(key, None)  # (re-inserted: the order is that of the last askings)
        out[key] = (q, labels)
    return list(out.values())


def asked_as(q: LoggedQuery) -> tuple[str, str]:
    """What makes two searches one held-out query: the same text (`normalized_query`) in the same collection."""
    return q.collection, normalized_query(q.query)


def opened_once(
    holdout: Sequence[LoggedQuery],
    feedback: Mapping[str, Mapping[str, bool]],
    opened: Mapping[str, Mapping[str, bool]],
) -> dict[tuple[str, str], set[str]]:
    """Per held-out query (`asked_as`), the documents opened from any of its askings, less those a verdict from
    any of them judged: "not relevant" after reading a document overrules the open, and "relevant" makes it a
    verdict, scored as feedback. Queries with nothing left are left out."""
    judged = {asked_as(q): set(labels) for q, labels in asked_once(holdout, feedback)}
    out = {asked_as(q): set(read) - judged.get(asked_as(q), set()) for q, read in asked_once(holdout, opened)}
    return {key: read for key, read in out.items() if read}


class Gate:
    """Scores two models over an Engine whose collections have vectors built for both (see Engine.build_vectors)."""

    def __init__(self, engine: Any, config: GateConfig | None = None) -> None:
        self.engine = engine
        self.cfg = config or GateConfig()

    def _vector(self, embedder: Any, collection: str, query: str) -> list[str]:
        return [c.doc_id for c in self.engine.vector_ranking(collection, embedder, query, self.cfg.depth)]

    def _keyword(self, collection: str, query: str) -> list[str]:
        out = self.engine.search(collection, query, 10, "keyword", depth=self.cfg.depth)
        return [c.doc_id for c in out.keyword]

    def _hybrid(self, vector: Sequence[str], keyword: Sequence[str]) -> list[str]:
        s = self.engine.settings
        fused = rrf([list(vector), list(keyword)], k=s.rrf_k, weights=(s.vector_weight, s.keyword_weight))
        return [d for d, _ in fused]

    def score(
        self,
        serving: Any,
        candidate: Any,
        holdout: Sequence[LoggedQuery],
        feedback: Mapping[str, Mapping[str, bool]] | None = None,
        labelled: LabelledSet | None = None,
        should_stop: Callable[[], bool] | None = None,
        progress: Callable[[int, int], None] | None = None,
        trained_texts: Collection[str] = (),
        opened: Mapping[str, Mapping[str, bool]] | None = None,
    ) -> GateReport:
        """`progress(done, total)` after each scored query (held-out, known-item and labelled ones).
        `trained_texts`: the candidate's training queries (normalized); a known item whose query is one of them
        is not sampled (a title -> document pair from a corpus supplement would score its own training).
        `opened`: query_id -> {doc_id: True} for the documents the agent opened from a held-out search
        (`held_out_signals`: none the agent also judged)."""
        feedback = feedback or {}
        sums: dict[str, dict[str, list[float]]] = {"serving": {}, "candidate": {}}
        overlaps: list[float] = []

        def add(which: str, name: str, value: float) -> None:
            sums[which].setdefault(name, []).append(value)

        models = {"serving": serving, "candidate": candidate}
        collections = set(self.engine.collection_names())
        fb_queries = op_queries = 0
        known = self._known_items(collections, set(trained_texts))
        done = 0

        def tick() -> None:
            nonlocal done
            done += 1
            if progress is not None:
                progress(done, total)

        asked = asked_once(holdout, feedback)
        opens = opened_once(holdout, feedback, opened or {})
        total = len(asked) + len(known) + (len(labelled.queries) if labelled is not None else 0)
        for q, labels in asked:
            if should_stop is not None and should_stop():
                break
            tick()
            if q.collection not in collections:
                continue
            try:
                keyword = self._keyword(q.collection, q.query)
                vectors = {which: self._vector(m, q.collection, q.query) for which, m in models.items()}
            except NotFoundError:  # the collection was deleted while the gate ran: score the others
                collections.discard(q.collection)
                continue
            top3 = keyword[:3]
            # Only a query with a confirmed document can score nDCG; rejections alone cannot.
            judged = any(labels.values())
            fb_queries += judged
            read = opens.get(asked_as(q), set())
            op_queries += bool(read)
            hybrids = {}
            for which, vector in vectors.items():
                hybrids[which] = self._hybrid(vector, keyword)
                if top3:
                    add(which, "keyword_recall@10", len(set(top3) & set(vector[:10])) / len(top3))
                if judged:
                    add(which, "feedback_ndcg@10", feedback_ndcg(hybrids[which], labels, 10))
                if read:
                    add(which, "opened_ndcg@10", opened_ndcg(hybrids[which], read, 10))
            a, b = set(hybrids["serving"][:10]), set(hybrids["candidate"][:10])
            if a or b:
                overlaps.append(len(a & b) / max(len(a), len(b)))

        for collection, doc_id, query in known:
            if should_stop is not None and should_stop():
                break
            tick()
            if collection not in collections:
                continue
            try:
                ranked = {which: self._vector(m, collection, query)[:10] for which, m in models.items()}
            except NotFoundError:
                collections.discard(collection)
                continue
            for which, top in ranked.items():
                add(which, "known_item_mrr@10", 1.0 / (top.index(doc_id) + 1) if doc_id in top else 0.0)

        if labelled is not None:
            for qid, text in labelled.queries.items():
                if should_stop is not None and should_stop():
                    break
                tick()
                keyword = self._keyword(labelled.collection, text)
                for which, model in models.items():
                    vector = self._vector(model, labelled.collection, text)
                    add(which, "labelled_vector_ndcg@10", ndcg_at_k(vector[:10], labelled.qrels[qid], 10))
                    hybrid = self._hybrid(vector, keyword)[:10]
                    add(which, "labelled_ndcg@10", ndcg_at_k(hybrid, labelled.qrels[qid], 10))

        mean = {w: {k: sum(v) / len(v) for k, v in d.items() if v} for w, d in sums.items()}
        delta = {k: mean["candidate"][k] - mean["serving"][k] for k in mean["serving"]}
        stability = sum(overlaps) / len(overlaps) if overlaps else None
        report = GateReport(
            accepted=False,
            reason="",
            basis="label-free",
            holdout_queries=len(asked),
            serving={k: round(v, 5) for k, v in mean["serving"].items()},
            candidate={k: round(v, 5) for k, v in mean["candidate"].items()},
            delta={k: round(v, 5) for k, v in delta.items()},
            stability=None if stability is None else round(stability, 4),
            feedback_queries=fb_queries,
            opened_queries=op_queries,
        )
        self._decide(report, delta, fb_queries, op_queries)
        return report

    def _known_items(self, collections: set[str], trained: set[str]) -> list[tuple[str, str, str]]:
        rng = random.Random(self.cfg.seed)
        out: list[tuple[str, str, str]] = []
        per = max(1, self.cfg.known_items // max(1, len(collections)))
        for collection in sorted(collections):
            docs, _chunks = self.engine.state.counts(collection)
            if docs == 0:
                continue
            picks = sorted(rng.sample(range(docs), min(per, docs)))
            for offset in picks:
                listed = self.engine.state.list_documents(collection, 1, offset)
                if not listed:
                    continue
                doc_id, meta = listed[0]
                found = self.engine.state.document(collection, doc_id)
                if found is None:
                    continue
                query = known_item_query(found[1], meta)
                if query and normalized_query(query) not in trained:
                    out.append((collection, doc_id, query))
        return out

    def _decide(
        self, report: GateReport, delta: Mapping[str, float], fb_queries: int, op_queries: int = 0
    ) -> None:
        labelled = "labelled_ndcg@10" in delta
        feedback = "feedback_ndcg@10" in delta and fb_queries >= self.cfg.min_feedback_queries
        opened = "opened_ndcg@10" in delta and op_queries >= self.cfg.min_opened_queries
        basis = "labelled" if labelled else "feedback" if feedback else "opened" if opened else "label-free"
        report.basis = basis
        tol = self.cfg.tolerance if basis == "label-free" else self.cfg.guard_tolerance
        for name in LABEL_FREE:
            if name in delta and delta[name] < -tol:
                report.reason = f"{name} fell by {-delta[name]:.4f} (tolerance {tol})"
                return
        if report.stability is not None and report.stability < self.cfg.min_stability:
            report.reason = f"stability@10 {report.stability:.3f} is below {self.cfg.min_stability}"
            return
        if labelled:
            if delta["labelled_ndcg@10"] < 0:
                report.reason = f"labelled hybrid nDCG@10 fell by {-delta['labelled_ndcg@10']:.4f}"
                return
            if delta.get("feedback_ndcg@10", 0.0) < 0:  # the agent's own verdicts veto, as without labels
                report.reason = (
                    f"feedback nDCG@10 fell by {-delta['feedback_ndcg@10']:.4f} on the {fb_queries} held-out "
                    "queries with feedback"
                )
                return
            report.accepted = True
            report.reason = f"labelled hybrid nDCG@10 {delta['labelled_ndcg@10']:+.4f}"
            return
        if feedback:
            if delta["feedback_ndcg@10"] < 0:
                report.reason = f"feedback nDCG@10 fell by {-delta['feedback_ndcg@10']:.4f}"
                return
            report.accepted = True
            report.reason = f"feedback nDCG@10 {delta['feedback_ndcg@10']:+.4f}; label-free signals held"
            return
        # Too few queries to decide on are enough to veto: the agent's verdicts first, then its opens (which
        # never outvote verdicts or a labelled set, above: they are the weaker evidence).
        if delta.get("feedback_ndcg@10", 0.0) < 0:
            report.reason = (
                f"feedback nDCG@10 fell by {-delta['feedback_ndcg@10']:.4f} on the {fb_queries} held-out "
                "queries with feedback"
            )
            return
        if delta.get("opened_ndcg@10", 0.0) < 0:
            report.reason = (
                f"opened nDCG@10 fell by {-delta['opened_ndcg@10']:.4f} on the {op_queries} held-out "
                "queries the agent opened documents from"
            )
            return
        if opened:
            report.accepted = True
            report.reason = f"opened nDCG@10 {delta['opened_ndcg@10']:+.4f}; label-free signals held"
            return
        if not delta:
            report.reason = (
                "nothing to score: no held-out queries, and no document with a title or a first sentence of "
                "4 words or more to look up"
            )
            return
        if sum(delta[name] for name in LABEL_FREE if name in delta) < -tol:
            report.reason = "label-free signals fell on balance"
            return
        report.accepted = True
        report.reason = "no label-free signal fell beyond tolerance (no labels to show a gain)"
