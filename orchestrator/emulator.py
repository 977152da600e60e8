"""A local emulator of RunPod's serverless REST API, running our real ``handlers.dispatch`` on worker threads.

Routes as RunPod: POST ``/v2/{endpoint_id}/run`` and ``/runsync``, GET (or POST) ``/status/{job_id}``,
POST ``/cancel/{job_id}``, GET ``/health``; bearer-key check when ``api_key`` is set; job states
IN_QUEUE, IN_PROGRESS, COMPLETED, FAILED, CANCELLED, TIMED_OUT; the policy's ``executionTimeout`` and
``ttl`` (past it the job is gone: 404); a webhook POST of the final job JSON (retried twice). Progress
reported by a task shows as the job's ``output`` while IN_PROGRESS, as with the SDK's progress_update.
Extra route: GET ``/emulator/stats`` (jobs submitted, executed, finished, webhooks delivered).

``Faults`` injects failures for tests; every fault is off by default and set explicitly.
"""

from __future__ import annotations

import logging
import queue
import socket
import threading
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import httpx
from fastapi import Body, Depends, FastAPI, HTTPException, Request
from fastapi.responses import JSONResponse

import handlers

log = logging.getLogger(__name__)

FINAL_STATES = frozenset({"COMPLETED", "FAILED", "CANCELLED", "TIMED_OUT"})
DEFAULT_EXECUTION_TIMEOUT_MS = 600_000
DEFAULT_TTL_MS = 86_400_000
RUNSYNC_WAIT_MS = 90_000
WEBHOOK_RETRIES = 2
CRASH_MESSAGE = "Worker exited unexpectedly while running the job (emulated crash)."


@dataclass
class Faults:
    """Failures to inject; counters are used up one request or job at a time."""

    fail_requests: int = 0  # answer the next N /v2 requests with `fail_status`, doing nothing
    fail_status: int = 500
    accept_then_fail: int = 0  # the next N /run calls queue the job but answer 502 (an ambiguous submit)
    crash_jobs: int = 0  # the next N jobs: the worker dies mid-job (FAILED)
    lose_jobs: int = 0  # the next N jobs vanish mid-job (status 404, as RunPod past the TTL)
    job_delay_s: float = 0.0  # every job spends this long IN_PROGRESS before its task runs
    hold_queue: bool = False  # workers take no jobs: everything stays IN_QUEUE


@dataclass
class EmulatedJob:
    id: str
    endpoint_id: str
    input: dict[str, Any]
    webhook: str | None
    execution_timeout_s: float
    ttl_s: float
    status: str = "IN_QUEUE"
    created: float = field(default_factory=time.monotonic)
    started: float | None = None
    finished: float | None = None
    output: Any = None
    error: str | None = None
    worker_id: str | None = None
    stop: threading.Event = field(default_factory=threading.Event)
    done: threading.Event = field(default_factory=threading.Event)

    def to_json(self) -> dict[str, Any]:
        now = time.monotonic()
        body: dict[str, Any] = {"id": self.id, "status": self.status}
        body["delayTime"] = int(((self.started or now) - self.created) * 1000)
        if self.started is not None:
            body["executionTime"] = int(((self.finished or now) - self.started) * 1000)
        if self.output is not None:
            body["output"] = self.output
        if self.error is not None:
            body["error"] = self.error
        if self.worker_id:
            body["workerId"] = self.worker_id
        return body


class _Aborted(Exception):
    """Raised from a task's progress callback once its job was cancelled or timed out."""


