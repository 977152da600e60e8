"""The RunPod backend: a deployed endpoint's REST API (``/v2/{endpoint_id}/...``) or the emulator.

Retry rule (tenacity; MAX_ATTEMPTS tries, exponential backoff with jitter, Retry-After honoured):

- ``status``, ``cancel`` and ``health`` change nothing or are idempotent: they are retried on
  connection errors, timeouts, HTTP 429 and 5xx.
- ``submit`` (POST ``/run``) is never duplicated. RunPod's ``/run`` takes no idempotency key, so it is
  resent only when the previous try certainly created no job:

  * the request never left: no connection (refused, DNS failure, connect or pool timeout) or a URL
    without http(s)://; nothing was sent;
  * the API itself answered 429 (rate limited before queueing), 500 or 503: RunPod queues a job only
    when it answers 200 with the job's id.

  Every other failure after the request left — a read timeout, a dropped connection, a 502/504 from a
  gateway in front of the API (the API behind it may have queued the job) — raises ``SubmitUncertain``
  and is not resent. The job service then waits for the webhook a queued job would deliver (it names
  our job id, so it reconciles the job) or, with no webhook configured, fails the job with
  ``submit_uncertain`` rather than risk running it twice.
"""

from __future__ import annotations

import json
import logging
from typing import Any

import httpx
from tenacity import RetryCallState, Retrying, retry_if_exception, stop_after_attempt, wait_exponential_jitter

from orchestrator.core.backends.base import RemoteBackend, RemoteState, RemoteStatus, Submission
from orchestrator.core.backends.errors import BackendUnavailable, SubmitRejected, SubmitUncertain
from orchestrator.core.config import BackendKind

log = logging.getLogger(__name__)

DEFAULT_BASE_URL = "https://api.runpod.ai/v2"
HTTP_TIMEOUT = httpx.Timeout(30.0, connect=5.0)
RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})
RESEND_SAFE_STATUSES = frozenset({429, 500, 503})
MAX_RETRY_AFTER_S = 30.0
HEALTH_TIMEOUT_S = 5.0

STATES = {
    "IN_QUEUE": RemoteState.queued,
    "IN_PROGRESS": RemoteState.running,
    "RUNNING": RemoteState.running,
    "COMPLETED": RemoteState.completed,
    "FAILED": RemoteState.failed,
    "CANCELLED": RemoteState.cancelled,
    "TIMED_OUT": RemoteState.timed_out,
}


class _RetryableStatus(Exception):
    """An HTTP answer worth retrying (429, 5xx)."""

    def __init__(self, response: httpx.Response) -> None:
        super().__init__(f"HTTP {response.status_code}")
        self.status_code = response.status_code
        self.body = response.text[:300]
        retry_after = response.headers.get("retry-after", "")
        self.retry_after = float(retry_after) if retry_after.replace(".", "", 1).isdigit() else None


def _transient(exc: BaseException) -> bool:
    return isinstance(exc, (_RetryableStatus, httpx.TransportError))


# Failures raised before any byte of the request left: nothing can have been queued.
NOT_SENT_ERRORS = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout, httpx.UnsupportedProtocol)


def _resend_is_safe(exc: BaseException) -> bool:
    if isinstance(exc, _RetryableStatus):
        return exc.status_code in RESEND_SAFE_STATUSES
    return isinstance(exc, NOT_SENT_ERRORS)


def _error_message(raw: Any) -> tuple[str | None, str | None]:
    """RunPod's ``error`` as (message, code): our worker's JSON ``{"error", "error_code"}``, the SDK's JSON of a
    handler exception, or a plain message."""
    if isinstance(raw, str) and raw.lstrip().startswith("{"):
        try:
            raw = json.loads(raw)
        except ValueError:
            return raw, None
    if isinstance(raw, dict):
        if "error_code" in raw and "error" in raw:
            return str(raw["error"]), str(raw["error_code"])
        message = raw.get("error_message") or raw.get("message") or json.dumps(raw)[:500]
        kind = str(raw.get("error_type", "")).removeprefix("<class '").removesuffix("'>")
        return (f"Worker exception {kind}: {message}" if kind else str(message)), None
    return (str(raw) if raw else None), None


