"""Where jobs run: the ``Backend`` protocol, the remote status it reports, and ``backend_for(spec)``.

Backends: ``local`` (handlers.dispatch on a thread pool in this process), ``runpod:<endpoint_id>``
(RunPod's REST API, or the emulator) and ``modal:<app>/<Class>`` (a deployed Modal class).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum
from typing import Any, Protocol, runtime_checkable

from orchestrator.config import OrchestratorSettings, parse_backend_spec


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


@runtime_checkable
class Backend(Protocol):
    kind: str  # "local", "runpod" or "modal"
    endpoint: str  # endpoint id, "app/Class", or the local runner's name

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


def backend_for(
    spec: str, settings: OrchestratorSettings, *, on_change: Callable[[str], None] | None = None
) -> Backend:
    """Build the backend a spec names (``local``, ``runpod:<endpoint_id>``, ``modal:<app>/<Class>``)."""
    parsed = parse_backend_spec(spec)
    if parsed.kind == "runpod":
        from orchestrator.backends.runpod import RunpodBackend

        return RunpodBackend(
            parsed.target,
            api_key=settings.runpod_api_key,
            base_url=settings.runpod_base_url,
            max_attempts=settings.max_attempts,
        )
    if parsed.kind == "modal":
        from orchestrator.backends.modal import ModalBackend

        app_name, _, class_name = parsed.target.partition("/")
        return ModalBackend(app_name, class_name)
    from orchestrator.backends.local import LocalBackend

    return LocalBackend(workers=settings.local_workers, on_change=on_change)


__all__ = [
    "Backend",
    "BackendError",
    "BackendUnavailable",
    "RemoteState",
    "RemoteStatus",
    "SubmitRejected",
    "SubmitUncertain",
    "backend_for",
]
