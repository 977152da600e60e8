"""Who calls the API: the operator (API_TOKEN; anyone while no token is configured) or a tenant whose
token (TENANT_TOKENS) acts for some user ids only. A tenant never sees another user's jobs or outputs:
they answer 404 as if they did not exist; acting for another user is 403."""

from __future__ import annotations

import hmac
from collections.abc import Callable
from dataclasses import dataclass

from fastapi import Depends
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from orchestrator.api.errors import ApiError
from orchestrator.core.config import OrchestratorSettings
from orchestrator.core.models import JobNotFound, JobView


@dataclass(frozen=True)
class Caller:
    """The caller's reach: ``user_ids`` None means every user (the operator)."""

    user_ids: frozenset[str] | None = None

    @property
    def key(self) -> str:
        """Who this caller is, for per-caller counts: the operator, or a tenant by its user ids."""
        return "operator" if self.user_ids is None else "tenant:" + ",".join(sorted(self.user_ids))

    def may_act_for(self, user_id: str | None) -> bool:
        return self.user_ids is None or user_id in self.user_ids

    def check_user(self, user_id: str | None) -> None:
        """ApiError 403 unless this caller may act for ``user_id``."""
        if not self.may_act_for(user_id):
            who = f"user {user_id!r}" if user_id else "jobs without a user (health)"
            raise ApiError(403, "forbidden", f"This token may not act for {who}.")

    def check_job(self, job: JobView | None, job_id: str) -> JobView:
        """The job when it exists and this caller may see it, else JobNotFound (404)."""
        if job is None or not self.may_act_for(job.user_id):
            raise JobNotFound(job_id)
        return job


OPERATOR = Caller()


def caller_of(settings: OrchestratorSettings, token: str | None) -> Caller | None:
    """The caller a bearer token names, or None when it names nobody (with no token configured: the operator)."""
    if not settings.auth_required:
        return OPERATOR
    given = (token or "").encode()
    if settings.api_token and hmac.compare_digest(given, settings.api_token.encode()):
        return OPERATOR
    for tenant_token, user_ids in settings.tenant_tokens.items():
        if hmac.compare_digest(given, tenant_token.encode()):
            return Caller(frozenset(user_ids))
    return None


def authenticator(settings: OrchestratorSettings) -> Callable[..., Caller]:
    """The bearer-token dependency: the route's ``Caller``, or 401."""
    bearer = HTTPBearer(auto_error=False, description="API_TOKEN, or a tenant's token from TENANT_TOKENS.")

    def authenticate(credentials: HTTPAuthorizationCredentials | None = Depends(bearer)) -> Caller:
        caller = caller_of(settings, credentials.credentials if credentials else None)
        if caller is None:
            raise ApiError(
                401,
                "unauthorized",
                "A valid `Authorization: Bearer <token>` header is required.",
                headers={"WWW-Authenticate": "Bearer"},
            )
        return caller

    return authenticate
