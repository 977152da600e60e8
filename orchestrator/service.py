"""``JobService``: the one object the HTTP API and the CLI use to submit, track, wait for and cancel jobs.

Life of a job: ``submit`` validates the payload against the task contract, stores the job (queued),
claims it (``attempts + 1`` by compare-and-set, so only one process submits it) and hands it to the
task's backend. A poller thread (``start``/``stop``), ``wait`` and RunPod webhooks then move it to
running and to one final status: completed, failed, cancelled or timed_out. Every change is a
compare-and-set on the row, so racing pollers, webhook replays and late results are harmless.

Choices worth knowing:
- Output ids (``video_id``, ``render_id``) default to the job id before the first submit, so any run
  of a job writes the same object keys: a second run (a local re-run after a restart, or a remote
  retry) overwrites instead of adding a different result.
- Resume after a restart (``start`` or ``wait`` on a new service): queued jobs never submitted are
  submitted; remote jobs are polled again; a remote job whose submit was interrupted mid-request is
  never resent (see backends/runpod.py) but left to its webhook or failed with ``submit_uncertain``.
  Local jobs whose runner is gone (the process died or its service stopped) are run again, up to
  MAX_ATTEMPTS runs in all, then failed with "orchestrator restarted while running locally".
- Deadlines: a job must start within QUEUE_TIMEOUT_S plus its task's time limit, and once running
  finish within the task's limit; past it the job is marked timed_out and cancelled remotely.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import re
import threading
import time
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import handlers
from handlers.errors import TaskError
from orchestrator.backends import Backend, BackendError, RemoteState, RemoteStatus, SubmitUncertain, backend_for
from orchestrator.backends.local import runner_is_gone
from orchestrator.config import OrchestratorSettings
from orchestrator.db import DuplicateIdempotencyKey, JobStore, new_job_id, utcnow
from orchestrator.models import (
    FINISHED_STATUSES,
    IdempotencyConflict,
    JobNotFound,
    JobStatus,
    JobView,
    OrchestratorError,
    WebhookRejected,
)

log = logging.getLogger(__name__)

OUTPUT_ID_FIELDS = {"generate_video": "video_id", "render_emotion": "render_id"}
SECRET_FIELD = re.compile(r"token|secret|key|password|authorization", re.IGNORECASE)
MASK = "***"
SUBMIT_GRACE_S = 300.0  # a claimed job with no remote id for this long was interrupted mid-submit
POLL_BACKOFF = 1.5
WAIT_DB_CHECK_S = 0.5  # how often wait() re-reads a job that another process may be updating
STORE_PROBE_KEY = ".healthz"
# RunPod's own TTL ends a minute after our deadline: the orchestrator decides (and cancels); the TTL
# only cleans up when no orchestrator is left to do it.
REMOTE_TTL_GRACE_S = 60.0
MAX_IDEMPOTENCY_KEY_CHARS = 255
MAX_ERROR_CODE_CHARS = 64  # the jobs.error_code column
UNCLAIMED_PICKUP_S = 5.0  # a new job is left this long to the submit() that created it before a poller takes it

Progress = Callable[[JobView], None]


def redact(value: Any) -> Any:
    """A copy of ``value`` with every field whose name looks secret (token, key, ...) masked."""
    if isinstance(value, dict):
        return {k: MASK if SECRET_FIELD.search(str(k)) else redact(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [redact(v) for v in value]
    return value


def webhook_token(secret: str, job_id: str) -> str:
    """The shared-secret token of a job's webhook URL: HMAC-SHA256 of the job id."""
    return hmac.new(secret.encode(), job_id.encode(), hashlib.sha256).hexdigest()


