"""The RunPod emulator's jobs and how a handler's result becomes a job's answer, as RunPod's worker SDK does it.

``run_handler`` follows ``runpod.serverless.modules.rp_job`` (runpod-python 1.12): a plain handler's dict
loses ``error`` (the job is FAILED with it) and ``refresh_worker``; an exception becomes the SDK's JSON of
``error_type`` / ``error_message`` / ``error_traceback``; a generator (sync or async) streams each item as
``{"output": item}`` and its job's final ``output`` is the list of items with ``return_aggregate_stream``,
else ``[]``; a streamed ``{"error": ...}`` item ends the job FAILED. A FAILED job carries ``error`` and no
``output``, as RunPod's status answers do.
"""

from __future__ import annotations

import asyncio
import importlib
import inspect
import json
import threading
import time
import traceback
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from errors import error_body

FINAL_STATES = frozenset({"COMPLETED", "FAILED", "CANCELLED", "TIMED_OUT"})
# The states RunPod's retry accepts.
RETRYABLE_STATES = frozenset({"FAILED", "TIMED_OUT"})

JobHandler = Callable[[dict[str, Any]], Any]


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
    retention_s: float  # how long the result stays readable once the job finished
    status: str = "IN_QUEUE"
    created: float = field(default_factory=time.monotonic)
    started: float | None = None
    finished: float | None = None
    output: Any = None
    error: str | None = None
    worker_id: str | None = None
    stream: list[Any] = field(default_factory=list)  # items a generator handler yielded
    streamed: int = 0  # how many of them GET /stream has handed out
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

    def take_stream(self) -> dict[str, Any]:
        """GET /stream's answer: the items not handed out yet (each is handed out once)."""
        chunks, self.streamed = self.stream[self.streamed :], len(self.stream)
        return {"id": self.id, "status": self.status, "stream": [{"output": chunk} for chunk in chunks]}

    def requeue(self) -> None:
        """POST /retry: the same id back in the queue with its original input, previous output gone."""
        self.status, self.created = "IN_QUEUE", time.monotonic()
        self.started = self.finished = self.output = self.error = self.worker_id = None
        self.stream, self.streamed = [], 0
        self.stop, self.done = threading.Event(), threading.Event()


@dataclass(frozen=True)
class Outcome:
    """A handler's answer as RunPod reports it: a final status with its output or error."""

    status: str
    output: Any = None
    error: str | None = None
    streamed: bool = False  # a generator handler's outcome: its items went out one by one


def sdk_exception_error(exc: BaseException) -> str:
    """The worker SDK's ``error`` for a handler that raised (rp_job.run_job)."""
    info = {
        "error_type": str(type(exc)),
        "error_message": str(exc),
        "error_traceback": "".join(traceback.format_exception(exc)),
        "hostname": "emulator",
        "worker_id": "emulator",
    }
    return json.dumps(info)


def _plain_outcome(result: Any) -> Outcome:
    if not isinstance(result, dict):
        return Outcome("COMPLETED", output=result)
    rest = {k: v for k, v in result.items() if k not in ("error", "refresh_worker")}
    if result.get("error"):
        return Outcome("FAILED", error=str(result["error"]))
    return Outcome("COMPLETED", output=rest or None)


def run_handler(
    handler: JobHandler,
    job: dict[str, Any],
    *,
    on_item: Callable[[Any], None],
    stopped: Callable[[], bool],
    aggregate_stream: bool = False,
) -> Outcome | None:
    """Run one job through ``handler``; None when ``stopped()`` turned true while it streamed."""
    try:
        answer = handler(job)
        if inspect.isasyncgen(answer):
            answer = _drain_async(answer)
        if inspect.isgenerator(answer):
            return _run_generator(answer, on_item, stopped, aggregate_stream)
        if inspect.isawaitable(answer):
            answer = asyncio.run(_awaited(answer))
        return _plain_outcome(answer)
    except Exception as exc:
        return Outcome("FAILED", error=sdk_exception_error(exc))


def _run_generator(
    items: Any, on_item: Callable[[Any], None], stopped: Callable[[], bool], aggregate: bool
) -> Outcome | None:
    kept: list[Any] = []
    try:
        for item in items:
            if stopped():
                return None
            if isinstance(item, dict) and item.get("error"):
                return Outcome("FAILED", error=str(item["error"]))
            on_item(item)
            if aggregate:
                kept.append(item)
    except Exception as exc:  # the SDK streams a failing generator's error as its last item
        return Outcome("FAILED", error=f"handler: {exc} \ntraceback: {traceback.format_exc()}")
    finally:
        items.close()  # a stopped job's generator runs its cleanup now
    return Outcome("COMPLETED", output=kept, streamed=True)


async def _awaited(awaitable: Any) -> Any:
    return await awaitable


def _drain_async(agen: Any) -> Any:
    """An async generator as a plain generator, one event loop for all of its items."""
    loop = asyncio.new_event_loop()
    try:
        while True:
            try:
                yield loop.run_until_complete(agen.__anext__())
            except StopAsyncIteration:
                return
    finally:
        loop.run_until_complete(agen.aclose())
        loop.close()


def worker_failure(code: str, message: str) -> dict[str, Any]:
    """A failed task as our RunPod worker returns it: ``error`` is the JSON ``{"error_code", "error"}``."""
    return {"error": json.dumps(error_body(code, message)), "error_code": code}


def load_handler(spec: str) -> JobHandler:
    """``module:function`` (e.g. ``runpod_handler:handler``) as the handler the emulated workers run."""
    module, _, name = spec.partition(":")
    handler = getattr(importlib.import_module(module), name or "handler", None)
    if not callable(handler):
        raise ValueError(f"{spec!r} names no callable handler (use module:function).")
    return handler


def declared_concurrency(spec: str) -> int:
    """The jobs one worker runs at once, as the handler's module declares it to RunPod's SDK
    (``concurrency_modifier(current) -> int``, given to ``runpod.serverless.start``); 1 when it declares none."""
    modifier = getattr(importlib.import_module(spec.partition(":")[0]), "concurrency_modifier", None)
    return max(1, int(modifier(1))) if callable(modifier) else 1


def health_report(jobs: list[EmulatedJob], workers: int, retried: int) -> dict[str, Any]:
    """RunPod's ``/health`` of an endpoint: its jobs by state, and its workers (busy: running at least one job)."""
    states = Counter(job.status for job in jobs)
    busy = len({job.worker_id for job in jobs if job.status == "IN_PROGRESS"})
    return {
        "jobs": {
            "completed": states["COMPLETED"],
            "failed": states["FAILED"] + states["TIMED_OUT"],
            "inProgress": states["IN_PROGRESS"],
            "inQueue": states["IN_QUEUE"],
            "retried": retried,
        },
        "workers": {"idle": max(0, workers - busy), "running": busy, "ready": workers},
    }
