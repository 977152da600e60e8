"""The ``Backend`` protocol, the remote status a backend reports, and its errors.

Everything that differs between backends sits behind the protocol: who may follow a job
(``ownership``), what claiming a job for a (re-)submit records (``claim_values``), whether ``status`` is
cheap enough to ask every poll round, and the webhooks a backend sends (``parse_webhook``).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import Any, Protocol, runtime_checkable

from orchestrator.config import BackendKind
from orchestrator.models import JobView


class RemoteState(str, Enum):
    queued = "queued"
    running = "running"
    completed = "completed"
    failed = "failed"
    cancelled = "cancelled"
    timed_out = "timed_out"
    lost = "lost"  # the backend no longer knows the job (expired past its TTL, or its runner is gone)


@dataclass(frozen=True)
class RemoteStatus:
    state: RemoteState
    output: Any = None
    error: str | None = None
    error_code: str | None = None
    progress: dict[str, Any] | float | None = None


class BackendError(Exception):
    """A backend call failed; ``code`` is a stable snake_case name for the job's error_code."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class SubmitRejected(BackendError):
    """The backend certainly did not accept the job (nothing runs remotely)."""


class SubmitUncertain(BackendError):
    """The request may have reached the backend: a job may exist remotely, so it must not be resent blindly."""


class BackendUnavailable(BackendError):
    """A status, cancel or health call failed after its retries; try again later."""


class Ownership(str, Enum):
    """Who may follow a job: this orchestrator, another live one, or nobody any more."""

    here = "here"  # ask this backend about it
    elsewhere = "elsewhere"  # another live orchestrator process runs it: leave it alone
    gone = "gone"  # the process that ran it is gone: run it again (or give up)


@runtime_checkable
class Backend(Protocol):
    kind: BackendKind
    endpoint: str  # endpoint id, "app/Class", or the local runner's name
    cheap_status: bool  # status() reads memory, not a remote API: ask it every poll round

    @property
    def spec(self) -> str: ...

    def submit(
        self,
        task: str,
        payload: dict[str, Any],
        *,
        job_id: str,
        webhook_url: str | None,
        timeout_s: float,
        ttl_s: float | None = None,
    ) -> str:
        """Start the job; returns the backend's id for it. Raises SubmitRejected or SubmitUncertain."""
        ...

    def status(self, remote_id: str) -> RemoteStatus: ...

    def cancel(self, remote_id: str) -> None: ...

    def health(self) -> dict[str, Any]: ...

    def close(self) -> None: ...

    def claim_values(self, job: JobView) -> dict[str, Any]:
        """Columns written with the claim before a (re-)submit (a local run records its runner and starts over)."""
        ...

    def ownership(self, job: JobView) -> Ownership: ...

    def parse_webhook(self, body: dict[str, Any]) -> tuple[str, RemoteStatus] | None:
        """The remote job a webhook body names ("" when none) and the status it reports; None when this
        backend sends no webhooks."""
        ...


class RemoteBackend:
    """What RunPod and Modal share: any orchestrator may follow their jobs through the remote API."""

    cheap_status = False

    def claim_values(self, job: JobView) -> dict[str, Any]:
        return {}

    def ownership(self, job: JobView) -> Ownership:
        return Ownership.here

    def parse_webhook(self, body: dict[str, Any]) -> tuple[str, RemoteStatus] | None:
        return None


__all__ = [
    "Backend",
    "BackendError",
    "BackendUnavailable",
    "RemoteState",
    "RemoteStatus",
    "SubmitRejected",
    "Ownership",
    "RemoteBackend",
    "SubmitUncertain",
]
