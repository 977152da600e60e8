"""What every route shares: the ``ApiContext`` (job service, stores, metrics, the caller's reach)."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import handlers
from handlers.errors import TaskError
from orchestrator.api.auth import OPERATOR, Caller, authenticator, caller_of
from orchestrator.config import OrchestratorSettings
from orchestrator.metrics import ApiMetrics
from orchestrator.models import JobView
from orchestrator.service import JobService
from orchestrator.uploads import INPUT_FIELD_KINDS, StoredUpload
from storage import ObjectStore, StorageError, open_store
from storage.local import path_from_file_uri

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

    def check_inputs(self, caller: Caller, payload: dict[str, Any]) -> None:
        """What the API checks of a job's or a live session's inputs before anything runs: the caller may act for
        its user, and its files lie where HTTP clients may point (the job service then applies the input policy)."""
        caller.check_user(payload.get("user_id"))
        refuse_foreign_files(payload, self.handler_settings.avatar_store_uri)

    def submit(self, caller: Caller, task: str, payload: dict[str, Any], idempotency_key: str | None = None) -> JobView:
        self.check_inputs(caller, payload)
        job = self.service.submit(task, payload, idempotency_key=idempotency_key)
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


def refuse_foreign_files(payload: dict[str, Any], store_uri: str) -> None:
    """HTTP clients may not make the workers read or write this host's disk: ``file://`` inputs must lie in the
    configured file store, and a ``store`` override may not be another ``file://`` root."""
    store = payload.get("store")
    if isinstance(store, str) and store.startswith("file:") and _file_root(store) != _file_root(store_uri):
        raise TaskError("url_refused", "`store` may not name a file:// root other than the configured store.")
    root = _file_root(store_uri)
    for name in INPUT_FIELD_KINDS:
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
