"""The steps of one retrain, shared by the background job (`jobs.py`) and the benchmark experiment:
collect the log -> time split -> mine -> materialize texts -> train -> build candidate vectors -> gate -> switch."""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from server.learning.gate import GateConfig, time_split
from server.learning.mining import (
    MiningConfig,
    MiningReport,
    Triple,
    corpus_supplement,
    ict_queries,
    logged_passages,
    mine,
    pseudo_queries,
)
from server.learning.query_log import LoggedQuery, QueryHead, QueryLog, normalized_query

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Learnt:
    """How much of the log a model has learnt: the searches up to `searches_through` (its retrain's training
    part; the later ones it held out for the gate it did not train on) and the feedback and fetches recorded up
    to `signals_through` (when that retrain read the log). Zero for a model that never trained on the log."""

    searches_through: float = 0.0
    signals_through: float = 0.0

    def as_dict(self) -> dict[str, float]:
        return {"searches_through": self.searches_through, "signals_through": self.signals_through}

    @classmethod
    def of(cls, train: Mapping[str, Any]) -> Learnt:
        """From a registry entry's `train` record (a fine-tune from before rift recorded it: nothing)."""
        try:
            return cls(float(train.get("searches_through", 0.0)), float(train.get("signals_through", 0.0)))
        except (TypeError, ValueError):
            return cls()


@dataclass
class Mined:
    report: MiningReport
    train_queries: list[QueryHead]  # (without candidate lists: QueryLog.by_ids reads those)
    holdout: list[LoggedQuery]
    feedback: dict[str, dict[str, bool]]
    evaluation_left_out: int = 0  # logged searches not trained on: their text is a labelled evaluation query
    already_learnt: int = 0  # training-side searches left out: the serving model learnt them (`Learnt`)
    # What a model trained on these triples has learnt of the log (`learnt` for the next retrain's).
    learnt: Learnt = field(default_factory=Learnt)
    # query_id -> {doc_id: True}: what the agent opened from held-out searches, for the gate (held_out_signals).
    opened: dict[str, dict[str, bool]] = field(default_factory=dict)


def collect_and_mine(
    query_log: QueryLog,
    engine: Any,
    mining: MiningConfig,
    gate: GateConfig,
    collection: str | None = None,
    progress: Callable[[int, int], None] | None = None,
    never_train: Collection[str] = (),
    learnt: Learnt | None = None,
) -> Mined:
    """The log split in time (the latest searches held out for the gate) and the older ones mined; `progress`
    as in `mine`. `never_train`: query texts (`normalized_query`) no training pair may have, such as a
    labelled evaluation set's: a search of one is left out of mining. `learnt`: what the model to be trained
    further already learnt; its searches are left out unless feedback or a fetch came after (the whole log
    still splits, so the gate holds out the latest searches as it would)."""
    read_at = time.time()
    names = set(engine.collection_names())
    heads = [q for q in query_log.heads(collection) if q.collection in names]
    train, held_out = time_split(heads, gate)
    evaluation = frozenset(never_train)
    kept = [q for q in train if normalized_query(q.query) not in evaluation]
    left_out, train = len(train) - len(kept), kept
    # (Taken before leaving learnt searches out: a search the last retrain learnt stays learnt.)
    through = max([q.ts for q in train] + [learnt.searches_through if learnt else 0.0])
    already = 0
    if learnt is not None and (learnt.searches_through > 0 or learnt.signals_through > 0):
        signalled = query_log.signalled_since(learnt.signals_through)
        fresh = [q for q in train if q.ts > learnt.searches_through or q.query_id in signalled]
        already, train = len(train) - len(fresh), fresh
    holdout = list(query_log.by_ids([q.query_id for q in held_out]))
    # Signals read as of `read_at`, the time recorded as learnt: one given while this ran is left to the next
    # retrain (`signalled_since`), never trained on twice.
    fetched = _fetched(query_log, read_at)
    feedback, opened = held_out_signals(engine, holdout, query_log, until=read_at, fetched=fetched)
    opinion = None
    if mining.second_opinion_depth > 0:
        from server.learning.second_opinion import SentenceOpinion

        def text_of(collection: str, doc_id: str) -> str | None:
            found = engine.state.document(collection, doc_id)
            return found[1] if found is not None else None

        # (The model itself: the bench wraps it in a disk cache of corpus vectors, no place for sentences.)
        opinion = SentenceOpinion(getattr(engine.embedder, "inner", engine.embedder), text_of)
    report = mine(train, mining, feedback, fetched, load=query_log.by_ids, progress=progress, opinion=opinion)
    if opinion is not None:
        log.info(
            "second opinion: %d documents, %d sentences encoded", opinion.documents_encoded, opinion.units_encoded
        )
    supplement = corpus_supplement(mining.strategy)
    if supplement is not None:
        held = {normalized_query(q.query) for q in holdout} | evaluation  # the gate scores these: never train on them
        for name in sorted({q.collection for q in train}):
            corpus = _corpus_triples(engine, name, mining, supplement)
            report.triples.extend(t for t in corpus if normalized_query(t.query) not in held)
    return Mined(report, train, holdout, feedback, left_out, already, Learnt(through, read_at), opened)