class RunpodEmulator:
    """The job queue, workers and bookkeeping behind the emulated API."""

    def __init__(
        self,
        endpoint_ids: list[str],
        workers: int = 2,
        settings: handlers.Settings | None = None,
        *,
        api_key: str | None = None,
        faults: Faults | None = None,
        webhook_retry_delay_s: float = 1.0,
    ) -> None:
        self.endpoint_ids = set(endpoint_ids)
        self.workers = workers
        self.settings = settings
        self.api_key = api_key
        self.faults = faults or Faults()
        self.webhook_retry_delay_s = webhook_retry_delay_s
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
        self.settings = self.settings or handlers.Settings()
        self._stopping.clear()
        for n in range(self.workers):
            thread = threading.Thread(target=self._work, args=(f"emulated-worker-{n}",), daemon=True)
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

    def submit(self, endpoint_id: str, body: dict[str, Any]) -> EmulatedJob:
        policy = body.get("policy") or {}
        job = EmulatedJob(
            id=f"{uuid.uuid4()}-e1",
            endpoint_id=endpoint_id,
            input=body["input"],
            webhook=body.get("webhook"),
            execution_timeout_s=float(policy.get("executionTimeout", DEFAULT_EXECUTION_TIMEOUT_MS)) / 1000,
            ttl_s=float(policy.get("ttl", DEFAULT_TTL_MS)) / 1000,
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
        """Apply the job's TTL (gone) and execution timeout (TIMED_OUT) lazily, as they are read."""
        now = time.monotonic()
        if now - job.created > job.ttl_s:
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

    def health(self, endpoint_id: str) -> dict[str, Any]:
        with self._lock:
            jobs = [j for j in list(self.jobs.values()) if j.endpoint_id == endpoint_id and self._expire(j)]
        states = Counter(j.status for j in jobs)
        running = states["IN_PROGRESS"]
        return {
            "jobs": {
                "completed": states["COMPLETED"],
                "failed": states["FAILED"] + states["TIMED_OUT"],
                "inProgress": running,
                "inQueue": states["IN_QUEUE"],
                "retried": 0,
            },
            "workers": {"idle": max(0, self.workers - running), "running": running, "ready": self.workers},
        }

    def stats(self) -> dict[str, int]:
        with self._lock:
            return dict(self.counts)

    # ---- workers -----------------------------------------------------------------------------

    def _work(self, worker_id: str) -> None:
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
                if self.jobs.get(job.id) is not job or job.status != "IN_QUEUE":
                    continue
                job.status, job.started, job.worker_id = "IN_PROGRESS", time.monotonic(), worker_id
                self.counts["executed"] += 1
            try:
                self._run(job)
            except Exception:
                log.exception("emulated worker failed on %s", job.id)
                with self._lock:
                    self._finish(job, "FAILED", error="Emulated worker error; see the emulator logs.")

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

        def progress(stage: str, fraction: float) -> None:
            if job.stop.is_set():
                raise _Aborted(job.id)
            job.output = {"stage": stage, "fraction": round(float(fraction), 4)}

        result = handlers.dispatch(job.input, self.settings, progress)
        with self._lock:
            if job.status != "IN_PROGRESS" or self.jobs.get(job.id) is not job:
                return  # cancelled, timed out or expired meanwhile: the result is dropped
            if time.monotonic() - (job.started or 0) > job.execution_timeout_s:
                self._finish(job, "TIMED_OUT")
            elif isinstance(result, dict) and "error" in result:
                # as the SDK does: `error` moves out of the output, the rest (error_code) stays in it
                rest = {k: v for k, v in result.items() if k != "error"}
                self._finish(job, "FAILED", output=rest or None, error=str(result["error"]))
            else:
                self._finish(job, "COMPLETED", output=result)

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
    settings: handlers.Settings | None = None,
    *,
    api_key: str | None = None,
    faults: Faults | None = None,
) -> FastAPI:
    """The emulated RunPod API as a FastAPI app; ``app.state.emulator`` is its ``RunpodEmulator``."""
    emulator = RunpodEmulator(endpoint_ids, workers, settings, api_key=api_key, faults=faults)

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        emulator.start()
        yield
        emulator.stop()

    app = FastAPI(title="RunPod API emulator", lifespan=lifespan)
    app.state.emulator = emulator

    @app.middleware("http")
    async def inject_request_faults(request: Request, call_next: Any) -> Any:
        if request.url.path.startswith("/v2/") and emulator.take("fail_requests"):
            return JSONResponse({"error": "injected fault"}, status_code=emulator.faults.fail_status)
        return await call_next(request)

    def endpoint(endpoint_id: str, request: Request) -> str:
        if emulator.api_key and request.headers.get("authorization") != f"Bearer {emulator.api_key}":
            raise HTTPException(401, "Unauthorized: a valid `Authorization: Bearer <api key>` header is required.")
        if endpoint_id not in emulator.endpoint_ids:
            raise HTTPException(404, f"Endpoint {endpoint_id!r} not found.")
        return endpoint_id

    _add_routes(app, emulator, endpoint)
    return app


