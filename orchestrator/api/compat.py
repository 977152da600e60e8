"""The seeds' routes, for clients migrating: ``POST /generate`` (seed 002), ``POST /render``,
``/render/batch``, ``GET``/``DELETE /output/{filename}`` (seed 004).

They submit a job, wait up to the app's ``sync_wait_s`` and answer the seed's fields. Uploaded bytes go
to the store under ``uploads/{user_id}/`` first (deleted again when no job was created for them).
"""

import base64
import binascii
import functools
import io
import json
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any, Literal

from fastapi import APIRouter, Depends, File, Form, Request, UploadFile
from fastapi.responses import FileResponse, JSONResponse
from pydantic import BaseModel, ConfigDict, Field, computed_field, model_validator
from starlette.background import BackgroundTask

import handlers.health
from handlers.errors import TaskError
from handlers.schemas import (
    DEFAULT_USER_ID,
    IMAGE_CONTENT_TYPES,
    Emotion,
    Identifier,
    ImageFormat,
    LipSyncEngineName,
    RenderEmotionRequest,
    TaskName,
    require_one_of,
)
from orchestrator.api.auth import Caller
from orchestrator.api.context import ApiContext
from orchestrator.api.errors import ApiError
from orchestrator.core.config import BackendKind, OrchestratorSettings
from orchestrator.core.models import JobStatus, JobView
from orchestrator.core.uploads import UploadKind, upload_stream
from storage import ObjectStore
from storage.keys import emotion_key

FILE_ROUTES = {"/render": (UploadKind.image,), "/render/batch": (UploadKind.image,)}  # multipart, one file each
EMOTION_DEFAULTS = {name: RenderEmotionRequest.model_fields[name].default for name in ("intensity", "output_format")}
SEED_ERROR_SHAPE_PATHS = frozenset({"/generate"})  # seed 002 answers errors with `status` and `message` too
OUTPUT_FILENAME = re.compile(
    rf"^(?P<render_id>[A-Za-z0-9_-]{{1,64}})_(?P<emotion>{'|'.join(e.value for e in Emotion)})"
    rf"\.(?P<ext>{'|'.join(f.value for f in ImageFormat)})$"
)
# Job error codes that mean the input was at fault (422); any other failure is the worker's (502).
INPUT_ERROR_CODES = frozenset(
    {"invalid_input", "invalid_image", "image_too_large", "no_face", "face_not_found", "not_found", "too_large"}
    | {"invalid_uri"}
    | {"unsupported_uri", "url_refused", "invalid_data_uri", "audio_too_long", "invalid_audio", "unsupported_audio"}
    | {"empty_audio", "empty_speech", "empty_text", "unknown_emotion", "invalid_intensity", "invalid_format"}
    | {"unknown_voice", "unsupported_voice_option", "unknown_tts_provider", "access_denied"}
)


class SeedGenerateBody(BaseModel):
    """Seed 002's ``POST /generate`` body."""

    model_config = ConfigDict(extra="forbid")

    image_url: str | None = None
    image_b64: str | None = Field(None, description="The portrait's bytes in base64.")
    audio_url: str | None = None
    audio_b64: str | None = Field(None, description="The speech audio's bytes in base64.")
    driver: LipSyncEngineName = Field(
        LipSyncEngineName.auto,
        description="The lip-sync engine: seed 002's `sadtalker` and `liveportrait` run our in-process SadTalker "
        "and LivePortrait (their weights needed); omitted: `auto`.",
    )
    user_id: Identifier = DEFAULT_USER_ID

    @model_validator(mode="after")
    def _one_source_each(self) -> "SeedGenerateBody":
        require_one_of(self, "image_url", "image_b64")
        require_one_of(self, "audio_url", "audio_b64")
        return self


class SeedGenerateAnswer(BaseModel):
    status: Literal["queued", "completed", "error"]
    video_url: str | None = Field(None, description="Signed URL of the mp4, else its store URI.")
    message: str | None = None
    job_id: str | None = None
    error_code: str | None = None


