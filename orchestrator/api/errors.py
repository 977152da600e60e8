"""``ApiError``: a refusal with its own HTTP status (the API's error handlers answer it as JSON)."""

from __future__ import annotations

from orchestrator.core.models import OrchestratorError


class ApiError(OrchestratorError):
    """A refusal with its own HTTP status."""

    def __init__(self, http_status: int, code: str, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(code, message)
        self.http_status = http_status
        self.headers = headers
