"""The worker's side of a session's control channel: it dials out to the orchestrator, never listens.

``{control.url}/answer``, ``/commands`` (long-poll), ``/events`` and ``/end`` (``handlers/schemas.py`` has the
contract), each request with ``Authorization: Bearer <control.token>``. A request that fails (no answer,
a timeout, 5xx, 429) is retried with backoff until the control URL has been unreachable for
``control_lost_s`` since its last answer: then ``ControlLost`` (the orchestrator is gone; the session ends
itself). ``410`` means the orchestrator ended the session (``ControlGone``); any other 4xx is
``ControlRefused``. The token is never logged: only the route and the status are.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any
from urllib.parse import urlsplit

import httpx
from pydantic import BaseModel, ValidationError

from handlers.errors import TaskError
from handlers.schemas import LiveAnswer, LiveControl, SessionCommand, SessionCommands, SessionEnd, SessionEvents
from realtime.limits import RealtimeSettings

log = logging.getLogger(__name__)

RETRY_FIRST_S = 0.2
RETRY_MAX_S = 3.0
END_ATTEMPTS_S = 5.0  # the final /end is tried this long at most: the session is over either way
RETRIED_STATUSES = frozenset({408, 425, 429, 500, 502, 503, 504})
GONE = 410


class ControlLost(TaskError):
    def __init__(self, seconds: float) -> None:
        super().__init__("control_lost", f"The session's control URL did not answer for {seconds:.0f} s.")


class ControlRefused(TaskError):
    def __init__(self, route: str, status: int) -> None:
        super().__init__("control_refused", f"The orchestrator refused the session's `{route}` ({status}).")


class ControlGone(Exception):
    """410: the orchestrator has ended this session."""


class ControlClient:
    def __init__(self, control: LiveControl, limits: RealtimeSettings) -> None:
        if urlsplit(control.url).scheme not in ("http", "https"):
            raise TaskError("invalid_input", "`control.url` must be an http:// or https:// URL.")
        self._limits = limits
        self._http = httpx.AsyncClient(
            base_url=control.url.rstrip("/"),
            headers={"Authorization": f"Bearer {control.token}"},
            timeout=httpx.Timeout(limits.control_timeout_s),
            follow_redirects=False,
            trust_env=False,  # the orchestrator's address as given: no proxy from the environment sees the token
        )
        self.last_contact = time.monotonic()

    async def post_answer(self, answer: LiveAnswer) -> None:
        await self._call("POST", "/answer", body=answer)

    async def commands(self, after: int) -> list[SessionCommand]:
        """The commands after ``after`` (waits up to ``poll_wait_s`` for one); ControlGone once it has ended."""
        wait = self._limits.poll_wait_s
        params = {"after": after, "wait": wait}
        response = await self._call("GET", "/commands", params=params, timeout=wait + self._limits.control_timeout_s)
        try:
            return SessionCommands.model_validate_json(response.content).commands
        except ValidationError as exc:
            log.warning("control: unreadable commands answer (%d errors); polling again", exc.error_count())
            return []

    async def post_events(self, events: SessionEvents) -> None:
        await self._call("POST", "/events", body=events)

    async def post_end(self, end: SessionEnd) -> bool:
        """Report the session's end; gives up after END_ATTEMPTS_S (returns whether it was delivered)."""
        try:
            await asyncio.wait_for(self._call("POST", "/end", body=end), END_ATTEMPTS_S)
            return True
        except (TaskError, ControlGone, asyncio.TimeoutError) as exc:
            log.info("control: the session's end was not delivered (%s)", type(exc).__name__)
            return False

    async def aclose(self) -> None:
        await self._http.aclose()

    async def _call(
        self,
        method: str,
        route: str,
        *,
        body: BaseModel | None = None,
        params: dict[str, Any] | None = None,
        timeout: float | None = None,
    ) -> httpx.Response:
        content = body.model_dump_json(exclude_none=True).encode() if body is not None else None
        headers = {"Content-Type": "application/json"} if content is not None else None
        delay = RETRY_FIRST_S
        while True:
            try:
                response = await self._http.request(
                    method,
                    route,
                    content=content,
                    params=params,
                    headers=headers,
                    timeout=timeout if timeout is not None else httpx.USE_CLIENT_DEFAULT,
                )
                failure = f"status {response.status_code}"
                if response.status_code not in RETRIED_STATUSES:
                    return self._answered(route, response)
            except httpx.TransportError as exc:
                failure = type(exc).__name__
            silent = time.monotonic() - self.last_contact
            if silent >= self._limits.control_lost_s:
                log.warning("control: %s %s unanswered for %.0f s (%s)", method, route, silent, failure)
                raise ControlLost(silent)
            log.debug("control: %s %s failed (%s), retrying in %.1f s", method, route, failure, delay)
            await asyncio.sleep(min(delay, max(0.0, self._limits.control_lost_s - silent)))
            delay = min(delay * 2, RETRY_MAX_S)

    def _answered(self, route: str, response: httpx.Response) -> httpx.Response:
        self.last_contact = time.monotonic()
        if response.status_code == GONE:
            raise ControlGone
        if response.status_code >= 400:
            log.warning("control: %s refused with %d", route, response.status_code)
            raise ControlRefused(route, response.status_code)
        if len(response.content) > self._limits.max_control_body_bytes:
            raise ControlRefused(route, response.status_code)
        return response
