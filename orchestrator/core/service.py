"""``JobService``: the one object the HTTP API and the CLI use to submit, track, wait for and cancel jobs.

Life of a job: its edge validates the payload once (the API's request model and input rule; ``submit`` for the
CLI and the demo), ``submit_checked`` stores the job (queued) and hands it to ``JobLifecycle``, which claims it
(one process wins) and submits it to the task's backend. A local runner's pushes, RunPod webhooks, the poller
thread (``start``/``stop``) and ``wait`` then move it through the transition table (``models.TRANSITIONS``) to
one final status: completed, failed, cancelled or timed_out.

Choices worth knowing:
- Output ids (``video_id``, ``render_id``) default to the job id before the first submit, so any run
  of a job writes the same object keys: a second run overwrites instead of adding a different result.
- The job row keeps the payload as submitted (a re-run after a restart sends exactly that); callers
  see it with secret-looking fields masked.
- Deadlines: a job must start within QUEUE_TIMEOUT_S plus its task's time limit, and once running
  finish within the task's limit; past it the job is marked timed_out and cancelled remotely.
"""

from __future__ import annotations

import functools
import json
import logging
import threading
import time
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import handlers
from handlers.errors import TaskError
from orchestrator.core.backends import Backend, RemoteStatus, backend_for
from orchestrator.core.config import BackendKind, BackendSpec, OrchestratorSettings
from orchestrator.core.db import DuplicateIdempotencyKey, JobStore, new_job_id, utcnow
from orchestrator.core.health import health_report
from orchestrator.core.input_policy import check_request_inputs
from orchestrator.core.lifecycle import JobLifecycle
from orchestrator.core.models import (
    FINISHED_STATUSES,
    IdempotencyConflict,
    JobNotFound,
    JobStatus,
    JobView,
    OrchestratorError,
    scoped_key,
)
from orchestrator.core.poller import POLL_BACKOFF, Poller
from orchestrator.core.replica import Replica
from orchestrator.core.uploads import stage_inline_data
from orchestrator.core.webhooks import apply_webhook, check_webhook_token, webhook_token, webhook_url
from storage import open_store

log = logging.getLogger(__name__)

OUTPUT_ID_FIELDS = {"generate_video": "video_id", "render_emotion": "render_id"}
WAIT_DB_CHECK_S = 0.5  # how often wait() re-reads a job that another process may be updating
MAX_IDEMPOTENCY_KEY_CHARS = 255
MAX_CANDIDATES = 5  # job ids named when a prefix is ambiguous

Progress = Callable[[JobView], None]


def _as_json(value: Any) -> Any:
    return json.loads(json.dumps(value))


def validate(task: str, payload: Any) -> Any:
    """``payload``'s request model for ``task`` (the task contract, ``handlers.parse``); TaskError naming what is
    wrong. The one schema check of a job's edge where no request model checked it before (the CLI, seed routes)."""
    if not isinstance(payload, dict):
        raise TaskError("invalid_input", "The payload must be a JSON object.")
    if payload.get("task", task) != task:
        raise TaskError("invalid_input", f"`task` is {payload['task']!r} but the job is for {task!r}.")
    return handlers.parse({**payload, "task": task})


def backend_spec_of(job: JobView) -> BackendSpec:
    """The spec of the backend a job was submitted to (a local job's endpoint names its runner, not a target)."""
    kind = BackendKind(job.backend)
    return BackendSpec(kind, "" if kind is BackendKind.local else job.endpoint or "")


