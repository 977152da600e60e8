"""The one error model: a coded error, the table of codes, and the one error body.

The lowest layer: every package may import it, and it imports none of them. ``CodedError`` is the base of
every exception that carries a code (``TaskError``, ``EngineError``, ``StorageError``, ``BackendError``, the
orchestrator's refusals); ``errors.codes.CODES`` lists each code; ``error_body`` is the ``{"error",
"error_code"}`` dict every boundary answers (a task's result, an HTTP answer, a data-channel reply).
"""

from __future__ import annotations

from errors.codes import CODES, ErrorCode, describe


class CodedError(Exception):
    """A failure with a stable snake_case ``code`` (see ``errors.codes``) and a message a user can act on."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message

    @property
    def http_status(self) -> int:
        """What an API answers for this failure: the table's status (a subclass may decide otherwise)."""
        return describe(self.code).http_status


def error_body(code: str, message: str) -> dict[str, str]:
    """The ``{"error", "error_code"}`` body of a failure, as every boundary answers it."""
    return {"error": message, "error_code": code}


__all__ = ["CODES", "CodedError", "ErrorCode", "describe", "error_body"]
