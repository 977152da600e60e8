"""What callers see of a job (``JobView``), its statuses, and the errors the job service raises."""

from __future__ import annotations

from datetime import datetime
from enum import Enum
from typing import Any

from pydantic import BaseModel, ConfigDict, Field


class JobStatus(str, Enum):
    queued = "queued"
    running = "running"
    completed = "completed"
    failed = "failed"
    cancelled = "cancelled"
    timed_out = "timed_out"


ACTIVE_STATUSES = frozenset({JobStatus.queued.value, JobStatus.running.value})
FINISHED_STATUSES = frozenset(
    {JobStatus.completed.value, JobStatus.failed.value, JobStatus.cancelled.value, JobStatus.timed_out.value}
)


class JobView(BaseModel):
    """One job as stored: the API's response model (datetimes are ISO 8601 in UTC)."""

    model_config = ConfigDict(from_attributes=True, use_enum_values=True)

    id: str = Field(description="Job id (uuid hex).")
    task: str
    user_id: str | None = None
    status: JobStatus
    backend: str = Field(description="`local`, `runpod` or `modal`.")
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

    @property
    def finished(self) -> bool:
        return self.status in FINISHED_STATUSES


class OrchestratorError(Exception):
    """A refusal with a stable snake_case ``code`` and the HTTP status an API should answer with."""

    http_status = 400

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class JobNotFound(OrchestratorError):
    http_status = 404

    def __init__(self, job_id: str) -> None:
        super().__init__("job_not_found", f"No job with id {job_id!r}.")


class IdempotencyConflict(OrchestratorError):
    http_status = 409


class WebhookRejected(OrchestratorError):
    http_status = 403
