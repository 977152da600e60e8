"""RunPod serverless worker: a thin adapter from RunPod jobs to ``handlers.dispatch``.

``python runpod_handler.py`` loads the engines of the served tasks (``WORKER_TASKS``) once, then
hands ``handler`` to the RunPod SDK. The SDK's own local modes work too:
``--test_input '{"input": {...}}'`` runs one job (exit code 1 when it fails) and
``--rp_serve_api --rp_api_port 8000`` serves its development API (/run, /runsync, /status/{id}).

A job's ``input`` is the task contract's payload (``handlers/schemas.py``); the result is the task's
result dict, with media in the object store, never in the result. A failed job returns
``{"error": ..., "error_code": ...}`` where ``error`` is the JSON text ``{"error_code", "error"}``:
the SDK forwards only ``error`` to the caller of a failed job (its local runner and API server drop
the rest), so the stable code travels inside it, JSON-encoded as the SDK encodes handler exceptions.

With ``WORKER_STREAM=1`` the worker is a generator handler (``stream_handler``, started with
``return_aggregate_stream``): a ``generate_video`` job with ``stream: true`` yields one small item per
stored segment (``{"index", "uri", "url", "duration_s", "playlist_uri", "timings_ms"}``), delivered by
``/stream/{id}``, then the usual result; every other job yields just its result. ``/status`` then
answers RunPod's aggregate: the list of everything yielded, the result last. A failure is yielded as
the same ``{"error", "error_code"}``, which the SDK turns into a FAILED job.

Live sessions: a worker whose WORKER_TASKS lists ``live_session`` (with the ``realtime`` extra installed)
serves ``concurrent_handler``, an async handler, with a ``concurrency_modifier`` of
``REALTIME_MAX_SESSIONS``: the SDK then runs up to that many jobs at once, each on its own thread, so one
worker holds several sessions sharing its engines and its session loop. One-shot jobs on such a worker
still run one at a time. A session's job lasts as long as the session: the endpoint's executionTimeout
must be longer than ``max_duration_s`` (plus set-up), and its workers need a TURN server in the
sessions' ICE servers (serverless workers accept no inbound connection).
"""

from __future__ import annotations

import asyncio
import importlib
import json
import logging
import os
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from types import ModuleType
from typing import Any

import handlers
import realtime
from errors import error_body
from handlers.health import cpu_name
from handlers.logs import configure_logging
from handlers.runtime import WorkerRuntime
from handlers.schemas import LIVE_SESSION_TASK

log = logging.getLogger(__name__)

# Progress posts between two stages are throttled to this step of the fraction done.
PROGRESS_MIN_STEP = 0.05
# Set by RunPod in deployed workers: where progress and results are posted. Absent in local modes.
RUNPOD_OUTPUT_URL_ENV = "RUNPOD_WEBHOOK_POST_OUTPUT"
SDK_MODULE = "runpod.serverless"
STREAM_ENV = "WORKER_STREAM"  # "1": serve the generator handler (streamed segments)

ProgressSender = Callable[[dict[str, Any], dict[str, Any]], None]
LOCAL_STORE_WARNING = (
    "outputs are written to {uri}: a path inside this worker's container, which no caller can open and which is "
    "lost when the worker stops. Set AVATAR_STORE_URI to an s3:// or gs:// bucket and give the worker its "
    "credentials (images/README.md, 'Buckets')."
)


@dataclass(frozen=True)
class WorkerState:
    """What a worker process keeps between jobs: its runtime and how loading its engines went."""

    runtime: WorkerRuntime
    load_status: dict[str, str]
    send_progress: ProgressSender

    @property
    def load_errors(self) -> dict[str, str]:
        return {task: status for task, status in self.load_status.items() if status != "ok"}


_state: WorkerState | None = None
_state_lock = threading.Lock()


def _cpu_label() -> dict[str, str]:
    """The processor's name as py-cpuinfo's ``brand_raw``, read without spawning a process."""
    return {"brand_raw": cpu_name()}


