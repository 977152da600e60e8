"""What every route shares: the ``ApiContext`` (job service, stores, metrics, the caller's reach)."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from fastapi import Request

import handlers
from orchestrator.api.auth import OPERATOR, Caller, authenticator, caller_of
from orchestrator.api.files import FileSigner, file_signer
from orchestrator.core.config import OrchestratorSettings
from orchestrator.core.events import EventStreams
from orchestrator.core.input_policy import check_request_inputs
from orchestrator.core.metrics import ApiMetrics
from orchestrator.core.models import JobView
from orchestrator.core.service import JobService, validate
from orchestrator.core.uploads import StoredUpload
from storage import ObjectStore, StorageError, open_store

HEALTH_CACHE_S = 5.0


@dataclass
class ApiContext:
    service: JobService
    settings: OrchestratorSettings
    metrics: ApiMetrics
    sync_wait_s: float
    owns_service: bool = False
    _stores: dict[str, ObjectStore] = field(default_factory=dict)
    _health: tuple[float, dict[str, Any]] | None = None

    def __post_init__(self) -> None:
        self.authenticate = authenticator(self.settings)  # the routes' dependency: Depends(ctx.authenticate)
        self.streams = EventStreams(
            self.settings.event_streams_per_tenant, self.settings.max_event_streams, self.settings.event_stream_max_s
        )
        storage = self.handler_settings.storage
        self.signer: FileSigner | None = file_signer(
            self.settings, self.handler_settings.avatar_store_uri, storage.signed_url_ttl_s
        )

    def base_url(self, request: Request) -> str:
        """Where clients reach this API: PUBLIC_BASE_URL, else the address the request came to."""
        return self.settings.public_base_url or str(request.base_url)

    def present(self, job: JobView, request: Request) -> JobView:
        """The job as answered: outputs in a file:// store get signed URLs under this API's address."""
        if self.signer is None or job.output is None:
            return job
        return job.model_copy(update={"output": self.signer.sign_output(job.output, self.base_url(request))})

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

    def check_inputs(self, caller: Caller, payload: dict[str, Any]) -> dict[str, Any]:
        """The API's one input rule for a job's or a live session's request: ``caller`` may act for its
        ``user_id`` (else 403), and its ``store`` and input URIs are normalised and checked
        (``orchestrator.core.input_policy.check_request_inputs``); returns the request with the normalised URIs,
        which are what the caller must pass on. TaskError ``url_refused`` (422) naming the field otherwise."""
        caller.check_user(payload.get("user_id"))
        return check_request_inputs(payload, self.settings, self.handler_settings, owners=caller.user_ids)

    def submit(
        self,
        caller: Caller,
        task: str,
        payload: dict[str, Any],
        idempotency_key: str | None = None,
        *,
        validated: bool = False,
    ) -> JobView:
        """The API's edge for a job, the one place its payload is checked before the worker's own check: the task
        contract (unless ``validated``: the route's request model checked it, as on the /v1 routes; the seed routes
        build theirs), then the API's input rule (``check_inputs``)."""
        request = None if validated else validate(task, payload)
        payload = self.check_inputs(caller, {**payload, "task": task})
        user_id = getattr(request, "user_id", None) if request is not None else payload.get("user_id")
        job = self.service.submit_checked(task, payload, user_id, idempotency_key=idempotency_key)
        self.metrics.submitted.labels(task, job.backend).inc()
        return job

    def job(self, caller: Caller, job_id: str) -> JobView:
        """The job, when this caller may see it (else 404)."""
        return caller.check_job(self.service.get(job_id), job_id)

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
        """Whether an ``Authorization`` header names the operator (always true when no token is configured)."""
        given = (authorization or "").removeprefix("Bearer ").strip()
        return caller_of(self.settings, given) is OPERATOR