def _progress(output: Any) -> dict[str, Any] | float | None:
    if isinstance(output, dict) and ("fraction" in output or "stage" in output):
        return output
    if isinstance(output, (int, float)) and not isinstance(output, bool):
        return float(output)
    return None


def parse_job(body: dict[str, Any]) -> RemoteStatus:
    """Map a RunPod job JSON (status answer or webhook body) to a RemoteStatus."""
    status = str(body.get("status", "")).upper()
    state = STATES.get(status)
    output = body.get("output")
    if state is None:
        log.warning("unknown RunPod job status %r; treating it as running", status)
        return RemoteStatus(RemoteState.running)
    if state in (RemoteState.queued, RemoteState.running):
        return RemoteStatus(state, progress=_progress(output))
    if state is RemoteState.completed and isinstance(output, list):
        output = output[-1] if output else None  # a generator worker's aggregate: its result is the last item
    code = output.get("error_code") if isinstance(output, dict) else None
    if state is RemoteState.completed:
        if isinstance(output, dict) and "error" in output:
            return RemoteStatus(RemoteState.failed, error=str(output["error"]), error_code=code or "task_failed")
        return RemoteStatus(state, output=output, progress={"stage": "done", "fraction": 1.0})
    if state is RemoteState.failed:
        message, worker_code = _error_message(body.get("error"))
        message = message or "The RunPod job failed without a message."
        return RemoteStatus(state, error=message, error_code=code or worker_code or "remote_failed")
    if state is RemoteState.timed_out:
        return RemoteStatus(state, error="RunPod stopped the job at its execution timeout.", error_code="timeout")
    return RemoteStatus(state, error="The job was cancelled on RunPod.", error_code="cancelled")


