"""The ``Backend`` protocol, the job a submit hands over (``Submission``) and the status a backend reports.

Everything that differs between backends sits behind the protocol: who may follow a job
(``ownership``), what claiming a job for a (re-)submit records (``claim_values``), whether ``status`` is
cheap enough to ask every poll round, and the webhooks a backend sends (``parse_webhook``).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import Any, Protocol, runtime_checkable

from orchestrator.core.config import BackendKind
from orchestrator.core.models import JobStatus, JobView

# A job's statuses as its backend reports them, and `lost`: the backend no longer knows the job (expired
# past its TTL, or its runner is gone).
RemoteState = Enum(  # type: ignore[misc]
    "RemoteState", [*((s.name, s.value) for s in JobStatus), ("lost", "lost")], type=str, module=__name__
)


@dataclass(frozen=True)
class RemoteStatus:
    state: RemoteState
    output: Any = None
    error: str | None = None
    error_code: str | None = None
    progress: dict[str, Any] | float | None = None


@dataclass(frozen=True)
class Submission:
    """One job handed to a backend."""

    task: str
    payload: dict[str, Any]
    job_id: str
    timeout_s: float = 0.0  # its execution limit
    webhook_url: str | None = None  # where the backend posts its final state, when it can
    ttl_s: float | None = None  # how long the backend may keep it before it starts


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

    def submit(self, job: Submission) -> str:
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
    "Ownership",
    "RemoteBackend",
    "RemoteState",
    "RemoteStatus",
    "Submission",
]