def _fetched(query_log: QueryLog, until: float | None = None) -> dict[str, list[str]]:
    """query_id -> the documents opened from that search (get_document with its query_id), first opened first."""
    fetched: dict[str, list[str]] = {}
    for query_id, doc_id, _ts in query_log.fetches(until=until):
        fetched.setdefault(query_id, []).append(doc_id)
    return fetched


def held_out_signals(
    engine: Any,
    holdout: Sequence[LoggedQuery],
    query_log: QueryLog,
    until: float | None = None,
    fetched: Mapping[str, list[str]] | None = None,
) -> tuple[dict[str, dict[str, bool]], dict[str, dict[str, bool]]]:
    """What the agent said of the held-out searches, as the gate can score it now (`held_out_labels_now`): its
    verdicts (`feedback`), and the documents it opened from their results as {doc_id: True} (`opened`; the
    gate sets aside those it also judged, `opened_once`). `fetched`: `_fetched` up to `until`, when the caller
    has read it already."""
    feedback = query_log.feedback_map(until=until)
    held = {q.query_id for q in holdout}
    if fetched is None:
        fetched = _fetched(query_log, until)
    opened = {qid: dict.fromkeys(docs, True) for qid, docs in fetched.items() if qid in held}
    return held_out_labels_now(engine, holdout, feedback), held_out_labels_now(engine, holdout, opened)


def held_out_labels_now(
    engine: Any, holdout: Sequence[LoggedQuery], feedback: dict[str, dict[str, bool]]
) -> dict[str, dict[str, bool]]:
    """`feedback` with the held-out queries' verdicts as the gate can score them now: the gate searches afresh
    and ranks documents by their ids today, so a verdict on a file renamed since is moved to its new id, and
    one on a document gone since is dropped (it would score 0 for both models, yet count towards the feedback
    queries that let labels decide). A document still stored keeps its verdict, edited or not."""
    out = dict(feedback)
    judged = [(q, logged_passages(q, feedback[q.query_id])) for q in holdout if feedback.get(q.query_id)]
    if not judged:
        return out
    wanted: dict[str, set[str]] = {}
    for q, chunks in judged:
        wanted.setdefault(q.collection, set()).update(chunks.values())
    passages = Passages(engine, wanted)  # (looked up once for all of them)
    for q, chunks in judged:
        now: dict[str, bool] = {}
        for doc_id, relevant in feedback[q.query_id].items():
            found = passages.find(q.collection, doc_id, chunks[doc_id])
            if isinstance(found, tuple):
                now[found[1]] = relevant
            elif isinstance(found, Changed):
                now[found.doc_id] = relevant
        out[q.query_id] = now
    return out


def _corpus_triples(engine: Any, collection: str, mining: MiningConfig, supplement: str) -> list[Triple]:
    docs: list[tuple[str, str, str, dict[str, Any]]] = []
    offset = 0
    while len(docs) < mining.max_pseudo * 2:
        page = engine.state.list_documents(collection, 500, offset)
        if not page:
            break
        offset += len(page)
        for doc_id, meta in page:
            chunks = engine.state.document_chunks(collection, doc_id)
            if chunks:
                docs.append((doc_id, chunks[0].chunk_id, chunks[0].text, meta))

    def negative(query: str, doc_id: str) -> tuple[str, str] | None:
        # The vector side's best other document: what the model confuses with the true one.
        for cand in engine.vector_ranking(collection, engine.embedder, query, 5):
            if cand.doc_id != doc_id:
                return cand.doc_id, cand.chunk_id
        return None

    build = ict_queries if supplement == "ict" else pseudo_queries
    return build(docs, collection, negative, mining)


