"""Webhooks: RunPod posts a job's final state to ``/v1/webhooks/runpod/{job_id}?token=``; their URLs, tokens,
and what a webhook may change (``apply_webhook``).

RunPod can only call a URL, so the token rides in its query string; the API's access log masks it
(``api.app.AccessLogRedaction``). The token is the HMAC-SHA256 of the job id with WEBHOOK_SECRET: it
authenticates one job's webhook and nothing else.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
from typing import Any

from orchestrator.core.backends import Backend, BackendError, RemoteState
from orchestrator.core.config import OrchestratorSettings
from orchestrator.core.lifecycle import JobLifecycle
from orchestrator.core.models import JobEvent, JobView, OrchestratorError, WebhookRejected

log = logging.getLogger(__name__)

WEBHOOK_PATH = "/v1/webhooks/runpod/{job_id}"


def webhook_token(secret: str, job_id: str) -> str:
    """The shared-secret token of a job's webhook URL: HMAC-SHA256 of the job id."""
    return hmac.new(secret.encode(), job_id.encode(), hashlib.sha256).hexdigest()


def webhook_url(settings: OrchestratorSettings, job_id: str) -> str | None:
    """Where RunPod posts the job's final state; None unless PUBLIC_BASE_URL and WEBHOOK_SECRET are set."""
    if not (settings.public_base_url and settings.webhook_secret):
        return None
    token = webhook_token(settings.webhook_secret, job_id)
    return f"{settings.public_base_url}{WEBHOOK_PATH.format(job_id=job_id)}?token={token}"


def check_webhook_token(settings: OrchestratorSettings, job_id: str, token: str) -> None:
    """WebhookRejected unless webhooks are enabled and ``token`` is this job's."""
    secret = settings.webhook_secret
    if not secret:
        raise WebhookRejected("webhooks_disabled", "Webhooks are disabled: WEBHOOK_SECRET is not set.")
    if not hmac.compare_digest(str(token), webhook_token(secret, job_id)):
        raise WebhookRejected("webhook_rejected", "The webhook token does not match this job.")


def apply_webhook(lifecycle: JobLifecycle, backend: Backend, job: JobView, body: dict[str, Any]) -> JobView:
    """Apply an authenticated webhook to its job. It must name the job's remote id; a job whose submit answer
    was lost adopts the remote job only once the backend confirms it exists. Replays and late deliveries
    change nothing."""
    if not isinstance(body, dict) or "status" not in body:
        raise OrchestratorError("invalid_webhook", "The webhook body must be a RunPod job JSON with `status`.")
    parsed = None if job.finished else backend.parse_webhook(body)
    if parsed is None:
        return job
    remote_id, remote = parsed
    if not remote_id:
        raise OrchestratorError("invalid_webhook", "The webhook body must name the remote job (`id`).")
    if job.remote_id is None:
        return _adopt(lifecycle, backend, job, remote_id)
    if remote_id != job.remote_id:
        log.warning("job %s: webhook for remote %s, not its %s; ignored", job.id, remote_id, job.remote_id)
        return job
    return lifecycle.apply(job, remote)


def _adopt(lifecycle: JobLifecycle, backend: Backend, job: JobView, remote_id: str) -> JobView:
    try:
        confirmed = backend.status(remote_id)
    except BackendError as exc:
        raise OrchestratorError("backend_unavailable", f"Cannot confirm remote job {remote_id}: {exc}") from None
    if confirmed.state is RemoteState.lost:
        log.warning("job %s: webhook names remote %s, which the backend does not know; ignored", job.id, remote_id)
        return job
    log.info("job %s: webhook names remote job %s; adopting it", job.id, remote_id)
    adopted = {"remote_id": remote_id, "error": None, "error_code": None}
    lifecycle.store.transition(job.id, JobEvent.submitted, adopted, where={"remote_id": None})
    return lifecycle.apply(lifecycle.get(job.id), confirmed)