@contextmanager
def _quick_cpu_probe() -> Iterator[None]:
    """While the RunPod SDK imports, answer py-cpuinfo's ``get_cpu_info`` from /proc/cpuinfo.

    The SDK calls it at import time only to label the processor in ``--rp_debugger`` output, and the
    real call runs py-cpuinfo in a Python subprocess: about 1.1 s of every cold start (measured with
    ``python -X importtime -c "import runpod"``), against 0.3 s for the rest of the SDK.
    """
    import cpuinfo

    original = cpuinfo.get_cpu_info
    cpuinfo.get_cpu_info = _cpu_label
    try:
        yield
    finally:
        cpuinfo.get_cpu_info = original


def import_sdk() -> ModuleType:
    """``runpod.serverless``, imported without py-cpuinfo's subprocess (see ``_quick_cpu_probe``)."""
    if SDK_MODULE in sys.modules:
        return sys.modules[SDK_MODULE]
    with _quick_cpu_probe():
        return importlib.import_module(SDK_MODULE)


def _progress_sender() -> ProgressSender:
    """RunPod's progress_update where RunPod is listening; a debug log in the SDK's local modes."""
    if os.environ.get(RUNPOD_OUTPUT_URL_ENV):
        return import_sdk().progress_update
    return lambda job, update: log.debug("job %s progress %s", job.get("id"), update)


def init_worker() -> WorkerState:
    """Build the process's runtime and load the served tasks' engines once; later calls return the same state."""
    global _state
    with _state_lock:
        if _state is None:
            realtime.serve_live_sessions()  # live_session joins the task table when aiortc is installed
            runtime = WorkerRuntime.from_env()
            started = time.perf_counter()
            status = handlers.load_engines(runtime)
            _state = WorkerState(runtime, status, _progress_sender())
            log.info("engines loaded in %.2f s: %s", time.perf_counter() - started, status)
            if _state.load_errors:
                log.error("worker unhealthy, engines failed to load: %s", _state.load_errors)
            for warning in store_warnings(None, runtime):
                log.warning("NO BUCKET CONFIGURED: %s", warning)
        return _state


def store_warnings(payload: Any, runtime: WorkerRuntime) -> list[str]:
    """A warning when the job's outputs would stay on this worker's disk (a file:// store): RunPod workers are
    containers whose disk nobody else reads, so results need a bucket."""
    requested = payload.get("store") if isinstance(payload, dict) else None
    uri = requested if isinstance(requested, str) else runtime.settings.avatar_store_uri
    return [LOCAL_STORE_WARNING.format(uri=uri)] if uri.lower().startswith("file:") else []


def with_warnings(result: dict[str, Any], payload: Any) -> dict[str, Any]:
    """A successful result with ``warnings`` added when its outputs stayed inside the container."""
    warnings = store_warnings(payload, init_worker().runtime)
    return {**result, "warnings": [*result.get("warnings", []), *warnings]} if warnings else result


class JobProgress:
    """dispatch's progress callback: forwards (stage, fraction) on a new stage, every PROGRESS_MIN_STEP and at 1."""

    def __init__(self, job: dict[str, Any], send: ProgressSender) -> None:
        self._job = job
        self._send = send
        self._stage: str | None = None
        self._fraction = 0.0

    def __call__(self, stage: str, fraction: float) -> None:
        finished = fraction >= 1.0 > self._fraction
        if stage == self._stage and not finished and fraction - self._fraction < PROGRESS_MIN_STEP:
            return
        self._stage, self._fraction = stage, fraction
        self._send(self._job, {"stage": stage, "fraction": round(fraction, 3)})


def failure(code: str, message: str) -> dict[str, Any]:
    """A failed job's result: ``error`` carries the code too (see the module docstring)."""
    return {"error": json.dumps(error_body(code, message)), "error_code": code}


def unhealthy(load_errors: dict[str, str]) -> dict[str, Any]:
    """Every job's answer on a worker whose engines failed to load; RunPod then replaces the worker."""
    details = "; ".join(f"{task}: {error}" for task, error in load_errors.items())
    result = failure("worker_unhealthy", f"This worker failed to load its engines ({details}); it will be replaced.")
    # The SDK pops `refresh_worker` from the result and stops this worker once the job is reported.
    result["refresh_worker"] = True
    return result


