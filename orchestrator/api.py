"""The HTTP API: submit, track and cancel jobs; RunPod webhooks; health; Prometheus metrics; the seeds' routes.

``create_app(service=None, settings=None)`` builds the FastAPI app around one ``JobService`` (built from
the settings when not given; the app then owns it and stops it at shutdown). The app starts the
service's poller at startup, so jobs move on without anyone waiting on them.

Routes (``/docs`` is the documentation: every body and answer is a typed model):

- ``POST /v1/avatars``, ``/v1/videos``, ``/v1/emotions``: the task's request model (``task`` implied),
  optional ``Idempotency-Key`` header; 202 with the job. ``POST /v1/jobs`` takes any task, ``task`` included.
- ``GET /v1/jobs/{id}``, ``DELETE /v1/jobs/{id}`` (cancel), ``GET /v1/jobs?user_id=&status=&task=&limit=``.
- ``POST /v1/uploads``: a file into the store (``training-videos/`` or ``uploads/``); answers its URI.
- ``POST /v1/webhooks/runpod/{job_id}?token=``: RunPod's completion webhook (the token authenticates it).
- ``GET /healthz`` and ``/health``, ``GET /metrics``: no bearer token needed.
- Seed routes for clients migrating: ``POST /generate`` (seed 002), ``POST /render``, ``/render/batch``,
  ``GET``/``DELETE /output/{filename}`` (seed 004). They submit, wait up to ``sync_wait_s`` and answer
  the seed's fields. Uploaded bytes go to the store under ``uploads/{user_id}/`` first; uploads are
  inputs and stay there (give the bucket a lifecycle rule on ``uploads/`` to expire them).

Every error answers ``{"error": message, "error_code": code}`` (``/generate`` adds the seed's
``status: "error"`` and ``message``); invalid bodies are 422 with the contract's message.
Bearer auth (``API_TOKEN``) protects everything but health, metrics and the webhook; with no
``API_TOKEN`` set the API is open (a warning is logged at startup).
"""

import base64
import binascii
import contextlib
import hmac
import importlib.metadata
import io
import logging
import re
import shutil
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Iterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Annotated, Any, BinaryIO, Literal

from fastapi import APIRouter, Body, Depends, FastAPI, File, Form, Header, Query, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, ConfigDict, Field, create_model, model_validator
from pydantic.json_schema import SkipJsonSchema
from starlette.background import BackgroundTask
from starlette.exceptions import HTTPException as StarletteHTTPException

import handlers
from handlers.errors import TaskError
from handlers.schemas import (
    ID_PATTERN,
    REQUEST_MODELS,
    Emotion,
    GenerateVideoRequest,
    HealthRequest,
    Identifier,
    ImageFormat,
    LipSyncEngineName,
    PreprocessAvatarRequest,
    RenderEmotionRequest,
    TaskName,
)
from orchestrator.config import OrchestratorSettings
from orchestrator.metrics import ERROR_CODE_STATE, ApiMetrics, MetricsMiddleware
from orchestrator.models import JobNotFound, JobStatus, JobView, OrchestratorError
from orchestrator.service import MAX_IDEMPOTENCY_KEY_CHARS, JobService
from storage import ObjectStore, StorageError, open_store
from storage.keys import emotion_key, training_video_key
from storage.keys import upload_key as storage_upload_key
from storage.local import path_from_file_uri

log = logging.getLogger(__name__)

