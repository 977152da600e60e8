"""``LiveSessions``: live sessions run on workers as the long-running task ``live_session``, tracked in the database.

A create reserves a slot (the caps are counted in the same transaction as the insert), starts the session's job
through ``BACKEND_LIVE_SESSION`` and waits, bounded by REALTIME_ANSWER_TIMEOUT_S, for the worker to post its SDP
answer on the session's control routes; anything that fails on the way ends the session and cancels its job, so
the slot is free again. The worker only dials out: it authenticates with the session's random control token
(only its SHA-256 is stored), long-polls its commands (``say``, ``interrupt``) and posts events (``said``
completes the waiting ``/say`` or play, ``heartbeat`` proves it alive) and its end. Every state lives in the database,
so any replica answers any of these calls, and waits end on a notification (``signals``) or a short poll.
``orchestrator.core.live.watchdog`` ends the sessions whose worker died.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import hmac
import logging
import secrets
import time
import uuid
from datetime import timedelta
from typing import Any

from anyio import to_thread

from handlers.errors import TaskError
from handlers.schemas import (
    LIVE_SESSION_TASK,
    LiveAnswer,
    LiveSessionRequest,
    SessionCommand,
    SessionCommands,
    SessionDescription,
    SessionEnd,
    SessionEvents,
)
from orchestrator.core.db import utcnow
from orchestrator.core.live.ice import ice_servers_for
from orchestrator.core.live.offer import check_sdp
from orchestrator.core.live.signals import SESSIONS_CHANNEL, SessionSignals
from orchestrator.core.live.store import SessionError, SessionStatus, SessionStore, SessionView
from orchestrator.core.metrics import SessionMetrics
from orchestrator.core.models import MASK, JobStatus, JobView
from orchestrator.core.service import JobService

log = logging.getLogger(__name__)

POLL_S = 0.25  # every wait re-reads the database this often, whatever notifications say
MAX_COMMAND_WAIT_S = 30.0
TURN_TTL_MARGIN_S = 600.0  # TURN credentials outlive the longest session by this much
NOT_FOUND_CODES = frozenset({"not_found", "avatar_not_found", "session_not_found"})
CAPACITY_CODES = frozenset({"too_many_sessions", "no_worker_answer", "worker_unhealthy", "runpod_unavailable"})
WORKER_FAILURE_CODES = frozenset(
    {
        "worker_crashed",
        "worker_lost",
        "remote_failed",
        "remote_job_lost",
        "internal_error",
        "orchestrator_restarted",
        "invalid_answer",
        "control_lost",
        "control_refused",
    }
)


def new_session_id() -> str:
    return uuid.uuid4().hex


def token_digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def refusal(code: str | None, message: str | None) -> SessionError:
    """A create that its worker (or its job) refused, with the HTTP status its code calls for."""
    code = code or "worker_failed"
    if code in NOT_FOUND_CODES:
        status = 404
    elif code in CAPACITY_CODES:
        status = 503
    elif code in WORKER_FAILURE_CODES or code in {"cancelled", "timeout"}:
        status = 502
    else:
        status = 422
    return SessionError(code, message or f"The session's worker ended it ({code}).", status)


def ended_error(session: SessionView) -> SessionError:
    detail = f" ({session.error_code}: {session.error})" if session.error_code else ""
    return SessionError("session_ended", f"Session {session.session_id} ended: {session.end_reason}{detail}.", 409)


def not_found(session_id: str) -> SessionError:
    return SessionError("session_not_found", f"No live session {session_id!r}.", 404)


class LiveSessions:
    """The live sessions of one API replica; ``jobs`` runs their ``live_session`` jobs."""

    def __init__(self, jobs: JobService, metrics: SessionMetrics | None = None) -> None:
        self.jobs = jobs
        self.settings = jobs.settings
        self.store = SessionStore(jobs.store)
        self.signals = SessionSignals(jobs.store.engine)
        self.metrics = metrics or SessionMetrics()
        jobs.replica.listeners[SESSIONS_CHANNEL] = self.signals.wake

    # ---- what clients do ----------------------------------------------------------------------

    @property
    def backend_kind(self) -> str:
        return self.jobs.backend_for_task(LIVE_SESSION_TASK).kind.value

    def ice_servers(self, label: str) -> list[dict[str, Any]]:
        """The ICE servers for one peer, TURN credentials (TURN_SECRET) labelled ``label``."""
        ttl_s = self.settings.live_session_timeout_s + TURN_TTL_MARGIN_S
        return ice_servers_for(self.settings.ice_servers, self.settings.turn_secret, label, ttl_s)

    async def create(self, fields: dict[str, Any], control_base: str) -> tuple[SessionView, SessionDescription]:
        """Start a session from a client's request fields (user_id, avatar_id | image, store, offer, engine, voice)
        and wait for its worker's answer. ``control_base``: where the worker reaches this API."""
        check_sdp(fields["offer"]["sdp"])
        session_id, token = new_session_id(), secrets.token_urlsafe(32)
        control = {"url": f"{control_base}/v1/sessions/{session_id}/worker", "token": token}
        limits = {
            "max_duration_s": self.settings.realtime_max_duration_s,
            "idle_timeout_s": self.settings.realtime_idle_timeout_s,
        }
        task = {**fields, "task": LIVE_SESSION_TASK, "session_id": session_id, **limits}
        task["ice_servers"] = self.ice_servers(session_id)
        try:
            LiveSessionRequest.model_validate({**task, "control": control})
        except ValueError as exc:
            raise TaskError("invalid_input", f"Invalid live session: {exc}") from None
        user_id = fields["user_id"]
        row = {"id": session_id, "user_id": user_id, "backend": self.backend_kind, "token_hash": token_digest(token)}
        caps = (self.settings.realtime_max_sessions, self.settings.realtime_max_sessions_per_user)
        session = await to_thread.run_sync(self.store.reserve, row, *caps)
        started = time.monotonic()
        try:
            stored = await to_thread.run_sync(self.jobs.stage_inputs, task)
            sent, kept = {**stored, "control": control}, {**stored, "control": {**control, "token": MASK}}
            job = await to_thread.run_sync(self.jobs.start_validated, LIVE_SESSION_TASK, kept, user_id, sent)
            await to_thread.run_sync(self.store.set_job, session_id, job.id)
            answer = await self._wait_answer(session_id, job.id)
        except BaseException as exc:
            await asyncio.shield(to_thread.run_sync(self._tear_down, session_id, exc))
            raise
        self.metrics.created.labels(session.backend).inc()
        self.metrics.answer_seconds.observe(time.monotonic() - started)
        log.info("session %s live for %s (job %s)", session_id, user_id, job.id)
        return self.get(session_id), SessionDescription(sdp=answer, type="answer")

    def _tear_down(self, session_id: str, exc: BaseException) -> None:
        """A create that failed: end the session (its slot is free) and cancel its job."""
        code = getattr(exc, "code", None) or "cancelled"
        message = getattr(exc, "message", None) or f"The session was not started ({type(exc).__name__})."
        self.end_with(session_id, "error", code, message)
        session = self.store.get(session_id)
        if session is not None and session.job_id:
            self.jobs.cancel(session.job_id)
        log.info("session %s not started: %s", session_id, message)

    async def _wait_answer(self, session_id: str, job_id: str) -> str:
        deadline = time.monotonic() + self.settings.realtime_answer_timeout_s
        with self.signals.subscribe(session_id) as waiter:
            while True:
                session = await to_thread.run_sync(self.store.get, session_id)
                if session is None:
                    raise not_found(session_id)
                if session.status == SessionStatus.live.value:
                    return await to_thread.run_sync(self.store.answer_of, session_id) or ""
                if session.ended:
                    raise refusal(session.error_code, session.error)
                job = await to_thread.run_sync(self.jobs.get, job_id)
                if job is not None and job.finished:
                    raise refusal(job.error_code, job.error or f"The session's job ended ({job.status}).")
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise SessionError(
                        "no_worker_answer",
                        f"No worker answered within {self.settings.realtime_answer_timeout_s:g} s"
                        " (REALTIME_ANSWER_TIMEOUT_S); the session was cancelled. Try again.",
                        503,
                        retry_after_s=5,
                    )
                await waiter.wait(min(remaining, POLL_S))

    def get(self, session_id: str) -> SessionView:
        session = self.store.get(session_id)
        if session is None:
            raise not_found(session_id)
        return session

    def _live(self, session_id: str) -> SessionView:
        session = self.get(session_id)
        if session.ended:
            raise ended_error(session)
        return session

    async def say(self, session_id: str, text: str, voice: dict[str, Any] | None, queued: bool = False) -> float:
        """Have the worker speak ``text``, cutting off what plays (``queued``: after it); its duration once the
        worker has it scheduled."""
        return await self._speak(session_id, "say", {"text": text, "voice": voice, "queued": queued})

    async def play(self, session_id: str, audio_uri: str, queued: bool = False) -> float:
        """Have the worker play the speech file ``audio_uri``, cutting off what plays (``queued``: after it)."""
        return await self._speak(session_id, "play", {"audio": audio_uri, "queued": queued})

    def is_speaking(self, session_id: str) -> bool:
        """Whether the session's avatar speaks now: a say or play since the last cut is still being made, or
        the speech scheduled (each ``duration_s`` from when the worker had it, a queued one after the one
        before) has not run out."""
        if self.get(session_id).ended:
            return False
        until = None
        for command in self.store.current_speech(session_id):
            if command.kind == "interrupt":
                until = None
            elif command.done_at is None:
                return True
            elif not command.error_code:
                start = max(until, command.done_at) if command.queued and until else command.done_at
                until = start + timedelta(seconds=command.duration_s or 0.0)
        return until is not None and utcnow() < until

    async def _speak(self, session_id: str, kind: str, fields: dict[str, Any]) -> float:
        deadline = time.monotonic() + self.settings.realtime_say_timeout_s
        started, what = time.monotonic(), "text" if kind == "say" else "audio"
        with self.signals.subscribe(session_id) as waiter:
            seq = await self._command(session_id, kind, **fields)
            while True:
                command = await to_thread.run_sync(self.store.command, session_id, seq)
                if command is not None and command.done_at is not None:
                    if command.error_code:
                        raise SessionError(command.error_code, command.error or f"The worker refused the {what}.", 422)
                    self.metrics.say_seconds.observe(time.monotonic() - started)
                    return float(command.duration_s or 0.0)
                session = await to_thread.run_sync(self.get, session_id)
                if session.ended:
                    raise ended_error(session)
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    limit = self.settings.realtime_say_timeout_s
                    message = f"The worker did not confirm the {what} within {limit:g} s."
                    raise SessionError("say_timeout", message, 504)
                await waiter.wait(min(remaining, POLL_S))

    async def interrupt(self, session_id: str) -> int:
        return await self._command(session_id, "interrupt")

    async def _command(self, session_id: str, kind: str, **fields: Any) -> int:
        seq = await to_thread.run_sync(functools.partial(self.store.add_command, session_id, kind, **fields))
        if seq is None:
            session = self.get(session_id)
            if session.ended:
                raise ended_error(session)
            raise SessionError("session_not_ready", f"Session {session_id} has no answer from its worker yet.", 409)
        self.signals.notify(session_id)
        return seq

    def end(self, session_id: str) -> SessionView:
        """End a session at the client's request (its worker stops at its next poll; its job ends with it)."""
        self.end_with(session_id, "stopped")
        return self.get(session_id)

    def end_with(self, session_id: str, reason: str, code: str | None = None, error: str | None = None) -> bool:
        ended = self.store.end(session_id, reason, code, error)
        if ended:
            self.metrics.ended.labels(reason, code or "").inc()
            self.signals.notify(session_id)
            log.info("session %s ended: %s%s", session_id, reason, f" ({code}: {error})" if code else "")
        return ended

    # ---- what the worker does (authenticated by the session's control token) -----------------

    def authenticate(self, session_id: str, token: str | None) -> None:
        digest = self.store.token_hash(session_id)
        if digest is None:
            raise not_found(session_id)
        if not token or not hmac.compare_digest(token_digest(token), digest):
            raise SessionError("unauthorized", "This session's control token is required.", 401)

    def worker_answer(self, session_id: str, answer: LiveAnswer) -> SessionView:
        session = self._live(session_id)
        if session.status == SessionStatus.live.value:
            raise SessionError("already_answered", f"Session {session_id} has its answer already.", 409)
        try:
            if answer.answer.type != "answer":
                raise TaskError("invalid_sdp", "The answer's `type` must be `answer`.")
            check_sdp(answer.answer.sdp, "answer")
        except TaskError as exc:
            self.end_with(session_id, "error", "invalid_answer", exc.message)
            raise SessionError("invalid_answer", exc.message, 422) from None
        if not self.store.set_answer(session_id, answer.answer.sdp, answer.engine):
            raise ended_error(self.get(session_id))
        self.signals.notify(session_id)
        return self.get(session_id)

    async def worker_commands(self, session_id: str, after: int, wait_s: float) -> SessionCommands:
        """The commands after ``after`` (long poll: waits up to ``wait_s`` for one); session_ended (410) once over."""
        deadline = time.monotonic() + min(max(wait_s, 0.0), MAX_COMMAND_WAIT_S)
        with self.signals.subscribe(session_id) as waiter:
            while True:
                session = await to_thread.run_sync(self.get, session_id)
                if session.ended:
                    raise SessionError("session_ended", f"Session {session_id} ended ({session.end_reason}).", 410)
                commands = await to_thread.run_sync(self.store.commands_after, session_id, after)
                remaining = deadline - time.monotonic()
                if commands or remaining <= 0:
                    return SessionCommands(commands=[SessionCommand.model_validate(c.model_dump()) for c in commands])
                await waiter.wait(min(remaining, POLL_S))

    def worker_events(self, session_id: str, events: SessionEvents) -> None:
        session = self.get(session_id)
        if session.ended:
            raise SessionError("session_ended", f"Session {session_id} ended ({session.end_reason}).", 410)
        for event in events.events:
            stats = event.stats.model_dump() if event.stats is not None else None
            if event.kind == "heartbeat":
                self.store.beat(session_id, stats)
            elif event.seq is not None and event.kind == "said":
                self.store.command_done(session_id, event.seq, duration_s=event.duration_s or 0.0)
            elif event.seq is not None:  # an error answering a command
                code = (event.error_code or "worker_error")[:64]
                self.store.command_done(session_id, event.seq, error_code=code, error=event.error or code)
            else:
                log.warning("session %s: worker error %s: %s", session_id, event.error_code, event.error)
        self.signals.notify(session_id)

    def worker_end(self, session_id: str, end: SessionEnd) -> SessionView:
        """The worker's end of the session: its reason (unless the session had ended already) and final stats."""
        self.get(session_id)
        self.end_with(session_id, end.reason, end.error_code, end.error)
        self.store.final_stats(session_id, end.stats.model_dump())
        return self.get(session_id)

    # ---- the watchdog's checks --------------------------------------------------------------

    def end_from_job(self, session: SessionView, job: JobView) -> None:
        """The session's job finished before the session ended: end it with what the job says."""
        output = job.output if isinstance(job.output, dict) else {}
        if job.status == JobStatus.completed.value:
            self.end_with(session.session_id, str(output.get("reason") or "closed"))
        elif job.status == JobStatus.cancelled.value:
            self.end_with(session.session_id, "stopped", "cancelled", job.error)
        else:
            code = job.error_code or ("timeout" if job.status == JobStatus.timed_out.value else "worker_failed")
            self.end_with(session.session_id, "error", code, job.error)
        if isinstance(output.get("stats"), dict):
            self.store.final_stats(session.session_id, output["stats"])
