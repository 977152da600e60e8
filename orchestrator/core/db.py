"""The job table and ``JobStore``: SQLite (WAL, busy timeout) by default, PostgreSQL through DATABASE_URL.

Every state change is a compare-and-set ``UPDATE ... WHERE id = ? AND status IN (...)``: a finished job
never changes again, so webhook replays, racing pollers and late results are harmless.
"""

from __future__ import annotations

import logging
import re
import uuid
from collections.abc import Iterable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from sqlalchemy import (
    JSON,
    Boolean,
    DateTime,
    Float,
    Index,
    Integer,
    String,
    Text,
    TypeDecorator,
    and_,
    create_engine,
    event,
    false,
    func,
    insert,
    or_,
    select,
    text,
    update,
)
from sqlalchemy.engine import URL, Engine, make_url
from sqlalchemy.exc import ArgumentError, IntegrityError
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.pool import StaticPool

from orchestrator.core.models import ACTIVE_STATUSES, JobEvent, JobView, sources, target
from orchestrator.core.schema import upgrade_schema

log = logging.getLogger(__name__)

SQLITE_BUSY_TIMEOUT_MS = 10_000
MAX_LIST_LIMIT = 1000


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


def new_job_id() -> str:
    return uuid.uuid4().hex


class DuplicateIdempotencyKey(Exception):
    """Another job already holds this idempotency key."""


class UTCDateTime(TypeDecorator):
    """Timezone-aware UTC datetimes on every database (SQLite stores them naive, in UTC)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime: pass an aware UTC datetime")
        value = value.astimezone(timezone.utc)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=timezone.utc) if value.tzinfo is None else value.astimezone(timezone.utc)


class Base(DeclarativeBase):
    pass


class JobRow(Base):
    __tablename__ = "jobs"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    task: Mapped[str] = mapped_column(String(32))
    user_id: Mapped[str | None] = mapped_column(String(64), index=True)
    status: Mapped[str] = mapped_column(String(16))
    backend: Mapped[str] = mapped_column(String(16))
    endpoint: Mapped[str | None] = mapped_column(String(255))
    remote_id: Mapped[str | None] = mapped_column(String(128))
    input: Mapped[dict] = mapped_column(JSON(none_as_null=True))
    output: Mapped[Any] = mapped_column(JSON(none_as_null=True), nullable=True)
    error: Mapped[str | None] = mapped_column(Text)
    error_code: Mapped[str | None] = mapped_column(String(64))
    progress: Mapped[Any] = mapped_column(JSON(none_as_null=True), nullable=True)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    idempotency_key: Mapped[str | None] = mapped_column(String(330), unique=True)  # "{user_id}/{key}"
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime())
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    deadline_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    # Scale-out (orchestrator.core.leases): the replica working on the job and until when; a local runner's last beat.
    lease_owner: Mapped[str | None] = mapped_column(String(64))
    lease_expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    heartbeat_at: Mapped[datetime | None] = mapped_column(UTCDateTime())

    __table_args__ = (
        Index("ix_jobs_status_created", "status", "created_at"),
        Index("ix_jobs_task_created", "task", "created_at"),
    )


class ReplicaRow(Base):
    """A running replica (``avatarctl serve`` or ``work``) and its last heartbeat."""

    __tablename__ = "replicas"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    host: Mapped[str] = mapped_column(String(255))
    pid: Mapped[int] = mapped_column(Integer)
    role: Mapped[str] = mapped_column(String(16))
    started_at: Mapped[datetime] = mapped_column(UTCDateTime())
    heartbeat_at: Mapped[datetime] = mapped_column(UTCDateTime())


class SessionRow(Base):
    """A live session (orchestrator.core.live): its state, its worker's control token (hashed), answer and end."""

    __tablename__ = "sessions"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    user_id: Mapped[str] = mapped_column(String(64))
    status: Mapped[str] = mapped_column(String(16))
    job_id: Mapped[str | None] = mapped_column(String(32))
    backend: Mapped[str] = mapped_column(String(16))
    token_hash: Mapped[str] = mapped_column(String(64))
    answer: Mapped[str | None] = mapped_column(Text)
    engine: Mapped[Any] = mapped_column(JSON(none_as_null=True), nullable=True)
    command_seq: Mapped[int] = mapped_column(Integer, default=0)
    stats: Mapped[Any] = mapped_column(JSON(none_as_null=True), nullable=True)
    end_reason: Mapped[str | None] = mapped_column(String(16))
    error_code: Mapped[str | None] = mapped_column(String(64))
    error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    answered_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    heartbeat_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    ended_at: Mapped[datetime | None] = mapped_column(UTCDateTime())

    __table_args__ = (Index("ix_sessions_status_user", "status", "user_id"),)


