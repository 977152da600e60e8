"""The HTTP API: submit, track and cancel jobs; RunPod webhooks; health; Prometheus metrics; the seeds' routes.

``create_app(service=None, settings=None)`` builds the FastAPI app around one ``JobService`` (built from
the settings when not given; the app then owns it and stops it at shutdown). The app starts the
service's poller at startup, so jobs move on without anyone waiting on them.

Routes (``/docs`` is the documentation: every body and answer is a typed model):

- ``POST /v1/avatars``, ``/v1/videos``, ``/v1/emotions``: the task's request model (``task`` implied),
  optional ``Idempotency-Key`` header; 202 with the job. ``POST /v1/jobs`` takes any task, ``task`` included.
- ``GET /v1/jobs/{id}``, ``DELETE /v1/jobs/{id}`` (cancel), ``GET /v1/jobs?user_id=&status=&task=&limit=&cursor=``
  (newest first, at most 200 a page; ``X-Next-Cursor`` names the next page).
- ``POST /v1/uploads``: a file into the store (``training-videos/`` or ``uploads/``); answers its URI.
- ``POST /v1/webhooks/runpod/{job_id}?token=``: RunPod's completion webhook (the token authenticates it).
- ``GET /healthz`` and ``/health``, ``GET /metrics``: no bearer token needed.
- ``GET /files/{expires}/{signature}/{key}``: a file:// store's output by the signed URL a result gave
  (no bearer token: the signature authenticates it; byte ranges for video).
- ``GET /docs``, ``/redoc``: this documentation, served with its assets from this process (no CDN).
- LiveTalking's web API (``/offer``, ``/human``, ``/interrupt_talk``, ``/is_speaking``, ``/humanaudio``) on the
  live sessions: ``orchestrator.api.livetalking``.
- Seed routes for clients migrating: ``POST /generate`` (seed 002), ``POST /render``, ``/render/batch``,
  ``GET``/``DELETE /output/{filename}`` (seed 004). They submit, wait up to ``sync_wait_s`` and answer
  the seed's fields. Uploaded bytes go to the store under ``uploads/{user_id}/`` first; uploads are
  inputs and stay there (give the bucket a lifecycle rule on ``uploads/`` to expire them).

Every error answers ``{"error": message, "error_code": code}`` (``/generate`` adds the seed's
``status: "error"`` and ``message``); invalid bodies are 422 with the contract's message.
Bearer auth protects everything but health, metrics and the webhook: ``API_TOKEN`` is the operator's,
each of ``TENANT_TOKENS`` acts only for its user ids (other users' jobs and outputs answer 404). With
neither set the API is open (a warning is logged at startup). Bodies over ``MAX_REQUEST_BYTES`` (a file
route: its kind's limit) answer 413.
"""

import functools
import importlib.metadata
import logging
import re
import threading
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Depends, FastAPI, Header, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

from errors import CodedError, error_body
from errors.codes import codes_description, responses_description
from handlers.schemas import REQUEST_MODELS
from orchestrator.api.body_limit import BodyLimit
from orchestrator.api.compat import FILE_ROUTES as SEED_FILE_ROUTES
from orchestrator.api.compat import (
    SEED_ERROR_SHAPE_PATHS,
    add_compat_routes,
    renders_here,
    seed_device_info,
    seed_health_fields,
)
from orchestrator.api.context import ApiContext
from orchestrator.api.docs import add_offline_docs
from orchestrator.api.files import add_file_routes
from orchestrator.api.livetalking import add_livetalking_cors, add_livetalking_routes, livetalking_body_limits
from orchestrator.api.sessions import SESSION_BODY_LIMIT, add_session_routes
from orchestrator.api.v1 import FILE_ROUTES as V1_FILE_ROUTES
from orchestrator.api.v1 import add_v1_routes
from orchestrator.core.config import OrchestratorSettings
from orchestrator.core.live.service import LiveSessions
from orchestrator.core.live.watchdog import SessionWatchdog
from orchestrator.core.metrics import ERROR_CODE_STATE, ApiMetrics, MetricsMiddleware
from orchestrator.core.service import JobService
from orchestrator.core.uploads import multipart_limit