API_TITLE = "avatarctl API"
DEFAULT_USER_ID = "default"  # the seed routes carry no user: their jobs and files go under this id
DEFAULT_SYNC_WAIT_S = 120.0
UPLOAD_CHUNK_BYTES = 1024 * 1024
MAX_AUDIO_UPLOAD_BYTES = 200 * 1024 * 1024
SEED_DRIVERS = ("sadtalker", "liveportrait")  # seed 002's drivers: both run our `auto` lip-sync engine
OUTPUT_FILENAME = re.compile(
    rf"^(?P<render_id>[A-Za-z0-9_-]{{1,64}})_(?P<emotion>{'|'.join(e.value for e in Emotion)})"
    rf"\.(?P<ext>{'|'.join(f.value for f in ImageFormat)})$"
)
MEDIA_TYPES = {"png": "image/png", "jpg": "image/jpeg", "webp": "image/webp"}
# Job error codes that mean the input was at fault (422); any other failure is the worker's (502).
INPUT_ERROR_CODES = frozenset(
    {"invalid_input", "invalid_image", "image_too_large", "no_face", "not_found", "too_large", "invalid_uri"}
    | {"unsupported_uri", "url_refused", "invalid_data_uri", "audio_too_long", "invalid_audio", "unsupported_audio"}
    | {"empty_audio", "empty_speech", "empty_text", "unknown_emotion", "invalid_intensity", "invalid_format"}
    | {"unknown_voice", "unsupported_voice_option", "unknown_tts_provider", "access_denied"}
)
ERROR_CODES_BY_STATUS = {401: "unauthorized", 403: "forbidden", 404: "not_found", 405: "method_not_allowed"}
STORAGE_STATUS = {"not_found": 404, "too_large": 413, "invalid_key": 400, "invalid_uri": 400, "unsupported_uri": 400}


class ApiError(OrchestratorError):
    """A refusal with its own HTTP status."""

    def __init__(self, http_status: int, code: str, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(code, message)
        self.http_status = http_status
        self.headers = headers


# ---- models --------------------------------------------------------------------------------


class ErrorBody(BaseModel):
    error: str
    error_code: str


ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorBody, "description": description}
    for code, description in ((401, "Missing or wrong bearer token"), (404, "Not found"), (422, "Invalid input"))
}


class UploadKind(str, Enum):
    training_video = "training_video"
    image = "image"
    audio = "audio"


class StoredUpload(BaseModel):
    uri: str = Field(description="Pass this URI as the job's `video`, `image` or `audio`.")
    key: str
    bytes: int
    sha256: str


class WebhookAck(BaseModel):
    id: str
    status: JobStatus


class SeedGenerateBody(BaseModel):
    """Seed 002's ``POST /generate`` body."""

    model_config = ConfigDict(extra="forbid")

    image_url: str | None = None
    image_b64: str | None = Field(None, description="The portrait's bytes in base64.")
    audio_url: str | None = None
    audio_b64: str | None = Field(None, description="The speech audio's bytes in base64.")
    driver: Literal["sadtalker", "liveportrait"] | LipSyncEngineName = Field(
        "sadtalker", description="`sadtalker` and `liveportrait` (seed names) run the `auto` lip-sync engine."
    )
    user_id: Identifier = DEFAULT_USER_ID

    @model_validator(mode="after")
    def _one_source_each(self) -> "SeedGenerateBody":
        if (self.image_url is None) == (self.image_b64 is None):
            raise ValueError("give exactly one of `image_url` or `image_b64`")
        if (self.audio_url is None) == (self.audio_b64 is None):
            raise ValueError("give exactly one of `audio_url` or `audio_b64`")
        return self


class SeedGenerateAnswer(BaseModel):
    status: Literal["queued", "completed", "error"]
    video_url: str | None = Field(None, description="Signed URL of the mp4, else its store URI.")
    message: str | None = None
    job_id: str | None = None
    error_code: str | None = None


class SeedRenderAnswer(BaseModel):
    """Seed 004's render answer (``output_path`` is the store URI of the image)."""

    output_path: str
    filename: str
    emotion: Emotion
    intensity: float
    latency_ms: float
    gpu_used: bool
    model_version: str
    width: int
    height: int
    url: str | None = None
    job_id: str


class SeedBatchAnswer(BaseModel):
    job_id: str
    results: list[SeedRenderAnswer]
    count: int
    latency_ms: float = Field(description="Wall time of the whole request.")


class DeletedOutput(BaseModel):
    deleted: str


def _submission_model(model: type[BaseModel]) -> type[BaseModel]:
    """The task's request model with ``task`` implied by the route (hidden from the schema, default kept)."""
    task_field = model.model_fields["task"]
    name = model.__name__.removesuffix("Request") + "Submission"
    return create_model(  # type: ignore[call-overload]
        name, __base__=model, __doc__=model.__doc__, task=(SkipJsonSchema[task_field.annotation], task_field.default)
    )