def handler(job: dict[str, Any]) -> dict[str, Any]:
    """Run one RunPod job through the task contract; never raises, never returns media bytes."""
    state = init_worker()
    if state.load_errors:
        return unhealthy(state.load_errors)
    started = time.perf_counter()
    result = handlers.dispatch(job.get("input"), state.runtime, JobProgress(job, state.send_progress))
    return _finished(job, result, started)


def stream_handler(job: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """``handler`` as a generator: a streamed job's segment items as they are stored, then its result."""
    state = init_worker()
    if state.load_errors:
        yield unhealthy(state.load_errors)
        return
    started = time.perf_counter()
    progress = JobProgress(job, state.send_progress)
    for item in handlers.dispatch_stream(job.get("input"), state.runtime, progress):
        if "error_code" in item:  # always the last item
            yield _finished(job, item, started)
            return
        yield item if "index" in item else with_warnings(item, job.get("input"))  # segments carry an index
    log.info("job %s streamed in %.0f ms", job.get("id"), (time.perf_counter() - started) * 1000)


_one_shot_jobs: list[asyncio.Semaphore] = []


async def concurrent_handler(job: dict[str, Any]) -> dict[str, Any]:
    """``handler`` on a thread of its own: live sessions side by side, one-shot jobs one at a time."""
    payload = job.get("input")
    if isinstance(payload, dict) and payload.get("task") == LIVE_SESSION_TASK:
        return await asyncio.to_thread(handler, job)
    if not _one_shot_jobs:
        _one_shot_jobs.append(asyncio.Semaphore(1))
    async with _one_shot_jobs[0]:
        return await asyncio.to_thread(handler, job)


def _finished(job: dict[str, Any], result: dict[str, Any], started: float) -> dict[str, Any]:
    """Log the job's outcome; a failure becomes the SDK's FAILED answer with the code inside ``error``."""
    payload = job.get("input")
    task = payload.get("task") if isinstance(payload, dict) else None
    elapsed_ms = (time.perf_counter() - started) * 1000
    if "error_code" in result:
        log.info("job %s (%s) failed in %.0f ms: %s", job.get("id"), task, elapsed_ms, result["error_code"])
        return failure(result["error_code"], result["error"])
    log.info("job %s (%s) done in %.0f ms", job.get("id"), task, elapsed_ms)
    return with_warnings(result, payload)


def sdk_config(served_tasks: Sequence[str] = ()) -> dict[str, Any]:
    """What ``serverless.start`` gets: the concurrent handler when the worker serves live sessions, else the
    plain handler, or the generator one when WORKER_STREAM=1."""
    if LIVE_SESSION_TASK in served_tasks:
        if _streaming():
            log.warning("WORKER_STREAM is ignored on a worker serving live sessions")
        return {"handler": concurrent_handler, "concurrency_modifier": concurrency_modifier}
    if _streaming():
        return {"handler": stream_handler, "return_aggregate_stream": True}
    return {"handler": handler}


def _streaming() -> bool:
    return os.environ.get(STREAM_ENV, "0").strip().lower() in ("1", "true", "yes")


def concurrency_modifier(current: int) -> int:
    """RunPod's ``concurrency_modifier``: the jobs this worker takes at once, ``REALTIME_MAX_SESSIONS`` when it
    serves live sessions, else 1 (also what the RunPod emulator reads from this module)."""
    if LIVE_SESSION_TASK not in init_worker().runtime.settings.served_tasks:
        return 1
    return live_sessions_per_worker()


def live_sessions_per_worker() -> int:
    """REALTIME_MAX_SESSIONS of this process's session host (1 without the realtime extra)."""
    if not realtime.available():
        return 1
    from realtime.manager import process_host

    return process_host().limits.max_sessions


def main() -> None:
    serverless = import_sdk()
    if {"-h", "--help"} & set(sys.argv[1:]):
        serverless.parser.print_help()  # the SDK's runtime arguments, answered before loading engines
        return
    # force: the SDK configures the root logger itself when imported (runpod.serverless.utils.rp_upload).
    configure_logging(os.environ.get("LOG_LEVEL", "INFO").upper(), force=True)
    state = init_worker()
    serverless.start(sdk_config(state.runtime.settings.served_tasks))


if __name__ == "__main__":
    main()