class RunpodBackend(RemoteBackend):
    """One RunPod serverless endpoint."""

    kind = BackendKind.runpod

    def __init__(
        self,
        endpoint_id: str,
        *,
        api_key: str | None = None,
        base_url: str = DEFAULT_BASE_URL,
        max_attempts: int = 3,
        retry_wait_s: float = 0.25,
        timeout: httpx.Timeout = HTTP_TIMEOUT,
    ) -> None:
        self.endpoint = endpoint_id
        self.base_url = f"{base_url.rstrip('/')}/{endpoint_id}"
        self.max_attempts = max_attempts
        self._wait_base = wait_exponential_jitter(initial=retry_wait_s, max=10.0, jitter=retry_wait_s)
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._client = httpx.Client(base_url=self.base_url, headers=headers, timeout=timeout)

    @property
    def spec(self) -> str:
        return f"runpod:{self.endpoint}"

    def _wait(self, state: RetryCallState) -> float:
        delay = self._wait_base(state)
        exc = state.outcome.exception() if state.outcome else None
        retry_after = getattr(exc, "retry_after", None)
        return max(delay, min(retry_after, MAX_RETRY_AFTER_S)) if retry_after else delay

    def _send(self, method: str, path: str, body: dict[str, Any] | None) -> httpx.Response:
        response = self._client.request(method, path, json=body)
        if response.status_code in RETRY_STATUSES:
            raise _RetryableStatus(response)
        return response

    def _call(self, method: str, path: str, *, body: dict[str, Any] | None = None, retry_if=_transient):
        retrying = Retrying(
            stop=stop_after_attempt(self.max_attempts),
            wait=self._wait,
            retry=retry_if_exception(retry_if),
            reraise=True,
            before_sleep=lambda s: log.warning("%s %s failed (%s); retrying", method, path, s.outcome.exception()),
        )
        return retrying(self._send, method, path, body)

    def submit(self, job: Submission) -> str:
        policy = {"executionTimeout": int(job.timeout_s * 1000)}
        if job.ttl_s:
            policy["ttl"] = int(job.ttl_s * 1000)
        body: dict[str, Any] = {"input": {**job.payload, "task": job.task}, "policy": policy}
        if job.webhook_url:
            body["webhook"] = job.webhook_url
        try:
            response = self._call("POST", "/run", body=body, retry_if=_resend_is_safe)
        except _RetryableStatus as exc:
            if exc.status_code in RESEND_SAFE_STATUSES:
                raise SubmitRejected(
                    "runpod_unavailable",
                    f"RunPod answered HTTP {exc.status_code} to {self.max_attempts} submit tries; nothing was queued.",
                ) from None
            raise SubmitUncertain(
                "submit_uncertain", f"A gateway answered HTTP {exc.status_code}: RunPod may have queued the job."
            ) from None
        except NOT_SENT_ERRORS as exc:
            raise SubmitRejected("runpod_unreachable", f"Cannot connect to {self.base_url}: {exc}.") from None
        except httpx.HTTPError as exc:
            raise SubmitUncertain(
                "submit_uncertain", f"{type(exc).__name__} after the request was sent: RunPod may have queued the job."
            ) from None
        return self._job_id(response)

    def _job_id(self, response: httpx.Response) -> str:
        if response.status_code in (401, 403):
            raise SubmitRejected("runpod_unauthorized", f"RunPod refused the API key (HTTP {response.status_code}).")
        if response.status_code == 404:
            raise SubmitRejected("runpod_endpoint_not_found", f"RunPod endpoint {self.endpoint!r} was not found.")
        if response.status_code >= 400:
            raise SubmitRejected(
                "runpod_rejected", f"RunPod refused the job (HTTP {response.status_code}): {response.text[:300]}"
            )
        try:
            remote_id = response.json()["id"]
        except (ValueError, KeyError, TypeError):
            message = f"RunPod answered without a job id: {response.text[:200]}"
            raise SubmitUncertain("submit_uncertain", message) from None
        return str(remote_id)

    def _control_call(self, method: str, action: str, remote_id: str) -> httpx.Response:
        """A status or cancel call with its retries; BackendUnavailable when none got an answer."""
        try:
            return self._call(method, f"/{action}/{remote_id}")
        except (_RetryableStatus, httpx.HTTPError) as exc:
            raise BackendUnavailable("runpod_unavailable", f"RunPod {action} of {remote_id} failed: {exc}") from None

    def status(self, remote_id: str) -> RemoteStatus:
        response = self._control_call("GET", "status", remote_id)
        if response.status_code == 404:
            return RemoteStatus(
                RemoteState.lost,
                error=f"RunPod no longer knows job {remote_id}: it expired past its TTL or was lost with its worker.",
                error_code="remote_job_lost",
            )
        if response.status_code >= 400:
            raise BackendUnavailable("runpod_unavailable", f"RunPod status answered HTTP {response.status_code}.")
        try:
            body = response.json()
        except ValueError:
            body = None
        if not isinstance(body, dict):  # a proxy's HTML page, say: not an answer about the job
            raise BackendUnavailable("runpod_unavailable", f"RunPod status answered no job JSON: {response.text[:200]}")
        return parse_job(body)

    def cancel(self, remote_id: str) -> None:
        response = self._control_call("POST", "cancel", remote_id)
        if response.status_code >= 400 and response.status_code != 404:
            raise BackendUnavailable("runpod_unavailable", f"RunPod cancel answered HTTP {response.status_code}.")

    def health(self) -> dict[str, Any]:
        """The endpoint's workers and job counts; one quick try (health checks must answer fast)."""
        try:
            response = self._client.get("/health", timeout=HEALTH_TIMEOUT_S)
            response.raise_for_status()
            body = response.json()
        except (httpx.HTTPError, ValueError) as exc:
            return {"ok": False, "endpoint": self.endpoint, "error": f"{type(exc).__name__}: {exc}"}
        return {"ok": True, "endpoint": self.endpoint, **(body if isinstance(body, dict) else {"answer": body})}

    def parse_webhook(self, body: dict[str, Any]) -> tuple[str, RemoteStatus] | None:
        """RunPod posts the final job JSON (the same shape as its status answer), its ``id`` included."""
        return str(body.get("id") or ""), parse_job(body)

    def close(self) -> None:
        self._client.close()
