"""A local emulator of RunPod's serverless REST API, running our real ``handlers.dispatch`` on worker threads.

Every documented operation under ``/v2/{endpoint_id}/``: POST ``run``, ``runsync`` (``?wait=`` ms), GET (or POST)
``status/{job_id}``, GET ``stream/{job_id}``, POST ``cancel/{job_id}``, ``retry/{job_id}`` (FAILED or TIMED_OUT only,
same id), ``purge-queue``, GET ``health``. The key (``api_key``, when set) is checked as RunPod documents it
(``authorization: <key>``) or as ``Bearer <key>``. RunPod's job states. ``policy.executionTimeout`` stops a running
job when it passes (the task is cancelled at its next stage and writes nothing; TIMED_OUT); ``policy.ttl`` drops a job
(queued jobs never run; status 404); a result is kept 30 min after ``run``, 1 min after ``runsync``. A webhook POST of
the final job JSON (retried twice). Each worker runs ``concurrency`` jobs at once (its module's
``concurrency_modifier``), each as long as its executionTimeout allows (live sessions too).

Jobs run through a RunPod handler (``job -> result``, or a generator; a plain one's output is its stream's one
item), answered as the worker SDK does (``emulator_jobs``); by default ``handlers.dispatch`` (progress as the
``output``, a failure's ``error`` the JSON ``{"error_code", "error"}``). Bodies are typed and limited as RunPod's,
webhooks go to public addresses (``emulator_requests``). GET ``/emulator/stats``; ``Faults`` for tests.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from typing import Any

import httpx
from fastapi import Body, Depends, FastAPI, HTTPException, Request
from fastapi.responses import JSONResponse

import handlers
from handlers.errors import TaskCancelled
from orchestrator.api.body_limit import BodyLimit
from orchestrator.devtools.background_server import BackgroundServer
from orchestrator.devtools.emulator_jobs import (
    FINAL_STATES,
    RETRYABLE_STATES,
    EmulatedJob,
    Faults,
    JobHandler,
    declared_concurrency,
    health_report,
    load_handler,
    run_handler,
    worker_failure,
)
from orchestrator.devtools.emulator_requests import (
    MAX_RUN_BODY_BYTES,
    RequestRefused,
    RunBody,
    WebhookRule,
    parse_run_body,
)

log = logging.getLogger(__name__)

__all__ = ["BackgroundServer", "Faults", "RunpodEmulator", "create_emulator_app", "load_handler", "worker_failure"]

RUN_RETENTION_S = 1800.0  # a finished /run job's result is kept 30 min, a /runsync one's 1 min
RUNSYNC_RETENTION_S = 60.0
RUNSYNC_WAIT_MS = 90_000
WEBHOOK_RETRIES = 2
CRASH_MESSAGE = "Worker exited unexpectedly while running the job (emulated crash)."


class RunpodEmulator:
    """The job queue, workers and bookkeeping behind the emulated API."""

    def __init__(
        self,
        endpoint_ids: list[str],
        workers: int = 2,
        runtime: handlers.WorkerRuntime | None = None,
        *,
        api_key: str | None = None,
        faults: Faults | None = None,
        webhook_retry_delay_s: float = 1.0,
        handler: JobHandler | None = None,
        return_aggregate_stream: bool = False,
        webhooks: WebhookRule | None = None,
        concurrency: int = 1,
    ) -> None:
        self.endpoint_ids = set(endpoint_ids)
        self.webhooks = webhooks or WebhookRule()  # public addresses only, unless allowed
        self.workers = workers
        self.concurrency = concurrency  # jobs one worker runs at once (RunPod: the handler's concurrency_modifier)
        self.runtime = runtime  # our handlers' runtime; built from the environment at start when None
        self.api_key = api_key
        self.faults = faults or Faults()
        self.webhook_retry_delay_s = webhook_retry_delay_s
        self.handler = handler
        self.return_aggregate_stream = return_aggregate_stream
        self.jobs: dict[str, EmulatedJob] = {}
        self.counts: Counter[str] = Counter()
        self._queue: queue.Queue[EmulatedJob] = queue.Queue()
        self._lock = threading.RLock()
        self._stopping = threading.Event()
        self._threads: list[threading.Thread] = []
        self._webhooks = ThreadPoolExecutor(max_workers=2, thread_name_prefix="emulator-webhook")
        # one client for every delivery: a new one per POST costs ~20 ms of CPU (its SSL context)
        self._webhook_client = httpx.Client(timeout=10.0)

    def start(self) -> None:
        if self._threads:
            return
        self.runtime = self.runtime or handlers.worker_runtime()
        self._stopping.clear()
        for n in range(self.workers * self.concurrency):
            thread = threading.Thread(
                target=self._work, args=(f"emulated-worker-{n // self.concurrency}",), daemon=True
            )
            thread.start()
            self._threads.append(thread)

    def stop(self) -> None:
        self._stopping.set()
        with self._lock:
            for job in self.jobs.values():
                job.stop.set()
        for thread in self._threads:
            thread.join(5)
        self._threads.clear()
        self._webhooks.shutdown(wait=False, cancel_futures=True)
        self._webhook_client.close()

    def take(self, fault: str) -> bool:
        """Use up one count of a counted fault; True when it applies now."""
        with self._lock:
            left = getattr(self.faults, fault)
            if left <= 0:
                return False
            setattr(self.faults, fault, left - 1)
            return True

    # ---- API operations ----------------------------------------------------------------------

    def submit(self, endpoint_id: str, body: RunBody, retention_s: float = RUN_RETENTION_S) -> EmulatedJob:
        job = EmulatedJob(
            id=f"{uuid.uuid4()}-e1",
            endpoint_id=endpoint_id,
            input=body.input,
            webhook=body.webhook,
            execution_timeout_s=body.policy.executionTimeout / 1000,
            ttl_s=body.policy.ttl / 1000,
            retention_s=retention_s,
        )
        with self._lock:
            self.jobs[job.id] = job
            self.counts["submitted"] += 1
        self._queue.put(job)
        return job

    def get(self, endpoint_id: str, job_id: str) -> EmulatedJob | None:
        with self._lock:
            job = self.jobs.get(job_id)
            if job is None or job.endpoint_id != endpoint_id:
                return None
            return self._expire(job)

    def _expire(self, job: EmulatedJob) -> EmulatedJob | None:
        """Apply the job's TTL and result retention (gone, stopped if running) and execution timeout (TIMED_OUT)."""
        now = time.monotonic()
        if now - job.created > job.ttl_s or (job.finished and now - job.finished > job.retention_s):
            job.stop.set()
            del self.jobs[job.id]
            self.counts["expired"] += 1
            return None
        if job.status == "IN_PROGRESS" and job.started and now - job.started > job.execution_timeout_s:
            self._finish(job, "TIMED_OUT")
        return job

    def cancel(self, endpoint_id: str, job_id: str) -> EmulatedJob | None:
        with self._lock:
            job = self.get(endpoint_id, job_id)
            if job is not None and job.status not in FINAL_STATES:
                self._finish(job, "CANCELLED")
            return job

    def retry(self, endpoint_id: str, job_id: str) -> EmulatedJob | None:
        """Requeue a FAILED or TIMED_OUT job under its id; ValueError for any other state."""
        with self._lock:
            job = self.get(endpoint_id, job_id)
            if job is None:
                return None
            if job.status not in RETRYABLE_STATES:
                raise ValueError(f"Only FAILED or TIMED_OUT jobs can be retried; this one is {job.status}.")
            job.requeue()
            self.counts["retried"] += 1
        self._queue.put(job)
        return job

    def purge_queue(self, endpoint_id: str) -> int:
        """Drop the endpoint's queued jobs (running ones carry on); how many were dropped."""
        with self._lock:
            queued = [j for j in self.jobs.values() if j.endpoint_id == endpoint_id and j.status == "IN_QUEUE"]
            for job in queued:
                job.stop.set()
                del self.jobs[job.id]
            self.counts["purged"] += len(queued)
        return len(queued)

    def health(self, endpoint_id: str) -> dict[str, Any]:
        with self._lock:
            jobs = [j for j in list(self.jobs.values()) if j.endpoint_id == endpoint_id and self._expire(j)]
            return health_report(jobs, self.workers, self.counts["retried"])

    def stats(self) -> dict[str, int]:
        with self._lock:
            return dict(self.counts)

    # ---- workers -----------------------------------------------------------------------------

    def _work(self, worker_id: str) -> None:
        if self.handler is None:  # as a RunPod worker does: engines load before the first job is taken
            handlers.load_engines(self.runtime)
        while not self._stopping.is_set():
            if self.faults.hold_queue:
                self._stopping.wait(0.02)
                continue
            try:
                job = self._queue.get(timeout=0.1)
            except queue.Empty:
                continue
            if self.faults.hold_queue:  # set while this worker was waiting: leave the job queued
                self._queue.put(job)
                continue
            with self._lock:
                # purged, cancelled or past its TTL while queued: never runs
                if self.jobs.get(job.id) is not job or job.status != "IN_QUEUE" or self._expire(job) is None:
                    continue
                job.status, job.started, job.worker_id = "IN_PROGRESS", time.monotonic(), worker_id
                self.counts["executed"] += 1
            deadline = threading.Timer(job.execution_timeout_s, self._time_out, (job, job.started))
            deadline.daemon = True
            deadline.start()
            try:
                self._run(job)
            except Exception:
                log.exception("emulated worker failed on %s", job.id)
                with self._lock:
                    self._finish(job, "FAILED", error="Emulated worker error; see the emulator logs.")
            finally:
                deadline.cancel()

    def _time_out(self, job: EmulatedJob, started: float) -> None:
        """The execution timeout, when it passes: TIMED_OUT now; the task stops at its next stage."""
        with self._lock:
            if job.status == "IN_PROGRESS" and job.started == started and self.jobs.get(job.id) is job:
                self._finish(job, "TIMED_OUT")

    def _run(self, job: EmulatedJob) -> None:
        crash, lose = self.take("crash_jobs"), self.take("lose_jobs")
        if self.faults.job_delay_s and job.stop.wait(self.faults.job_delay_s):
            return
        if crash or lose:
            job.stop.wait(0.05)  # part-way through the job
            with self._lock:
                if lose:
                    self.jobs.pop(job.id, None)
                    self.counts["lost"] += 1
                else:
                    self._finish(job, "FAILED", error=CRASH_MESSAGE)
            return
        stop = job.stop  # this run's: a retry gives the job a new one
        outcome = run_handler(
            self.handler or self._worker_handler(job),
            {"id": job.id, "input": job.input},
            on_item=job.stream.append,
            stopped=stop.is_set,
            aggregate_stream=self.return_aggregate_stream,
        )
        with self._lock:
            if outcome is None or stop.is_set() or self.jobs.get(job.id) is not job:
                return  # cancelled, timed out or expired meanwhile: the result is dropped
            if time.monotonic() - (job.started or 0) > job.execution_timeout_s:
                self._finish(job, "TIMED_OUT")
                return
            if outcome.status == "COMPLETED" and not outcome.streamed:
                job.stream.append(outcome.output)
            self._finish(job, outcome.status, output=outcome.output, error=outcome.error)

    def _worker_handler(self, job: EmulatedJob) -> JobHandler:
        """Our RunPod worker's handler for this job: dispatch, progress shown as output, stop on cancel."""
        stop = job.stop

        def progress(stage: str, fraction: float) -> None:
            if stop.is_set():
                raise TaskCancelled(f"job {job.id} was stopped")
            job.output = {"stage": stage, "fraction": round(float(fraction), 4)}

        def run(request: dict[str, Any]) -> dict[str, Any]:
            result = handlers.dispatch(request["input"], self.runtime, progress)
            if "error_code" in result:
                return worker_failure(result["error_code"], result["error"])
            return result

        return run

    def _finish(self, job: EmulatedJob, status: str, *, output: Any = None, error: str | None = None) -> None:
        """Move a job to a final state (caller holds the lock) and send its webhook."""
        if job.status in FINAL_STATES:
            return
        job.status, job.finished = status, time.monotonic()
        job.output = output
        job.error = error
        job.stop.set()
        job.done.set()
        self.counts[status.lower()] += 1
        if job.webhook and not self._stopping.is_set():
            self._webhooks.submit(self._deliver, job.webhook, job.to_json())

    def _deliver(self, url: str, body: dict[str, Any]) -> None:
        for attempt in range(1 + WEBHOOK_RETRIES):
            try:
                if self._webhook_client.post(url, json=body).status_code == 200:
                    with self._lock:
                        self.counts["webhooks_delivered"] += 1
                    return
            except httpx.HTTPError as exc:
                log.info("webhook to %s failed (try %d): %s", url.split("?")[0], attempt + 1, exc)
            if self._stopping.wait(self.webhook_retry_delay_s):
                break
        with self._lock:
            self.counts["webhooks_failed"] += 1


