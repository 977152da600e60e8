"""Wakeups for the waits of live sessions (a create waiting for its answer, ``/say`` for ``said``, the worker's
long poll for commands), on any replica.

A change to a session is announced with ``notify(session_id)``: waiters in this process wake at once, and on
PostgreSQL a ``NOTIFY`` on ``avatarctl_sessions`` reaches the other replicas (their listener calls ``wake``).
Waiters never hold a thread: each is an ``asyncio.Event`` on its own event loop, and every wait also re-reads
the database after a short poll interval, so a lost notification costs at most that interval.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager, suppress

from sqlalchemy import text
from sqlalchemy.engine import Engine

log = logging.getLogger(__name__)

SESSIONS_CHANNEL = "avatarctl_sessions"


class Waiter:
    """One subscription: ``wait(timeout_s)`` returns when the session changed (or the time passed)."""

    def __init__(self) -> None:
        self.loop = asyncio.get_running_loop()
        self.event = asyncio.Event()

    async def wait(self, timeout_s: float) -> bool:
        """True when woken by a notification, False when the time passed."""
        woken = False
        with suppress(TimeoutError):
            woken = await asyncio.wait_for(self.event.wait(), max(0.0, timeout_s))
        self.event.clear()
        return woken

    def set(self) -> None:
        self.loop.call_soon_threadsafe(self.event.set)


class SessionSignals:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._waiters: dict[str, set[Waiter]] = {}
        self._lock = threading.Lock()

    @contextmanager
    def subscribe(self, session_id: str) -> Iterator[Waiter]:
        """Subscribe before reading the state waited for, so a change made in between is not missed."""
        waiter = Waiter()
        with self._lock:
            self._waiters.setdefault(session_id, set()).add(waiter)
        try:
            yield waiter
        finally:
            with self._lock:
                waiters = self._waiters.get(session_id, set())
                waiters.discard(waiter)
                if not waiters:
                    self._waiters.pop(session_id, None)

    def wake(self, session_id: str) -> None:
        """Wake this process's waiters on the session (the replica's LISTEN thread calls this too)."""
        with self._lock:
            waiters = list(self._waiters.get(session_id, ()))
        for waiter in waiters:
            with suppress(RuntimeError):  # its event loop closed: the waiting request is gone
                waiter.set()

    def notify(self, session_id: str) -> None:
        """The session changed: wake the waiters here and on every other replica."""
        self.wake(session_id)
        if self.engine.dialect.name != "postgresql":
            return
        try:
            with self.engine.begin() as conn:
                conn.execute(text("SELECT pg_notify(:channel, :id)"), {"channel": SESSIONS_CHANNEL, "id": session_id})
        except Exception as exc:  # the other replicas' next poll sees the change anyway
            log.warning("NOTIFY for session %s failed: %s", session_id, exc)
