"""What backend calls raise: a stable ``code`` for the job's error_code, and whether a submit may be resent."""

from __future__ import annotations

from errors import CodedError


class BackendError(CodedError):
    """A backend call failed; ``code`` is a stable snake_case name for the job's error_code."""


class SubmitRejected(BackendError):
    """The backend certainly did not accept the job (nothing runs remotely)."""


class SubmitUncertain(BackendError):
    """The request may have reached the backend: a job may exist remotely, so it must not be resent blindly."""


class BackendUnavailable(BackendError):
    """A status, cancel or health call failed after its retries; try again later."""
