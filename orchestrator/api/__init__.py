"""The orchestrator's HTTP API: ``app`` (factory, auth, errors, health, metrics), ``v1`` (the /v1 routes),
``compat`` (the seeds' routes), ``context`` (what the routes share)."""

from orchestrator.api.app import create_app
from orchestrator.api.errors import ApiError

__all__ = ["ApiError", "create_app"]
