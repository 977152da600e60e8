"""LiveTalking's web API on our live sessions, so LiveTalking's own pages (``web/client.js``, ``webrtcapi.html``)
and the scripts written for it run unchanged against this server.

Routes, at the root as LiveTalking serves them (or under ``LIVETALKING_PREFIX``; ``LIVETALKING_ROUTES=false``
turns them off). Each answers LiveTalking's ``{"code": 0, "msg": "ok"}`` (``data`` where it has one) and,
as LiveTalking does, HTTP 200 with ``{"code": -1, "msg": ..., "error_code": ...}`` for a refusal; a missing
or wrong token is 401 in the same shape.

- ``POST /offer`` ``{sdp, type, avatar?}`` -> ``{sdp, type, sessionid}``: ``POST /v1/sessions`` for the
  session's user (``LIVETALKING_USER_ID``, else the token's only user, else ``default``) with the avatar
  ``avatar`` (LiveTalking's field) or ``LIVETALKING_AVATAR_ID``, else the portrait ``LIVETALKING_IMAGE``.
- ``POST /human`` ``{sessionid, text, type: "echo"|"chat", interrupt?}``: ``interrupt`` stops the speech
  first (else the text is queued after it); ``echo`` speaks ``text`` (``/say``), ``chat`` speaks the answer of
  the OpenAI-compatible LLM (``orchestrator.llm``; ``data.answer``). Answers once the worker has the speech
  scheduled (``data.duration_s``).
- ``POST /interrupt_talk`` ``{sessionid}``: ``/interrupt``.
- ``POST /is_speaking`` ``{sessionid}`` -> ``data: bool``: the latest speech is still being made or playing.
- ``POST /humanaudio`` multipart ``file`` + ``sessionid``: the file is decoded here (refused unless our codecs
  read sound from it, at most MAX_AUDIO_SECONDS), stored under ``uploads/{user_id}/`` and played (queued).
- ``GET /livetalking/{file}`` (with ``LIVETALKING_WEB_DIR``): that folder (a LiveTalking checkout's ``web/``),
  so its pages load from this server and their ``fetch('/offer')`` reach the routes above.

Pages served from another origin need ``LIVETALKING_CORS_ORIGINS`` (and the header).
``sessionid`` is our session id, a string as in LiveTalking since April 2026 (its older pages ``parseInt`` it:
they do not work here).
As in LiveTalking, text without ``interrupt`` and audio files are queued after the speech playing (``queued``
commands). ``DELETE /v1/sessions/{id}`` (or the peer closing) ends a session. The token: ``Authorization: Bearer``
(scripts), or the ``avatarctl_token`` cookie that opening a page of ``/livetalking/`` with ``?token=`` sets
(``SameSite=Strict``, ``HttpOnly``), since LiveTalking's pages send no header. Tenancy is ``/v1``'s.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, Literal

from anyio import to_thread
from fastapi import APIRouter, FastAPI, Request
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import FileResponse, JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.datastructures import UploadFile
from starlette.types import ASGIApp, Receive, Scope, Send

from errors import CodedError
from handlers import validation_message
from handlers.errors import TaskError
from handlers.schemas import DEFAULT_USER_ID, MAX_SDP_CHARS, MAX_TEXT_CHARS
from handlers.speech import check_speech_file
from orchestrator.api.auth import Caller, caller_of
from orchestrator.api.context import ApiContext
from orchestrator.api.sessions import SESSION_BODY_LIMIT, SessionRequest, control_base
from orchestrator.core.live.service import LiveSessions, not_found
from orchestrator.core.live.store import SessionView
from orchestrator.core.llm import chat_answer
from orchestrator.core.models import OrchestratorError
from orchestrator.core.uploads import UploadKind, multipart_limit, upload_stream
from storage import StorageError

TAGS: list[str | Any] = ["LiveTalking"]
WEB_PATH = "/livetalking"
TOKEN_COOKIE = "avatarctl_token"
TOKEN_COOKIE_S = 12 * 3600
REFUSALS = (OrchestratorError, TaskError, StorageError)
JSON_BODY_LIMIT = 4 * MAX_TEXT_CHARS + 4096  # a text (UTF-8: up to 4 bytes a character) and a few fields


class LiveTalkingError(CodedError):
    """A refusal in LiveTalking's shape: HTTP 200 with ``code: -1`` as upstream answers, unless ``status`` says."""

    def __init__(self, code: str, message: str, status: int = 200) -> None:
        super().__init__(code, message)
        self.status = status


