"""Webhooks of hosted services, handed to the workers through the store (``handlers.hosted_video``).

``POST /v1/webhooks/d-id/{nonce}?token=...``: D-ID calls it when a talk changes. The token is the HMAC of the
nonce with WEBHOOK_SECRET (the worker that created the talk made it); the call is recorded as
``webhooks/d-id/{nonce}.json`` in the store (AVATAR_STORE_URI), where the worker following the talk looks for
it. Only the talk's id and status are kept: the worker reads the talk from D-ID itself.
"""

import hmac
import json
import re
import tempfile
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Body
from pydantic import BaseModel

from handlers.hosted_video import rendezvous_key, webhook_token
from orchestrator.api.context import ApiContext
from orchestrator.core.models import WebhookRejected

NONCE = re.compile(r"[0-9a-f]{32}")


class HostedWebhookAck(BaseModel):
    received: bool = True


def add_hosted_webhook_routes(router: APIRouter, ctx: ApiContext) -> None:
    @router.post("/v1/webhooks/d-id/{nonce}", response_model=HostedWebhookAck, tags=["webhooks"])
    def did_webhook(nonce: str, body: dict[str, Any] = Body(...), token: str = "") -> HostedWebhookAck:
        """D-ID posts a talk here when it is done (or failed); ``token`` is the HMAC of the nonce."""
        secret = ctx.settings.webhook_secret
        if not secret:
            raise WebhookRejected("webhooks_disabled", "Webhooks are disabled: WEBHOOK_SECRET is not set.")
        if not NONCE.fullmatch(nonce) or not hmac.compare_digest(str(token), webhook_token(secret, nonce)):
            raise WebhookRejected("webhook_rejected", "The webhook token does not match.")
        record = {"id": str(body.get("id", ""))[:128], "status": str(body.get("status", ""))[:32]}
        with tempfile.TemporaryDirectory(prefix="d-id-webhook-") as tmp:
            path = Path(tmp) / "talk.json"
            path.write_text(json.dumps(record))
            ctx.store().put(path, rendezvous_key(nonce), content_type="application/json")
        return HostedWebhookAck()