AnyTaskRequest = Annotated[
    PreprocessAvatarRequest | GenerateVideoRequest | RenderEmotionRequest | HealthRequest,
    Field(discriminator="task"),
]
SUBMIT_ROUTES = {
    "/v1/avatars": PreprocessAvatarRequest,
    "/v1/videos": GenerateVideoRequest,
    "/v1/emotions": RenderEmotionRequest,
}


# ---- uploads (shared with the CLI) ---------------------------------------------------------

MAGIC = (
    (0, b"\x89PNG\r\n\x1a\n", "png"),
    (0, b"\xff\xd8\xff", "jpg"),
    (8, b"WEBP", "webp"),
    (8, b"WAVE", "wav"),
    (0, b"OggS", "ogg"),
    (0, b"fLaC", "flac"),
    (0, b"ID3", "mp3"),
    (0, b"\xff\xfb", "mp3"),
    (4, b"ftyp", "mp4"),
    (0, b"\x1aE\xdf\xa3", "webm"),
)
DEFAULT_EXTENSION = {UploadKind.training_video: "mp4", UploadKind.image: "png", UploadKind.audio: "wav"}


def guess_extension(head: bytes, filename: str | None, kind: UploadKind) -> str:
    """The file's extension from its first bytes, else from its name, else the kind's usual one."""
    for offset, magic, ext in MAGIC:
        if head[offset : offset + len(magic)] == magic:
            return "m4a" if ext == "mp4" and kind is UploadKind.audio else ext
    suffix = Path(filename or "").suffix.lower().lstrip(".")
    return suffix if re.fullmatch(r"[a-z0-9]{1,5}", suffix) else DEFAULT_EXTENSION[kind]


def upload_limit(kind: UploadKind, settings: handlers.Settings) -> int:
    if kind is UploadKind.training_video:
        return settings.max_video_bytes
    return settings.max_image_bytes if kind is UploadKind.image else MAX_AUDIO_UPLOAD_BYTES


def upload_key(kind: UploadKind, user_id: str, ext: str) -> str:
    """``training-videos/{user_id}/{uuid}.{ext}`` for training videos (seed 000), else ``uploads/{user_id}/...``."""
    upload_id = uuid.uuid4().hex
    if kind is UploadKind.training_video:
        return training_video_key(user_id, upload_id, ext)
    return storage_upload_key(user_id, upload_id, ext)


def _check_user_id(user_id: str) -> None:
    if not re.fullmatch(ID_PATTERN, user_id):
        raise TaskError("invalid_input", f"`user_id` {user_id!r} is not an id: use letters, digits, _ and -.")


def upload_stream(
    store: ObjectStore,
    src: BinaryIO,
    *,
    kind: UploadKind,
    user_id: str,
    settings: handlers.Settings,
    filename: str | None = None,
) -> StoredUpload:
    """Copy ``src`` (refusing more than the kind's byte limit) into the store under a fresh key."""
    _check_user_id(user_id)
    limit = upload_limit(kind, settings)
    with tempfile.TemporaryDirectory(prefix="avatarctl-upload-") as tmp:
        path = Path(tmp) / "upload"
        size = 0
        with path.open("wb") as out:
            while chunk := src.read(UPLOAD_CHUNK_BYTES):
                size += len(chunk)
                if size > limit:
                    raise ApiError(413, "too_large", f"The {kind.value} upload is over the limit of {limit} bytes.")
                out.write(chunk)
        if size == 0:
            raise TaskError("invalid_input", f"The {kind.value} upload is empty.")
        with path.open("rb") as fh:
            ext = guess_extension(fh.read(16), filename, kind)
        key = upload_key(kind, user_id, ext)
        put = store.put(path, key)
    log.info("uploaded %s (%d bytes) to %s", kind.value, put.bytes, put.uri)
    return StoredUpload(uri=put.uri, key=key, bytes=put.bytes, sha256=put.sha256)


def upload_file(
    store: ObjectStore, path: Path, *, kind: UploadKind, user_id: str, settings: handlers.Settings
) -> StoredUpload:
    """Upload a local file (the CLI's ``--video``/``--image``/``--audio`` paths)."""
    if not path.is_file():
        raise TaskError("invalid_input", f"{path} is not a file.")
    limit = upload_limit(kind, settings)
    if path.stat().st_size > limit:
        raise TaskError("too_large", f"{path} is {path.stat().st_size} bytes, over the limit of {limit} bytes.")
    with path.open("rb") as fh:
        return upload_stream(store, fh, kind=kind, user_id=user_id, settings=settings, filename=path.name)