class OfferBody(BaseModel):
    model_config = ConfigDict(extra="ignore")  # LiveTalking's refaudio, reftext, custom_config: not used here

    sdp: str = Field(max_length=MAX_SDP_CHARS)
    type: str
    avatar: str | None = Field(None, description="A stored avatar's id (default LIVETALKING_AVATAR_ID).")


class SessionBody(BaseModel):
    model_config = ConfigDict(extra="ignore")

    sessionid: str | int

    @property
    def session_id(self) -> str:
        return str(self.sessionid)


class HumanBody(SessionBody):
    text: str = Field(min_length=1, max_length=MAX_TEXT_CHARS)
    type: Literal["echo", "chat"] = "echo"
    interrupt: bool = False


AUDIO_FORM = {
    "type": "object",
    "required": ["file", "sessionid"],
    "properties": {"file": {"type": "string", "format": "binary"}, "sessionid": {"type": "string"}},
}


class Done(BaseModel):
    code: int = Field(0, description="0: done.")
    msg: str = "ok"


class Scheduled(BaseModel):
    duration_s: float = Field(description="Seconds of speech scheduled.")
    answer: str | None = Field(None, description="`chat`: the LLM's answer, spoken.")


class Spoken(Done):
    data: Scheduled


class Speaking(Done):
    data: bool = Field(description="Whether the avatar speaks now (or its speech is being made).")


class OfferAnswer(BaseModel):
    sdp: str
    type: Literal["answer"] = "answer"
    sessionid: str = Field(description="The session id (`/v1/sessions/{id}`).")


class Refusal(BaseModel):
    code: int = Field(-1, description="-1: refused.")
    msg: str
    error_code: str


def ok(data: Any = None) -> JSONResponse:
    return JSONResponse({"code": 0, "msg": "ok", **({"data": data} if data is not None else {})})


def refused(code: str, message: str, status: int = 200) -> JSONResponse:
    return JSONResponse({"code": -1, "msg": message, "error_code": code}, status_code=status)


def session_user(caller: Caller, default_user: str | None) -> str:
    """Whose sessions LiveTalking's ``/offer`` starts (it names no user)."""
    if default_user:
        if not caller.may_act_for(default_user):
            raise LiveTalkingError("forbidden", f"This token may not act for user {default_user!r}.", 403)
        return default_user
    if caller.user_ids is None:
        return DEFAULT_USER_ID
    if len(caller.user_ids) == 1:
        return next(iter(caller.user_ids))
    raise LiveTalkingError("user_required", "This token acts for several users: set LIVETALKING_USER_ID.")


