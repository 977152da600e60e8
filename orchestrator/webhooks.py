"""Webhook URLs and their tokens: RunPod posts a job's final state to ``/v1/webhooks/runpod/{job_id}?token=``.

RunPod can only call a URL, so the token rides in its query string; the API's access log masks it
(``api.app.AccessLogRedaction``). The token is the HMAC-SHA256 of the job id with WEBHOOK_SECRET: it
authenticates one job's webhook and nothing else.
"""

from __future__ import annotations

import hashlib
import hmac

from orchestrator.config import OrchestratorSettings
from orchestrator.models import WebhookRejected

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