class CommandRow(Base):
    """What a live session's worker is told to do (say, play, interrupt, stop), and what it answered."""

    __tablename__ = "session_commands"

    session_id: Mapped[str] = mapped_column(String(32), primary_key=True)
    seq: Mapped[int] = mapped_column(Integer, primary_key=True)
    kind: Mapped[str] = mapped_column(String(16))
    text: Mapped[str | None] = mapped_column(Text)
    voice: Mapped[Any] = mapped_column(JSON(none_as_null=True), nullable=True)
    audio: Mapped[str | None] = mapped_column(Text)
    queued: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    done_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    duration_s: Mapped[float | None] = mapped_column(Float)
    error_code: Mapped[str | None] = mapped_column(String(64))
    error: Mapped[str | None] = mapped_column(Text)


COLUMNS = tuple(c.name for c in JobRow.__table__.columns)


def normalize_url(database_url: str) -> URL:
    """``postgres://`` and ``postgresql://`` use the psycopg 3 driver (the one installed)."""
    try:
        url = make_url(database_url.replace("postgres://", "postgresql://", 1))
        url.port  # noqa: B018 - a port that is not a number raises here, not later in a driver
    except (ArgumentError, ValueError):  # their messages may quote the URL, password and all
        raise ArgumentError("DATABASE_URL is not a database URL (driver://user:password@host:port/name)") from None
    if url.drivername == "postgresql":
        url = url.set(drivername="postgresql+psycopg")
    return url


SECRET_QUERY_KEY = re.compile(r"pass|secret|token|key|auth", re.IGNORECASE)


def safe_url(database_url: str | URL) -> str:
    """The database URL with its password hidden, in the userinfo or as a query parameter (``?password=``,
    ``sslpassword``, ...), for health, logs and error messages; an unparseable URL is not shown at all."""
    try:
        url = normalize_url(database_url) if isinstance(database_url, str) else database_url
    except ArgumentError:
        return "<DATABASE_URL that is not a database URL>"
    query = {name: "***" if SECRET_QUERY_KEY.search(name) else value for name, value in url.query.items()}
    return url.set(query=query).render_as_string(hide_password=True)


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.close()


def make_engine(database_url: str) -> Engine:
    url = normalize_url(database_url)
    if url.get_backend_name() != "sqlite":
        return create_engine(url, pool_pre_ping=True)
    in_memory = url.database in (None, "", ":memory:")
    if not in_memory:
        Path(url.database).parent.mkdir(parents=True, exist_ok=True)
    options: dict[str, Any] = {"poolclass": StaticPool} if in_memory else {}
    connect_args = {"check_same_thread": False, "timeout": SQLITE_BUSY_TIMEOUT_MS / 1000}
    engine = create_engine(url, connect_args=connect_args, **options)
    event.listen(engine, "connect", _sqlite_pragmas)
    return engine


def _view(row: Any) -> JobView:
    return JobView.from_row(dict(zip(COLUMNS, row, strict=True)))