def create_emulator_app(
    endpoint_ids: list[str],
    workers: int = 2,
    runtime: handlers.WorkerRuntime | None = None,
    *,
    api_key: str | None = None,
    faults: Faults | None = None,
    handler: JobHandler | str | None = None,
    return_aggregate_stream: bool = False,
    allow_private_webhooks: bool = False,
    webhook_prefixes: tuple[str, ...] = (),
    concurrency: int | None = None,
) -> FastAPI:
    """The emulated RunPod API as a FastAPI app; ``app.state.emulator`` is its ``RunpodEmulator``. Webhooks go
    to public addresses only unless ``allow_private_webhooks`` or under one of ``webhook_prefixes``. ``concurrency``
    (jobs per worker) defaults to what a ``module:function`` handler's module declares (``concurrency_modifier``)."""
    emulator = RunpodEmulator(
        endpoint_ids,
        workers,
        runtime,
        api_key=api_key,
        faults=faults,
        handler=load_handler(handler) if isinstance(handler, str) else handler,
        return_aggregate_stream=return_aggregate_stream,
        webhooks=WebhookRule.of(allow_private_webhooks, webhook_prefixes),
        concurrency=concurrency or (declared_concurrency(handler) if isinstance(handler, str) else 1),
    )

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        emulator.start()
        yield
        emulator.stop()

    app = FastAPI(title="RunPod API emulator", lifespan=lifespan)
    app.state.emulator = emulator
    app.add_middleware(BodyLimit, limit_for=lambda _path: MAX_RUN_BODY_BYTES)

    @app.middleware("http")
    async def inject_request_faults(request: Request, call_next: Any) -> Any:
        if request.url.path.startswith("/v2/") and emulator.take("fail_requests"):
            return JSONResponse({"error": "injected fault"}, status_code=emulator.faults.fail_status)
        return await call_next(request)

    def authorized(request: Request) -> None:
        key = emulator.api_key
        if key and request.headers.get("authorization") not in (key, f"Bearer {key}"):
            raise HTTPException(401, "Unauthorized: send the API key as `Authorization: <key>` (or `Bearer <key>`).")

    def endpoint(endpoint_id: str, request: Request) -> str:
        authorized(request)
        if endpoint_id not in emulator.endpoint_ids:
            raise HTTPException(404, f"Endpoint {endpoint_id!r} not found.")
        return endpoint_id

    _add_routes(app, emulator, endpoint)

    @app.get("/emulator/stats", dependencies=[Depends(authorized)])
    def stats() -> dict[str, int]:
        return emulator.stats()

    return app