def _as_json(value: Any) -> Any:
    return json.loads(json.dumps(value))


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
            if getattr(backend, "kind", None) == "local" and getattr(backend, "on_change", None) is None:
                backend.on_change = self._notify  # type: ignore[attr-defined]
        self._lock = threading.Lock()
        self._changed = threading.Condition()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._schedule: dict[str, tuple[float, float]] = {}
        self._handler_settings: handlers.Settings | None = None

    # ---- backends ---------------------------------------------------------------------------

    def _backend_by_spec(self, spec: str) -> Backend:
        with self._lock:
            if spec not in self._by_spec:
                self._by_spec[spec] = backend_for(spec, self.settings, on_change=self._notify)
            return self._by_spec[spec]

    def backend_for_task(self, task: str) -> Backend:
        return self._by_task.get(task) or self._backend_by_spec(str(self.settings.backend_spec(task)))

    def _backend_of(self, job: JobView) -> Backend:
        if job.task in self._by_task and self._by_task[job.task].kind == job.backend:
            injected = self._by_task[job.task]
            if job.backend == "local" or injected.endpoint == job.endpoint:
                return injected
        return self._backend_by_spec("local" if job.backend == "local" else f"{job.backend}:{job.endpoint}")

    # ---- queries ----------------------------------------------------------------------------

    def get(self, job_id: str) -> JobView | None:
        return self.store.get(job_id)

    def _get(self, job_id: str) -> JobView:
        job = self.store.get(job_id)
        if job is None:
            raise JobNotFound(job_id)
        return job

    def list(
        self, user_id: str | None = None, status: str | None = None, task: str | None = None, limit: int = 100
    ) -> list[JobView]:
        if status is not None and status not in JobStatus._value2member_map_:
            allowed = ", ".join(s.value for s in JobStatus)
            raise OrchestratorError("invalid_filter", f"Unknown status {status!r}: use one of {allowed}.")
        return self.store.list(user_id=user_id, status=status, task=task, limit=limit)

    # ---- submit -----------------------------------------------------------------------------

    def submit(self, task: str, payload: dict[str, Any], *, idempotency_key: str | None = None) -> JobView:
        """Validate and start a job. TaskError for a payload the contract refuses (nothing stored);
        the same idempotency key returns the job it first created, without a second submit."""
        if not isinstance(payload, dict):
            raise TaskError("invalid_input", "The payload must be a JSON object.")
        if idempotency_key is not None and not 0 < len(idempotency_key) <= MAX_IDEMPOTENCY_KEY_CHARS:
            raise OrchestratorError(
                "invalid_idempotency_key", f"The idempotency key must be 1 to {MAX_IDEMPOTENCY_KEY_CHARS} characters."
            )
        if payload.get("task", task) != task:
            raise TaskError("invalid_input", f"`task` is {payload['task']!r} but the job is for {task!r}.")
        payload = {**payload, "task": task}
        request = handlers.parse(payload)
        if idempotency_key and (existing := self.store.get_by_idempotency_key(idempotency_key)):
            return self._same_request(existing, payload)
        backend = self.backend_for_task(task)
        job_id = new_job_id()
        full = dict(payload)
        if task in OUTPUT_ID_FIELDS and full.get(OUTPUT_ID_FIELDS[task]) is None:
            full[OUTPUT_ID_FIELDS[task]] = job_id
        try:
            job = self.store.create(
                id=job_id,
                task=task,
                user_id=getattr(request, "user_id", None),
                status=JobStatus.queued.value,
                backend=backend.kind,
                endpoint=backend.endpoint,
                input=_as_json(redact(full)),
                idempotency_key=idempotency_key,
                deadline_at=utcnow() + timedelta(seconds=self._queued_limit_s(task)),
            )
        except DuplicateIdempotencyKey:
            return self._same_request(self._get_by_key(idempotency_key), payload)
        log.info("job %s (%s) created for %s", job.id, task, backend.spec)
        return self._submit(job, full)

    def _get_by_key(self, key: str | None) -> JobView:
        job = self.store.get_by_idempotency_key(key or "")
        if job is None:
            raise OrchestratorError("idempotency_conflict", "The idempotency key vanished while in use.")
        return job

    def _same_request(self, existing: JobView, payload: dict[str, Any]) -> JobView:
        output_id = OUTPUT_ID_FIELDS.get(existing.task)
        stored = {k: v for k, v in existing.input.items() if not (k == output_id and v == existing.id)}
        if existing.task != payload["task"] or stored != _as_json(redact(payload)):
            raise IdempotencyConflict(
                "idempotency_key_reused",
                f"Idempotency key {existing.idempotency_key!r} was used for a different request (job {existing.id}).",
            )
        return existing

    def _queued_limit_s(self, task: str) -> float:
        return self.settings.queue_timeout_s + self.settings.timeout_for(task)

    def webhook_url(self, job_id: str) -> str | None:
        """Where RunPod posts the job's final state; None unless PUBLIC_BASE_URL and WEBHOOK_SECRET are set."""
        if not (self.settings.public_base_url and self.settings.webhook_secret):
            return None
        token = webhook_token(self.settings.webhook_secret, job_id)
        return f"{self.settings.public_base_url}/v1/webhooks/runpod/{job_id}?token={token}"

    def _submit(self, job: JobView, payload: dict[str, Any] | None = None) -> JobView:
        """Claim the job (one process wins) and hand it to its backend."""
        backend = self._backend_of(job)
        local = backend.kind == "local"
        claim: dict[str, Any] = {"attempts": job.attempts + 1}
        if local:  # a (re-)run starts from scratch in this process
            claim.update(
                endpoint=backend.endpoint,
                remote_id=job.id,
                status=JobStatus.queued.value,
                started_at=None,
                progress=None,
                deadline_at=utcnow() + timedelta(seconds=self._queued_limit_s(job.task)),
            )
        if not self.store.update(job.id, claim, where={"attempts": job.attempts}):
            return self._reload(job)
        try:
            remote_id = backend.submit(
                job.task,
                payload or job.input,
                job_id=job.id,
                webhook_url=self.webhook_url(job.id),
                timeout_s=self.settings.timeout_for(job.task),
                ttl_s=self._queued_limit_s(job.task) + REMOTE_TTL_GRACE_S,
            )
        except SubmitUncertain as exc:
            return self._submit_uncertain(job, exc.message)
        except BackendError as exc:
            return self._finish(job, JobStatus.failed, error=exc.message, error_code=exc.code)
        if not local:
            self._record_remote_id(job, backend, remote_id)
        self._notify(job.id)
        return self._reload(job)

    def _record_remote_id(self, job: JobView, backend: Backend, remote_id: str) -> None:
        queued = {JobStatus.queued.value}
        if self.store.update(job.id, {"remote_id": remote_id}, statuses=queued, where={"remote_id": None}):
            return
        if self._reload(job).remote_id != remote_id:  # (its webhook may have recorded it first: then all is well)
            log.info("job %s ended while it was being submitted; cancelling remote %s", job.id, remote_id)
            self._cancel_remote(backend, remote_id)

    def _submit_uncertain(self, job: JobView, message: str) -> JobView:
        if self.webhook_url(job.id):
            log.warning("job %s: submit outcome unknown; waiting for its webhook (%s)", job.id, message)
            self.store.update(
                job.id,
                {"error": f"{message} Not resent; waiting for its webhook.", "error_code": "submit_uncertain"},
                statuses={JobStatus.queued.value},
            )
            return self._reload(job)
        error = f"{message} Not resent, to avoid running it twice."
        return self._finish(job, JobStatus.failed, error=error, error_code="submit_uncertain")

    # ---- state changes ----------------------------------------------------------------------

    def _reload(self, job: JobView | str) -> JobView:
        return self._get(job if isinstance(job, str) else job.id)

    def _mark(self, job: JobView, status: JobStatus, **values: Any) -> bool:
        """Move an active job to a final status; False when it had already finished."""
        values = {"status": status.value, "finished_at": utcnow(), **values}
        if status is JobStatus.completed:
            values.update(error=None, error_code=None)
        if not self.store.update(job.id, values):
            return False
        log.info("job %s %s%s", job.id, status.value, f": {values.get('error')}" if values.get("error") else "")
        self._notify(job.id)
        return True

    def _finish(self, job: JobView, status: JobStatus, **values: Any) -> JobView:
        self._mark(job, status, **values)
        return self._reload(job)

    def _apply(self, job: JobView, remote: RemoteStatus) -> JobView:
        """Record what the backend reports about a job."""
        state = remote.state
        if state in (RemoteState.queued, RemoteState.running):
            values: dict[str, Any] = {}
            if remote.progress is not None and remote.progress != job.progress:
                values["progress"] = remote.progress
            if state is RemoteState.running and job.status == JobStatus.queued.value:
                now = utcnow()
                limit = timedelta(seconds=self.settings.timeout_for(job.task))
                values.update(status=JobStatus.running.value, started_at=now, deadline_at=now + limit)
            if values and self.store.update(job.id, values, statuses={job.status}):
                self._notify(job.id)
            return self._reload(job)
        if state is RemoteState.completed:
            return self._finish(job, JobStatus.completed, output=remote.output, progress=remote.progress)
        final = {
            RemoteState.failed: (JobStatus.failed, "remote_failed"),
            RemoteState.cancelled: (JobStatus.cancelled, "cancelled"),
            RemoteState.timed_out: (JobStatus.timed_out, "timeout"),
            RemoteState.lost: (JobStatus.failed, "remote_job_lost"),
        }
        status, default_code = final[state]
        error = remote.error or f"The job ended as {state.value} on {job.backend}."
        code = (remote.error_code or default_code)[:MAX_ERROR_CODE_CHARS]  # a worker's code, stored in String(64)
        return self._finish(job, status, error=error, error_code=code)

    def _time_out(self, job: JobView) -> JobView:
        limit = self.settings.timeout_for(job.task)
        if job.status == JobStatus.running.value:
            message = f"The job ran longer than its {limit:g} s limit and was stopped."
        else:
            message = f"The job did not finish within {self._queued_limit_s(job.task):g} s of being queued."
        if self._mark(job, JobStatus.timed_out, error=message, error_code="timeout"):
            self._cancel_job_remotely(job)
        return self._reload(job)

    def _cancel_job_remotely(self, job: JobView) -> None:
        backend = self._backend_of(job)
        if backend.kind == "local" and job.endpoint != backend.endpoint:
            return  # another process's thread: it will find the job finished and its result is ignored
        if job.remote_id:
            self._cancel_remote(backend, job.remote_id)

    @staticmethod
    def _cancel_remote(backend: Backend, remote_id: str) -> None:
        try:
            backend.cancel(remote_id)
        except BackendError as exc:
            log.warning("cancelling %s on %s failed: %s", remote_id, backend.spec, exc.message)

    def _notify(self, job_id: str | None = None) -> None:
        self._wake.set()
        with self._changed:
            self._changed.notify_all()

    # ---- polling ----------------------------------------------------------------------------

    def refresh(self, job_id: str) -> JobView:
        """Bring one job up to date with its backend now."""
        return self._refresh(self._get(job_id))

    def _refresh(self, job: JobView) -> JobView:
        if job.finished:
            return job
        if job.deadline_at and utcnow() >= job.deadline_at:
            return self._time_out(job)
        if job.backend == "local":
            return self._refresh_local(job)
        if job.remote_id is None:
            return self._advance_unsubmitted(job)
        try:
            remote = self._backend_of(job).status(job.remote_id)
        except BackendError as exc:
            log.warning("job %s: status unavailable (%s); will retry", job.id, exc.message)
            return job
        return self._apply(job, remote)

    def _refresh_local(self, job: JobView) -> JobView:
        local = self._backend_of(job)
        if job.attempts == 0:
            return self._submit(job) if self._unclaimed_for_long(job) else job
        if job.endpoint == local.endpoint:
            remote = local.status(job.id)
            if remote.state is not RemoteState.lost:
                return self._apply(job, remote)
        elif not runner_is_gone(job.endpoint):
            return job  # another live process runs it
        if job.attempts >= self.settings.max_attempts:
            return self._finish(
                job,
                JobStatus.failed,
                error=f"The orchestrator restarted while running locally; gave up after {job.attempts} runs.",
                error_code="orchestrator_restarted",
            )
        log.warning("job %s: its local runner %s is gone; running it again", job.id, job.endpoint)
        return self._submit(job)

    @staticmethod
    def _unclaimed_for_long(job: JobView) -> bool:
        """A job never claimed is normally submitted by the call that created it, within moments."""
        return (utcnow() - job.created_at).total_seconds() >= UNCLAIMED_PICKUP_S

    def _advance_unsubmitted(self, job: JobView) -> JobView:
        if job.attempts == 0:
            return self._submit(job) if self._unclaimed_for_long(job) else job
        if job.error_code == "submit_uncertain":
            return job  # waiting for its webhook, or for its deadline
        if (utcnow() - job.updated_at).total_seconds() < SUBMIT_GRACE_S:
            return job  # a submit is in flight somewhere
        return self._submit_uncertain(job, "The orchestrator stopped while submitting this job.")

    def _poll_loop(self) -> None:
        while not self._stop.is_set():
            self._wake.clear()
            try:
                sleep_s = self._poll_round()
            except Exception:
                log.exception("poll round failed")
                sleep_s = self.settings.poll_interval_s
            self._wake.wait(sleep_s)

    def _poll_round(self) -> float:
        """Refresh every due job; returns how long to sleep before the next round."""
        now = time.monotonic()
        first = self.settings.poll_interval_s
        schedule: dict[str, tuple[float, float]] = {}
        for job in self.store.active():
            if self._stop.is_set():
                break
            due_at, interval = self._schedule.get(job.id, (now + first, first))
            needs_work = job.backend == "local" or job.remote_id is None
            overdue = job.deadline_at is not None and utcnow() >= job.deadline_at
            if needs_work or overdue or now >= due_at:
                try:
                    job = self._refresh(job)
                except Exception:
                    log.exception("refreshing job %s failed", job.id)
                if now >= due_at:
                    interval = min(interval * POLL_BACKOFF, self.settings.poll_max_interval_s)
                    due_at = time.monotonic() + interval
            if not job.finished:
                schedule[job.id] = (due_at, interval)
        self._schedule = schedule
        next_due = min((due for due, _ in schedule.values()), default=now + first)
        return max(0.02, min(first, next_due - time.monotonic()))

    def start(self) -> None:
        """Start the poller thread; it resumes every unfinished job found in the database."""
        if self._thread is not None and self._thread.is_alive():
            return
        self._stop.clear()
        log.info("job poller starting; %d unfinished job(s) to resume", len(self.store.active()))
        self._thread = threading.Thread(target=self._poll_loop, name="job-poller", daemon=True)
        self._thread.start()

    def stop(self, timeout_s: float = 10.0) -> None:
        """Stop the poller and the backends (local jobs not finished are resumed by the next start)."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout_s)
            self._thread = None
        with self._lock:
            backends = list(self._by_spec.values())
        for backend in backends:
            backend.close()
        if self._owns_store:
            self.store.close()

    @property
    def polling(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    # ---- wait, cancel, webhooks ---------------------------------------------------------------

    def wait(self, job_id: str, timeout_s: float, on_progress: Progress | None = None) -> JobView:
        """Block until the job finishes or ``timeout_s`` passes; returns the job as it is then.
        ``on_progress`` is called with the job whenever its status or progress changes."""
        give_up = time.monotonic() + timeout_s
        interval = self.settings.poll_interval_s
        job, seen = self._get(job_id), None
        while True:
            if not self.polling:
                job = self._refresh(job)
            if on_progress and (job.status, job.progress) != seen:
                seen = (job.status, job.progress)
                on_progress(job)
            remaining = give_up - time.monotonic()
            if job.finished or remaining <= 0:
                return job
            step = WAIT_DB_CHECK_S if self.polling else interval
            if not self.polling and job.backend != "local":
                interval = min(interval * POLL_BACKOFF, self.settings.poll_max_interval_s)
            with self._changed:
                self._changed.wait(min(step, remaining))
            job = self._get(job_id)

    def cancel(self, job_id: str) -> JobView:
        """Cancel a queued or running job (and its remote run); a finished job is returned unchanged."""
        job = self._get(job_id)
        if job.finished:
            return job
        if self._mark(job, JobStatus.cancelled, error="Cancelled by request.", error_code="cancelled"):
            self._cancel_job_remotely(job)
        return self._reload(job)

    def handle_webhook(self, job_id: str, token: str, body: dict[str, Any]) -> JobView:
        """Apply a RunPod webhook (the final job JSON). Replays and late deliveries change nothing."""
        from orchestrator.backends.runpod import parse_job

        secret = self.settings.webhook_secret
        if not secret:
            raise WebhookRejected("webhooks_disabled", "Webhooks are disabled: WEBHOOK_SECRET is not set.")
        if not hmac.compare_digest(str(token), webhook_token(secret, job_id)):
            raise WebhookRejected("webhook_rejected", "The webhook token does not match this job.")
        job = self._get(job_id)
        if not isinstance(body, dict) or "status" not in body:
            raise OrchestratorError("invalid_webhook", "The webhook body must be a RunPod job JSON with `status`.")
        if job.finished or job.backend != "runpod":
            return job
        remote_id = body.get("id")
        if job.remote_id is None and remote_id:
            log.info("job %s: webhook names remote job %s; adopting it", job_id, remote_id)
            self.store.update(
                job.id, {"remote_id": str(remote_id), "error": None, "error_code": None}, where={"remote_id": None}
            )
            job = self._get(job_id)
        elif remote_id and remote_id != job.remote_id:
            log.warning(
                "job %s: webhook for remote %s but the job ran as %s; ignored", job_id, remote_id, job.remote_id
            )
            return job
        return self._apply(job, parse_job(body))

    # ---- health -----------------------------------------------------------------------------

    @property
    def handler_settings(self) -> handlers.Settings:
        if self._handler_settings is None:
            self._handler_settings = handlers.Settings()
        return self._handler_settings

    def _store_health(self) -> dict[str, Any]:
        import storage

        uri = self.handler_settings.avatar_store_uri
        storage.open_store(uri, self.handler_settings.storage).exists(STORE_PROBE_KEY)
        return {"ok": True, "uri": uri}

    def health(self) -> dict[str, Any]:
        """Database, object store and each task's backend; ``status`` is ``ok`` or ``degraded``."""
        report: dict[str, Any] = {"db": _checked(lambda: {"ok": self.store.ping(), "url": self.store.safe_url()})}
        report["store"] = _checked(self._store_health)
        backends: dict[str, Any] = {}
        for task in handlers.REQUEST_MODELS:
            backend = self.backend_for_task(task)
            backends.setdefault(backend.spec, {"tasks": [], **_checked(backend.health)})["tasks"].append(task)
        report["backends"] = backends
        healthy = all(part.get("ok") for part in (report["db"], report["store"], *backends.values()))
        return {"status": "ok" if healthy else "degraded", "polling": self.polling, **report}


def _checked(check: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    try:
        return check()
    except Exception as exc:
        return {"ok": False, "error": f"{type(exc).__name__}: {exc}"}


__all__ = ["FINISHED_STATUSES", "JobService", "JobView", "redact", "webhook_token"]