class SeedRenderAnswer(BaseModel):
    """Seed 004's render answer (``output_path`` is the store URI of the image). Its server answers snake_case
    and its TypeScript client reads camelCase (``latencyMs``, ``gpuUsed``...): both are given."""

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

    @computed_field
    def outputPath(self) -> str:
        return self.output_path

    @computed_field
    def latencyMs(self) -> float:
        return self.latency_ms

    @computed_field
    def gpuUsed(self) -> bool:
        return self.gpu_used

    @computed_field
    def modelVersion(self) -> str:
        return self.model_version


class DeletedOutput(BaseModel):
    deleted: str


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


def _emotion_names(value: str) -> list[str]:
    """One `emotions` form value: a name, names separated by commas, or a JSON array of names."""
    if not value.strip().startswith("["):
        return value.split(",")
    try:
        names = json.loads(value)
    except ValueError:
        names = None
    if not isinstance(names, list) or not all(isinstance(name, str) for name in names):
        raise TaskError("invalid_input", f"`emotions`: {value!r} is not a JSON array of emotion names.")
    return names


def _parse_emotions(values: list[str]) -> list[str]:
    names = [name.strip() for value in values for name in _emotion_names(value) if name.strip()]
    allowed = [e.value for e in Emotion]
    for name in names:
        if name not in allowed:
            raise TaskError("invalid_input", f"Unknown emotion {name!r}: use one of {', '.join(allowed)}.")
    if not names:
        raise TaskError("invalid_input", f"`emotions` is empty: give one or more of {', '.join(allowed)}.")
    return names


def _add_seed_render_routes(router: APIRouter, ctx: ApiContext) -> None:
    def render_job(
        request: Request, caller: Caller, image: UploadFile, user_id: str, fields: dict[str, Any]
    ) -> JobView:
        caller.check_user(user_id)
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
            job = ctx.submit(caller, "render_emotion", {"user_id": user_id, "image": uploads[0].uri, **fields})
        job = ctx.wait(job)
        if job.status != JobStatus.completed.value:
            raise _job_failure(job)
        return ctx.present(job, request)

    @router.post(
        "/render",
        response_model=SeedRenderAnswer,
        tags=["seed routes"],
        summary="Render one emotion",
    )
    def render(
        request: Request,
        source_image: UploadFile = File(...),
        emotion: Emotion = Form(Emotion.neutral),
        intensity: float = Form(EMOTION_DEFAULTS["intensity"], ge=0.0, le=1.0),
        output_format: ImageFormat = Form(EMOTION_DEFAULTS["output_format"]),
        user_id: Identifier = Form(DEFAULT_USER_ID),
        caller: Caller = Depends(ctx.authenticate),
    ) -> SeedRenderAnswer:
        fields = {"emotion": emotion.value, "intensity": intensity, "output_format": output_format.value}
        job = render_job(request, caller, source_image, user_id, fields)
        return _seed_render(job, job.output["renders"][0])

    @router.post(
        "/render/batch",
        response_model=list[SeedRenderAnswer],
        tags=["seed routes"],
        summary="Render emotions",
    )
    def render_batch(
        request: Request,
        source_image: UploadFile = File(...),
        emotions: list[str] = Form(..., description="Repeat the field, separate names with commas, or a JSON array."),
        intensity: float = Form(EMOTION_DEFAULTS["intensity"], ge=0.0, le=1.0),
        output_format: ImageFormat = Form(EMOTION_DEFAULTS["output_format"]),
        user_id: Identifier = Form(DEFAULT_USER_ID),
        caller: Caller = Depends(ctx.authenticate),
    ) -> list[SeedRenderAnswer]:
        fields = {"emotions": _parse_emotions(emotions), "intensity": intensity, "output_format": output_format.value}
        job = render_job(request, caller, source_image, user_id, fields)
        return [_seed_render(job, render) for render in job.output["renders"]]