class LiveTalkingApi:
    """The routes' shared steps: the caller, its session, the answers."""

    def __init__(self, ctx: ApiContext, sessions: LiveSessions) -> None:
        self.ctx, self.sessions, self.settings = ctx, sessions, ctx.settings

    def caller(self, request: Request) -> Caller:
        header = request.headers.get("authorization", "")
        token = header[7:].strip() if header.lower().startswith("bearer ") else request.cookies.get(TOKEN_COOKIE)
        caller = caller_of(self.settings, token)
        if caller is None:
            message = f"A valid `Authorization: Bearer <token>` header (or the {TOKEN_COOKIE} cookie) is required."
            raise LiveTalkingError("unauthorized", message, 401)
        return caller

    def own(self, caller: Caller, session_id: str) -> SessionView:
        session = self.sessions.store.get(session_id)
        if session is None or not caller.may_act_for(session.user_id):
            raise not_found(session_id)
        return session

    async def answer(self, request: Request, step: Callable[[Caller], Awaitable[Response]]) -> Response:
        """``step(caller)``'s answer, or LiveTalking's error shape for whatever refused it."""
        try:
            return await step(self.caller(request))
        except LiveTalkingError as exc:
            return refused(exc.code, exc.message, exc.status)
        except ValidationError as exc:
            return refused("invalid_input", validation_message(exc))
        except REFUSALS as exc:
            return refused(exc.code, exc.message)

    async def offer(self, request: Request, body: OfferBody, caller: Caller) -> Response:
        fields: dict[str, Any] = {"user_id": session_user(caller, self.settings.livetalking_user_id)}
        avatar_id = body.avatar or self.settings.livetalking_avatar_id
        if avatar_id:
            fields["avatar_id"] = avatar_id
        elif self.settings.livetalking_image:
            fields["image"] = self.settings.livetalking_image
        else:
            message = "No avatar: send `avatar` with the offer, or set LIVETALKING_AVATAR_ID (or LIVETALKING_IMAGE)."
            raise LiveTalkingError("avatar_required", message)
        fields["offer"] = {"sdp": body.sdp, "type": body.type}
        checked = SessionRequest.model_validate(fields).model_dump(mode="json", exclude_none=True)
        checked = self.ctx.check_inputs(caller, checked)
        session, answer = await self.sessions.create(checked, control_base(request, self.ctx, self.sessions))
        return JSONResponse({"sdp": answer.sdp, "type": answer.type, "sessionid": session.session_id})

    async def human(self, body: HumanBody, caller: Caller) -> Response:
        self.own(caller, body.session_id)
        if body.interrupt:  # at once, before an LLM is asked
            await self.sessions.interrupt(body.session_id)
        answer = body.text if body.type == "echo" else await chat_answer(self.settings, body.text)
        seconds = await self.sessions.say(body.session_id, answer, None, queued=not body.interrupt)
        return ok({"duration_s": round(seconds, 3), **({"answer": answer} if body.type == "chat" else {})})

    async def human_audio(self, request: Request, caller: Caller) -> Response:
        form = await request.form(max_files=1, max_fields=8)
        upload, session_id = form.get("file"), form.get("sessionid")
        if not isinstance(upload, UploadFile) or not isinstance(session_id, str):
            raise LiveTalkingError("invalid_input", "Send a multipart form with `file` (the audio) and `sessionid`.")
        session = self.own(caller, session_id)
        uri = await to_thread.run_sync(self._stored_audio, upload, session.user_id)
        return ok({"duration_s": round(await self.sessions.play(session_id, uri, queued=True), 3)})

    def _stored_audio(self, upload: UploadFile, user_id: str) -> str:
        """The uploaded file, once our codecs read sound from it, in the store: its URI."""
        settings = self.ctx.handler_settings
        with tempfile.TemporaryDirectory(prefix="livetalking-audio-") as tmp:
            path = Path(tmp) / "audio"
            upload.file.seek(0)
            with path.open("wb") as out:
                shutil.copyfileobj(upload.file, out)
            check_speech_file(path, settings, "The uploaded `file`")
            with path.open("rb") as fh:
                kind = UploadKind.audio
                stored = upload_stream(
                    self.ctx.store(), fh, kind=kind, user_id=user_id, settings=settings, filename=upload.filename
                )
        return stored.uri

    def web_file(self, request: Request, name: str) -> Response:
        """A file of LIVETALKING_WEB_DIR; ``?token=`` (a valid one) also sets the token cookie for its fetches."""
        root = self.settings.livetalking_web_dir
        path = (root / (name or "index.html")).resolve() if root else None
        if root is None or path is None or not path.is_relative_to(root.resolve()) or not path.is_file():
            return refused("not_found", f"No file {name!r} here (LIVETALKING_WEB_DIR).", 404)
        token = request.query_params.get("token")
        if token is None:
            return FileResponse(path)
        if caller_of(self.settings, token) is None:
            return refused("unauthorized", "The `token` given is not valid.", 401)
        response = FileResponse(path, headers={"Cache-Control": "no-store"})
        secure = request.url.scheme == "https"
        response.set_cookie(
            TOKEN_COOKIE, token, max_age=TOKEN_COOKIE_S, httponly=True, samesite="strict", secure=secure
        )
        return response