@dataclass(frozen=True)
class Changed:
    """A logged passage whose text was rewritten since its search (`Passages.find`), and the document that
    holds what is left of it: its own, or the one it was renamed to."""

    doc_id: str


class Passages:
    """What the logged passages (a collection's chunk ids, as searches saw them) read now, looked up at once:
    the chunk itself when still stored, or its successor when its document was written again with that passage
    kept (a metadata change, a re-chunk, a small edit) or back (its exact text, after a rewrite or a delete: a
    branch switched and back), or renamed, its text whole or a little edited (a file moved, in one sync):
    `StateStore.successors`."""

    def __init__(self, engine: Any, chunk_ids: Mapping[str, Collection[str]]) -> None:
        self.state = engine.state
        self.since = self.state.successors_since()
        # (collection, chunk id) -> (its text now, the document that holds it when another one: a rename)
        self.found: dict[tuple[str, str], tuple[str, str | None]] = {}
        # (collection, chunk id) -> the document a rewritten passage was last in (another one: a rename)
        self.moved: dict[tuple[str, str], str] = {}
        for name, ids in chunk_ids.items():
            wanted = sorted(i for i in set(ids) if i)
            found = self.state.chunks_by_id(name, wanted)
            # A chunk id gone since the search, its passage kept or back: the same passage under its new id.
            heirs = self.state.successors(name, [i for i in wanted if i not in found])
            later = self.state.chunks_by_id(name, sorted(set(heirs.values())))
            for cid, row in found.items():
                self.found[(name, cid)] = (row.text, None)
            for cid, heir in heirs.items():
                if heir in later:
                    self.found[(name, cid)] = (later[heir].text, later[heir].doc_id)
            ended = self.state.tombstone_docs(name, [i for i in wanted if i not in found and i not in heirs])
            for cid, doc_id in ended.items():
                self.moved[(name, cid)] = doc_id

    def find(self, collection: str, doc_id: str, chunk_id: str) -> tuple[str, str] | Changed | None:
        """(text, the document it is in now: `doc_id`, or the one it was renamed to) of the passage `chunk_id`
        of `doc_id` ("": the document's first), `Changed` when it was rewritten since, None when its document
        is gone."""
        if (collection, chunk_id) in self.found:
            text, now_in = self.found[(collection, chunk_id)]
            return text, now_in or doc_id
        # (Its first two chunks tell all that is needed: a document of 20,000 chunks read whole took 0.3 s, for
        # each triple, and each judged document, on it.)
        rows = self.state.document_chunks(collection, doc_id, limit=2)
        if not rows:
            # Renamed with an edit that rewrote this passage: its document goes on under the new path.
            now_in = self.moved.get((collection, chunk_id))
            if now_in and now_in != doc_id and self.state.document_chunks(collection, now_in, limit=1):
                return Changed(now_in)
            return None
        if not chunk_id or (len(rows) == 1 and self._untracked(collection, doc_id)):
            return rows[0].text, doc_id
        # A logged passage rewritten since (no successor): the document's text now is not what the search
        # ranked, so it teaches nothing true about the query.
        return Changed(doc_id)

    def _untracked(self, collection: str, doc_id: str) -> bool:
        # Last written before the state recorded successors (an upgraded data dir): the passage may be the
        # same under a new id, and a document of one chunk is that chunk, as before.
        found = self.state.document(collection, doc_id)
        return found is not None and found[3] < self.since


def materialize(
    engine: Any, triples: Sequence[Triple], skipped: Counter[str] | None = None
) -> tuple[list[tuple[str, str, str]], list[Triple]]:
    """(query, positive text, negative text) rows for the triples whose logged passages are still stored
    (under their ids or a successor's: `Passages`). A kept triple names the documents its texts come from now
    (a renamed file's new path), so that a retrain's plan drops its row when that document goes. `skipped` (a
    mining report's) counts the triples left out, so the report's counts add up: `document_deleted` (its
    positive or negative document is gone since the search), `passage_changed` (its text was rewritten
    since) and `same_text` (both read the same)."""
    by_collection: dict[str, set[str]] = {}
    for t in triples:
        by_collection.setdefault(t.collection, set()).update({t.positive_chunk, t.negative_chunk})
    passages = Passages(engine, by_collection)
    rows: list[tuple[str, str, str]] = []
    kept: list[Triple] = []
    for t in triples:
        pos = (t.positive_text, t.positive_doc) if t.positive_text else None
        pos = pos or passages.find(t.collection, t.positive_doc, t.positive_chunk)
        neg = passages.find(t.collection, t.negative_doc, t.negative_chunk)
        if pos is None or neg is None:
            reason: str | None = "document_deleted"
        elif isinstance(pos, Changed) or isinstance(neg, Changed):
            reason = "passage_changed"
        else:
            assert isinstance(pos, tuple) and isinstance(neg, tuple)
            reason = "same_text" if pos[0] == neg[0] else None
        if reason is not None:
            if skipped is not None:
                skipped[reason] += 1
            continue
        assert isinstance(pos, tuple) and isinstance(neg, tuple)
        rows.append((t.query, pos[0], neg[0]))
        renamed = (pos[1], neg[1]) != (t.positive_doc, t.negative_doc)
        kept.append(replace(t, positive_doc=pos[1], negative_doc=neg[1]) if renamed else t)
    return rows, kept


