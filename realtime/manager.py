"""The live sessions of one worker process: a slot each, one event loop for all of them.

``SessionHost.run`` is what the ``live_session`` task calls from whichever thread runs the task (the RunPod
SDK's, Modal's, a local worker process's): it reserves the session's slot at once, under a lock and
before anything else (``too_many_sessions`` beyond ``REALTIME_MAX_SESSIONS``; ``session_exists`` for a
session id already live here), runs the session on the process's session loop (a thread started with
the first session, shared by every session of the process with its engines and caches) and frees the
slot when the session is over, however it ends.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager

import handlers
from handlers.errors import TaskError
from handlers.schemas import LiveSessionRequest, LiveSessionResult
from realtime.limits import RealtimeSettings, SessionLimitReached
from realtime.worker import serve_session

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
