"""The watchdog of live sessions: a thread on every API replica that ends the sessions whose worker is gone.

Each round (every second) it reads the sessions not ended and:
- ends a session whose job finished (the worker crashed: ``worker_crashed``; the job failed, was cancelled or
  timed out; or it completed without the worker reporting the end) with what the job says;
- ends a live session whose worker stopped beating for REALTIME_HEARTBEAT_TIMEOUT_S (``worker_lost``) and one
  still starting long after any create would have given up on it (its replica died), and cancels their jobs;
- cancels the job of a session that ended a while ago but whose worker has not stopped (it missed the end).

Ending is a compare-and-set on the row, so replicas running the same checks at once are harmless. A replica
that dies ends nothing: its sessions' workers go on talking to the other replicas.
"""

from __future__ import annotations

import logging
import threading
from datetime import timedelta

from orchestrator.core.db import utcnow
from orchestrator.core.live.service import LiveSessions
from orchestrator.core.live.store import SessionStatus, SessionView

log = logging.getLogger(__name__)

WATCH_INTERVAL_S = 1.0
STOP_GRACE_S = 15.0  # an ended session's worker has this long to stop before its job is cancelled
START_GRACE_S = 30.0  # beyond REALTIME_ANSWER_TIMEOUT_S: a session still starting then has no create waiting
FORGET_COMMANDS_AFTER_S = 86400.0


class SessionWatchdog:
    def __init__(self, sessions: LiveSessions, interval_s: float = WATCH_INTERVAL_S) -> None:
        self.sessions = sessions
        self.interval_s = interval_s
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._rounds = 0

    def start(self) -> None:
        if self._thread is not None and self._thread.is_alive():
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._loop, name="session-watchdog", daemon=True)
        self._thread.start()

    def stop(self, timeout_s: float = 5.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout_s)
            self._thread = None

    def _loop(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                self.check()
            except Exception:
                log.exception("session watchdog round failed")

    def check(self) -> None:
        """One round of the checks above."""
        live = self.sessions
        for session in live.store.not_ended():
            self._check_session(session)
        for session_id, job_id in live.store.ended_with_active_job(STOP_GRACE_S):
            log.warning("session %s ended but its job %s still runs; cancelling it", session_id, job_id)
            live.jobs.cancel(job_id)
        self._rounds += 1
        if self._rounds % 3600 == 1:
            live.store.forget_ended(FORGET_COMMANDS_AFTER_S)

    def _check_session(self, session: SessionView) -> None:
        live, settings = self.sessions, self.sessions.settings
        job = live.jobs.get(session.job_id) if session.job_id else None
        if job is not None and job.finished:
            live.end_from_job(session, job)
            return
        now = utcnow()
        if session.status == SessionStatus.live.value:
            last = session.heartbeat_at or session.answered_at or session.created_at
            silent_s = (now - last).total_seconds()
            if silent_s > settings.realtime_heartbeat_timeout_s:
                message = f"The session's worker sent no heartbeat for {silent_s:.0f} s; it is presumed dead."
                self._end_and_cancel(session, "worker_lost", message)
        elif now - session.created_at > timedelta(seconds=settings.realtime_answer_timeout_s + START_GRACE_S):
            self._end_and_cancel(session, "no_worker_answer", "The session never got an answer from a worker.")

    def _end_and_cancel(self, session: SessionView, code: str, message: str) -> None:
        live = self.sessions
        if live.end_with(session.session_id, "error", code, message) and session.job_id:
            live.jobs.cancel(session.job_id)
