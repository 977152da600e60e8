"""Errors raised by task handlers; ``handlers.dispatch`` maps them to ``{"error", "error_code"}``."""


class CodedError(Exception):
    """A failure with a stable snake_case ``code`` (a job's error_code) and a message a user can act on."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class TaskError(CodedError):
    """Bad input or an unmet precondition, with a stable snake_case ``code``."""


class TaskCancelled(Exception):
    """Raised by a progress callback to stop a task at its next stage (a cancelled or timed-out job)."""
