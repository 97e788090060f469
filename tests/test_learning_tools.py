"""Learning from use through the MCP tools, end to end on the tiny model: feedback, retrain (dry run, job id at
once, phases and progress, gate, swap), the registry surviving a restart, list_models and rollback."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from mcp import Client

from server.app import create_server
from server.config import Settings
from tests.support.helpers import make_settings
from tests.support.learning import corpus, queries

pytestmark = [pytest.mark.anyio, pytest.mark.slow]


@asynccontextmanager
async def connect(settings: Settings) -> AsyncIterator[Client]:
    async with Client(create_server(settings), raise_exceptions=False) as client:
        yield client


async def ok(client: Client, name: str, args: dict[str, Any] | None = None) -> dict[str, Any]:
    result = await client.call_tool(name, args or {})
    assert not result.is_error, result.content
    assert result.structured_content is not None
    return result.structured_content


async def error(client: Client, name: str, args: dict[str, Any]) -> str:
    result = await client.call_tool(name, args)
    assert result.is_error, result.structured_content
    text = " ".join(getattr(c, "text", "") for c in result.content)
    assert "Traceback" not in text
    return text


@pytest.fixture
def cfg(tmp_path: Path, tiny_model_path: Path) -> Settings:
    # A lenient gate: the tiny model is random, so its label-free signals are noise; the gate's judgement is
    # tested with a real model in test_learning_gate.py.
    return make_settings(tmp_path / "data", tiny_model_path, learn_min_triples=2, gate_tolerance=1.0)


async def test_retrain_swap_restart_and_rollback_through_mcp(cfg: Settings) -> None:
    async with connect(cfg) as client:
        listed = {t.name: t for t in (await client.list_tools()).tools}
        assert {"retrain", "retrain_status", "feedback", "rollback", "list_models"} <= set(listed)
        # Defaults that are settings are published as this server is configured (min_triples 2, not 32).
        published = listed["retrain"].input_schema["properties"]
        assert published["min_triples"]["description"].endswith("(default: setting learn_min_triples, 2).")
        assert published["epochs"]["description"].endswith(f"(default: setting learn_epochs, {cfg.learn_epochs:g}).")
        assert published["searches"]["description"].endswith('(default: setting learn_searches, "new").')
        assert published["searches"]["anyOf"][0]["enum"] == ["new", "all"]
        await ok(client, "add_documents", {"documents": corpus()})
        searches = [await ok(client, "hybrid_search", {"query": text}) for text in queries()]
        base = searches[0]["model_version"]

        # feedback: validated against the logged search
        first = searches[0]
        doc = first["hits"][0]["doc_id"]
        assert (
            await ok(client, "feedback", {"query_id": first["query_id"], "doc_id": doc, "relevant": True})
        )["replaced"] is False
        assert "'nope' is not one hybrid_search returns" in await error(
            client, "feedback", {"query_id": "nope", "doc_id": doc, "relevant": True}
        )
        message = await error(client, "feedback", {"query_id": "0" * 32, "doc_id": doc, "relevant": True})
        assert "is not in the query log" in message and "log_max_queries" in message
        assert "not among the results" in await error(
            client, "feedback", {"query_id": first["query_id"], "doc_id": "no-such-doc", "relevant": False}
        )
        # Only a document the response named (a hit, a listed blind spot): a k=1 search's deeper candidates
        # were never shown to the agent.
        single = await ok(client, "hybrid_search", {"query": queries()[0], "k": 1})
        summary = single["disagreement"]
        named = {single["hits"][0]["doc_id"], *summary["vector_blind_spots"], *summary["keyword_blind_spots"]}
        assert len(named) > 1
        other = next(d["id"] for d in corpus() if d["id"] not in named)
        assert "not among the results" in await error(
            client, "feedback", {"query_id": single["query_id"], "doc_id": other, "relevant": True}
        )
        for spot in named - {single["hits"][0]["doc_id"]}:
            await ok(client, "feedback", {"query_id": single["query_id"], "doc_id": spot, "relevant": False})
        confirmed = {"query_id": single["query_id"], "doc_id": single["hits"][0]["doc_id"], "relevant": True}
        await ok(client, "feedback", confirmed)

        dry = await ok(client, "retrain", {"dry_run": True})
        assert dry["job_id"] is None and dry["status"] == "dry_run"
        assert dry["would_train"] is True and dry["refusal"] is None
        mining = dry["mining"]
        assert mining["triples"] >= 2 and sum(mining["by_type"].values()) == mining["triples"]
        assert mining["examples"] and {"query", "positive_doc", "negative_doc", "kind"} <= set(
            mining["examples"][0]
        )
        assert mining["holdout_queries"] > 0
        # The latest search is held out for the gate: its feedback scores the candidate rather than training it,
        # which the summary says (the agent saw no feedback triple, and no word why).
        assert mining["holdout_with_feedback"] == 1
        # A dry run says what the real call would answer, refusal and all.
        refused = await error(client, "retrain", {"min_triples": 100000})
        assert "min_triples is 100000" in refused
        foreseen = await ok(client, "retrain", {"dry_run": True, "min_triples": 100000})
        assert foreseen["would_train"] is False and foreseen["refusal"] in refused

        started = await ok(client, "retrain", {"epochs": 1, "batch_size": 4})
        assert started["job_id"] and started["status"] == "running"
        assert "already running" in await error(client, "retrain", {})
        busy = await ok(client, "retrain", {"dry_run": True})
        assert busy["would_train"] is False and "already running" in busy["refusal"]
        seen: list[float] = []

        async def on_progress(value: float, total: float | None, message: str | None) -> None:
            seen.append(value)

        result = await client.call_tool(
            "retrain_status",
            {"job_id": started["job_id"], "wait_seconds": 120},
            progress_callback=on_progress,
        )
        done = result.structured_content
        assert done["status"] == "succeeded", done
        assert seen and seen == sorted(set(seen))  # MCP progress only increases, across phases too
        assert [p["phase"] for p in done["phases"]] == [
            "mining",
            "training",
            "encoding",
            "gating",
            "switching",
        ]
        new = done["result"]["version"]
        assert done["result"]["train"]["triples"] == mining["triples"]
        assert done["result"]["gate"]["accepted"] is True
        assert {"keyword_recall@10", "known_item_mrr@10"} <= set(done["result"]["gate"]["candidate"])

        hit = await ok(client, "hybrid_search", {"query": queries()[1]})
        assert hit["model_version"] == new and hit["hits"]
        stats = await ok(client, "stats")
        assert stats["learning"]["serving_version"] == new
        assert stats["learning"]["policy"]["enabled"] is False
        versions = (await ok(client, "list_models"))["versions"]
        assert [(v["version"], v["status"]) for v in versions] == [(new, "serving"), (base, "retired")]
        assert versions[0]["triples"] == mining["triples"] and versions[0]["gate"]["accepted"]

    # The serving version survives a restart.
    async with connect(cfg) as client:
        hit = await ok(client, "hybrid_search", {"query": queries()[2]})
        assert hit["model_version"] == new
        back = await ok(client, "rollback", {})
        assert back["version"] == base
        status = await ok(client, "retrain_status", {"job_id": back["job_id"], "wait_seconds": 60})
        assert status["status"] == "succeeded" and status["kind"] == "rollback"
        hit = await ok(client, "hybrid_search", {"query": queries()[3]})
        assert hit["model_version"] == base
        versions = (await ok(client, "list_models"))["versions"]
        assert {v["version"]: v["status"] for v in versions} == {new: "retired", base: "serving"}
        # A registry that grew with every periodic retrain: the newest, and which one serves, however old.
        newest = await ok(client, "list_models", {"limit": 1})
        assert [v["version"] for v in newest["versions"]] == [new]
        assert newest["serving_version"] == base and newest["total"] == 2
        assert "already serving" in await error(client, "rollback", {"version": base})
        assert "unknown model version" in await error(client, "rollback", {"version": "v-nope"})
        assert "unknown job_id" in await error(client, "retrain_status", {"job_id": "nope"})


async def test_several_verdicts_in_one_feedback_call_are_recorded_all_or_none(cfg: Settings) -> None:
    import sqlite3

    async with connect(cfg) as client:
        await ok(client, "add_documents", {"documents": corpus()})
        search = await ok(client, "hybrid_search", {"query": queries()[0], "k": 3})
        qid, hits = search["query_id"], [h["doc_id"] for h in search["hits"]]
        assert len(hits) == 3

        def recorded() -> dict[str, bool]:
            conn = sqlite3.connect(str(cfg.log_db))
            try:
                rows = conn.execute("SELECT doc_id, relevant FROM feedback WHERE query_id = ?", (qid,))
                return {d: bool(r) for d, r in rows.fetchall()}
            finally:
                conn.close()

        # one wrong verdict (a document the search did not show): nothing is recorded
        bad = [{"doc_id": hits[0], "relevant": True}, {"doc_id": "no-such-doc", "relevant": False}]
        message = await error(client, "feedback", {"query_id": qid, "judgments": bad})
        assert "judgments[1].doc_id 'no-such-doc' was not among the results" in message
        assert "nothing was recorded" in message and recorded() == {}
        twice = [{"doc_id": hits[0], "relevant": True}, {"doc_id": hits[0], "relevant": False}]
        assert "judged twice" in await error(client, "feedback", {"query_id": qid, "judgments": twice})
        loose = [{"doc_id": hits[0], "relevant": 1}]
        assert "relevant" in await error(client, "feedback", {"query_id": qid, "judgments": loose})

        verdicts = [{"doc_id": hits[0], "relevant": True}, {"doc_id": hits[2], "relevant": False}]
        out = await ok(client, "feedback", {"query_id": qid, "judgments": verdicts})
        assert out["doc_id"] is None and [(j["doc_id"], j["relevant"], j["replaced"]) for j in out["judged"]] == [
            (hits[0], True, False),
            (hits[2], False, False),
        ]
        assert recorded() == {hits[0]: True, hits[2]: False}
        one = await ok(client, "feedback", {"query_id": qid, "doc_id": hits[2], "relevant": True})
        assert (one["doc_id"], one["relevant"], one["replaced"]) == (hits[2], True, True)
        assert one["judged"] == [{"doc_id": hits[2], "relevant": True, "replaced": True, "stored": True}]
        assert recorded() == {hits[0]: True, hits[2]: True}

        for args, needle in (
            ({"query_id": qid}, "give doc_id and relevant"),
            ({"query_id": qid, "doc_id": hits[0]}, "relevant is missing"),
            ({"query_id": qid, "relevant": True}, "doc_id is missing"),
            ({"query_id": qid, "doc_id": hits[0], "relevant": True, "judgments": verdicts}, "not both"),
            ({"query_id": qid, "judgments": []}, "judgments"),
        ):
            assert needle in await error(client, "feedback", args), args


async def test_optional_text_arguments_that_look_like_json_stay_text(cfg: Settings) -> None:
    """The SDK decodes JSON in string arguments not typed exactly `str`: a document named "null" could not be
    judged, and list_documents(after="null") started over at the first page (a client paging looped)."""
    names = ["null", '["a"]', '{"x": 1}', "zz"]
    async with connect(cfg) as client:
        await ok(client, "add_documents", {"documents": [{"id": n, "text": f"tide pool note {n}"} for n in names]})
        search = await ok(client, "hybrid_search", {"query": "tide pool note", "k": 4})
        assert sorted(h["doc_id"] for h in search["hits"]) == sorted(names)
        for name in names:
            out = await ok(client, "feedback", {"query_id": search["query_id"], "doc_id": name, "relevant": True})
            assert out["doc_id"] == name
        pages, after = [], None
        while True:
            page = await ok(client, "list_documents", {"limit": 1, **({"after": after} if after else {})})
            pages += [d["doc_id"] for d in page["documents"]]
            after = page["next_after"]
            if after is None:
                break
            assert len(pages) <= len(names), pages
        assert pages == sorted(names)


async def test_feedback_says_when_the_judged_passage_is_no_longer_stored(cfg: Settings) -> None:
    """A verdict on a document deleted (or rewritten) since the search was accepted as if it would train,
    which it never can (found by helper DJ): it is still recorded, as the text may come back (a branch
    switched back), and the result says, for each document, that its passage is no longer stored."""
    async with connect(cfg) as client:
        texts = {d["id"]: d["text"] for d in corpus()}
        await ok(client, "add_documents", {"documents": corpus()})
        search = await ok(client, "hybrid_search", {"query": queries()[0], "k": 3})
        qid, hits = search["query_id"], [h["doc_id"] for h in search["hits"]]
        await ok(client, "delete_documents", {"ids": [hits[0]]})
        rewritten = {"id": hits[1], "text": "sugar salt recipe for a cake"}
        await ok(client, "add_documents", {"documents": [rewritten]})
        verdicts = [{"doc_id": d, "relevant": r} for d, r in zip(hits, (True, False, False), strict=True)]
        out = await ok(client, "feedback", {"query_id": qid, "judgments": verdicts})
        stored = [(j["doc_id"], j["stored"]) for j in out["judged"]]
        assert stored == [(hits[0], False), (hits[1], False), (hits[2], True)]
        assert out["stored"] is None  # (as doc_id, relevant and replaced: given with judgments)
        one = await ok(client, "feedback", {"query_id": qid, "doc_id": hits[0], "relevant": True})
        assert (one["replaced"], one["stored"]) == (True, False)  # recorded all the same

        await ok(client, "add_documents", {"documents": [{"id": hits[0], "text": texts[hits[0]]}]})  # back
        again = await ok(client, "feedback", {"query_id": qid, "doc_id": hits[0], "relevant": True})
        assert again["stored"] is True and again["judged"][0]["stored"] is True


async def test_verdicts_on_a_search_that_left_the_log_are_refused(cfg: Settings) -> None:
    """Checked where they are written: a search pruned (or its collection deleted) after feedback looked it up
    gets no verdicts, which nothing would ever remove."""
    from server.learning.query_log import QueryLog

    async with connect(cfg) as client:
        await ok(client, "add_documents", {"documents": corpus()})
        search = await ok(client, "hybrid_search", {"query": queries()[0], "k": 2})
        qid, hits = search["query_id"], [h["doc_id"] for h in search["hits"]]
        original = QueryLog.get

        def get_then_forget(self: QueryLog, query_id: str) -> Any:
            found = original(self, query_id)
            with self._lock:  # as a prune or a deleted collection would, just after the lookup
                self._conn.execute("DELETE FROM queries WHERE query_id = ?", (query_id,))
            return found

        QueryLog.get = get_then_forget  # type: ignore[method-assign]
        try:
            verdicts = [{"doc_id": hits[0], "relevant": True}]
            message = await error(client, "feedback", {"query_id": qid, "judgments": verdicts})
        finally:
            QueryLog.get = original  # type: ignore[method-assign]
        assert "left the log just now" in message and "nothing was recorded" in message
        assert "judgments[0].doc_id" in await error(
            client, "feedback", {"query_id": qid, "judgments": [{"doc_id": " ", "relevant": True}]}
        )


async def test_a_cancelled_job_says_it_is_stopping_and_a_new_retrain_says_why_it_waits(cfg: Settings) -> None:
    """retrain_status(cancel=true) on a job between two checks: the reply shows the cancel is pending, and a
    retrain meanwhile is refused naming the stopping job, not as if it simply ran on."""
    import threading

    from server.app import SERVING

    release = threading.Event()

    def work(job: Any) -> dict[str, Any]:
        job.enter("training", total=1)
        release.wait(30)  # one long training step
        job.check()
        return {"status": "succeeded"}

    async with connect(cfg) as client:
        await ok(client, "stats")  # the model has loaded
        job = SERVING[-1].learning.jobs.start("retrain", {}, work)
        try:
            before = await ok(client, "retrain_status", {})
            assert (before["job_id"], before["cancel_requested"]) == (job.id, False)
            cancelled = await ok(client, "retrain_status", {"cancel": True})
            assert (cancelled["status"], cancelled["phase"], cancelled["cancel_requested"]) == (
                "running",
                "training",
                True,
            )
            assert "was cancelled and is still stopping" in await error(client, "retrain", {})
        finally:
            release.set()
        done = await ok(client, "retrain_status", {"wait_seconds": 10})
        assert (done["status"], done["cancel_requested"]) == ("cancelled", True)


async def test_a_reindex_counts_its_re_chunking_and_its_wait_reports_it(
    tmp_path: Path, tiny_model_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """After a switch to a model that reads fewer tokens every stored document is cut again, which takes
    minutes on a large store: that phase counts documents across the collections as the other phases count
    theirs, and a wait's progress notifications go on through it (they stopped at switching)."""
    import json
    import shutil
    import time

    from server.app import SERVING
    from server.learning.jobs import Job
    from tools.retrain_status import PHASE_ORDER

    short = tmp_path / "short-model"
    shutil.copytree(tiny_model_path, short)
    config = json.loads((short / "sentence_bert_config.json").read_text())
    config["max_seq_length"] = 24
    (short / "sentence_bert_config.json").write_text(json.dumps(config))
    counted: list[tuple[int, int]] = []
    real_progress = Job.progress

    def slowed(job: Job, done: int, total: int) -> None:
        real_progress(job, done, total)
        if job.phase == "re-chunking":
            counted.append((done, total))
            time.sleep(0.6)  # the wait polls every 0.5 s: each count is seen

    monkeypatch.setattr(Job, "progress", slowed)
    text = " ".join(f"word{i} about the river and the sea" for i in range(12))
    async with connect(make_settings(tmp_path / "data", tiny_model_path)) as client:
        many = [{"id": f"d{i:02}", "text": f"{i} {text}"} for i in range(70)]
        await ok(client, "add_documents", {"documents": many})
        await ok(client, "add_documents", {"documents": [{"id": "o", "text": text}], "collection": "other"})
        started = SERVING[-1].learning.reindex(str(short))
        heard: list[tuple[float, str | None]] = []

        async def on_progress(value: float, total: float | None, message: str | None) -> None:
            heard.append((value, message))

        result = await client.call_tool(
            "retrain_status", {"job_id": started["job_id"], "wait_seconds": 120}, progress_callback=on_progress
        )
        done = result.structured_content
        assert done["status"] == "succeeded", done
        assert [p["phase"] for p in done["phases"]][-2:] == ["switching", "re-chunking"]
    # Batches of 64 documents, then the next collection; it ends with every document read.
    assert counted[0] == (64, 71) and counted[-1] == (71, 71)
    assert [d for d, _ in counted] == sorted(d for d, _ in counted)
    values = [v for v, _ in heard]
    assert values == sorted(set(values))  # still only increasing
    rechunking = [(v, m) for v, m in heard if m and m.startswith("reindex: re-chunking")]
    assert rechunking and all(v >= PHASE_ORDER["re-chunking"] for v, _ in rechunking)
    assert any(m and m.endswith("/71") for _, m in rechunking)