class LiveTalkingCors:
    """CORS on the LiveTalking routes only (LIVETALKING_CORS_ORIGINS: comma-separated origins, or ``*``), for pages
    served from elsewhere that send the token in the ``Authorization`` header (never the cookie: no credentials)."""

    def __init__(self, app: ASGIApp, paths: frozenset[str], origins: list[str]) -> None:
        self.app, self.paths = app, paths
        self.cors = CORSMiddleware(
            app, allow_origins=origins, allow_methods=["POST"], allow_headers=["Authorization", "Content-Type"]
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        routed = self.cors if scope["type"] == "http" and scope["path"] in self.paths else self.app
        await routed(scope, receive, send)


def add_livetalking_cors(app: FastAPI, ctx: ApiContext) -> None:
    origins = [origin.strip() for origin in ctx.settings.livetalking_cors_origins.split(",") if origin.strip()]
    if ctx.settings.livetalking_routes and origins:
        app.add_middleware(LiveTalkingCors, paths=frozenset(livetalking_body_limits(ctx)), origins=origins)


def livetalking_body_limits(ctx: ApiContext) -> dict[str, int]:
    """The request body limits of the LiveTalking routes (an SDP; one audio file), by path."""
    if not ctx.settings.livetalking_routes:
        return {}
    prefix = ctx.settings.livetalking_prefix
    limits = {f"{prefix}/{route}": JSON_BODY_LIMIT for route in ("human", "interrupt_talk", "is_speaking")}
    audio = multipart_limit(ctx.handler_settings, UploadKind.audio)
    return {**limits, f"{prefix}/offer": SESSION_BODY_LIMIT, f"{prefix}/humanaudio": audio}


def add_livetalking_routes(router: APIRouter, ctx: ApiContext, sessions: LiveSessions) -> None:
    """LiveTalking's routes on ``router`` (one of their own: they take the token from a header or the cookie,
    and answer in LiveTalking's shape)."""
    if not ctx.settings.livetalking_routes:
        return
    api, prefix = LiveTalkingApi(ctx, sessions), ctx.settings.livetalking_prefix

    async def body(request: Request, model: type[BaseModel]) -> Any:
        try:
            data = await request.json()
        except ValueError:
            raise LiveTalkingError("invalid_input", f"The body must be a JSON object: {_fields(model)}.") from None
        return model.model_validate(data)

    @router.post(f"{prefix}/offer", **_docs("Start a session", OfferBody, OfferAnswer))
    async def offer(request: Request) -> Response:
        """A live session on the default avatar (or `avatar`), for LiveTalking's `client.js`."""

        async def step(caller: Caller) -> Response:
            return await api.offer(request, await body(request, OfferBody), caller)

        return await api.answer(request, step)

    @router.post(f"{prefix}/human", **_docs("Speak text or an LLM's answer", HumanBody, Spoken))
    async def human(request: Request) -> Response:
        """`echo`: the text; `chat`: the LLM's answer (LLM_BASE_URL, LLM_MODEL). Queued after the speech playing
        unless `interrupt`."""

        async def step(caller: Caller) -> Response:
            return await api.human(await body(request, HumanBody), caller)

        return await api.answer(request, step)

    @router.post(f"{prefix}/interrupt_talk", **_docs("Stop speaking", SessionBody, Done))
    async def interrupt_talk(request: Request) -> Response:
        async def step(caller: Caller) -> Response:
            session_id = (await body(request, SessionBody)).session_id
            api.own(caller, session_id)
            await sessions.interrupt(session_id)
            return ok()

        return await api.answer(request, step)

    @router.post(f"{prefix}/is_speaking", **_docs("Whether it speaks", SessionBody, Speaking))
    async def is_speaking(request: Request) -> Response:
        async def step(caller: Caller) -> Response:
            session_id = (await body(request, SessionBody)).session_id
            api.own(caller, session_id)
            return ok(await to_thread.run_sync(sessions.is_speaking, session_id))

        return await api.answer(request, step)

    @router.post(f"{prefix}/humanaudio", **_docs("Play an audio file", AUDIO_FORM, Spoken))
    async def human_audio(request: Request) -> Response:
        """Any audio our codecs decode (at most MAX_AUDIO_SECONDS), queued after the speech playing."""

        async def step(caller: Caller) -> Response:
            return await api.human_audio(request, caller)

        return await api.answer(request, step)

    @router.get(WEB_PATH + "/{name:path}", include_in_schema=False)
    def web_file(request: Request, name: str) -> Response:
        return api.web_file(request, name)


def _docs(summary: str, body: type[BaseModel] | dict[str, Any], answer: type[BaseModel]) -> dict[str, Any]:
    """The OpenAPI description of a LiveTalking route: its body (read by the route itself, so that a bad one
    answers in LiveTalking's shape) and its answers."""
    if isinstance(body, dict):
        content = {"multipart/form-data": {"schema": body}}
    else:
        content = {"application/json": {"schema": body.model_json_schema()}}
    refusal = "A refusal: LiveTalking answers them with HTTP 200 too."
    return {
        "tags": TAGS,
        "summary": f"{summary} (LiveTalking)",
        "openapi_extra": {"requestBody": {"required": True, "content": content}},
        "responses": {
            200: {"model": answer, "description": f"Done; or `{{code: -1, msg, error_code}}`. {refusal}"},
            401: {"model": Refusal, "description": "No valid token (header or cookie)."},
        },
    }


def _fields(model: type[BaseModel]) -> str:
    return ", ".join(f"`{name}`" for name in model.model_fields)
