"""The /v1 routes: submit any task, follow and cancel jobs, upload inputs, RunPod's webhook."""

import base64
from datetime import datetime
from typing import Annotated, Any

import anyio
from fastapi import APIRouter, Body, Depends, File, Form, Header, Query, Request, Response, UploadFile
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, Field, create_model
from pydantic.json_schema import SkipJsonSchema

from handlers.schemas import (
    GenerateVideoRequest,
    HealthRequest,
    Identifier,
    PreprocessAvatarRequest,
    RenderEmotionRequest,
    TaskName,
)
from orchestrator.api.auth import Caller
from orchestrator.api.context import ApiContext
from orchestrator.api.errors import ApiError
from orchestrator.api.files import signed_sse
from orchestrator.api.hosted import add_hosted_webhook_routes
from orchestrator.core.models import JobStatus, JobView
from orchestrator.core.service import MAX_IDEMPOTENCY_KEY_CHARS
from orchestrator.core.uploads import StoredUpload, UploadKind, upload_stream

AnyTaskRequest = Annotated[
    PreprocessAvatarRequest | GenerateVideoRequest | RenderEmotionRequest | HealthRequest,
    Field(discriminator="task"),
]
SUBMIT_ROUTES = {
    "/v1/avatars": PreprocessAvatarRequest,
    "/v1/videos": GenerateVideoRequest,
    "/v1/emotions": RenderEmotionRequest,
}


MAX_PAGE_SIZE = 200
FILE_ROUTES = {"/v1/uploads": tuple(UploadKind)}  # multipart, one file of any kind
NEXT_CURSOR_HEADER = "X-Next-Cursor"


def encode_cursor(job: JobView) -> str:
    """Where the next page of a newest-first listing starts: after this job."""
    return base64.urlsafe_b64encode(f"{job.created_at.isoformat()}|{job.id}".encode()).decode()


def decode_cursor(cursor: str) -> tuple[datetime, str]:
    try:
        created_at, _, job_id = base64.urlsafe_b64decode(cursor.encode()).decode().partition("|")
        return datetime.fromisoformat(created_at), job_id
    except ValueError:
        raise ApiError(400, "invalid_cursor", "`cursor` is not one this API gave (X-Next-Cursor).") from None


class WebhookAck(BaseModel):
    id: str
    status: JobStatus


def _submission_model(model: type[BaseModel]) -> type[BaseModel]:
    """The task's request model with ``task`` implied by the route (hidden from the schema, default kept)."""
    task_field = model.model_fields["task"]
    name = model.__name__.removesuffix("Request") + "Submission"
    return create_model(  # type: ignore[call-overload]
        name, __base__=model, __doc__=model.__doc__, task=(SkipJsonSchema[task_field.annotation], task_field.default)
    )


def _submit_endpoint(ctx: ApiContext, task: str, body_model: type[BaseModel]) -> Any:
    def submit(
        request: Request,
        body: body_model,  # type: ignore[valid-type]
        idempotency_key: str | None = Header(None, max_length=MAX_IDEMPOTENCY_KEY_CHARS),
        caller: Caller = Depends(ctx.authenticate),
    ) -> JobView:
        job = ctx.submit(caller, task, body.model_dump(mode="json", exclude_none=True), idempotency_key, validated=True)
        return ctx.present(job, request)

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
        request: Request,
        body: Annotated[AnyTaskRequest, Body()],
        idempotency_key: str | None = Header(None, max_length=MAX_IDEMPOTENCY_KEY_CHARS),
        caller: Caller = Depends(ctx.authenticate),
    ) -> JobView:
        job = ctx.submit(
            caller, body.task, body.model_dump(mode="json", exclude_none=True), idempotency_key, validated=True
        )
        return ctx.present(job, request)


