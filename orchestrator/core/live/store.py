"""Live sessions in the job database: the ``sessions`` row (state, control token hash, answer, heartbeat, end) and
the ``session_commands`` rows (what the worker is told to do, and what it answered), both on the jobs' engine.

Every state change is a compare-and-set on the row (``status`` moves starting -> live -> ended, never back), so
replicas, the worker's retries and the watchdog racing each other are harmless. A new session is reserved in one
transaction that counts the live ones first (PostgreSQL: under an advisory lock, so creates on every replica take
turns; SQLite has one replica: a lock in this process), so concurrent creates can never pass the caps.
"""

from __future__ import annotations

import threading
from datetime import datetime, timedelta
from enum import Enum
from typing import Any

from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import func, insert, select, text, update

from handlers.schemas import LiveSessionStats
from orchestrator.core.db import CommandRow, JobRow, JobStore, SessionRow, utcnow
from orchestrator.core.models import ACTIVE_STATUSES, OrchestratorError

SESSIONS_LOCK_KEY = 0x61766174_6C697665  # 'avatlive': the advisory lock of session reservations
MAX_COMMANDS_PER_POLL = 32
SPEECH_COMMANDS = ("say", "play", "interrupt")
_SQLITE_RESERVE = threading.Lock()


class SessionStatus(str, Enum):
    starting = "starting"  # the job is submitted; no answer from its worker yet
    live = "live"  # the worker answered: media flows browser <-> worker
    ended = "ended"


class SessionView(BaseModel):
    """A live session as ``GET /v1/sessions/{id}`` answers it."""

    model_config = ConfigDict(from_attributes=True, use_enum_values=True)

    session_id: str = Field(validation_alias="id")
    user_id: str
    status: SessionStatus = Field(description="`starting` (waiting for its worker), `live`, `ended`.")
    job_id: str | None = Field(None, description="The `live_session` job running it (GET /v1/jobs/{id}).")
    backend: str
    engine: dict[str, Any] | None = Field(None, description="The engine the worker renders with.")
    stats: LiveSessionStats | None = Field(None, description="The worker's last report (heartbeat or end).")
    end_reason: str | None = Field(None, description="Why it ended: closed, stopped, idle, max_duration, ...")
    error_code: str | None = None
    error: str | None = None
    created_at: datetime
    answered_at: datetime | None = None
    heartbeat_at: datetime | None = None
    ended_at: datetime | None = None

    @property
    def ended(self) -> bool:
        return self.status == SessionStatus.ended.value


