"""The Modal backend: ``modal.Cls.from_name(app, Class)().<task>.spawn(**fields)`` on a deployed app.

``modal`` is imported lazily. Credentials come from modal's own environment (MODAL_TOKEN_ID /
MODAL_TOKEN_SECRET or ~/.modal.toml). Modal keeps a call's result for a limited time; polling a
call whose result expired reports the job as lost. Modal reports no progress while a call runs.
Submit rule: a refusal Modal names (unknown app or class, bad token, invalid input) is certain;
any other failure during ``spawn`` is treated as uncertain and not resent.
"""

from __future__ import annotations

import logging
from typing import Any

from orchestrator.core.backends.base import RemoteBackend, RemoteState, RemoteStatus, Submission
from orchestrator.core.backends.errors import BackendUnavailable, SubmitRejected, SubmitUncertain
from orchestrator.core.config import BackendKind

log = logging.getLogger(__name__)

# Client-side failures of a status call (network, Modal's control plane, rate limits): the call may still run,
# so the poll is retried later instead of failing the job. Looked up by name: not every modal 1.x has them all.
TRANSIENT_MODAL_ERRORS = ("AuthError", "ConnectionError", "InternalError", "ServiceError", "ResourceExhaustedError")


def _modal() -> Any:
    import modal

    return modal


def _transient_errors(modal: Any) -> tuple[type[BaseException], ...]:
    from grpclib.exceptions import StreamTerminatedError

    named = (getattr(modal.exception, name, None) for name in TRANSIENT_MODAL_ERRORS)
    return (OSError, StreamTerminatedError, *(c for c in named if isinstance(c, type)))


class ModalBackend(RemoteBackend):
    """One deployed Modal class whose methods are the contract's tasks."""

    kind = BackendKind.modal

    def __init__(self, app_name: str, class_name: str) -> None:
        self.app_name = app_name
        self.class_name = class_name
        self.endpoint = f"{app_name}/{class_name}"

    @property
    def spec(self) -> str:
        return f"modal:{self.endpoint}"

    def submit(self, job: Submission) -> str:
        modal = _modal()
        task = job.task
        fields = {k: v for k, v in job.payload.items() if k != "task"}
        certain = (modal.exception.NotFoundError, modal.exception.AuthError, modal.exception.InvalidError)
        try:
            worker = modal.Cls.from_name(self.app_name, self.class_name)()
            call = getattr(worker, task).spawn(**fields)
        except certain as exc:
            raise SubmitRejected("modal_rejected", f"Modal refused the call to {self.endpoint}.{task}: {exc}") from None
        except Exception as exc:
            raise SubmitUncertain(
                "submit_uncertain", f"Modal spawn of {self.endpoint}.{task} failed ({type(exc).__name__}: {exc})."
            ) from None
        return call.object_id

    def status(self, remote_id: str) -> RemoteStatus:
        modal = _modal()
        transient = _transient_errors(modal)
        try:
            result = modal.FunctionCall.from_id(remote_id).get(timeout=0)
        except modal.exception.OutputExpiredError:
            return RemoteStatus(
                RemoteState.lost, error=f"Modal no longer has the result of {remote_id}.", error_code="remote_job_lost"
            )
        except modal.exception.FunctionTimeoutError as exc:
            return RemoteStatus(
                RemoteState.timed_out, error=f"Modal stopped the call at its timeout: {exc}", error_code="timeout"
            )
        except TimeoutError:
            return RemoteStatus(RemoteState.running)
        except modal.exception.InputCancellation:
            return RemoteStatus(RemoteState.cancelled, error="The call was cancelled on Modal.", error_code="cancelled")
        except transient as exc:
            raise BackendUnavailable("modal_unavailable", f"Modal status of {remote_id} failed: {exc!r}") from None
        except Exception as exc:  # the remote function raised: its exception is re-raised here
            return RemoteStatus(
                RemoteState.failed, error=f"Modal call failed: {type(exc).__name__}: {exc}", error_code="remote_failed"
            )
        if isinstance(result, dict) and "error" in result:
            return RemoteStatus(RemoteState.failed, error=str(result["error"]), error_code=result.get("error_code"))
        return RemoteStatus(RemoteState.completed, output=result, progress={"stage": "done", "fraction": 1.0})

    def cancel(self, remote_id: str) -> None:
        modal = _modal()
        try:
            modal.FunctionCall.from_id(remote_id).cancel()
        except Exception as exc:
            raise BackendUnavailable("modal_unavailable", f"Modal cancel of {remote_id} failed: {exc}") from None

    def health(self) -> dict[str, Any]:
        """Resolves the deployed class (a network call); never raises."""
        try:
            modal = _modal()
            modal.Cls.from_name(self.app_name, self.class_name).hydrate()
            return {"ok": True, "endpoint": self.endpoint}
        except Exception as exc:
            return {"ok": False, "endpoint": self.endpoint, "error": f"{type(exc).__name__}: {exc}"}

    def close(self) -> None:
        pass