def _job_or_404(job: EmulatedJob | None) -> dict[str, Any]:
    if job is None:
        raise HTTPException(404, "request does not exist")
    return job.to_json()


def _add_routes(app: FastAPI, emulator: RunpodEmulator, endpoint: Any) -> None:
    def submit(endpoint_id: str, body: dict[str, Any]) -> EmulatedJob:
        if not isinstance(body.get("input"), dict):
            raise HTTPException(400, "The body needs an `input` object.")
        return emulator.submit(endpoint_id, body)

    @app.post("/v2/{endpoint_id}/run")
    def run(endpoint_id: str = Depends(endpoint), body: dict[str, Any] = Body(...)) -> Any:
        job = submit(endpoint_id, body)
        if emulator.take("accept_then_fail"):
            return JSONResponse({"error": "bad gateway (injected after queueing)"}, status_code=502)
        return {"id": job.id, "status": job.status}

    @app.post("/v2/{endpoint_id}/runsync")
    def runsync(endpoint_id: str = Depends(endpoint), body: dict[str, Any] = Body(...), wait: int = RUNSYNC_WAIT_MS):
        job = submit(endpoint_id, body)
        job.done.wait(min(max(wait, 1000), 300_000) / 1000)
        return job.to_json()

    @app.api_route("/v2/{endpoint_id}/status/{job_id}", methods=["GET", "POST"])
    def status(job_id: str, endpoint_id: str = Depends(endpoint)) -> dict[str, Any]:
        return _job_or_404(emulator.get(endpoint_id, job_id))

    @app.post("/v2/{endpoint_id}/cancel/{job_id}")
    def cancel(job_id: str, endpoint_id: str = Depends(endpoint)) -> dict[str, Any]:
        job = _job_or_404(emulator.cancel(endpoint_id, job_id))
        return {"id": job["id"], "status": job["status"]}

    @app.get("/v2/{endpoint_id}/health")
    def health(endpoint_id: str = Depends(endpoint)) -> dict[str, Any]:
        return emulator.health(endpoint_id)

    @app.get("/emulator/stats")
    def stats() -> dict[str, int]:
        return emulator.stats()


class BackgroundServer:
    """Serve an ASGI app with uvicorn on a thread, on a port chosen by the OS (tests, benchmarks)."""

    def __init__(self, app: Any, host: str = "127.0.0.1", port: int = 0) -> None:
        import uvicorn

        self._socket = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._socket.bind((host, port))
        self.host, self.port = self._socket.getsockname()[:2]
        self._server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on"))
        self._thread = threading.Thread(target=self._server.run, kwargs={"sockets": [self._socket]}, daemon=True)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self, timeout_s: float = 10.0) -> BackgroundServer:
        self._thread.start()
        give_up = time.monotonic() + timeout_s
        while not self._server.started:
            if time.monotonic() > give_up or not self._thread.is_alive():
                raise RuntimeError(f"uvicorn did not start on {self.url}")
            time.sleep(0.01)
        return self

    def stop(self) -> None:
        self._server.should_exit = True
        self._thread.join(10)
        self._socket.close()

    def __enter__(self) -> BackgroundServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