class CommandView(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    seq: int
    kind: str
    text: str | None = None
    voice: dict[str, Any] | None = None
    audio: str | None = None
    queued: bool = False
    created_at: datetime | None = None
    done_at: datetime | None = None
    duration_s: float | None = None
    error_code: str | None = None
    error: str | None = None


class SessionError(OrchestratorError):
    """A refusal about a live session, with its HTTP status (a cap reached also says when to retry)."""

    def __init__(self, code: str, message: str, http_status: int, retry_after_s: int | None = None) -> None:
        super().__init__(code, message)
        self.http_status = http_status
        self.headers = {"Retry-After": str(retry_after_s)} if retry_after_s else None


_SESSION_COLUMNS = tuple(SessionRow.__table__.columns)
_COMMAND_COLUMNS = tuple(CommandRow.__table__.columns)
_NOT_ENDED = SessionRow.status != SessionStatus.ended.value


class SessionStore:
    """The session queries of a ``JobStore``'s database; each method is one short transaction."""

    def __init__(self, jobs: JobStore) -> None:
        self.jobs = jobs
        self.engine = jobs.engine

    @property
    def dialect(self) -> str:
        return self.jobs.dialect

    # ---- sessions ---------------------------------------------------------------------------

    def reserve(self, row: dict[str, Any], max_total: int, max_per_user: int) -> SessionView:
        """Insert a starting session unless a cap is reached (SessionError, nothing inserted)."""
        if self.dialect == "sqlite":
            with _SQLITE_RESERVE:
                return self._reserve(row, max_total, max_per_user)
        return self._reserve(row, max_total, max_per_user)

    def _reserve(self, row: dict[str, Any], max_total: int, max_per_user: int) -> SessionView:
        values = {"status": SessionStatus.starting.value, "command_seq": 0, "created_at": utcnow(), **row}
        with self.engine.begin() as conn:
            if self.dialect == "postgresql":
                conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": SESSIONS_LOCK_KEY})
            counts = select(SessionRow.user_id, func.count()).where(_NOT_ENDED).group_by(SessionRow.user_id)
            per_user = dict(conn.execute(counts).all())
            if sum(per_user.values()) >= max_total:
                raise SessionError(
                    "too_many_sessions",
                    f"The service runs {max_total} live sessions at most (REALTIME_MAX_SESSIONS); try again later.",
                    503,
                    retry_after_s=5,
                )
            if per_user.get(values["user_id"], 0) >= max_per_user:
                raise SessionError(
                    "user_session_limit",
                    f"User {values['user_id']!r} has {max_per_user} live sessions already"
                    " (REALTIME_MAX_SESSIONS_PER_USER): end one first.",
                    429,
                    retry_after_s=5,
                )
            conn.execute(insert(SessionRow).values(**values))
        return SessionView.model_validate({c.name: values.get(c.name) for c in _SESSION_COLUMNS})

    def get(self, session_id: str) -> SessionView | None:
        with self.engine.connect() as conn:
            row = conn.execute(select(*_SESSION_COLUMNS).where(SessionRow.id == session_id)).first()
        return SessionView.model_validate(row._mapping) if row else None

    def token_hash(self, session_id: str) -> str | None:
        with self.engine.connect() as conn:
            return conn.execute(select(SessionRow.token_hash).where(SessionRow.id == session_id)).scalar()

    def answer_of(self, session_id: str) -> str | None:
        with self.engine.connect() as conn:
            return conn.execute(select(SessionRow.answer).where(SessionRow.id == session_id)).scalar()

    def not_ended(self) -> list[SessionView]:
        with self.engine.connect() as conn:
            rows = conn.execute(select(*_SESSION_COLUMNS).where(_NOT_ENDED).order_by(SessionRow.created_at))
            return [SessionView.model_validate(row._mapping) for row in rows]

    def counts(self) -> dict[str, int]:
        """Sessions per status."""
        with self.engine.connect() as conn:
            rows = conn.execute(select(SessionRow.status, func.count()).group_by(SessionRow.status))
            return dict(rows.all())

    def _change(self, session_id: str, values: dict[str, Any], *statuses: SessionStatus) -> bool:
        query = update(SessionRow).where(SessionRow.id == session_id)
        if statuses:
            query = query.where(SessionRow.status.in_([s.value for s in statuses]))
        with self.engine.begin() as conn:
            return conn.execute(query.values(**values)).rowcount == 1

    def set_job(self, session_id: str, job_id: str) -> bool:
        return self._change(session_id, {"job_id": job_id}, SessionStatus.starting)

    def set_answer(self, session_id: str, sdp: str, engine: dict[str, Any]) -> bool:
        """The worker's answer: starting -> live (once)."""
        now = utcnow()
        values = {"status": SessionStatus.live.value, "answer": sdp, "engine": engine, "answered_at": now}
        return self._change(session_id, {**values, "heartbeat_at": now}, SessionStatus.starting)

    def beat(self, session_id: str, stats: dict[str, Any] | None) -> bool:
        values: dict[str, Any] = {"heartbeat_at": utcnow()}
        if stats is not None:
            values["stats"] = stats
        return self._change(session_id, values, SessionStatus.starting, SessionStatus.live)

    def end(self, session_id: str, reason: str, error_code: str | None = None, error: str | None = None) -> bool:
        """Mark the session ended (once: the first reason stays); True when this call ended it."""
        values = {"status": SessionStatus.ended.value, "end_reason": reason, "ended_at": utcnow(), "answer": None}
        values.update(error_code=error_code, error=error)
        return self._change(session_id, values, SessionStatus.starting, SessionStatus.live)

    def final_stats(self, session_id: str, stats: dict[str, Any]) -> None:
        """The worker's last statistics, kept even when the session had ended already."""
        self._change(session_id, {"stats": stats})

    # ---- commands ---------------------------------------------------------------------------

    def add_command(self, session_id: str, kind: str, **fields: Any) -> int | None:
        """Append a command for the worker (``fields``: text, voice, audio, queued); its seq, or None when the
        session is not live."""
        with self.engine.begin() as conn:
            bumped = conn.execute(
                update(SessionRow)
                .where(SessionRow.id == session_id, SessionRow.status == SessionStatus.live.value)
                .values(command_seq=SessionRow.command_seq + 1)
            )
            if bumped.rowcount != 1:
                return None
            seq = conn.execute(select(SessionRow.command_seq).where(SessionRow.id == session_id)).scalar_one()
            row = {"session_id": session_id, "seq": seq, "kind": kind, **fields}
            conn.execute(insert(CommandRow).values(**row, created_at=utcnow()))
        return seq

    def commands_after(self, session_id: str, after: int) -> list[CommandView]:
        query = (
            select(*_COMMAND_COLUMNS)
            .where(CommandRow.session_id == session_id, CommandRow.seq > after)
            .order_by(CommandRow.seq)
            .limit(MAX_COMMANDS_PER_POLL)
        )
        with self.engine.connect() as conn:
            return [CommandView.model_validate(row._mapping) for row in conn.execute(query)]

    def command(self, session_id: str, seq: int) -> CommandView | None:
        query = select(*_COMMAND_COLUMNS).where(CommandRow.session_id == session_id, CommandRow.seq == seq)
        with self.engine.connect() as conn:
            row = conn.execute(query).first()
        return CommandView.model_validate(row._mapping) if row else None

    def current_speech(self, session_id: str) -> list[CommandView]:
        """The session's ``say``, ``play`` and ``interrupt`` commands from the latest that cut off what played
        (an interrupt, or a say or play not queued) on, oldest first: what decides whether it speaks now."""
        query = (
            select(*_COMMAND_COLUMNS)
            .where(CommandRow.session_id == session_id, CommandRow.kind.in_(SPEECH_COMMANDS))
            .order_by(CommandRow.seq.desc())
            .limit(MAX_COMMANDS_PER_POLL)
        )
        with self.engine.connect() as conn:
            latest = [CommandView.model_validate(row._mapping) for row in conn.execute(query)]
        cut = next((i for i, c in enumerate(latest) if c.kind == "interrupt" or not c.queued), len(latest) - 1)
        return latest[: cut + 1][::-1]

    def command_done(self, session_id: str, seq: int, **values: Any) -> bool:
        """Record the worker's answer to a command (once)."""
        query = update(CommandRow).where(
            CommandRow.session_id == session_id, CommandRow.seq == seq, CommandRow.done_at.is_(None)
        )
        with self.engine.begin() as conn:
            return conn.execute(query.values(done_at=utcnow(), **values)).rowcount == 1

    def ended_with_active_job(self, grace_s: float) -> list[tuple[str, str]]:
        """(session id, job id) of sessions ended over ``grace_s`` ago whose job still runs (the worker goes on)."""
        cutoff = utcnow() - timedelta(seconds=grace_s)
        query = (
            select(SessionRow.id, JobRow.id)
            .join(JobRow, JobRow.id == SessionRow.job_id)
            .where(SessionRow.status == SessionStatus.ended.value, SessionRow.ended_at < cutoff)
            .where(JobRow.status.in_(sorted(ACTIVE_STATUSES)))
        )
        with self.engine.connect() as conn:
            return [(session_id, job_id) for session_id, job_id in conn.execute(query)]

    def forget_ended(self, older_than_s: float) -> int:
        """Delete the commands of sessions that ended long ago (their rows stay for GET)."""
        cutoff = utcnow() - timedelta(seconds=older_than_s)
        ended = select(SessionRow.id).where(SessionRow.status == SessionStatus.ended.value)
        ended = ended.where(SessionRow.ended_at < cutoff)
        with self.engine.begin() as conn:
            return conn.execute(CommandRow.__table__.delete().where(CommandRow.session_id.in_(ended))).rowcount
