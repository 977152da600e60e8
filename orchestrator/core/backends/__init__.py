"""Where jobs run: ``backend_for(spec)`` builds one; the protocol and its types live in ``backends.base``,
what its calls raise in ``backends.errors``.

Backends: ``local`` (handlers.dispatch in worker processes of this orchestrator), ``runpod:<endpoint_id>``
(RunPod's REST API, or the emulator) and ``modal:<app>/<Class>`` (a deployed Modal class).
"""

from __future__ import annotations

from collections.abc import Callable

from orchestrator.core.backends.base import Backend, Ownership, RemoteState, RemoteStatus, Submission
from orchestrator.core.backends.errors import BackendError, BackendUnavailable, SubmitRejected, SubmitUncertain
from orchestrator.core.config import BackendKind, BackendSpec, OrchestratorSettings, parse_backend_spec


def backend_for(
    spec: str | BackendSpec,
    settings: OrchestratorSettings,
    *,
    on_status: Callable[[str, RemoteStatus], None] | None = None,
) -> Backend:
    """Build the backend a spec names (``local``, ``runpod:<endpoint_id>``, ``modal:<app>/<Class>``);
    ``on_status``: where a local backend pushes each job's status as it changes."""
    parsed = spec if isinstance(spec, BackendSpec) else parse_backend_spec(spec)
    if parsed.kind is BackendKind.runpod:
        from orchestrator.core.backends.runpod import RunpodBackend

        return RunpodBackend(
            parsed.target,
            api_key=settings.runpod_api_key,
            base_url=settings.runpod_base_url,
            max_attempts=settings.max_attempts,
        )
    if parsed.kind is BackendKind.modal:
        from orchestrator.core.backends.modal import ModalBackend

        app_name, _, class_name = parsed.target.partition("/")
        return ModalBackend(app_name, class_name)
    from orchestrator.core.backends.local import LocalBackend

    return LocalBackend(
        workers=settings.local_workers,
        on_status=on_status,
        silent_after_s=settings.lease_s,
        session_workers=settings.realtime_max_sessions,
        session_memory_bytes=settings.realtime_session_memory_mb * 2**20,
    )


__all__ = [
    "Backend",
    "BackendError",
    "BackendUnavailable",
    "Ownership",
    "RemoteState",
    "RemoteStatus",
    "SubmitRejected",
    "SubmitUncertain",
    "Submission",
    "backend_for",
]