log = logging.getLogger(__name__)

SESSIONS_PATH = "/v1/sessions"
DEMO_PAGE = Path(__file__).with_name("static") / "demo.html"

API_TITLE = "avatarctl API"
DEFAULT_SYNC_WAIT_S = 120.0
ERROR_CODES_BY_STATUS = {
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    413: "too_large",
}


ACCESS_LOGGER = "uvicorn.access"
SECRET_QUERY = re.compile(r"(?<=[?&]token=)[^&\s\"]+")


class AccessLogRedaction(logging.Filter):
    """Masks the webhook token in uvicorn's access log: RunPod can only call a URL, so the token rides in
    the query string, and an access log is read by more people than the webhook secret should be."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple):
            record.args = tuple(SECRET_QUERY.sub("***", a) if isinstance(a, str) else a for a in record.args)
        elif isinstance(record.msg, str):
            record.msg = SECRET_QUERY.sub("***", record.msg)
        return True


def redact_access_log() -> None:
    """Install ``AccessLogRedaction`` on uvicorn's access logger (once; after uvicorn configured logging)."""
    logger = logging.getLogger(ACCESS_LOGGER)
    if not any(isinstance(f, AccessLogRedaction) for f in logger.filters):
        logger.addFilter(AccessLogRedaction())


class ErrorBody(BaseModel):
    error: str = Field(description="What went wrong and what to do about it.")
    error_code: str = Field(description=codes_description())


ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorBody, "description": responses_description(status, summary)}
    for status, summary in ((401, "Missing or wrong bearer token"), (404, "Not found"), (422, "Invalid input"))
}


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
        elif str(err.get("type")).startswith("union_tag_"):  # POST /v1/jobs: a missing or unknown `task`
            loc = [str((err.get("ctx") or {}).get("discriminator", "task")).strip("'")]
        parts.append(f"`{'.'.join(loc)}`: {message}" if loc else message)  # a whole-body check names its fields
    return "Invalid input: " + "; ".join(parts)


def error_response(
    request: Request, status: int, code: str, message: str, headers: dict[str, str] | None = None
) -> JSONResponse:
    setattr(request.state, ERROR_CODE_STATE, code)
    body: dict[str, Any] = error_body(code, message)
    if request.url.path in SEED_ERROR_SHAPE_PATHS:  # seed 002's error shape
        body.update(status="error", message=message)
    return JSONResponse(body, status_code=status, headers=headers)