def load_embedder(
    location: str, version: str, settings: Any, base_model: str | None = None, moved_from: str | None = None
) -> Any:
    """`base_model`: for a fine-tune, the model it was trained from (Registry.origin_model), whose known
    query prompt applies when the fine-tune's folder does not say its own; `moved_from`: a base version's
    name when its folder moved (resolve_model)."""
    from server.engine.embedder import Embedder, embed_options
    from server.engine.models import resolve_model

    spec = resolve_model(location, settings.query_prompt, base_model, moved_from)
    return Embedder(
        spec,
        version=version,
        device=settings.device,
        batch_size=settings.embed_batch_size,
        **embed_options(settings),
    )


def build_all(
    engine: Any,
    embedder: Any,
    progress: Callable[[int, int], None] | None = None,
    collections: Sequence[str] | None = None,
) -> list[str]:
    """Build `embedder`'s vectors for every collection (or the named ones). A collection deleted meanwhile is
    skipped; one created meanwhile is built too, so the gate and the switch find every collection ready."""
    from server.errors import NotFoundError

    built: list[str] = []
    pending = list(collections or engine.collection_names())
    done = 0
    while pending:
        totals: dict[str, int] = {}
        for name in pending:
            try:
                totals[name] = engine.info(name).chunks
            except NotFoundError:
                continue
        grand = done + sum(totals.values())
        for name in totals:

            def step(d: int, _t: int, base: int = done, total: int = grand) -> None:
                if progress is not None:
                    progress(base + d, total)

            try:
                engine.build_vectors(name, embedder, step)
            except NotFoundError:
                log.info("collection %s was deleted while its vectors were built; skipped", name)
                continue
            built.append(name)
            done += totals[name]
        pending = [] if collections else [n for n in engine.collection_names() if n not in built]
    return built


def switch_all(engine: Any, embedder: Any, keep_old: bool = True, check_room: bool = True) -> Any:
    """Switch every collection, with writes paused so none is created or deleted in between; if one switch
    fails, the collections already switched go back to the serving model, so the server never serves two.
    Returns the embedder that served before."""
    from server.errors import NotFoundError

    previous = engine.embedder
    switched: list[str] = []
    with engine.writes_paused():
        # Undoing a switch writes as much as the switch: on a full disk it fails too, and two models serve.
        # (An undo of a whole switch, to vectors kept, writes only a catch-up: it goes ahead on a full disk.)
        if check_room:
            engine.check_room()
        try:
            for name in engine.collection_names():
                try:
                    engine.switch_vectors(name, embedder, keep_old=keep_old)
                except NotFoundError:
                    continue
                switched.append(name)
            engine.set_serving_embedder(embedder)
            return previous
        except BaseException:
            stuck = []
            for name in switched:
                try:
                    engine.switch_vectors(name, previous, keep_old=True)
                except Exception:
                    log.exception("could not switch %s back to %s", name, previous.version)
                    stuck.append(name)
            if stuck:
                log.error(
                    "collections %s stay on %s until the next start, which re-embeds them with the serving model",
                    ", ".join(stuck), embedder.version,
                )
            raise


def drop_built(engine: Any, version: str) -> None:
    """Drop `version`'s vectors from every collection; one deleted meanwhile has none left to drop."""
    from server.errors import NotFoundError

    for name in engine.collection_names():
        try:
            engine.drop_vectors(name, version)
        except NotFoundError:
            continue


def model_dir(models_dir: Path, version: str) -> Path:
    return models_dir / version
