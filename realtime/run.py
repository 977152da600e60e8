"""A running live session's control loop: commands in (long-poll), events out, one end reported.

Two tasks beside the session's media: the poller takes ``say`` / ``play`` / ``interrupt`` / ``stop`` in ``seq`` order
(each once: a command at or below the last seq seen is skipped) and applies them; the reporter posts
``said`` / ``error`` events as soon as there are any and a ``heartbeat`` with the session's statistics
every ``heartbeat_s``. The session lasts until it ends itself (peer, idle), a command stops it, the
control routes answer 410 (``stopped``) or stay unreachable for ``control_lost_s`` (``error``,
``control_lost``), or ``max_duration_s`` (the request's, capped by the worker's) has passed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Any

from engines.errors import EngineError
from handlers.errors import TaskError
from handlers.schemas import (
    LiveSessionRequest,
    LiveSessionResult,
    SessionCommand,
    SessionEnd,
    SessionEvent,
    SessionEvents,
)
from realtime.control import END_ATTEMPTS_S, ControlClient, ControlGone, ControlLost, ControlRefused
from realtime.limits import RealtimeSettings
from realtime.session import LiveSession
from storage.errors import StorageError

log = logging.getLogger(__name__)

MAX_EVENTS_PER_POST = 64  # SessionEvents' own limit
QUICK_POLL_S = 0.05  # a poll answered this fast with nothing: the server does not hold it; pause before the next
QUICK_POLL_PAUSE_S = 0.5


class SessionRun:
    def __init__(
        self, session: LiveSession, control: ControlClient, request: LiveSessionRequest, limits: RealtimeSettings
    ) -> None:
        self.session, self.control, self.request, self.limits = session, control, request, limits
        self.max_duration_s = min(request.max_duration_s, limits.max_duration_s)
        self._events: list[SessionEvent] = []
        self._wake = asyncio.Event()
        self._seq = 0
        self._tasks: set[asyncio.Task] = set()

    async def until_ended(self) -> LiveSessionResult:
        session = self.session
        loops = [asyncio.ensure_future(self._guarded(loop)) for loop in (self._poll(), self._report())]
        try:
            await asyncio.wait_for(session.wait_closed(), self.max_duration_s)
        except asyncio.TimeoutError:
            await session.end("max_duration")
        finally:
            for task in [*loops, *self._tasks]:
                task.cancel()
            await asyncio.gather(*loops, *self._tasks, return_exceptions=True)
            await session.close()
        reason, error, stats = session.end_reason or "closed", session.end_error, session.stats()
        if self._events and not isinstance(error, (ControlLost, ControlRefused)):
            await self._last_events()
        end = SessionEnd(reason=reason, stats=stats)
        if error is not None:
            end = SessionEnd(reason=reason, error_code=error.code, error=error.message, stats=stats)
        await self.control.post_end(end)
        log.info("session %s: %s after %.0f s, %d frames", session.id, reason, stats.seconds, stats.frames_sent)
        return LiveSessionResult(session_id=session.id, reason=reason, stats=stats)

    async def _guarded(self, loop: Any) -> None:
        """One control loop; the control channel's end ends the session."""
        try:
            await loop
        except ControlGone:
            await self.session.end("stopped")
        except TaskError as exc:  # ControlLost, ControlRefused
            await self.session.end("error", exc)
        except Exception as exc:  # a control loop that stops would leave the session deaf: end it instead
            log.exception("session %s: control loop failed", self.session.id)
            error = TaskError("internal_error", f"Internal error ({type(exc).__name__}); see the worker logs.")
            await self.session.end("error", error)

    # ---- commands --------------------------------------------------------------------------

    async def _poll(self) -> None:
        while not self.session.closed:
            asked = time.monotonic()
            commands = await self.control.commands(self._seq)
            for command in commands:
                if command.seq <= self._seq:
                    continue
                self._seq = command.seq
                await self._apply(command)
            if not commands and time.monotonic() - asked < QUICK_POLL_S:
                await asyncio.sleep(QUICK_POLL_PAUSE_S)

    async def _apply(self, command: SessionCommand) -> None:
        if command.kind == "stop":
            await self.session.end("stopped")
        elif command.kind == "interrupt":
            self.session.interrupt()
        elif command.kind == "play":
            self._spawn(self._speak(command, self.session.play(command.audio or "", command.queued)))
        elif command.text is None or not command.text.strip():
            empty = SessionEvent(kind="error", seq=command.seq, error_code="invalid_input", error="`text` is empty")
            self._event(empty)
        else:
            voice = command.voice or self.request.voice
            self._spawn(self._speak(command, self.session.say(command.text, voice, command.queued)))

    def _spawn(self, coroutine: Any) -> None:
        task = asyncio.ensure_future(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _speak(self, command: SessionCommand, speech: Any) -> None:
        """Await a say or play; its `said` event (the seconds now playing) or its `error`."""
        try:
            seconds = await speech
            self._event(SessionEvent(kind="said", seq=command.seq, duration_s=round(seconds, 3)))
        except (TaskError, EngineError, StorageError) as exc:  # a file not found or refused too
            log.info("session %s: %s %d not spoken (%s)", self.session.id, command.kind, command.seq, exc.code)
            self._event(SessionEvent(kind="error", seq=command.seq, error_code=exc.code, error=exc.message))

    # ---- events ----------------------------------------------------------------------------

    def _event(self, event: SessionEvent) -> None:
        self._events.append(event)
        self._wake.set()

    async def _report(self) -> None:
        next_beat = time.monotonic() + self.limits.heartbeat_s
        while not self.session.closed:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._wake.wait(), max(0.0, next_beat - time.monotonic()))
            self._wake.clear()
            if time.monotonic() >= next_beat:
                self._events.append(SessionEvent(kind="heartbeat", stats=self.session.stats()))
                next_beat = time.monotonic() + self.limits.heartbeat_s
            await self._post_events()

    async def _last_events(self) -> None:
        """The events still queued at the end (a `said` just made), delivered if the control URL answers."""
        try:
            await asyncio.wait_for(self._post_events(), END_ATTEMPTS_S)
        except (TaskError, ControlGone, asyncio.TimeoutError):
            log.info("session %s: last events not delivered", self.session.id)

    async def _post_events(self) -> None:
        while self._events:
            batch, self._events = self._events[:MAX_EVENTS_PER_POST], self._events[MAX_EVENTS_PER_POST:]
            await self.control.post_events(SessionEvents(events=batch))
