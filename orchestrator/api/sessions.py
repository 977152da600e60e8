"""The live-session routes: what clients call (behind the API's bearer token) and the control routes a session's
worker dials out to (authenticated by the session's own control token, never the API's).

Clients: ``POST /v1/sessions`` (answers once the worker's SDP answer arrived), ``GET /v1/sessions/ice-servers``,
``GET /v1/sessions/{id}``, ``POST /v1/sessions/{id}/say``, ``POST /v1/sessions/{id}/interrupt``,
``DELETE /v1/sessions/{id}``. Another tenant's session answers 404 everywhere.

Workers (``handlers/schemas.py`` describes the contract): ``POST /v1/sessions/{id}/worker/answer``,
``GET .../worker/commands?after=&wait=``, ``POST .../worker/events``, ``POST .../worker/end``.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Path, Query, Request, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, ConfigDict, Field, model_validator

from handlers.schemas import (
    MAX_SDP_CHARS,
    IceServer,
    Identifier,
    LipSyncEngineName,
    LiveAnswer,
    SayRequest,
    SessionCommands,
    SessionDescription,
    SessionEnd,
    SessionEvents,
    Voice,
    _check_uri,
    require_one_of,
)
from orchestrator.api.auth import Caller
from orchestrator.api.context import ApiContext
from orchestrator.core.config import BackendKind
from orchestrator.core.live.service import LiveSessions, not_found
from orchestrator.core.live.store import SessionError, SessionView

SESSION_BODY_LIMIT = 2 * MAX_SDP_CHARS + 16 * 1024  # an SDP (UTF-8: up to 2 bytes a character here) and fields
SessionIdPath = Annotated[str, Path(max_length=64, description="The session id (32 hex digits).")]
TAGS: list[str | Any] = ["live sessions"]
WORKER_TAGS: list[str | Any] = ["live session workers"]


class SessionRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    user_id: Identifier
    avatar_id: Identifier | None = None
    image: str | None = Field(None, description="Portrait URI, used instead of an avatar.")
    store: str | None = Field(None, description="Store root URI; default AVATAR_STORE_URI.")
    offer: SessionDescription
    engine: LipSyncEngineName = Field(LipSyncEngineName.auto, description="The lip-sync engine (`auto`: the worker's).")
    voice: Voice | None = Field(None, description="The voice of `/say` and data-channel text that names none.")

    @model_validator(mode="after")
    def _one_source(self) -> SessionRequest:
        require_one_of(self, "avatar_id", "image")
        if self.image is not None:
            _check_uri(self.image)
        if self.offer.type != "offer":
            raise ValueError("`offer.type` must be `offer`")
        if self.store is not None and not self.store.startswith(("s3://", "gs://", "file://")):
            raise ValueError("`store` must be an s3://, gs:// or file:// root URI")
        return self


class SessionAnswer(BaseModel):
    session_id: str
    answer: SessionDescription


class SayAnswer(BaseModel):
    session_id: str
    duration_s: float = Field(description="Seconds of speech now playing (it cut off anything still playing).")


class IceServers(BaseModel):
    ice_servers: list[IceServer] = Field(description="RTCConfiguration's `iceServers` for this client's peer.")


class Interrupted(BaseModel):
    session_id: str
    seq: int = Field(description="The command's number in the session.")


class WorkerAck(BaseModel):
    session_id: str
    status: str


def control_base(request: Request, ctx: ApiContext, sessions: LiveSessions) -> str:
    """Where the session's worker reaches this API: PUBLIC_BASE_URL for remote workers; a local worker process
    calls the address this request came in on (the API's own socket)."""
    if sessions.backend_kind != BackendKind.local.value:
        if not ctx.settings.public_base_url:
            raise SessionError(
                "public_base_url_required",
                "Live sessions on a remote backend need PUBLIC_BASE_URL: the worker dials out to it.",
                503,
            )
        return ctx.settings.public_base_url
    server = request.scope.get("server")
    if not server or server[1] is None:
        return str(request.base_url).rstrip("/")
    host, port = server
    return f"http://{f'[{host}]' if ':' in host else host}:{port}"


def _client_routes(router: APIRouter, ctx: ApiContext, sessions: LiveSessions) -> None:
    def own(caller: Caller, session_id: str) -> SessionView:
        session = sessions.store.get(session_id)
        if session is None or not caller.may_act_for(session.user_id):
            raise not_found(session_id)
        return session

    @router.post("/v1/sessions", response_model=SessionAnswer, status_code=201, tags=TAGS, summary="Start a session")
    async def create_session(
        body: SessionRequest, request: Request, caller: Caller = Depends(ctx.authenticate)
    ) -> SessionAnswer:
        """Start a live session on a worker (`BACKEND_LIVE_SESSION`) and answer the browser's WebRTC offer once the
        worker's answer arrives: a 25 fps video and an Opus audio track of the avatar. Speak with `/say`, a
        data-channel message (text, or JSON `{"text", "voice"}`) or the offer's audio track."""
        fields = ctx.check_inputs(caller, body.model_dump(mode="json", exclude_none=True))
        session, answer = await sessions.create(fields, control_base(request, ctx, sessions))
        return SessionAnswer(session_id=session.session_id, answer=answer)

    @router.get("/v1/sessions/ice-servers", response_model=IceServers, tags=TAGS, summary="ICE servers for a peer")
    def ice_servers(caller: Caller = Depends(ctx.authenticate)) -> IceServers:
        """The STUN/TURN servers to build the browser's RTCPeerConnection with (`ICE_SERVERS`; TURN entries carry
        time-limited credentials when `TURN_SECRET` is set)."""
        label = "operator" if caller.user_ids is None else "-".join(sorted(caller.user_ids))[:64]
        return IceServers(ice_servers=[IceServer(**entry) for entry in sessions.ice_servers(label)])

    @router.get("/v1/sessions/{session_id}", response_model=SessionView, tags=TAGS, summary="Get a session")
    def get_session(session_id: SessionIdPath, caller: Caller = Depends(ctx.authenticate)) -> SessionView:
        """Status (`starting`, `live`, `ended`), engine, the worker's last statistics, and why it ended."""
        return own(caller, session_id)

    @router.post("/v1/sessions/{session_id}/say", response_model=SayAnswer, tags=TAGS, summary="Make it speak")
    async def say(session_id: SessionIdPath, body: SayRequest, caller: Caller = Depends(ctx.authenticate)) -> SayAnswer:
        own(caller, session_id)
        # the same model as a data-channel message; a voice not given is the session's (the task's `voice`)
        voice = body.voice.model_dump(mode="json") if "voice" in body.model_fields_set else None
        seconds = await sessions.say(session_id, body.text, voice)
        return SayAnswer(session_id=session_id, duration_s=round(seconds, 3))

    @router.post(
        "/v1/sessions/{session_id}/interrupt",
        response_model=Interrupted,
        status_code=202,
        tags=TAGS,
        summary="Stop speaking",
    )
    async def interrupt(session_id: SessionIdPath, caller: Caller = Depends(ctx.authenticate)) -> Interrupted:
        own(caller, session_id)
        return Interrupted(session_id=session_id, seq=await sessions.interrupt(session_id))

    @router.delete("/v1/sessions/{session_id}", status_code=204, tags=TAGS, summary="End a session")
    def end_session(session_id: SessionIdPath, caller: Caller = Depends(ctx.authenticate)) -> Response:
        own(caller, session_id)
        sessions.end(session_id)
        return Response(status_code=204)


def _worker_routes(router: APIRouter, sessions: LiveSessions) -> None:
    bearer = HTTPBearer(auto_error=False, description="The session's control token (the `live_session` task's).")

    def worker(session_id: SessionIdPath, credentials: HTTPAuthorizationCredentials | None = Depends(bearer)) -> str:
        sessions.authenticate(session_id, credentials.credentials if credentials else None)
        return session_id

    @router.post("/v1/sessions/{session_id}/worker/answer", response_model=WorkerAck, tags=WORKER_TAGS)
    def worker_answer(body: LiveAnswer, session_id: str = Depends(worker)) -> WorkerAck:
        """The worker's SDP answer (once): the waiting create answers the client with it."""
        session = sessions.worker_answer(session_id, body)
        return WorkerAck(session_id=session_id, status=session.status)

    @router.get("/v1/sessions/{session_id}/worker/commands", response_model=SessionCommands, tags=WORKER_TAGS)
    async def worker_commands(
        session_id: str = Depends(worker),
        after: int = Query(0, ge=0, description="The last command seq the worker has."),
        wait: float = Query(20.0, ge=0, le=60, description="Seconds to wait for a command (long poll)."),
    ) -> SessionCommands:
        """Commands after `after` (`say`, `interrupt`), waiting up to `wait` s for one; 410 once the session ended."""
        return await sessions.worker_commands(session_id, after, wait)

    @router.post("/v1/sessions/{session_id}/worker/events", response_model=WorkerAck, tags=WORKER_TAGS)
    def worker_events(body: SessionEvents, session_id: str = Depends(worker)) -> WorkerAck:
        """`said` (completes the waiting `/say`), `error` (refuses it), `heartbeat` (alive, with statistics)."""
        sessions.worker_events(session_id, body)
        return WorkerAck(session_id=session_id, status="ok")

    @router.post("/v1/sessions/{session_id}/worker/end", response_model=WorkerAck, tags=WORKER_TAGS)
    def worker_end(body: SessionEnd, session_id: str = Depends(worker)) -> WorkerAck:
        """The session is over on the worker: its reason (kept unless it had ended already) and final statistics."""
        return WorkerAck(session_id=session_id, status=sessions.worker_end(session_id, body).status)


def add_session_routes(protected: APIRouter, public: APIRouter, ctx: ApiContext, sessions: LiveSessions) -> None:
    _client_routes(protected, ctx, sessions)
    _worker_routes(public, sessions)