# ---- errors --------------------------------------------------------------------------------


def validation_message(errors: Sequence[Any]) -> str:
    """The contract's wording (as ``handlers.parse``) for FastAPI's request validation errors."""
    parts = []
    for err in errors:
        loc = [str(p) for p in err.get("loc", ())]
        if loc and loc[0] in ("body", "query", "path", "header"):
            loc = loc[1:]
        if loc and loc[0] in REQUEST_MODELS:  # the tag of the discriminated union on POST /v1/jobs
            loc = loc[1:]
        message = str(err.get("msg", "is invalid")).removeprefix("Value error, ")
        if err.get("type") == "extra_forbidden":
            message = "unknown field"
        elif err.get("type") == "json_invalid":
            loc, message = [], "the body is not valid JSON"
        parts.append(f"`{'.'.join(loc) or 'input'}`: {message}")
    return "Invalid input: " + "; ".join(parts)


def error_response(
    request: Request, status: int, code: str, message: str, headers: dict[str, str] | None = None
) -> JSONResponse:
    setattr(request.state, ERROR_CODE_STATE, code)
    body: dict[str, Any] = {"error": message, "error_code": code}
    if request.url.path == "/generate":  # seed 002's error shape
        body.update(status="error", message=message)
    return JSONResponse(body, status_code=status, headers=headers)


