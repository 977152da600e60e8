"""What the RunPod emulator accepts, as strictly as the API it stands in for: a typed ``/run`` body (400 with
a message for a malformed one), a body limit, and webhooks only to public addresses or allowed prefixes.

RunPod's ``/run`` takes ``{"input": {...}, "webhook"?: url, "policy"?: {"executionTimeout"?: ms, "ttl"?: ms,
"lowPriority"?: bool}, "s3Config"?: {...}}``; RunPod's own servers can reach only public addresses, so a
webhook to a private or loopback one is refused unless the emulator is started with
``allow_private_webhooks`` (``--allow-private-webhooks``) or the URL lies under one of ``webhook_prefixes``
(``--webhook-prefix``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from storage import StorageError, StorageSettings
from storage.access import is_under, normalise_prefixes, normalise_uri
from storage.http import check_url_allowed

MAX_RUN_BODY_BYTES = 10 * 1024 * 1024  # RunPod's limit for /run (and what /runsync takes here too)
DEFAULT_EXECUTION_TIMEOUT_MS = 600_000
DEFAULT_TTL_MS = 86_400_000
MAX_POLICY_MS = 7 * 86_400_000  # RunPod caps both at a week


class RunPolicy(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    executionTimeout: int = Field(DEFAULT_EXECUTION_TIMEOUT_MS, gt=0, le=MAX_POLICY_MS)  # noqa: N815 - RunPod's
    ttl: int = Field(DEFAULT_TTL_MS, gt=0, le=MAX_POLICY_MS)
    lowPriority: bool = False  # noqa: N815 - RunPod's name


class RunBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    input: dict[str, Any]
    webhook: str | None = Field(None, max_length=2048)
    policy: RunPolicy = Field(default_factory=RunPolicy)
    s3Config: dict[str, Any] | None = None  # noqa: N815 - RunPod's name; accepted and unused here


class RequestRefused(ValueError):
    """A /run body the emulator refuses; the message says what to fix (answered as 400)."""


@dataclass(frozen=True)
class WebhookRule:
    allow_private: bool = False
    prefixes: tuple[str, ...] = ()

    @classmethod
    def of(cls, allow_private: bool, prefixes: list[str] | tuple[str, ...] = ()) -> WebhookRule:
        return cls(allow_private, normalise_prefixes(prefixes, what="webhook prefix"))

    def check(self, url: str) -> str:
        """The webhook URL normalised, or RequestRefused: http(s) only; private addresses only when allowed."""
        try:
            canonical = normalise_uri(url, what="`webhook`")
            if canonical.split(":", 1)[0] not in ("http", "https"):
                raise RequestRefused("`webhook` must be an http:// or https:// URL.")
            if self.allow_private or is_under(canonical, self.prefixes):
                return canonical
            check_url_allowed(canonical, StorageSettings(allow_private_urls=False))
        except StorageError as exc:
            raise RequestRefused(
                f"`webhook` refused: {exc.message}. RunPod reaches public addresses only; start the emulator "
                "with --allow-private-webhooks or --webhook-prefix to deliver to this one."
            ) from None
        return canonical


def parse_run_body(body: Any, webhooks: WebhookRule) -> RunBody:
    """The /run (and /runsync) body as RunPod reads it; RequestRefused naming the field otherwise."""
    try:
        run = RunBody.model_validate(body)
    except ValidationError as exc:
        problems = "; ".join(
            f"`{'.'.join(str(p) for p in err['loc'])}`: {err['msg']}" if err["loc"] else err["msg"]
            for err in exc.errors()
        )
        raise RequestRefused(f"Invalid request: {problems}") from None
    if run.webhook is not None:
        run = run.model_copy(update={"webhook": webhooks.check(run.webhook)})
    return run