class JobService:
    """Jobs in a ``JobStore``, run on the backend configured per task (``backends`` overrides by task)."""

    def __init__(
        self,
        settings: OrchestratorSettings | None = None,
        store: JobStore | None = None,
        backends: dict[str, Backend] | None = None,
    ) -> None:
        self.settings = settings or OrchestratorSettings()
        self._owns_store = store is None
        self.store = store or JobStore(self.settings.database_url)
        self._by_task: dict[str, Backend] = dict(backends or {})
        self._by_spec: dict[str, Backend] = {b.spec: b for b in self._by_task.values()}
        for backend in self._by_spec.values():
            if getattr(backend, "on_status", False) is None:  # a local backend built by the caller
                backend.on_status = self._pushed  # type: ignore[attr-defined]
        self._lock = threading.Lock()
        self._changed = threading.Condition()
        self._handler_settings: handlers.Settings | None = None
        self.lifecycle = JobLifecycle(
            self.store, self.settings, self._backend_of, lambda job_id: webhook_url(self.settings, job_id), self._notify
        )
        self._poller = Poller(self.store, self.settings, self._refresh_leased, self._needs_work, self._claim)
        self.replica = Replica(self.store, self.settings, self._poller.wake, self._local_runners)

    # ---- backends ---------------------------------------------------------------------------

    def _backend_by_spec(self, spec: str) -> Backend:
        with self._lock:
            if spec not in self._by_spec:
                self._by_spec[spec] = backend_for(spec, self.settings, on_status=self._pushed)
            return self._by_spec[spec]

    def backend_for_task(self, task: str) -> Backend:
        return self._by_task.get(task) or self._backend_by_spec(str(self.settings.backend_spec(task)))

    def _backend_of(self, job: JobView) -> Backend:
        spec = str(backend_spec_of(job))
        injected = self._by_task.get(job.task)
        return injected if injected is not None and injected.spec == spec else self._backend_by_spec(spec)

    def _local_runners(self) -> list[str]:
        with self._lock:
            return [b.endpoint for b in self._by_spec.values() if b.kind is BackendKind.local]

    def _needs_work(self, job: JobView) -> bool:
        return job.remote_id is None or self._backend_of(job).cheap_status

    # ---- queries ----------------------------------------------------------------------------

    def get(self, job_id: str) -> JobView | None:
        return self.store.get(job_id)

    def resolve(self, job_id: str) -> JobView:
        """The job named by its id or by a unique start of it (as the CLI prints them); JobNotFound, or
        ``ambiguous_job_id`` naming the candidates."""
        job = self.store.get(job_id)
        if job is not None:
            return job
        candidates = self.store.ids_starting_with(job_id.strip().lower(), limit=MAX_CANDIDATES + 1)
        if len(candidates) == 1 and (job := self.store.get(candidates[0])) is not None:
            return job
        if len(candidates) < 2:
            raise JobNotFound(job_id)
        shown = ", ".join(candidates[:MAX_CANDIDATES]) + (", ..." if len(candidates) > MAX_CANDIDATES else "")
        raise OrchestratorError(
            "ambiguous_job_id", f"{job_id!r} starts more than one job id: {shown}. Give more characters."
        )

    def replica_running(self) -> bool:
        """Whether a started replica (``avatarctl serve`` or ``work``) beats on this database now."""
        try:
            return bool(self.replica.leases.live_replicas(within_s=self.settings.lease_s))
        except Exception:  # a database without the table yet, or a hiccup: nobody to hand jobs to
            log.debug("could not list live replicas", exc_info=True)
            return False

    def list(self, user_id: str | None = None, status: str | None = None, **filters: Any) -> list[JobView]:
        """Jobs, newest first; ``filters`` are JobStore.list's (task, user_ids, limit, after)."""
        if status is not None and status not in JobStatus._value2member_map_:
            allowed = ", ".join(s.value for s in JobStatus)
            raise OrchestratorError("invalid_filter", f"Unknown status {status!r}: use one of {allowed}.")
        return self.store.list(user_id=user_id, status=status, **filters)

    # ---- submit -----------------------------------------------------------------------------

    def submit(
        self, task: str, payload: dict[str, Any], *, idempotency_key: str | None = None, start: bool = True
    ) -> JobView:
        """The edge for callers on this machine (the CLI, the demo): validate the payload against the task contract
        and the operator's input rule, then ``submit_checked``. TaskError for a payload refused (nothing stored)."""
        request = validate(task, payload)
        payload = check_request_inputs({**payload, "task": task}, self.settings, self.handler_settings, from_http=False)
        user_id = getattr(request, "user_id", None)
        return self.submit_checked(task, payload, user_id, idempotency_key=idempotency_key, start=start)

    def submit_checked(
        self,
        task: str,
        payload: dict[str, Any],
        user_id: str | None,
        *,
        idempotency_key: str | None = None,
        start: bool = True,
    ) -> JobView:
        """Start a job whose edge validated its payload (the API's request model and input rule, or ``submit``):
        nothing is validated again here (the worker checks its own input). The same idempotency key returns the job
        it first created, without a second submit. ``start=False`` stores the job for a running replica to take
        (woken at once on PostgreSQL)."""
        if idempotency_key is not None and not 0 < len(idempotency_key) <= MAX_IDEMPOTENCY_KEY_CHARS:
            raise OrchestratorError(
                "invalid_idempotency_key", f"The idempotency key must be 1 to {MAX_IDEMPOTENCY_KEY_CHARS} characters."
            )
        payload = self.stage_inputs({**payload, "task": task})
        idempotency_key = scoped_key(user_id, idempotency_key) if idempotency_key else None  # per user
        if idempotency_key and (existing := self.store.get_by_idempotency_key(idempotency_key)):
            return self._same_request(existing, payload)
        return self._create(task, payload, user_id, idempotency_key, start)

    def start_validated(self, task: str, payload: dict[str, Any], user_id: str, sent: dict[str, Any]) -> JobView:
        """Store and submit a job whose payload the caller validated and staged (``stage_inputs``). The backend gets
        ``sent``, which may carry secrets that ``payload`` (what the row keeps) masks: such a job runs once only
        (``models.SINGLE_RUN_TASKS``)."""
        return self._create(task, payload, user_id, None, True, sent)

    def _create(
        self,
        task: str,
        payload: dict[str, Any],
        user_id: str | None,
        idempotency_key: str | None,
        start: bool,
        sent: dict[str, Any] | None = None,
    ) -> JobView:
        backend = self.backend_for_task(task)
        job_id = new_job_id()
        full = dict(payload)
        if task in OUTPUT_ID_FIELDS and full.get(OUTPUT_ID_FIELDS[task]) is None:
            full[OUTPUT_ID_FIELDS[task]] = job_id
        try:
            job = self.store.create(
                id=job_id,
                task=task,
                user_id=user_id,
                status=JobStatus.queued.value,
                backend=backend.kind.value,
                endpoint=backend.endpoint,
                input=_as_json(full),
                idempotency_key=idempotency_key,
                deadline_at=utcnow() + timedelta(seconds=self.lifecycle.queued_limit_s(task)),
                **(self.replica.lease_values() if start else {}),
            )
        except DuplicateIdempotencyKey:
            return self._same_request(self._get_by_key(idempotency_key), payload)
        log.info("job %s (%s) created for %s", job.id, task, backend.spec)
        if not start:
            self.replica.announce(job.id)
            return job
        if sent is not None:
            job = job.with_payload(_as_json({**sent, "task": task}))
        return self.lifecycle.submit(job)

    def stage_inputs(self, payload: dict[str, Any]) -> dict[str, Any]:
        """Large ``data:`` inputs stored and passed by URI (the payload's edge checked its URIs)."""
        store_uri = payload.get("store") or self.handler_settings.avatar_store_uri
        limit = self.settings.max_inline_data_bytes
        store = functools.partial(open_store, store_uri, self.handler_settings.storage)
        return stage_inline_data(payload, store, self.handler_settings, limit)

    def _get_by_key(self, key: str | None) -> JobView:
        job = self.store.get_by_idempotency_key(key or "")
        if job is None:
            raise OrchestratorError("idempotency_conflict", "The idempotency key vanished while in use.")
        return job

    def _same_request(self, existing: JobView, payload: dict[str, Any]) -> JobView:
        output_id = OUTPUT_ID_FIELDS.get(existing.task)
        stored = {k: v for k, v in existing.payload.items() if not (k == output_id and v == existing.id)}
        if existing.task != payload["task"] or stored != _as_json(payload):
            raise IdempotencyConflict(
                "idempotency_key_reused",
                f"Idempotency key {existing.idempotency_key!r} was used for a different request (job {existing.id}).",
            )
        return existing

    def webhook_url(self, job_id: str) -> str | None:
        """Where RunPod posts the job's final state; None unless PUBLIC_BASE_URL and WEBHOOK_SECRET are set."""
        return webhook_url(self.settings, job_id)

    # ---- polling ----------------------------------------------------------------------------

    def _notify(self, job_id: str | None = None) -> None:
        self.replica.ensure_beating()  # a local job of this process is alive: its runner beats
        self._poller.wake()
        with self._changed:
            self._changed.notify_all()

    def _pushed(self, job_id: str, remote: RemoteStatus) -> None:
        """A local runner's news of a job (started, progress, its final status): through the lifecycle at once."""
        self.lifecycle.report(job_id, remote)
        self._notify(job_id)

    def refresh(self, job_id: str) -> JobView:
        """Bring one job up to date with its backend now."""
        return self.lifecycle.refresh(self.lifecycle.get(job_id))

    def _claim(self) -> list[JobView]:
        return self.replica.claim()

    def _refresh_leased(self, job: JobView) -> JobView:
        return self.lifecycle.refresh(job, adopted=self.replica.adopted(job))

    def start(self) -> None:
        """Start as a replica: leases, heartbeats, and the poller thread, which works on every unfinished job
        this replica holds (SingleReplicaDatabase when another replica already runs on a SQLite file)."""
        self.replica.start()
        self._poller.start()

    def stop(self, timeout_s: float = 10.0) -> None:
        """Stop the poller and the backends (local jobs not finished are resumed by the next start)."""
        self._poller.stop(timeout_s)
        with self._lock:
            backends = list(self._by_spec.values())
        for backend in backends:
            backend.close()
        self.replica.stop()
        if self._owns_store:
            self.store.close()

    @property
    def polling(self) -> bool:
        return self._poller.running

    # ---- wait, cancel, webhooks ---------------------------------------------------------------

    def wait(self, job_id: str, timeout_s: float, on_progress: Progress | None = None) -> JobView:
        """Block until the job finishes or ``timeout_s`` passes; returns the job as it is then.
        ``on_progress`` is called with the job whenever its status or progress changes."""
        give_up = time.monotonic() + timeout_s
        interval = self.settings.poll_interval_s
        job, seen = self.lifecycle.get(job_id), None
        while True:
            if not self.polling:
                job = self.lifecycle.refresh(job)
            if on_progress and (job.status, job.progress) != seen:
                seen = (job.status, job.progress)
                on_progress(job)
            remaining = give_up - time.monotonic()
            if job.finished or remaining <= 0:
                return job
            step = WAIT_DB_CHECK_S if self.polling else interval
            if not self.polling and not self._backend_of(job).cheap_status:
                interval = min(interval * POLL_BACKOFF, self.settings.poll_max_interval_s)
            with self._changed:
                self._changed.wait(min(step, remaining))
            job = self.lifecycle.get(job_id)

    def cancel(self, job_id: str) -> JobView:
        """Cancel a queued or running job (and its remote run); a finished job is returned unchanged."""
        job = self.lifecycle.get(job_id)
        return job if job.finished else self.lifecycle.cancel(job)

    def handle_webhook(self, job_id: str, token: str, body: dict[str, Any]) -> JobView:
        """Apply a backend's webhook (RunPod: the final job JSON) once its token is this job's."""
        check_webhook_token(self.settings, job_id, token)
        job = self.lifecycle.get(job_id)
        return apply_webhook(self.lifecycle, self._backend_of(job), job, body)

    # ---- health -----------------------------------------------------------------------------

    @property
    def handler_settings(self) -> handlers.Settings:
        if self._handler_settings is None:
            self._handler_settings = handlers.Settings()
        return self._handler_settings

    def health(self) -> dict[str, Any]:
        """Database, object store and each task's backend; ``status`` is ``ok`` or ``degraded``."""
        report = health_report(self.store, self.handler_settings, self.backend_for_task, self.polling)
        leases = self.replica.stats()
        if leases["started"]:
            leases["replicas"] = _checked_replicas(self.replica)
        healthy = report["status"] == "ok" and leases["ok"]
        return {**report, "status": "ok" if healthy else "degraded", "leases": leases}

    def lease_stats(self) -> dict[str, Any]:
        return self.replica.stats()


def _checked_replicas(replica: Replica) -> list[dict[str, Any]] | str:
    try:
        return replica.leases.live_replicas(within_s=replica.lease_s)
    except Exception as exc:
        return f"{type(exc).__name__}: {exc}"


__all__ = ["FINISHED_STATUSES", "JobService", "JobView", "webhook_token"]
