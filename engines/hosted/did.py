"""D-ID's talks API: a portrait URL + an audio URL -> a talk, followed to ``done`` -> its ``result_url``.

``POST {base}/talks`` with ``{"source_url", "script": {"type": "audio", "audio_url"}, "config":
{"result_format": "mp4"}, "webhook"?}`` answers 201 ``{"id", "status": "created", ...}``; ``GET {base}/talks/{id}``
answers the talk, whose ``status`` goes created -> started -> done (with ``result_url``), or ``error`` /
``rejected`` (with ``error: {"kind", "description"}``). Errors are JSON ``{"kind", "description"}``. Every
request carries ``Authorization: Basic <DID_API_KEY>``, the key exactly as D-ID issues it.

Failures map to codes: ``did_auth_failed`` (401/403), ``did_insufficient_credits`` (402), ``did_rate_limited``
(429 after retries honouring Retry-After), ``did_invalid_request`` (other 4xx), ``did_provider_error`` (5xx
after retries, unreadable answers), ``did_unreachable``, ``did_timeout`` (no answer, or not done in time),
``did_failed`` / ``did_rejected`` (the talk's own status). Error bodies are cut and redacted like the speech
providers' (the key and anything that looks like a credential), and the key never appears in a message.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import httpx

from engines.errors import EngineError
from engines.tts.http_providers import _body_prefix, _retry_after, _snippet  # one redaction for every provider

log = logging.getLogger(__name__)

DEFAULT_BASE_URL = "https://api.d-id.com"
CONNECT_TIMEOUT_S = 10.0
MAX_ATTEMPTS = 3
MAX_RETRY_WAIT_S = 20.0
MAX_ANSWER_BYTES = 1024 * 1024
RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})
FINAL_FAILURES = {"error": "did_failed", "rejected": "did_rejected"}
PENDING = frozenset({"created", "started"})


@dataclass(frozen=True)
class Talk:
    id: str
    status: str
    result_url: str | None = None
    error: str | None = None  # "<kind>: <description>" of a failed talk


@dataclass(frozen=True)
class Following:
    """How long and how often a talk is followed: polls back off from ``poll_s`` to ``max_poll_s``; ``woken``
    (when given) is asked every ``wake_check_s`` whether a webhook said the talk changed, which polls at once."""

    timeout_s: float = 600.0
    poll_s: float = 2.0
    max_poll_s: float = 15.0
    wake_check_s: float = 1.0
    woken: Callable[[], bool] | None = None


class _Retryable(Exception):
    def __init__(self, status: int, snippet: str, wait_s: float | None) -> None:
        super().__init__(f"HTTP {status}")
        self.status, self.snippet, self.wait_s = status, snippet, wait_s


class DidClient:
    def __init__(
        self,
        api_key: str | None,
        base_url: str = DEFAULT_BASE_URL,
        request_timeout_s: float = 30.0,
        max_attempts: int = MAX_ATTEMPTS,
        retry_wait_s: float = 1.0,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if not api_key:
            raise EngineError("did_not_configured", "D-ID needs an API key: set DID_API_KEY (as D-ID issues it)")
        if not base_url.startswith(("https://", "http://")):
            raise EngineError("did_not_configured", f"DID_BASE_URL {base_url[:80]!r} is not an http(s) URL")
        self._key = api_key
        self.base_url = base_url.rstrip("/")
        self.timeout = httpx.Timeout(request_timeout_s, connect=CONNECT_TIMEOUT_S)
        self.max_attempts, self.retry_wait_s, self._sleep = max_attempts, retry_wait_s, sleep

    def __repr__(self) -> str:  # never the key
        return f"DidClient({self.base_url})"

    # ---- the two calls -----------------------------------------------------------------------

    def create_talk(self, source_url: str, audio_url: str, webhook: str | None = None) -> Talk:
        body: dict[str, Any] = {
            "source_url": source_url,
            "script": {"type": "audio", "audio_url": audio_url},
            "config": {"result_format": "mp4"},
        }
        if webhook is not None:
            body["webhook"] = webhook
        talk = self._talk(self._request("POST", "/talks", body))
        log.info("D-ID talk %s created (%s)", talk.id, talk.status)
        return talk

    def get_talk(self, talk_id: str) -> Talk:
        return self._talk(self._request("GET", f"/talks/{talk_id}"))

    def _talk(self, value: dict[str, Any]) -> Talk:
        talk = _talk(value)
        if talk.error is None:
            return talk
        return Talk(talk.id, talk.status, talk.result_url, _snippet(talk.error.encode(), self._key))

    def follow(self, talk: Talk, following: Following, clock: Callable[[], float] = time.monotonic) -> Talk:
        """Wait for ``talk`` to be done; EngineError for a failed or rejected talk, or when time runs out."""
        deadline = clock() + following.timeout_s
        interval, next_poll = following.poll_s, clock() + following.poll_s
        while True:
            _raise_if_failed(talk)
            if talk.status == "done":
                return talk
            now = clock()
            if now >= deadline:
                raise EngineError(
                    "did_timeout",
                    f"D-ID talk {talk.id} is still {talk.status} after {following.timeout_s:g} s (DID_TIMEOUT_S)",
                )
            woken = following.woken is not None and following.woken()
            if woken or now >= next_poll:
                talk = self.get_talk(talk.id)
                interval = min(interval * 2, following.max_poll_s)
                next_poll = clock() + interval
                continue
            pause = next_poll - now if following.woken is None else min(following.wake_check_s, next_poll - now)
            self._sleep(max(0.0, min(pause, deadline - now)))

    # ---- HTTP ------------------------------------------------------------------------------

    def _request(self, method: str, path: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
        for attempt in range(1, self.max_attempts + 1):
            try:
                return self._once(method, path, body)
            except _Retryable as exc:
                if attempt == self.max_attempts:
                    code = "did_rate_limited" if exc.status == 429 else "did_provider_error"
                    raise EngineError(
                        code, f"D-ID still answered HTTP {exc.status} after {attempt} attempts: {exc.snippet}"
                    ) from None
                wait = exc.wait_s if exc.wait_s is not None else self.retry_wait_s * 2 ** (attempt - 1)
                log.warning("D-ID %s %s: HTTP %d, retrying in %.1f s", method, path, exc.status, wait)
                self._sleep(min(wait, MAX_RETRY_WAIT_S))
        raise AssertionError("unreachable")

    def _once(self, method: str, path: str, body: dict[str, Any] | None) -> dict[str, Any]:
        headers = {"Authorization": f"Basic {self._key}", "Accept": "application/json"}
        try:
            with (
                httpx.Client(timeout=self.timeout) as client,
                client.stream(method, f"{self.base_url}{path}", json=body, headers=headers) as response,
            ):
                content = _body_prefix(response) if not response.is_success else _read(response)
                status = response.status_code
                retry_after = response.headers.get("retry-after")
        except httpx.TimeoutException as exc:
            raise EngineError(
                "did_timeout", f"D-ID did not answer {method} {path} in time ({type(exc).__name__})"
            ) from None
        except httpx.HTTPError as exc:
            raise EngineError(
                "did_unreachable", f"cannot reach D-ID at {self.base_url}: {type(exc).__name__}"
            ) from None
        if 200 <= status < 300:
            return _json(content, method, path)
        snippet = _snippet(content, self._key)
        if status in RETRY_STATUSES:
            raise _Retryable(status, snippet, _retry_after(retry_after))
        if status in (401, 403):
            raise EngineError("did_auth_failed", f"D-ID refused the API key (DID_API_KEY): HTTP {status}: {snippet}")
        if status == 402:
            raise EngineError("did_insufficient_credits", f"D-ID: not enough credits (HTTP 402): {snippet}")
        raise EngineError("did_invalid_request", f"D-ID refused {method} {path}: HTTP {status}: {snippet}")


def _read(response: httpx.Response) -> bytes:
    content = b""
    for chunk in response.iter_bytes():
        content += chunk
        if len(content) > MAX_ANSWER_BYTES:
            raise EngineError("did_provider_error", f"D-ID answered more than {MAX_ANSWER_BYTES} bytes")
    return content


def _json(content: bytes, method: str, path: str) -> dict[str, Any]:
    import json

    try:
        value = json.loads(content)
    except ValueError:
        value = None
    if not isinstance(value, dict):
        raise EngineError(
            "did_provider_error", f"D-ID answered {method} {path} with something other than a JSON object"
        )
    return value


def _talk(value: dict[str, Any]) -> Talk:
    talk_id, status = value.get("id"), value.get("status")
    if not isinstance(talk_id, str) or not talk_id or not isinstance(status, str):
        raise EngineError("did_provider_error", "D-ID answered a talk without an `id` or a `status`")
    result_url = value.get("result_url") if isinstance(value.get("result_url"), str) else None
    error = value.get("error")
    reason = None
    if isinstance(error, dict):
        reason = f"{str(error.get('kind', 'error'))[:80]}: {str(error.get('description', ''))[:300]}"
    elif error is not None:
        reason = str(error)[:300]
    return Talk(talk_id, status, result_url, reason)


def _raise_if_failed(talk: Talk) -> None:
    if talk.status in FINAL_FAILURES:
        reason = talk.error or "no reason given"
        raise EngineError(FINAL_FAILURES[talk.status], f"D-ID talk {talk.id} {talk.status}: {reason}")
    if talk.status == "done" and not talk.result_url:
        raise EngineError("did_provider_error", f"D-ID talk {talk.id} is done but has no result_url")
    if talk.status not in PENDING and talk.status != "done":
        raise EngineError("did_provider_error", f"D-ID talk {talk.id} has an unknown status {talk.status[:40]!r}")