class JobStore:
    """Jobs in a SQL database; every method is one short transaction, safe to call from any thread."""

    def __init__(self, database_url: str, *, engine: Engine | None = None) -> None:
        self.url = normalize_url(database_url)
        self.engine = engine or make_engine(database_url)
        upgrade_schema(self.engine)

    @property
    def dialect(self) -> str:
        return self.engine.dialect.name

    def safe_url(self) -> str:
        """The database URL with any password hidden (for health and logs)."""
        return safe_url(self.url)

    def create(self, **values: Any) -> JobView:
        """Insert a job and return it as inserted (not re-read: another process may claim it at once);
        DuplicateIdempotencyKey when its idempotency key is taken."""
        now = utcnow()
        row = {"id": new_job_id(), "attempts": 0, "created_at": now, "updated_at": now, **values}
        try:
            with self.engine.begin() as conn:
                conn.execute(insert(JobRow).values(**row))
        except IntegrityError as exc:
            if row.get("idempotency_key") and self.get_by_idempotency_key(row["idempotency_key"]):
                raise DuplicateIdempotencyKey(row["idempotency_key"]) from None
            raise exc
        return JobView.from_row({name: row.get(name) for name in COLUMNS})

    def get(self, job_id: str) -> JobView | None:
        return self._one(JobRow.id == job_id)

    def list_by_ids(self, ids: Iterable[str]) -> list[JobView]:
        """The jobs with these ids, oldest first."""
        query = select(*JobRow.__table__.columns).where(JobRow.id.in_(list(ids)))
        with self.engine.connect() as conn:
            return [_view(row) for row in conn.execute(query.order_by(JobRow.created_at, JobRow.id))]

    def ids_starting_with(self, prefix: str, limit: int = 10) -> list[str]:
        """Ids of up to ``limit`` jobs whose id starts with ``prefix`` (ids are hex: anything else matches none)."""
        if not re.fullmatch(r"[0-9a-f]{1,32}", prefix):
            return []
        query = select(JobRow.id).where(JobRow.id.startswith(prefix)).order_by(JobRow.id).limit(limit)
        with self.engine.connect() as conn:
            return [row[0] for row in conn.execute(query)]

    def get_by_idempotency_key(self, key: str) -> JobView | None:
        return self._one(JobRow.idempotency_key == key)

    def _one(self, condition: Any) -> JobView | None:
        with self.engine.connect() as conn:
            row = conn.execute(select(*JobRow.__table__.columns).where(condition)).first()
        return _view(row) if row else None

    def list(
        self,
        *,
        user_id: str | None = None,
        status: str | None = None,
        task: str | None = None,
        statuses: Iterable[str] | None = None,
        user_ids: Iterable[str] | None = None,
        limit: int = 100,
        newest_first: bool = True,
        after: tuple[datetime, str] | None = None,
    ) -> list[JobView]:
        """Jobs matching every filter given; ``after`` (created_at, id) of the last job of the previous page
        continues a newest-first listing."""
        query = select(*JobRow.__table__.columns)
        for column, value in ((JobRow.user_id, user_id), (JobRow.status, status), (JobRow.task, task)):
            if value is not None:
                query = query.where(column == value)
        for column, values in ((JobRow.status, statuses), (JobRow.user_id, user_ids)):
            if values is not None:
                query = query.where(column.in_(sorted(values)))
        if after is not None:
            created_at, job_id = after
            query = query.where(
                or_(JobRow.created_at < created_at, and_(JobRow.created_at == created_at, JobRow.id > job_id))
            )
        order = JobRow.created_at.desc() if newest_first else JobRow.created_at.asc()
        query = query.order_by(order, JobRow.id).limit(max(1, min(limit, MAX_LIST_LIMIT)))
        with self.engine.connect() as conn:
            return [_view(row) for row in conn.execute(query)]

    def active(self, limit: int = MAX_LIST_LIMIT) -> list[JobView]:
        """Queued and running jobs, oldest first."""
        return self.list(statuses=ACTIVE_STATUSES, limit=limit, newest_first=False)

    def transition(
        self, job_id: str, event: JobEvent, values: dict[str, Any] | None = None, *, where: dict[str, Any] | None = None
    ) -> bool:
        """Apply ``event`` (models.TRANSITIONS) with ``values`` as one compare-and-set: only while the job's status
        allows the event and every ``where`` column still holds its expected value (None means NULL).
        True when the row changed."""
        values = dict(values or {})
        if "status" in values:
            raise ValueError("a status changes only through an event of the transition table")
        status = target(event)
        if status is not None:
            values["status"] = status.value
        query = update(JobRow).where(JobRow.id == job_id, JobRow.status.in_(sorted(sources(event))))
        for name, expected in (where or {}).items():
            column = getattr(JobRow, name)
            query = query.where(column.is_(None) if expected is None else column == expected)
        query = query.values(**values, updated_at=values.get("updated_at", utcnow()))
        with self.engine.begin() as conn:
            return conn.execute(query).rowcount == 1

    def counts(self) -> dict[tuple[str, str], int]:
        """Number of jobs per (task, status)."""
        query = select(JobRow.task, JobRow.status, func.count()).group_by(JobRow.task, JobRow.status)
        with self.engine.connect() as conn:
            return {(task, status): n for task, status, n in conn.execute(query)}

    def ping(self) -> bool:
        with self.engine.connect() as conn:
            return conn.execute(text("SELECT 1")).scalar() == 1

    def close(self) -> None:
        self.engine.dispose()
