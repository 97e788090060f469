"""Optional periodic retraining (off by default): start the same background retrain, through the same gate,
after `learn_auto_after_queries` new logged queries and/or every `learn_auto_interval_hours`, provided that at
least `learn_min_triples` triples can be mined. The check runs in a daemon thread every `check_seconds`; its
state (last check, last trigger and why) is shown in `stats`. The time of the last retrain, and the query log's
count of searches ever logged when the current window started, survive restarts (`models/policy.json`)."""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from typing import Any

log = logging.getLogger(__name__)


class Policy:
    def __init__(self, manager: Any, check_seconds: float = 60.0) -> None:
        self.manager = manager
        self.settings = manager.settings
        self.check_seconds = check_seconds
        self._path = self.settings.models_dir / "policy.json"
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.last_check: float | None = None
        self.last_outcome: str | None = None  # of the last check, "not due" included
        self.last_action: dict[str, Any] | None = (
            None  # the last time the policy started or skipped a retrain
        )
        state = {}
        if self._path.is_file():
            try:
                state = json.loads(self._path.read_text())
            except (OSError, ValueError):
                state = {}
        last = state.get("last_retrain")
        self.last_retrain: float | None = float(last) if isinstance(last, int | float) else None  # None: never
        # Counting restarts here: at the last retrain, or when a due retrain was skipped for too few triples
        # (so it waits for the next window rather than retrying every check), or when the data dir was new.
        # Not a retrain itself.
        start = state.get("window_start", self.last_retrain)
        self.window_start: float = float(start) if isinstance(start, int | float) else time.time()
        # The query log's searches_logged() when the window started: new searches are the difference. Counting
        # the rows logged since window_start instead could never pass log_max_queries (or the half of it that
        # judged searches leave), so a larger learn_auto_after_queries never came due. A policy file from before
        # this count (or a new one) starts it here (see new_searches); None while the log cannot be read.
        searches = state.get("window_searches")
        self.window_searches: int | None = (
            int(searches) if isinstance(searches, int) and not isinstance(searches, bool) else None
        )
        if self.window_searches is None and manager.rift.log is not None:
            try:
                self.new_searches()  # (persists what it starts)
            except Exception:  # never a reason not to start
                log.exception("could not read the query log's count of searches")
        if not self._path.is_file():
            self._persist()

    @property
    def enabled(self) -> bool:
        s = self.settings
        return s.learn_auto_after_queries is not None or s.learn_auto_interval_hours is not None

    def _persist(self) -> None:
        self._path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self._path.with_suffix(".tmp")
        state = {
            "last_retrain": self.last_retrain,
            "window_start": self.window_start,
            "window_searches": self.window_searches,
        }
        tmp.write_text(json.dumps(state))
        os.replace(tmp, self._path)

    def _restart_window(self, at: float | None = None) -> None:
        self.window_start = time.time() if at is None else at
        try:
            self.window_searches = self.manager.log.searches_logged()
        except Exception:  # (an unreadable log: the next reading counts from window_start, as new_searches says)
            log.exception("could not read the query log's count of searches")
            self.window_searches = None
        self._persist()

    def new_searches(self) -> int:
        """Searches logged since the window started, pruned or forgotten ones included."""
        total = self.manager.log.searches_logged()
        if self.window_searches is None:
            # A policy file from before this count (or none): the searches still logged since window_start
            # are the new ones, as they were counted before; from here on every logged search counts.
            self.window_searches = max(0, total - self.manager.log.count(since=self.window_start))
            self._persist()
        if total < self.window_searches:  # a new log (a damaged one was moved aside): all of it is new
            return total
        return total - self.window_searches

    def note_started(self) -> None:
        """Any retrain (manual or automatic) resets the counters."""
        self.last_retrain = time.time()
        self._restart_window(at=self.last_retrain)

    def start(self) -> None:
        if self.enabled and self._thread is None:
            self._thread = threading.Thread(target=self._loop, name="rift-learn-policy", daemon=True)
            self._thread.start()

    @property
    def running(self) -> bool:
        """Whether this process checks the policy on its own (a server does; a one-off command does not)."""
        return self._thread is not None and self._thread.is_alive()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)

    def _loop(self) -> None:
        while not self._stop.wait(self.check_seconds):
            try:
                self.check()
            except Exception:  # the policy must never take the server down
                log.exception("periodic retrain check failed")

    def due(self) -> tuple[bool, str]:
        s = self.settings
        new = self.new_searches()
        if s.learn_auto_after_queries is not None and new >= s.learn_auto_after_queries:
            return True, f"{new} new queries >= {s.learn_auto_after_queries}"
        hours = s.learn_auto_interval_hours
        if hours is not None and new > 0 and time.time() - self.window_start >= hours * 3600:
            return True, f"{s.learn_auto_interval_hours} h since the last retrain or skip, {new} new queries"
        return False, f"{new} new queries since the last retrain or skip"

    def check(self) -> str:
        """One policy evaluation; starts a retrain when due. Returns what happened."""
        self.last_check = time.time()
        if not self.enabled:
            self.last_outcome = "off"
            return self.last_outcome
        if self.manager.jobs.running is not None:
            self.last_outcome = "a job is running"
            return self.last_outcome
        due, why = self.due()
        if not due:
            self.last_outcome = f"not due: {why}"
            return self.last_outcome
        from server.errors import RiftError

        try:
            started = self.manager.retrain(source="policy", wait_for_mining=None)  # a skip is known at once
            self.last_outcome = f"started retrain job {started['job_id']} ({why})"
        except RiftError as exc:
            if self.manager.jobs.running is not None:  # another job started meanwhile: due at the next check
                self.last_outcome = "a job is running"
                return self.last_outcome
            # Not enough triples yet: wait for the next window rather than retrying every check.
            self._restart_window()
            self.last_outcome = f"skipped ({why}): {exc}"
        except Exception as exc:  # a failure of the attempt itself: logged once, tried again the next window
            log.exception("periodic retrain could not start")
            self._restart_window()
            self.last_outcome = f"failed to start ({why}): {type(exc).__name__}: {exc}"[:500]
        self.last_action = {"at": self.last_check, "outcome": self.last_outcome}
        log.info("periodic retrain: %s", self.last_outcome)
        return self.last_outcome

    def describe(self) -> dict[str, Any]:
        s = self.settings
        out: dict[str, Any] = {
            "enabled": self.enabled,
            "after_queries": s.learn_auto_after_queries,
            "interval_hours": s.learn_auto_interval_hours,
            "min_triples": s.learn_min_triples,
            "last_retrain": self.last_retrain,
            "window_start": self.window_start,
            "last_check": self.last_check,
            "last_outcome": self.last_outcome,
            "last_action": self.last_action,
        }
        if self.enabled and self.manager.rift.log is not None:
            out["new_queries_since_last_retrain"] = self.new_searches()
        return out
