"""A small control server following the live-session contract (``handlers/schemas.py``): the orchestrator's
side of a session as a worker sees it, for the worker's tests and ``bench/realtime.py``. Not the thing under
test (the orchestrator's own routes are); it only records what the worker posts and hands it commands.

Routes under ``/control/{session_id}``: ``POST /answer``, ``GET /commands?after&wait`` (long-poll; 410 once
the session is ``gone``), ``POST /events``, ``POST /end``; each needs the session's bearer token.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from fastapi import FastAPI, Header, Request
from fastapi.responses import JSONResponse

from handlers.schemas import LiveAnswer, SessionEnd, SessionEvents
from orchestrator.devtools.background_server import BackgroundServer


@dataclass
class ControlledSession:
    token: str
    answer: dict[str, Any] | None = None
    answered_at: float | None = None
    commands: list[dict[str, Any]] = field(default_factory=list)
    events: list[dict[str, Any]] = field(default_factory=list)
    ends: list[dict[str, Any]] = field(default_factory=list)
    gone: bool = False
    refuse: set[str] = field(default_factory=set)  # routes answered 403 (a control side that refuses)
    polls: int = 0


class ControlPeer:
    """The app plus thread-safe helpers for the test that drives it."""

    def __init__(self) -> None:
        self.sessions: dict[str, ControlledSession] = {}
        self._lock = threading.Lock()
        self._changed: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self.app = self._routes()
        self.server: BackgroundServer | None = None
        self.url = ""

    # ---- driven by the test ---------------------------------------------------------------

    def open(self, session_id: str) -> dict[str, str]:
        """A session's `control` field (url + a fresh token)."""
        token = secrets.token_urlsafe(24)
        with self._lock:
            self.sessions[session_id] = ControlledSession(token)
        return {"url": f"{self.url}/control/{session_id}", "token": token}

    def command(self, session_id: str, kind: str, text: str | None = None, **fields: Any) -> int:
        """Queue a command (``fields``: its other fields, e.g. ``audio``, ``queued``); its seq."""
        with self._lock:
            session = self.sessions[session_id]
            seq = len(session.commands) + 1
            session.commands.append(
                {"seq": seq, "kind": kind, **({"text": text} if text is not None else {}), **fields}
            )
        self._wake()
        return seq

    def end_session(self, session_id: str) -> None:
        """The orchestrator ended the session: its routes answer 410 from now on."""
        with self._lock:
            self.sessions[session_id].gone = True
        self._wake()

    def wait_for(self, check: Any, timeout_s: float = 30.0) -> Any:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            with self._lock:
                found = check()
            if found:
                return found
            time.sleep(0.02)
        return None

    def answer(self, session_id: str, timeout_s: float = 60.0) -> dict[str, Any] | None:
        return self.wait_for(lambda: self.sessions[session_id].answer, timeout_s)

    def end(self, session_id: str, timeout_s: float = 30.0) -> dict[str, Any] | None:
        found = self.wait_for(lambda: self.sessions[session_id].ends, timeout_s)
        return found[0] if found else None

    def events(self, session_id: str, kind: str | None = None) -> list[dict[str, Any]]:
        with self._lock:
            return [e for e in self.sessions[session_id].events if kind is None or e["kind"] == kind]

    def said(self, session_id: str, seq: int, timeout_s: float = 30.0) -> dict[str, Any] | None:
        def found() -> Any:
            return next((e for e in self.sessions[session_id].events if e.get("seq") == seq), None)

        return self.wait_for(found, timeout_s)

    def _wake(self) -> None:
        if self._loop is not None and self._changed is not None:
            self._loop.call_soon_threadsafe(self._changed.set)

    # ---- the routes -----------------------------------------------------------------------

    def _session(self, session_id: str, authorization: str | None, route: str) -> ControlledSession | JSONResponse:
        session = self.sessions.get(session_id)
        if session is None or authorization != f"Bearer {session.token}":
            return JSONResponse({"error": "unknown session or token", "error_code": "unauthorized"}, 401)
        if route in session.refuse:
            return JSONResponse({"error": "refused", "error_code": "forbidden"}, 403)
        if session.gone:
            return JSONResponse({"error": "the session has ended", "error_code": "session_ended"}, 410)
        return session

    def _routes(self) -> FastAPI:
        app = FastAPI()

        @app.post("/control/{session_id}/answer")
        async def answer(session_id: str, body: LiveAnswer, authorization: str | None = Header(None)) -> Any:
            session = self._session(session_id, authorization, "answer")
            if isinstance(session, JSONResponse):
                return session
            with self._lock:
                session.answer, session.answered_at = body.model_dump(), time.time()
            return {"ok": True}

        @app.get("/control/{session_id}/commands")
        async def commands(
            session_id: str, after: int = 0, wait: float = 20.0, authorization: str | None = Header(None)
        ) -> Any:
            deadline = time.monotonic() + min(wait, 30.0)
            if self._changed is None:
                self._loop, self._changed = asyncio.get_running_loop(), asyncio.Event()
            while True:
                self._changed.clear()  # before looking: a command added from now on wakes this poll
                session = self._session(session_id, authorization, "commands")
                if isinstance(session, JSONResponse):
                    return session
                session.polls += 1
                pending = [c for c in session.commands if c["seq"] > after]
                if pending or time.monotonic() >= deadline:
                    return {"commands": pending}
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(self._changed.wait(), max(0.0, deadline - time.monotonic()))

        @app.post("/control/{session_id}/events")
        async def events(session_id: str, body: SessionEvents, authorization: str | None = Header(None)) -> Any:
            session = self._session(session_id, authorization, "events")
            if isinstance(session, JSONResponse):
                return session
            with self._lock:
                session.events.extend(e.model_dump(exclude_none=True) for e in body.events)
            return {"ok": True}

        @app.post("/control/{session_id}/end")
        async def end(session_id: str, request: Request, authorization: str | None = Header(None)) -> Any:
            session = self._session(session_id, authorization, "end")
            if isinstance(session, JSONResponse):
                return session
            body = SessionEnd.model_validate_json(await request.body())
            with self._lock:
                session.ends.append(body.model_dump(exclude_none=True))
            return {"ok": True}

        return app

    def __enter__(self) -> ControlPeer:
        self.server = BackgroundServer(self.app)
        self.url = self.server.__enter__().url
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.server is not None:
            self.server.__exit__(*exc)
            self.server = None