def _add_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, exc: RequestValidationError) -> JSONResponse:
        return error_response(request, 422, "invalid_input", validation_message(exc.errors()))

    @app.exception_handler(CodedError)
    async def coded_error(request: Request, exc: CodedError) -> JSONResponse:
        """Every coded refusal (a task's, the store's, the orchestrator's): the status its class or the table gives."""
        return error_response(request, exc.http_status, exc.code, exc.message, getattr(exc, "headers", None))

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = ERROR_CODES_BY_STATUS.get(exc.status_code, f"http_{exc.status_code}")
        return error_response(request, exc.status_code, code, str(exc.detail), getattr(exc, "headers", None))

    @app.exception_handler(Exception)
    async def internal_error(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        message = f"Internal error ({type(exc).__name__}); see the orchestrator logs."
        return error_response(request, 500, "internal_error", message)


# ---- auth, health, metrics -----------------------------------------------------------------


def _add_health_routes(router: APIRouter, ctx: ApiContext) -> None:
    def health_report(ok_word: str, authorization: str | None, seed_fields: bool = False) -> JSONResponse:
        report = ctx.health()
        ok = report.get("status") == "ok"
        body = {**report, "status": ok_word if ok else "degraded", "ok": ok}
        if not ctx.token_ok(authorization):  # public: the verdict only; endpoints and store URIs need the token
            body = {"status": body["status"], "ok": ok, "db": {"ok": bool(report["db"].get("ok"))}}
        if seed_fields:
            body.update(seed_health_fields(ctx, report))
        # Only a dead database makes the API unusable; a degraded backend still takes other tasks.
        return JSONResponse(body, status_code=200 if report["db"].get("ok") else 503)

    @router.get("/healthz", tags=["health"], summary="Database, store and backends")
    def healthz(authorization: str | None = Header(None, include_in_schema=False)) -> JSONResponse:
        return health_report("ok", authorization)

    @router.get("/health", tags=["health"], summary="The same report, seed 004's `healthy` wording and GPU fields")
    def health(authorization: str | None = Header(None, include_in_schema=False)) -> JSONResponse:
        return health_report("healthy", authorization, seed_fields=True)

    @router.get("/metrics", tags=["health"], summary="Prometheus metrics", response_class=Response)
    def metrics() -> Response:
        content, content_type = ctx.metrics.render()
        return Response(content, media_type=content_type)


def _add_demo_page(router: APIRouter) -> None:
    @router.get("/", include_in_schema=False, response_class=HTMLResponse)
    def demo_page() -> HTMLResponse:
        """The live demo: plain HTML and the browser's own WebRTC; its API calls carry the token typed in."""
        return HTMLResponse(DEMO_PAGE.read_text(encoding="utf-8"))


# ---- the app -------------------------------------------------------------------------------


def body_limit(settings: OrchestratorSettings, ctx: ApiContext, path: str) -> int:
    """MAX_REQUEST_BYTES, except for the routes that take a file (the limit of its kind, plus the envelope) and
    the live-session routes (an SDP and a few fields: bounded before anything is parsed)."""
    if path.startswith(SESSIONS_PATH):
        return min(settings.max_request_bytes, SESSION_BODY_LIMIT)
    if path in (livetalking := livetalking_body_limits(ctx)):
        return livetalking[path]
    kinds = {**V1_FILE_ROUTES, **SEED_FILE_ROUTES}.get(path)
    return multipart_limit(ctx.handler_settings, *kinds) if kinds else settings.max_request_bytes


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
    metrics = ApiMetrics(job_counts=service.store.counts, lease_stats=service.lease_stats)
    ctx = ApiContext(service, settings, metrics, sync_wait_s, owns_service)
    sessions = LiveSessions(service, metrics.sessions)
    metrics.sessions.count_sessions(sessions.store.counts)
    watchdog = SessionWatchdog(sessions)

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        redact_access_log()
        if not settings.auth_required:
            log.warning("API_TOKEN is not set: the HTTP API accepts requests without authentication")
        service.start()
        watchdog.start()
        if renders_here(settings):  # seed /health reports this machine's device: torch's import takes seconds
            threading.Thread(target=seed_device_info, name="device-info", daemon=True).start()
        yield
        watchdog.stop()
        if ctx.owns_service:
            service.stop()

    app = FastAPI(
        title=API_TITLE, version=_version(), lifespan=lifespan, description=__doc__, docs_url=None, redoc_url=None
    )
    add_offline_docs(app)
    app.state.context = ctx
    _add_error_handlers(app)
    app.add_middleware(MetricsMiddleware, metrics=metrics)
    app.add_middleware(BodyLimit, limit_for=functools.partial(body_limit, settings, ctx))
    add_livetalking_cors(app, ctx)
    protected = APIRouter(dependencies=[Depends(ctx.authenticate)], responses=ERROR_RESPONSES)
    public = APIRouter(responses=ERROR_RESPONSES)
    add_v1_routes(protected, public, ctx)
    add_compat_routes(protected, ctx)
    add_session_routes(protected, public, ctx, sessions)
    _add_health_routes(public, ctx)
    _add_demo_page(public)
    add_file_routes(public, ctx.signer)
    app.include_router(protected)
    app.include_router(public)
    livetalking = APIRouter()
    add_livetalking_routes(livetalking, ctx, sessions)
    app.include_router(livetalking)
    app.state.sessions = sessions
    app.state.session_watchdog = watchdog
    return app