def _job_or_404(job: EmulatedJob | None) -> EmulatedJob:
    if job is None:
        raise HTTPException(404, "request does not exist")
    return job


def _add_routes(app: FastAPI, emulator: RunpodEmulator, endpoint: Any) -> None:
    def submit(endpoint_id: str, body: Any, retention_s: float = RUN_RETENTION_S) -> EmulatedJob:
        try:
            run = parse_run_body(body, emulator.webhooks)
        except RequestRefused as exc:
            raise HTTPException(400, str(exc)) from None
        return emulator.submit(endpoint_id, run, retention_s)

    @app.post("/v2/{endpoint_id}/run")
    def run(endpoint_id: str = Depends(endpoint), body: Any = Body(...)) -> Any:
        job = submit(endpoint_id, body)
        if emulator.take("accept_then_fail"):
            return JSONResponse({"error": "bad gateway (injected after queueing)"}, status_code=502)
        return {"id": job.id, "status": job.status}

    @app.post("/v2/{endpoint_id}/runsync")
    def runsync(endpoint_id: str = Depends(endpoint), body: Any = Body(...), wait: int = RUNSYNC_WAIT_MS):
        job = submit(endpoint_id, body, RUNSYNC_RETENTION_S)
        job.done.wait(min(max(wait, 1000), 300_000) / 1000)
        return job.to_json()

    @app.api_route("/v2/{endpoint_id}/status/{job_id}", methods=["GET", "POST"])
    def status(job_id: str, endpoint_id: str = Depends(endpoint)) -> dict[str, Any]:
        return _job_or_404(emulator.get(endpoint_id, job_id)).to_json()

    @app.get("/v2/{endpoint_id}/stream/{job_id}")
    def stream(job_id: str, endpoint_id: str = Depends(endpoint)) -> dict[str, Any]:
        with emulator._lock:
            return _job_or_404(emulator.get(endpoint_id, job_id)).take_stream()

    @app.post("/v2/{endpoint_id}/cancel/{job_id}")
    def cancel(job_id: str, endpoint_id: str = Depends(endpoint)) -> dict[str, Any]:
        job = _job_or_404(emulator.cancel(endpoint_id, job_id))
        return {"id": job.id, "status": job.status}

    @app.post("/v2/{endpoint_id}/retry/{job_id}")
    def retry(job_id: str, endpoint_id: str = Depends(endpoint)) -> Any:
        try:
            job = _job_or_404(emulator.retry(endpoint_id, job_id))
        except ValueError as exc:
            return JSONResponse({"error": str(exc)}, status_code=400)
        return {"id": job.id, "status": job.status}

    @app.post("/v2/{endpoint_id}/purge-queue")
    def purge_queue(endpoint_id: str = Depends(endpoint)) -> dict[str, Any]:
        return {"removed": emulator.purge_queue(endpoint_id), "status": "completed"}

    @app.get("/v2/{endpoint_id}/health")
    def health(endpoint_id: str = Depends(endpoint)) -> dict[str, Any]:
        return emulator.health(endpoint_id)
