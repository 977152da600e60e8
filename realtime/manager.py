"""The live sessions of one worker process: a slot each, one event loop for all of them.

``SessionHost.run`` is what the ``live_session`` task calls from whichever thread runs the task (the RunPod
SDK's, Modal's, a local worker process's): it reserves the session's slot at once, under a lock and
before anything else (``too_many_sessions`` beyond ``REALTIME_MAX_SESSIONS``; ``session_exists`` for a
session id already live here), runs the session on the process's session loop (a thread started with
the first session, shared by every session of the process with its engines and caches) and frees the
slot when the session is over, however it ends.

``SessionManager`` keeps the orchestrator's in-process sessions (``realtime.api``) working until those
routes move to the orchestrator's control side; it runs sessions on the API's own loop.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager

import handlers
import realtime
from handlers.errors import TaskError
from handlers.schemas import LiveControl, LiveSessionRequest, LiveSessionResult, SessionDescription
from handlers.settings import Settings
from realtime.limits import RealtimeSettings, RealtimeUnavailable, SessionLimitReached, SessionNotFound
from realtime.session import LiveSession, new_session_id
from realtime.worker import open_session, serve_session

log = logging.getLogger(__name__)


class SessionHost:
    """A worker process's live sessions (see the module docstring)."""

    def __init__(self, limits: RealtimeSettings) -> None:
        self.limits = limits
        self._lock = threading.Lock()
        self._slots: set[str] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None

    @property
    def count(self) -> int:
        with self._lock:
            return len(self._slots)

    def run(self, request: LiveSessionRequest, runtime: handlers.WorkerRuntime) -> LiveSessionResult:
        """The session, from its offer to its end (blocks the calling thread meanwhile)."""
        with self._slot(request.session_id):
            future = asyncio.run_coroutine_threadsafe(serve_session(request, runtime, self.limits), self.loop())
            return future.result()

    @contextmanager
    def _slot(self, session_id: str) -> Iterator[None]:
        with self._lock:
            if session_id in self._slots:
                raise TaskError("session_exists", f"Session {session_id} is already live on this worker.")
            if len(self._slots) >= self.limits.max_sessions:
                raise SessionLimitReached(self.limits.max_sessions)
            self._slots.add(session_id)
        try:
            yield
        finally:
            with self._lock:
                self._slots.discard(session_id)

    def loop(self) -> asyncio.AbstractEventLoop:
        """The process's session loop, started on first use."""
        with self._lock:
            if self._loop is None:
                self._loop = asyncio.new_event_loop()
                self._thread = threading.Thread(target=self._loop.run_forever, name="live-sessions", daemon=True)
                self._thread.start()
            return self._loop

    def close(self) -> None:
        """Stop the session loop (no session may be running: a worker process's loop lives as long as it)."""
        with self._lock:
            loop, self._loop = self._loop, None
        if loop is not None:
            loop.call_soon_threadsafe(loop.stop)
            self._thread.join(10)
            loop.run_until_complete(loop.shutdown_default_executor())
            loop.close()


_host: list[SessionHost] = []
_host_lock = threading.Lock()


def process_host(limits: RealtimeSettings | None = None) -> SessionHost:
    """This process's session host, made on first use under ``limits`` (read from the environment if None)."""
    with _host_lock:
        if not _host:
            _host.append(SessionHost(limits or RealtimeSettings()))
        return _host[0]


IN_PROCESS_CONTROL = LiveControl(url="http://in-process.invalid", token="in-process-no-control")


class SessionManager:
    """The orchestrator's in-process sessions (``realtime.api``), made and ended by its routes."""

    def __init__(self, settings: Settings | None = None, limits: RealtimeSettings | None = None) -> None:
        self.runtime = handlers.worker_runtime(settings)  # this process's engines for its live sessions
        self.settings = self.runtime.settings
        limits = limits or RealtimeSettings()
        if "allow_private_candidates" not in limits.model_fields_set:  # the API's own sessions serve local browsers
            limits = limits.model_copy(update={"allow_private_candidates": True})
        self.limits = limits
        self.sessions: dict[str, LiveSession] = {}
        self._opening: set[str] = set()

    async def create(
        self, user_id: str, avatar_id: str | None, image: str | None, store: str | None, offer: dict[str, str]
    ) -> tuple[str, dict[str, str]]:
        """A new session for the avatar (or portrait) answering ``offer``; returns (session id, SDP answer)."""
        if not realtime.available():
            raise RealtimeUnavailable()
        self._drop_closed()
        if len(self.sessions) + len(self._opening) >= self.limits.max_sessions:
            raise SessionLimitReached(self.limits.max_sessions)
        session_id = new_session_id()
        self._opening.add(session_id)  # the slot, taken before the first await
        try:
            request = LiveSessionRequest(
                session_id=session_id,
                user_id=user_id,
                avatar_id=avatar_id,
                image=image,
                store=store,
                offer=SessionDescription(sdp=offer["sdp"], type="offer"),
                control=IN_PROCESS_CONTROL,
                idle_timeout_s=self.limits.idle_timeout_s,
            )
            session, answer, _ = await open_session(request, self.runtime, self.limits)
        finally:
            self._opening.discard(session_id)
        self.sessions[session_id] = session
        log.info("session %s started for %s (%d live)", session_id, user_id, len(self.sessions))
        return session_id, answer

    def get(self, session_id: str) -> LiveSession:
        session = self.sessions.get(session_id)
        if session is None or session.closed:
            raise SessionNotFound(session_id)
        return session

    async def close(self, session_id: str) -> None:
        await self.get(session_id).end("stopped")
        self.sessions.pop(session_id, None)

    async def close_all(self) -> None:
        for session in list(self.sessions.values()):
            await session.end("stopped")
        self.sessions.clear()

    def _drop_closed(self) -> None:
        for session_id in [sid for sid, s in self.sessions.items() if s.closed]:
            del self.sessions[session_id]
