"""The live sessions of one process: made from an offer and an avatar or portrait, limited, found, closed."""

from __future__ import annotations

import logging
import tempfile
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

import handlers
import realtime
from handlers.engine_choice import cpu_engine
from handlers.errors import TaskError
from handlers.generate_video import avatar_frames, speak
from handlers.outputs import resolve_store
from handlers.settings import Settings
from realtime.session import LiveSession, new_session_id

log = logging.getLogger(__name__)


class RealtimeSettings(BaseSettings):
    """Live-session limits (env ``REALTIME_<FIELD>``)."""

    model_config = SettingsConfigDict(env_prefix="REALTIME_", extra="ignore")

    max_sessions: int = Field(4, ge=1, description="Live sessions one process holds at once.")
    idle_timeout_s: float = Field(300.0, gt=0, description="A session without input for this long is closed.")
    max_side: int = Field(512, ge=64, description="Portraits are scaled to this side at most for live video.")


class SessionLimitReached(TaskError):
    def __init__(self, limit: int) -> None:
        super().__init__("too_many_sessions", f"This server holds {limit} live sessions at most; try again later.")


class RealtimeUnavailable(TaskError):
    def __init__(self) -> None:
        super().__init__("realtime_unavailable", "Live sessions need the `realtime` extra (aiortc) on this server.")


class SessionNotFound(TaskError):
    def __init__(self, session_id: str) -> None:
        super().__init__("session_not_found", f"No live session {session_id!r} (it ended or never existed).")


class SessionManager:
    def __init__(self, settings: Settings | None = None, limits: RealtimeSettings | None = None) -> None:
        self.runtime = handlers.worker_runtime(settings)  # this process's engines for its live sessions
        self.settings = self.runtime.settings
        self.limits = limits or RealtimeSettings()
        self.sessions: dict[str, LiveSession] = {}

    async def create(
        self, user_id: str, avatar_id: str | None, image: str | None, store: str | None, offer: dict[str, str]
    ) -> tuple[str, dict[str, str]]:
        """A new session for the avatar (or portrait) answering ``offer``; returns (session id, SDP answer)."""
        if not realtime.available():
            raise RealtimeUnavailable()
        self._drop_closed()
        if len(self.sessions) >= self.limits.max_sessions:
            raise SessionLimitReached(self.limits.max_sessions)
        session_id = new_session_id()
        executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"live-{session_id[:8]}")
        holds = ExitStack()
        try:
            loop_args = (user_id, avatar_id, image, store, holds)
            avatar = await _on(executor, self._avatar, *loop_args)
            engine = cpu_engine(self.runtime)
            session = LiveSession(session_id, avatar, holds, engine, executor, self._speak, self.limits.idle_timeout_s)
            session.user_id = user_id
            self.sessions[session_id] = session
            answer = await session.answer(offer)
        except BaseException:
            self.sessions.pop(session_id, None)
            executor.shutdown(wait=False, cancel_futures=True)
            holds.close()
            raise
        log.info("session %s started for %s (%d live)", session_id, user_id, len(self.sessions))
        return session_id, answer

    def get(self, session_id: str) -> LiveSession:
        session = self.sessions.get(session_id)
        if session is None or session.closed:
            raise SessionNotFound(session_id)
        return session

    async def close(self, session_id: str) -> None:
        session = self.get(session_id)
        await session.close()
        self.sessions.pop(session_id, None)

    async def close_all(self) -> None:
        for session in list(self.sessions.values()):
            await session.close()
        self.sessions.clear()

    def _drop_closed(self) -> None:
        for session_id in [sid for sid, s in self.sessions.items() if s.closed]:
            del self.sessions[session_id]

    def _avatar(self, user_id: str, avatar_id: str | None, image: str | None, store: str | None, holds: ExitStack):
        with tempfile.TemporaryDirectory(prefix="live-avatar-") as tmp:
            return avatar_frames(
                user_id,
                avatar_id,
                image,
                resolve_store(store, self.settings),
                self.runtime,
                Path(tmp),
                holds,
                portrait_max_side=self.limits.max_side,
            )

    def _speak(self, text: str, voice: Any) -> Any:
        return speak(text, voice, self.runtime)


async def _on(executor: ThreadPoolExecutor, fn: Any, *args: Any) -> Any:
    import asyncio

    return await asyncio.get_running_loop().run_in_executor(executor, fn, *args)