def _add_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, exc: RequestValidationError) -> JSONResponse:
        return error_response(request, 422, "invalid_input", validation_message(exc.errors()))

    @app.exception_handler(TaskError)
    async def task_error(request: Request, exc: TaskError) -> JSONResponse:
        return error_response(request, 413 if exc.code == "too_large" else 422, exc.code, exc.message)

    @app.exception_handler(OrchestratorError)
    async def orchestrator_error(request: Request, exc: OrchestratorError) -> JSONResponse:
        return error_response(request, exc.http_status, exc.code, exc.message, getattr(exc, "headers", None))

    @app.exception_handler(StorageError)
    async def storage_error(request: Request, exc: StorageError) -> JSONResponse:
        return error_response(request, STORAGE_STATUS.get(exc.code, 502), exc.code, exc.message)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = ERROR_CODES_BY_STATUS.get(exc.status_code, f"http_{exc.status_code}")
        return error_response(request, exc.status_code, code, str(exc.detail), getattr(exc, "headers", None))

    @app.exception_handler(Exception)
    async def internal_error(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        message = f"Internal error ({type(exc).__name__}); see the orchestrator logs."
        return error_response(request, 500, "internal_error", message)


# ---- context shared by the routes ----------------------------------------------------------


@dataclass
class ApiContext:
    service: JobService
    settings: OrchestratorSettings
    metrics: ApiMetrics
    sync_wait_s: float
    owns_service: bool = False
    _stores: dict[str, ObjectStore] = field(default_factory=dict)
    _health: tuple[float, dict[str, Any]] | None = None

    def health(self) -> dict[str, Any]:
        """The service's health, reused for HEALTH_CACHE_S: the route is public and each report calls the
        backends' own health endpoints (RunPod counts those calls) and probes the store."""
        now = time.monotonic()
        if self._health is None or now - self._health[0] > HEALTH_CACHE_S:
            self._health = (now, self.service.health())
        return self._health[1]

    @property
    def handler_settings(self) -> handlers.Settings:
        return self.service.handler_settings

    def store(self, root_uri: str | None = None) -> ObjectStore:
        """The store named by ``root_uri`` (a job's ``store``), else ``AVATAR_STORE_URI``; kept open."""
        uri = root_uri or self.handler_settings.avatar_store_uri
        if uri not in self._stores:
            self._stores[uri] = open_store(uri, self.handler_settings.storage)
        return self._stores[uri]

    def submit(self, task: str, payload: dict[str, Any], idempotency_key: str | None = None) -> JobView:
        refuse_foreign_files(payload, self.handler_settings.avatar_store_uri)
        job = self.service.submit(task, payload, idempotency_key=idempotency_key)
        self.metrics.submitted.labels(task, job.backend).inc()
        return job

    def wait(self, job: JobView) -> JobView:
        return self.service.wait(job.id, self.sync_wait_s)

    @contextlib.contextmanager
    def rollback_uploads(self) -> Iterator[list[StoredUpload]]:
        """Uploads made inside the block are deleted again if it raises (no job was created for them)."""
        uploads: list[StoredUpload] = []
        try:
            yield uploads
        except BaseException:
            for upload in uploads:
                with contextlib.suppress(StorageError):
                    self.store().delete(upload.key)
            raise

    def token_ok(self, authorization: str | None) -> bool:
        """Whether an ``Authorization`` header carries API_TOKEN (always true when none is configured)."""
        expected = self.settings.api_token
        if not expected:
            return True
        given = (authorization or "").removeprefix("Bearer ").strip()
        return hmac.compare_digest(given.encode(), expected.encode())

    def require_token(self) -> Any:
        """The bearer-token dependency (a no-op when API_TOKEN is not set)."""
        bearer = HTTPBearer(auto_error=False, description="The API_TOKEN configured on the orchestrator.")

        def check(credentials: HTTPAuthorizationCredentials | None = Depends(bearer)) -> None:
            expected = self.settings.api_token
            if not expected:
                return
            given = credentials.credentials if credentials else ""
            if not hmac.compare_digest(given.encode(), expected.encode()):
                raise ApiError(
                    401,
                    "unauthorized",
                    "A valid `Authorization: Bearer <API_TOKEN>` header is required.",
                    headers={"WWW-Authenticate": "Bearer"},
                )

        return check


# ---- /v1 routes ----------------------------------------------------------------------------


LOCAL_URI_FIELDS = ("video", "image", "audio")
HEALTH_CACHE_S = 5.0


def refuse_foreign_files(payload: dict[str, Any], store_uri: str) -> None:
    """HTTP clients may not make the workers read or write this host's disk: ``file://`` inputs must lie in the
    configured file store, and a ``store`` override may not be another ``file://`` root."""
    store = payload.get("store")
    if isinstance(store, str) and store.startswith("file:") and _file_root(store) != _file_root(store_uri):
        raise TaskError("url_refused", "`store` may not name a file:// root other than the configured store.")
    root = _file_root(store_uri)
    for name in LOCAL_URI_FIELDS:
        uri = payload.get(name)
        if not (isinstance(uri, str) and uri.startswith("file:")):
            continue
        path = _file_root(uri)
        if root is None or path is None or not path.is_relative_to(root):
            raise TaskError(
                "url_refused",
                f"`{name}`: file:// inputs must lie in the configured store; upload the file with POST /v1/uploads.",
            )


def _file_root(uri: str) -> Path | None:
    """The resolved local path of a file:// URI, or None for any other URI."""
    try:
        return path_from_file_uri(uri).resolve()
    except StorageError:
        return None


def _submit_endpoint(ctx: ApiContext, task: str, body_model: type[BaseModel]) -> Any:
    def submit(
        body: body_model,  # type: ignore[valid-type]
        idempotency_key: str | None = Header(None, max_length=MAX_IDEMPOTENCY_KEY_CHARS),
    ) -> JobView:
        return ctx.submit(task, body.model_dump(mode="json", exclude_none=True), idempotency_key)

    return submit


def _add_submit_routes(router: APIRouter, ctx: ApiContext) -> None:
    for path, model in SUBMIT_ROUTES.items():
        task = model.model_fields["task"].default.value
        router.add_api_route(
            path,
            _submit_endpoint(ctx, task, _submission_model(model)),
            methods=["POST"],
            status_code=202,
            response_model=JobView,
            name=f"submit_{task}",
            summary=f"Submit a {task} job",
            tags=["jobs"],
        )

    @router.post("/v1/jobs", status_code=202, response_model=JobView, tags=["jobs"], summary="Submit any task")
    def submit_any(
        body: Annotated[AnyTaskRequest, Body()],
        idempotency_key: str | None = Header(None, max_length=MAX_IDEMPOTENCY_KEY_CHARS),
    ) -> JobView:
        return ctx.submit(body.task, body.model_dump(mode="json", exclude_none=True), idempotency_key)


def _add_job_routes(router: APIRouter, ctx: ApiContext) -> None:
    @router.get("/v1/jobs/{job_id}", response_model=JobView, tags=["jobs"], summary="Get a job")
    def get_job(job_id: str) -> JobView:
        job = ctx.service.get(job_id)
        if job is None:
            raise JobNotFound(job_id)
        return job

    @router.delete("/v1/jobs/{job_id}", response_model=JobView, tags=["jobs"], summary="Cancel a job")
    def cancel_job(job_id: str) -> JobView:
        return ctx.service.cancel(job_id)

    @router.get("/v1/jobs", response_model=list[JobView], tags=["jobs"], summary="List jobs, newest first")
    def list_jobs(
        user_id: str | None = None,
        status: JobStatus | None = None,
        task: TaskName | None = None,
        limit: int = Query(100, ge=1, le=1000),
    ) -> list[JobView]:
        return ctx.service.list(
            user_id=user_id, status=status.value if status else None, task=task.value if task else None, limit=limit
        )

    @router.post("/v1/uploads", response_model=StoredUpload, status_code=201, tags=["jobs"], summary="Upload input")
    def upload(
        file: UploadFile = File(...),
        user_id: Identifier = Form(...),
        kind: UploadKind = Form(...),
    ) -> StoredUpload:
        return upload_stream(
            ctx.store(), file.file, kind=kind, user_id=user_id, settings=ctx.handler_settings, filename=file.filename
        )


def _add_public_routes(router: APIRouter, ctx: ApiContext) -> None:
    @router.post("/v1/webhooks/runpod/{job_id}", response_model=WebhookAck, tags=["webhooks"])
    def runpod_webhook(job_id: str, body: dict[str, Any] = Body(...), token: str = "") -> WebhookAck:
        """RunPod posts the final job JSON here; ``token`` is the HMAC of the job id with WEBHOOK_SECRET."""
        job = ctx.service.handle_webhook(job_id, token, body)
        return WebhookAck(id=job.id, status=job.status)

    def health_report(ok_word: str, authorization: str | None) -> JSONResponse:
        report = ctx.health()
        ok = report.get("status") == "ok"
        body = {**report, "status": ok_word if ok else "degraded", "ok": ok}
        if not ctx.token_ok(authorization):  # public: the verdict only; endpoints and store URIs need the token
            body = {"status": body["status"], "ok": ok, "db": {"ok": bool(report["db"].get("ok"))}}
        # Only a dead database makes the API unusable; a degraded backend still takes other tasks.
        return JSONResponse(body, status_code=200 if report["db"].get("ok") else 503)

    @router.get("/healthz", tags=["health"], summary="Database, store and backends")
    def healthz(authorization: str | None = Header(None, include_in_schema=False)) -> JSONResponse:
        return health_report("ok", authorization)

    @router.get("/health", tags=["health"], summary="The same report, seed 004's `healthy` wording")
    def health(authorization: str | None = Header(None, include_in_schema=False)) -> JSONResponse:
        return health_report("healthy", authorization)

    @router.get("/metrics", tags=["health"], summary="Prometheus metrics", response_class=Response)
    def metrics() -> Response:
        content, content_type = ctx.metrics.render()
        return Response(content, media_type=content_type)


# ---- seed routes ---------------------------------------------------------------------------


def _job_failure(job: JobView) -> ApiError:
    """The error to answer for a job that did not complete within the synchronous wait."""
    if not job.finished:
        message = f"Job {job.id} is still {job.status}; follow it with GET /v1/jobs/{job.id}."
        return ApiError(504, "still_running", message)
    code = job.error_code or job.status
    message = f"Job {job.id} {job.status}: {job.error or 'no message'}"
    if job.status == JobStatus.failed.value:
        return ApiError(422 if code in INPUT_ERROR_CODES else 502, code, message)
    return ApiError(504 if job.status == JobStatus.timed_out.value else 409, code, message)


def _decode_b64(name: str, value: str) -> bytes:
    if value.startswith("data:"):
        value = value.partition(",")[2]
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise TaskError("invalid_input", f"`{name}` is not valid base64.") from None


def _seed_render(job: JobView, render: dict[str, Any]) -> SeedRenderAnswer:
    engine = (job.output or {}).get("engine") or {}
    return SeedRenderAnswer(
        output_path=render["uri"],
        filename=render["uri"].rsplit("/", 1)[-1],
        emotion=render["emotion"],
        intensity=render["intensity"],
        latency_ms=render["latency_ms"],
        gpu_used=bool((job.output or {}).get("gpu_used")),
        model_version=str(engine.get("version") or engine.get("name") or "unknown"),
        width=render["width"],
        height=render["height"],
        url=render.get("url"),
        job_id=job.id,
    )


def _parse_emotions(values: list[str]) -> list[str]:
    names = [name.strip() for value in values for name in value.split(",") if name.strip()]
    allowed = [e.value for e in Emotion]
    for name in names:
        if name not in allowed:
            raise TaskError("invalid_input", f"Unknown emotion {name!r}: use one of {', '.join(allowed)}.")
    if not names:
        raise TaskError("invalid_input", f"`emotions` is empty: give one or more of {', '.join(allowed)}.")
    return names


def _add_seed_render_routes(router: APIRouter, ctx: ApiContext) -> None:
    def render_job(image: UploadFile, user_id: str, fields: dict[str, Any]) -> JobView:
        with ctx.rollback_uploads() as uploads:
            uploads.append(
                upload_stream(
                    ctx.store(),
                    image.file,
                    kind=UploadKind.image,
                    user_id=user_id,
                    settings=ctx.handler_settings,
                    filename=image.filename,
                )
            )
            job = ctx.submit("render_emotion", {"user_id": user_id, "image": uploads[0].uri, **fields})
        job = ctx.wait(job)
        if job.status != JobStatus.completed.value:
            raise _job_failure(job)
        return job

    @router.post("/render", response_model=SeedRenderAnswer, tags=["seed routes"], summary="Render one emotion")
    def render(
        source_image: UploadFile = File(...),
        emotion: Emotion = Form(...),
        intensity: float = Form(0.7, ge=0.0, le=1.0),
        output_format: ImageFormat = Form(ImageFormat.png),
        user_id: Identifier = Form(DEFAULT_USER_ID),
    ) -> SeedRenderAnswer:
        fields = {"emotion": emotion.value, "intensity": intensity, "output_format": output_format.value}
        job = render_job(source_image, user_id, fields)
        return _seed_render(job, job.output["renders"][0])

    @router.post("/render/batch", response_model=SeedBatchAnswer, tags=["seed routes"], summary="Render emotions")
    def render_batch(
        source_image: UploadFile = File(...),
        emotions: list[str] = Form(..., description="Repeat the field, or separate names with commas."),
        intensity: float = Form(0.7, ge=0.0, le=1.0),
        output_format: ImageFormat = Form(ImageFormat.png),
        user_id: Identifier = Form(DEFAULT_USER_ID),
    ) -> SeedBatchAnswer:
        started = time.perf_counter()
        fields = {"emotions": _parse_emotions(emotions), "intensity": intensity, "output_format": output_format.value}
        job = render_job(source_image, user_id, fields)
        results = [_seed_render(job, render) for render in job.output["renders"]]
        latency_ms = round((time.perf_counter() - started) * 1000, 1)
        return SeedBatchAnswer(job_id=job.id, results=results, count=len(results), latency_ms=latency_ms)


def _add_seed_output_routes(router: APIRouter, ctx: ApiContext) -> None:
    def locate(filename: str) -> tuple[ObjectStore, str, str]:
        """The store and key of a render named ``{render_id}_{emotion}.{ext}`` whose render id is its job's id."""
        match = OUTPUT_FILENAME.fullmatch(filename)
        if match is None:
            raise ApiError(
                400, "invalid_filename", f"{filename!r} is not a render's file name ({{id}}_{{emotion}}.png)."
            )
        job = ctx.service.get(match["render_id"])
        if job is None or job.task != TaskName.render_emotion.value or job.user_id is None:
            raise ApiError(404, "output_not_found", f"No render named {filename!r}.")
        store = ctx.store(job.input.get("store"))
        key = emotion_key(job.user_id, match["render_id"], match["emotion"], match["ext"])
        if not store.exists(key):
            raise ApiError(404, "output_not_found", f"No render named {filename!r} (deleted, or not made yet).")
        return store, key, match["ext"]

    @router.get("/output/{filename}", tags=["seed routes"], summary="Download a render", response_class=FileResponse)
    def get_output(filename: str) -> FileResponse:
        store, key, ext = locate(filename)
        tmp = tempfile.mkdtemp(prefix="avatarctl-output-")
        try:
            path = store.get(key, Path(tmp) / filename)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        cleanup = BackgroundTask(shutil.rmtree, tmp, ignore_errors=True)
        return FileResponse(path, media_type=MEDIA_TYPES[ext], filename=filename, background=cleanup)

    @router.delete("/output/{filename}", response_model=DeletedOutput, tags=["seed routes"], summary="Delete a render")
    def delete_output(filename: str) -> DeletedOutput:
        store, key, _ = locate(filename)
        store.delete(key)
        return DeletedOutput(deleted=filename)


def _add_seed_generate_route(router: APIRouter, ctx: ApiContext) -> None:
    def source(name: str, url: str | None, b64: str | None, kind: UploadKind, user_id: str, uploads: list) -> str:
        if url is not None:
            return url
        data = _decode_b64(f"{name}_b64", b64 or "")
        upload = upload_stream(ctx.store(), io.BytesIO(data), kind=kind, user_id=user_id, settings=ctx.handler_settings)
        uploads.append(upload)
        return upload.uri

    @router.post("/generate", response_model=SeedGenerateAnswer, tags=["seed routes"], summary="Image + audio → video")
    def generate(body: SeedGenerateBody) -> JSONResponse:
        with ctx.rollback_uploads() as uploads:
            image = source("image", body.image_url, body.image_b64, UploadKind.image, body.user_id, uploads)
            audio = source("audio", body.audio_url, body.audio_b64, UploadKind.audio, body.user_id, uploads)
            engine = "auto" if body.driver in SEED_DRIVERS else LipSyncEngineName(body.driver).value
            payload = {"user_id": body.user_id, "image": image, "audio": audio, "engine": engine}
            job = ctx.submit("generate_video", payload)
        job = ctx.wait(job)
        if job.status == JobStatus.completed.value:
            video = job.output["video"]
            answer = SeedGenerateAnswer(status="completed", video_url=video.get("url") or video["uri"], job_id=job.id)
            return JSONResponse(answer.model_dump(exclude_none=True))
        if not job.finished:
            message = f"Still {job.status}; follow it with GET /v1/jobs/{job.id}."
            answer = SeedGenerateAnswer(status="queued", message=message, job_id=job.id)
            return JSONResponse(answer.model_dump(exclude_none=True), status_code=202)
        raise _job_failure(job)


# ---- the app -------------------------------------------------------------------------------


def _version() -> str:
    try:
        return importlib.metadata.version("serverless-talking-head")
    except importlib.metadata.PackageNotFoundError:
        return "0"


def create_app(
    service: JobService | None = None,
    settings: OrchestratorSettings | None = None,
    *,
    sync_wait_s: float = DEFAULT_SYNC_WAIT_S,
) -> FastAPI:
    """The API around ``service`` (built from ``settings`` when None, then owned and stopped by the app)."""
    settings = settings or (service.settings if service is not None else OrchestratorSettings())
    owns_service = service is None
    service = service or JobService(settings)
    metrics = ApiMetrics(job_counts=service.store.counts)
    ctx = ApiContext(service, settings, metrics, sync_wait_s, owns_service)

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        if not settings.api_token:
            log.warning("API_TOKEN is not set: the HTTP API accepts requests without authentication")
        service.start()
        yield
        if ctx.owns_service:
            service.stop()

    app = FastAPI(title=API_TITLE, version=_version(), lifespan=lifespan, description=__doc__)
    app.state.context = ctx
    _add_error_handlers(app)
    app.add_middleware(MetricsMiddleware, metrics=metrics)
    protected = APIRouter(dependencies=[Depends(ctx.require_token())], responses=ERROR_RESPONSES)
    public = APIRouter(responses=ERROR_RESPONSES)
    _add_submit_routes(protected, ctx)
    _add_job_routes(protected, ctx)
    _add_seed_render_routes(protected, ctx)
    _add_seed_output_routes(protected, ctx)
    _add_seed_generate_route(protected, ctx)
    _add_public_routes(public, ctx)
    app.include_router(protected)
    app.include_router(public)
    return app


__all__ = ["ApiError", "StoredUpload", "UploadKind", "create_app", "upload_file", "upload_stream"]