def _add_job_routes(router: APIRouter, ctx: ApiContext) -> None:
    @router.get("/v1/jobs/{job_id}", response_model=JobView, tags=["jobs"], summary="Get a job")
    def get_job(job_id: str, request: Request, caller: Caller = Depends(ctx.authenticate)) -> JobView:
        return ctx.present(ctx.job(caller, job_id), request)

    @router.get(
        "/v1/jobs/{job_id}/events",
        response_class=StreamingResponse,
        tags=["jobs"],
        summary="Follow a job (Server-Sent Events)",
        responses={200: {"content": {"text/event-stream": {}}}},
    )
    async def job_events(
        job_id: str, request: Request, caller: Caller = Depends(ctx.authenticate)
    ) -> StreamingResponse:
        """`progress` events, a streamed video's `segment` events as they are stored, then one event named
        after the final status (`completed` with the output, after every segment; `failed`, `cancelled`,
        `timed_out` with the error). At most EVENT_STREAMS_PER_TENANT open streams per token (429 beyond);
        a stream open for EVENT_STREAM_MAX_S ends with `expired` (reconnect to follow on)."""
        await anyio.to_thread.run_sync(ctx.job, caller, job_id, limiter=ctx.streams.limiter)
        stream = ctx.streams.open(caller.key, ctx.service, job_id)
        headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
        events = signed_sse(stream, ctx.signer, ctx.base_url(request))
        return StreamingResponse(events, media_type="text/event-stream", headers=headers)

    @router.delete("/v1/jobs/{job_id}", response_model=JobView, tags=["jobs"], summary="Cancel a job")
    def cancel_job(job_id: str, request: Request, caller: Caller = Depends(ctx.authenticate)) -> JobView:
        return ctx.present(ctx.service.cancel(ctx.job(caller, job_id).id), request)

    @router.get("/v1/jobs", response_model=list[JobView], tags=["jobs"], summary="List jobs, newest first")
    def list_jobs(
        request: Request,
        response: Response,
        user_id: str | None = None,
        status: JobStatus | None = None,
        task: TaskName | None = None,
        limit: int = Query(100, ge=1, le=MAX_PAGE_SIZE),
        cursor: str | None = Query(None, description="The `X-Next-Cursor` header of the previous page."),
        caller: Caller = Depends(ctx.authenticate),
    ) -> list[JobView]:
        """One page of jobs; when more follow, the `X-Next-Cursor` header is the `cursor` of the next page."""
        if user_id is not None:
            caller.check_user(user_id)
        jobs = ctx.service.list(
            user_id=user_id,
            status=status.value if status else None,
            task=task.value if task else None,
            user_ids=caller.user_ids,
            limit=limit,
            after=decode_cursor(cursor) if cursor else None,
        )
        if len(jobs) == limit:
            response.headers[NEXT_CURSOR_HEADER] = encode_cursor(jobs[-1])
        return [ctx.present(job, request) for job in jobs]

    @router.post(
        "/v1/uploads",
        response_model=StoredUpload,
        status_code=201,
        tags=["jobs"],
        summary="Upload input",
    )
    def upload(
        file: UploadFile = File(...),
        user_id: Identifier = Form(...),
        kind: UploadKind = Form(...),
        caller: Caller = Depends(ctx.authenticate),
    ) -> StoredUpload:
        caller.check_user(user_id)
        return upload_stream(
            ctx.store(), file.file, kind=kind, user_id=user_id, settings=ctx.handler_settings, filename=file.filename
        )


def _add_webhook_routes(router: APIRouter, ctx: ApiContext) -> None:
    @router.post("/v1/webhooks/runpod/{job_id}", response_model=WebhookAck, tags=["webhooks"])
    def runpod_webhook(job_id: str, body: dict[str, Any] = Body(...), token: str = "") -> WebhookAck:
        """RunPod posts the final job JSON here; ``token`` is the HMAC of the job id with WEBHOOK_SECRET."""
        job = ctx.service.handle_webhook(job_id, token, body)
        return WebhookAck(id=job.id, status=job.status)


def add_v1_routes(protected: APIRouter, public: APIRouter, ctx: ApiContext) -> None:
    """The /v1 routes: jobs and uploads behind the bearer token; the webhook authenticates itself."""
    _add_submit_routes(protected, ctx)
    _add_job_routes(protected, ctx)
    _add_webhook_routes(public, ctx)
    add_hosted_webhook_routes(public, ctx)
