"""The live-session routes: POST /v1/sessions, POST /v1/sessions/{id}/say, DELETE /v1/sessions/{id}."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal

from fastapi import APIRouter, Depends
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, model_validator

from engines.errors import EngineError
from handlers.errors import TaskError
from handlers.schemas import Identifier, SayRequest, _check_uri, require_one_of
from realtime.limits import RealtimeUnavailable, SessionLimitReached, SessionNotFound
from realtime.manager import SessionManager
from realtime.session import LiveSession
from storage.errors import StorageError

NOT_FOUND_CODES = frozenset({"session_not_found", "avatar_not_found", "not_found"})


class SessionDescription(BaseModel):
    sdp: str = Field(max_length=100_000)
    type: Literal["offer", "answer"]


class SessionRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    user_id: Identifier
    avatar_id: Identifier | None = None
    image: str | None = Field(None, description="Portrait URI, used instead of an avatar.")
    store: str | None = Field(None, description="Store root URI; default AVATAR_STORE_URI.")
    offer: SessionDescription

    @model_validator(mode="after")
    def _one_source(self) -> SessionRequest:
        require_one_of(self, "avatar_id", "image")
        if self.image is not None:
            _check_uri(self.image)
        if self.offer.type != "offer":
            raise ValueError("`offer.type` must be `offer`")
        return self


class SessionAnswer(BaseModel):
    session_id: str
    answer: SessionDescription


class SayAnswer(BaseModel):
    session_id: str
    duration_s: float = Field(description="Seconds of speech now playing (it cut off anything still playing).")


def _refusal(exc: TaskError | EngineError | StorageError) -> JSONResponse:
    if isinstance(exc, (SessionLimitReached, RealtimeUnavailable)):
        status = 503
    elif exc.code in NOT_FOUND_CODES:
        status = 404
    else:
        status = 422
    return JSONResponse({"error": exc.message, "error_code": exc.code}, status_code=status)


def _anyone() -> None:
    return None


def realtime_router(
    manager: SessionManager,
    *,
    caller: Callable[..., Any] = _anyone,
    check_access: Callable[[Any, dict[str, Any]], dict[str, Any] | None] | None = None,
) -> APIRouter:
    """The routes. ``caller`` is the API's authentication dependency; ``check_access(caller, inputs)`` sees
    ``{"user_id", "image", "store"}`` of a new session and ``{"user_id"}`` of a session being used, raises to
    refuse (the API's input rule: the users a token may act for, the URIs it may name) and returns the
    inputs as checked (URIs normalised): the session is made from those."""
    router = APIRouter(tags=["live sessions"])

    def check(who: Any, inputs: dict[str, Any]) -> dict[str, Any]:
        checked = check_access(who, inputs) if check_access is not None else None
        return inputs if checked is None else checked

    def session_of(who: Any, session_id: str) -> LiveSession:
        session = manager.get(session_id)
        check(who, {"user_id": session.user_id})
        return session

    @router.post("/v1/sessions", response_model=SessionAnswer, status_code=201, summary="Start a live session")
    async def create_session(body: SessionRequest, who: Any = Depends(caller)) -> SessionAnswer | JSONResponse:
        """Answer the browser's WebRTC offer with the avatar's video (25 fps) and audio (Opus) tracks. Speak
        with `/say`, a data-channel message (text, or JSON `{"text", "voice"}`) or the offer's audio track."""
        try:
            inputs = check(who, {"user_id": body.user_id, "image": body.image, "store": body.store})
            session_id, answer = await manager.create(
                body.user_id, body.avatar_id, inputs.get("image"), inputs.get("store"), body.offer.model_dump()
            )
        except (TaskError, EngineError, StorageError) as exc:
            return _refusal(exc)
        return SessionAnswer(session_id=session_id, answer=SessionDescription(**answer))

    @router.post("/v1/sessions/{session_id}/say", response_model=SayAnswer, summary="Make the avatar speak")
    async def say(session_id: str, body: SayRequest, who: Any = Depends(caller)) -> SayAnswer | JSONResponse:
        try:
            seconds = await session_of(who, session_id).say(body.text, body.voice)
        except (TaskError, EngineError, StorageError) as exc:
            return _refusal(exc)
        return SayAnswer(session_id=session_id, duration_s=round(seconds, 3))

    @router.delete("/v1/sessions/{session_id}", status_code=204, summary="End a live session")
    async def end_session(session_id: str, who: Any = Depends(caller)) -> None:
        try:
            session_of(who, session_id)
            await manager.close(session_id)
        except SessionNotFound as exc:
            return _refusal(exc)  # type: ignore[return-value]
        return None

    return router
