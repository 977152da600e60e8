"""The poller thread: refreshes every active job, remote ones with a backoff, until stopped."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from orchestrator.core.config import OrchestratorSettings
from orchestrator.core.db import JobStore, utcnow
from orchestrator.core.models import JobView

log = logging.getLogger(__name__)

POLL_BACKOFF = 1.5


class Poller:
    """Refreshes active jobs: every round when ``needs_work(job)`` (a cheap status, an unsubmitted job) or
    past its deadline, else at an interval growing from POLL_INTERVAL_S to POLL_MAX_INTERVAL_S."""

    def __init__(
        self,
        store: JobStore,
        settings: OrchestratorSettings,
        refresh: Callable[[JobView], JobView],
        needs_work: Callable[[JobView], bool],
        active: Callable[[], list[JobView]] | None = None,
    ) -> None:
        self.store = store
        self.active = active or store.active  # a replica passes its leased jobs
        self.settings = settings
        self.refresh = refresh
        self.needs_work = needs_work
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._schedule: dict[str, tuple[float, float]] = {}

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def wake(self) -> None:
        self._wake.set()

    def start(self) -> None:
        if self.running:
            return
        self._stop.clear()
        log.info("job poller starting; %d unfinished job(s) to resume", len(self.store.active()))
        self._thread = threading.Thread(target=self._loop, name="job-poller", daemon=True)
        self._thread.start()

    def stop(self, timeout_s: float) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout_s)
            self._thread = None

    def _loop(self) -> None:
        while not self._stop.is_set():
            self._wake.clear()
            try:
                sleep_s = self._round()
            except Exception:
                log.exception("poll round failed")
                sleep_s = self.settings.poll_interval_s
            self._wake.wait(sleep_s)

    def _round(self) -> float:
        """Refresh every due job; returns how long to sleep before the next round."""
        now = time.monotonic()
        first = self.settings.poll_interval_s
        schedule: dict[str, tuple[float, float]] = {}
        for job in self.active():
            if self._stop.is_set():
                break
            due_at, interval = self._schedule.get(job.id, (now + first, first))
            overdue = job.deadline_at is not None and utcnow() >= job.deadline_at
            if self.needs_work(job) or overdue or now >= due_at:
                try:
                    job = self.refresh(job)
                except Exception:
                    log.exception("refreshing job %s failed", job.id)
                if now >= due_at:
                    interval = min(interval * POLL_BACKOFF, self.settings.poll_max_interval_s)
                    due_at = time.monotonic() + interval
            if not job.finished:
                schedule[job.id] = (due_at, interval)
        self._schedule = schedule
        next_due = min((due for due, _ in schedule.values()), default=now + first)
        return max(0.02, min(first, next_due - time.monotonic()))
