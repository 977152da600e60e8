"""What callers see of a job (``JobView``), its statuses and the table of their transitions, and the errors
the job service raises.

Every status change is an event looked up in ``TRANSITIONS`` (status x event -> status); the job store
applies it as one compare-and-set, so a change the table refuses never reaches the database.
"""

from __future__ import annotations

import re
from datetime import datetime
from enum import Enum
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr

from errors import CodedError
from handlers.schemas import LIVE_SESSION_TASK
from orchestrator.core.config import BackendKind


class JobStatus(str, Enum):
    queued = "queued"
    running = "running"
    completed = "completed"
    failed = "failed"
    cancelled = "cancelled"
    timed_out = "timed_out"


# Tasks whose job runs once only: a live session's peer connection and control token belong to its first run,
# so a job of one found unsubmitted, or whose runner is gone, fails instead of running again.
SINGLE_RUN_TASKS = frozenset({LIVE_SESSION_TASK})
ACTIVE_STATUSES = frozenset({JobStatus.queued.value, JobStatus.running.value})
FINISHED_STATUSES = frozenset(
    {JobStatus.completed.value, JobStatus.failed.value, JobStatus.cancelled.value, JobStatus.timed_out.value}
)


class JobEvent(str, Enum):
    claim = "claim"  # a process takes the job to submit it (attempts + 1); a local re-run starts queued again
    submitted = "submitted"  # the backend's id for the job, or a note about its submit; status unchanged
    progress = "progress"  # progress or a new deadline; status unchanged
    start = "start"  # the backend began running it
    complete = "complete"
    fail = "fail"
    cancel = "cancel"
    time_out = "time_out"


_QUEUED, _RUNNING = JobStatus.queued, JobStatus.running
_ENDINGS = {
    JobEvent.complete: JobStatus.completed,
    JobEvent.fail: JobStatus.failed,
    JobEvent.cancel: JobStatus.cancelled,
    JobEvent.time_out: JobStatus.timed_out,
}
# status x event -> status. A finished job has no transition: it never changes again.
TRANSITIONS: dict[tuple[JobStatus, JobEvent], JobStatus] = {
    (_QUEUED, JobEvent.claim): _QUEUED,
    (_QUEUED, JobEvent.submitted): _QUEUED,
    (_QUEUED, JobEvent.progress): _QUEUED,
    (_QUEUED, JobEvent.start): _RUNNING,
    (_RUNNING, JobEvent.claim): _QUEUED,  # a local job whose runner is gone runs again from the start
    (_RUNNING, JobEvent.submitted): _RUNNING,
    (_RUNNING, JobEvent.progress): _RUNNING,
    **{(status, event): ending for status in (_QUEUED, _RUNNING) for event, ending in _ENDINGS.items()},
}


class InvalidTransition(ValueError):
    """An event the transition table refuses for the job's status."""


def next_status(status: JobStatus | str, event: JobEvent) -> JobStatus:
    """The status after ``event``; InvalidTransition when the table has no such transition."""
    target = TRANSITIONS.get((JobStatus(status), event))
    if target is None:
        raise InvalidTransition(f"a {JobStatus(status).value} job cannot take the event {event.value!r}")
    return target


def sources(event: JobEvent) -> frozenset[str]:
    """The statuses from which ``event`` is allowed."""
    return frozenset(status.value for status, ev in TRANSITIONS if ev is event)


def target(event: JobEvent) -> JobStatus | None:
    """The one status ``event`` leads to, or None when it keeps every job's status as it is. (The store applies an
    event as one compare-and-set, so each event either keeps the status or has a single target.)"""
    moves = [(status, to) for (status, ev), to in TRANSITIONS.items() if ev is event]
    if all(status is to for status, to in moves):
        return None
    (single,) = {to for _, to in moves}
    return single


SECRET_FIELD = re.compile(r"token|secret|key|password|authorization", re.IGNORECASE)
MASK = "***"


def redact(value: Any) -> Any:
    """A copy of ``value`` with every field whose name looks secret (token, key, ...) masked."""
    if isinstance(value, dict):
        return {k: MASK if SECRET_FIELD.search(str(k)) else redact(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [redact(v) for v in value]
    return value


class JobView(BaseModel):
    """One job as stored: the API's response model (datetimes are ISO 8601 in UTC)."""

    model_config = ConfigDict(from_attributes=True, use_enum_values=True)

    id: str = Field(description="Job id (uuid hex).")
    task: str
    user_id: str | None = None
    status: JobStatus
    backend: BackendKind = Field(description="`local`, `runpod` or `modal`.")
    endpoint: str | None = Field(None, description="RunPod endpoint id, Modal `app/Class`, or the local runner.")
    remote_id: str | None = Field(None, description="The backend's id for the job once submitted.")
    input: dict[str, Any] = Field(description="The task payload, with secret-looking fields masked.")
    output: Any = Field(None, description="The task's result once completed.")
    error: str | None = None
    error_code: str | None = None
    progress: dict[str, Any] | float | None = Field(None, description="Last reported stage and fraction done.")
    attempts: int = 0
    idempotency_key: str | None = None
    created_at: datetime
    updated_at: datetime
    started_at: datetime | None = None
    finished_at: datetime | None = None
    deadline_at: datetime | None = None

    _payload: dict[str, Any] | None = PrivateAttr(None)
    _heartbeat_at: datetime | None = PrivateAttr(None)

    @property
    def payload(self) -> dict[str, Any]:
        """The task payload as submitted, secrets included: what a (re-)submit sends to the backend."""
        return self._payload if self._payload is not None else self.input

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> JobView:
        """The job of a database row; callers see ``input`` masked, the backend gets ``payload`` whole."""
        key = row.get("idempotency_key")
        view = cls.model_validate({**row, "input": redact(row["input"]), "idempotency_key": client_key(key)})
        view._payload = row["input"]
        view._heartbeat_at = row.get("heartbeat_at")
        return view

    def with_payload(self, payload: dict[str, Any]) -> JobView:
        """This job carrying ``payload`` for its backend (secrets the stored row masks)."""
        view = self.model_copy()
        view._payload = payload
        return view

    @property
    def heartbeat_at(self) -> datetime | None:
        """When the job's local runner last said it still runs it (not part of the API's answer)."""
        return self._heartbeat_at

    @property
    def finished(self) -> bool:
        return self.status in FINISHED_STATUSES


def scoped_key(user_id: str | None, key: str) -> str:
    """An idempotency key as stored: scoped by the job's user (ids hold no ``/``), so two users' keys never meet."""
    return f"{user_id or ''}/{key}"


def client_key(stored: str | None) -> str | None:
    """The key as its client gave it (``scoped_key`` undone; rows from before the scope are shown unchanged)."""
    return stored.partition("/")[2] if stored and "/" in stored else stored


class OrchestratorError(CodedError):
    """A refusal with a stable snake_case ``code`` and the HTTP status an API should answer with."""

    http_status = 400


class JobNotFound(OrchestratorError):
    http_status = 404

    def __init__(self, job_id: str) -> None:
        super().__init__("job_not_found", f"No job with id {job_id!r}.")


class IdempotencyConflict(OrchestratorError):
    http_status = 409


class WebhookRejected(OrchestratorError):
    http_status = 403