def _add_seed_output_routes(router: APIRouter, ctx: ApiContext) -> None:
    def locate(caller: Caller, filename: str) -> tuple[ObjectStore, str, str]:
        """The store and key of a render named ``{render_id}_{emotion}.{ext}`` whose render id is its job's id."""
        match = OUTPUT_FILENAME.fullmatch(filename)
        if match is None:
            raise ApiError(
                400, "invalid_filename", f"{filename!r} is not a render's file name ({{id}}_{{emotion}}.png)."
            )
        job = ctx.service.get(match["render_id"])
        if job is None or job.task != TaskName.render_emotion.value or job.user_id is None:
            raise ApiError(404, "output_not_found", f"No render named {filename!r}.")
        if not caller.may_act_for(job.user_id):
            raise ApiError(404, "output_not_found", f"No render named {filename!r}.")
        store = ctx.store(job.input.get("store"))
        key = emotion_key(job.user_id, match["render_id"], match["emotion"], match["ext"])
        if not store.exists(key):
            raise ApiError(404, "output_not_found", f"No render named {filename!r} (deleted, or not made yet).")
        return store, key, match["ext"]

    @router.get("/output/{filename}", tags=["seed routes"], summary="Download a render", response_class=FileResponse)
    def get_output(filename: str, caller: Caller = Depends(ctx.authenticate)) -> FileResponse:
        store, key, ext = locate(caller, filename)
        tmp = tempfile.mkdtemp(prefix="avatarctl-output-")
        try:
            path = store.get(key, Path(tmp) / filename)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        cleanup = BackgroundTask(shutil.rmtree, tmp, ignore_errors=True)
        return FileResponse(path, media_type=IMAGE_CONTENT_TYPES[ext], filename=filename, background=cleanup)

    @router.delete("/output/{filename}", response_model=DeletedOutput, tags=["seed routes"], summary="Delete a render")
    def delete_output(filename: str, caller: Caller = Depends(ctx.authenticate)) -> DeletedOutput:
        store, key, _ = locate(caller, filename)
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
    def generate(body: SeedGenerateBody, request: Request, caller: Caller = Depends(ctx.authenticate)) -> JSONResponse:
        caller.check_user(body.user_id)
        with ctx.rollback_uploads() as uploads:
            image = source("image", body.image_url, body.image_b64, UploadKind.image, body.user_id, uploads)
            audio = source("audio", body.audio_url, body.audio_b64, UploadKind.audio, body.user_id, uploads)
            engine = body.driver.value
            if ctx.settings.avatar_provider == "d-id":  # seed 002's AVATAR_PROVIDER=d-id: the hosted fallback
                engine = LipSyncEngineName.d_id.value
            payload = {"user_id": body.user_id, "image": image, "audio": audio, "engine": engine}
            job = ctx.submit(caller, "generate_video", payload)
        job = ctx.present(ctx.wait(job), request)
        if job.status == JobStatus.completed.value:
            video = job.output["video"]
            answer = SeedGenerateAnswer(status="completed", video_url=video.get("url") or video["uri"], job_id=job.id)
            return JSONResponse(answer.model_dump(exclude_none=True))
        if not job.finished:
            message = f"Still {job.status}; follow it with GET /v1/jobs/{job.id}."
            answer = SeedGenerateAnswer(status="queued", message=message, job_id=job.id)
            return JSONResponse(answer.model_dump(exclude_none=True), status_code=202)
        raise _job_failure(job)


@functools.cache
def seed_device_info() -> dict[str, Any]:
    return handlers.health.device()


def renders_here(settings: OrchestratorSettings) -> bool:
    """Whether renders run on this machine (the local backend): then seed /health reports its device."""
    return settings.backend_spec("render_emotion").kind is BackendKind.local


def seed_health_fields(ctx: ApiContext, report: dict[str, Any]) -> dict[str, Any]:
    """Seed 004's ``GET /health`` fields, snake_case (its server) and camelCase (its TypeScript client).

    The GPU is this process's when the renders run here (local backend), else unknown (null)."""
    local = renders_here(ctx.settings)
    device = seed_device_info() if local else {}
    gpu = bool(device.get("cuda")) if local else None
    backends = report.get("backends") or {}
    fields = {
        "gpu_available": gpu,
        "gpu_name": device.get("name") if gpu else None,
        "cuda_version": device.get("cuda_version") if gpu else None,
        "model_loaded": bool(backends) and all(b.get("ok") for b in backends.values()),
    }
    camel = {re.sub(r"_(\w)", lambda m: m[1].upper(), key): value for key, value in fields.items()}
    return {**fields, **camel}


def add_compat_routes(router: APIRouter, ctx: ApiContext) -> None:
    """The seeds' routes (all behind the bearer token)."""
    _add_seed_render_routes(router, ctx)
    _add_seed_output_routes(router, ctx)
    _add_seed_generate_route(router, ctx)
