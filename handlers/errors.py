"""Errors raised by task handlers; ``handlers.dispatch`` maps them to ``{"error", "error_code"}``."""

from errors import CodedError, describe


class TaskError(CodedError):
    """Bad input or an unmet precondition, with a stable snake_case ``code``."""

    @property
    def http_status(self) -> int:
        """A task refuses its caller's input: 422, or 413 for a code the table answers so (``too_large``)."""
        return 413 if describe(self.code).http_status == 413 else 422


class TaskCancelled(Exception):
    """Raised by a progress callback to stop a task at its next stage (a cancelled or timed-out job)."""
