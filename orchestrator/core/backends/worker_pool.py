"""Long-lived worker processes for local jobs: a native crash in a task kills one worker, never the orchestrator.

Each slot is a thread that owns one process (started on first use, started again after it died) and
feeds it one job at a time over a pipe: ``("run", job_id, payload)`` in; ``("progress", job_id, stage,
fraction)`` and ``("result", job_id, result)`` out; ``("cancel", job_id)`` in, read by the worker at its
next progress callback. A worker that does not stop within ``CANCEL_GRACE_S`` of a cancel is killed.

A job whose worker died ends with ``worker_crashed`` (never run again: the same input would crash the
next worker too). Workers come from a fork server that has imported ``handlers`` once, so a fresh
worker starts in milliseconds and inherits no threads or locks of the orchestrator; each worker loads
its engines on first use and keeps them.
"""

from __future__ import annotations

import logging
import multiprocessing
import queue
import resource
import signal
import threading
import time
from collections.abc import Callable
from multiprocessing.connection import Connection, wait
from typing import Any, Protocol

import handlers
from errors import error_body
from handlers.errors import TaskCancelled

log = logging.getLogger(__name__)

TaskRunner = Callable[..., dict[str, Any]]  # handlers.dispatch's signature: (payload, runtime, progress)
CANCEL_GRACE_S = 10.0
WATCH_INTERVAL_S = 0.2
WORKER_CRASHED = "worker_crashed"


class LocalJobAborted(TaskCancelled):
    """Raised from the progress callback to stop a cancelled or timed-out job at its next stage."""


class PoolJob(Protocol):
    """One job handed to the pool; its slot thread calls the ``on_*`` methods."""

    job_id: str
    payload: dict[str, Any]
    cancel: threading.Event

    def on_start(self) -> None: ...

    def on_progress(self, stage: str, fraction: float) -> None: ...

    def on_result(self, result: dict[str, Any]) -> None: ...


def _worker_main(
    conn: Connection, settings: handlers.Settings, run_task: TaskRunner, memory_limit_bytes: int | None = None
) -> None:
    """A worker process: run the jobs the pipe brings, one at a time, until it closes."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the orchestrator's to handle
    if memory_limit_bytes is not None:  # an allocation past it fails (MemoryError) or kills this process only
        resource.setrlimit(resource.RLIMIT_AS, (memory_limit_bytes, memory_limit_bytes))
    runtime = handlers.worker_runtime(settings)  # this process's: its engines load on first use and stay
    while True:
        try:
            message = conn.recv()
        except (EOFError, OSError):
            return
        if message[0] != "run":
            continue  # a cancel for a job already finished
        _, job_id, payload = message

        def progress(stage: str, fraction: float, job_id: str = job_id) -> None:
            while conn.poll():
                if conn.recv() == ("cancel", job_id):
                    raise LocalJobAborted(f"job {job_id} was stopped")
            conn.send(("progress", job_id, stage, float(fraction)))

        conn.send(("result", job_id, _run_safely(run_task, payload, runtime, progress)))


def _run_safely(run_task: TaskRunner, payload: dict[str, Any], runtime: handlers.WorkerRuntime, progress: Any) -> Any:
    """``run_task``'s result; an exception it lets out (dispatch lets none) fails the job, not the worker."""
    try:
        return run_task(payload, runtime, progress)
    except TaskCancelled as exc:
        return error_body("cancelled", f"The task was stopped before it finished ({exc}).")
    except Exception as exc:
        log.exception("local task failed outside its error boundary")
        return error_body("internal_error", f"Local run failed: {exc!r}")


def crash_result(exitcode: int | None) -> dict[str, Any]:
    """The job error of a worker that died while running a job."""
    how = f"signal {signal.Signals(-exitcode).name}" if exitcode and exitcode < 0 else f"exit code {exitcode}"
    message = f"The worker process died ({how}) while running the job; a new worker replaced it."
    return error_body(WORKER_CRASHED, message)


def _cancelled_result() -> dict[str, Any]:
    message = f"The job did not stop within {CANCEL_GRACE_S:g} s of its cancel; its worker was killed."
    return error_body("cancelled", message)


class _Slot:
    """One worker process and the thread that feeds it."""

    def __init__(self, pool: WorkerPool, index: int) -> None:
        self.pool = pool
        self.name = f"{pool.name}-{index}"
        self.process: multiprocessing.process.BaseProcess | None = None
        self.conn: Connection | None = None
        self.thread = threading.Thread(target=self._loop, name=self.name, daemon=True)

    def _loop(self) -> None:
        while (job := self.pool.jobs.get()) is not None:
            if job.cancel.is_set():
                continue
            try:
                job.on_result(self._run(job))
            except Exception as exc:  # a broken pipe we did not foresee: the job fails, the slot lives on
                log.exception("local worker slot %s failed", self.name)
                self._stop_process()
                job.on_result(error_body("internal_error", f"Local worker error: {exc!r}"))
        self._stop_process()

    def _ensure_process(self) -> None:
        if self.process is not None and self.process.is_alive():
            return
        self._stop_process()
        ctx = self.pool.context
        self.conn, child = ctx.Pipe()
        self.process = ctx.Process(
            target=_worker_main,
            args=(child, self.pool.settings, self.pool.run_task, self.pool.memory_limit_bytes),
            name=self.name,
            daemon=True,
        )
        self.process.start()
        child.close()
        log.info("%s started (pid %s)", self.name, self.process.pid)

    def _run(self, job: PoolJob) -> dict[str, Any]:
        self._ensure_process()
        assert self.conn is not None and self.process is not None
        self.conn.send(("run", job.job_id, job.payload))
        job.on_start()
        cancel_sent_at: float | None = None
        while True:
            wait([self.conn, self.process.sentinel], WATCH_INTERVAL_S)
            message = self._receive()
            if message is not None and message[0] == "result":
                return message[2]
            if message is not None:
                job.on_progress(message[2], message[3])
            elif self.pool.closed:
                self._stop_process()
                return error_body("cancelled", "The orchestrator stopped while the job ran.")
            elif not self.process.is_alive():
                log.error("%s died running job %s (exit %s)", self.name, job.job_id, self.process.exitcode)
                exitcode = self.process.exitcode
                self._stop_process()
                return crash_result(exitcode)
            if job.cancel.is_set() and cancel_sent_at is None:
                self.conn.send(("cancel", job.job_id))
                cancel_sent_at = time.monotonic()
            if cancel_sent_at is not None and time.monotonic() - cancel_sent_at > CANCEL_GRACE_S:
                log.warning("%s ignored the cancel of job %s; killing it", self.name, job.job_id)
                self._stop_process()
                return _cancelled_result()

    def _receive(self) -> tuple[Any, ...] | None:
        """The worker's next message, or None when there is none (or the pipe closed: the worker is dying)."""
        assert self.conn is not None and self.process is not None
        try:
            if self.conn.poll():
                return self.conn.recv()
        except (EOFError, OSError):
            self.process.join(1.0)
        return None

    def _stop_process(self) -> None:
        if self.conn is not None:
            self.conn.close()
            self.conn = None
        if self.process is not None:
            if self.process.is_alive():
                self.process.kill()
            self.process.join(1.0)
            self.process = None


class WorkerPool:
    """``size`` worker processes taking jobs from one queue, oldest first; ``memory_limit_bytes`` caps each
    process's address space (RLIMIT_AS)."""

    def __init__(
        self,
        size: int,
        settings: handlers.Settings,
        run_task: TaskRunner = handlers.dispatch,
        memory_limit_bytes: int | None = None,
        name: str = "local-worker",
    ) -> None:
        self.settings = settings
        self.run_task = run_task
        self.memory_limit_bytes = memory_limit_bytes
        self.name = name
        self.context = _fork_server()
        self.jobs: queue.Queue[PoolJob | None] = queue.Queue()
        self.closed = False
        self._slots = [_Slot(self, index) for index in range(size)]
        for slot in self._slots:
            slot.thread.start()

    def put(self, job: PoolJob) -> None:
        self.jobs.put(job)

    def pids(self) -> list[int]:
        """The live worker processes (started lazily: none before the first job)."""
        return [s.process.pid for s in self._slots if s.process is not None and s.process.pid and s.process.is_alive()]

    def close(self) -> None:
        """Queued jobs never start; running ones are stopped with their workers (the job service runs them
        again after a restart, or fails them)."""
        self.closed = True
        while True:
            try:
                self.jobs.get_nowait()
            except queue.Empty:
                break
        for _ in self._slots:
            self.jobs.put(None)
        for slot in self._slots:
            slot.thread.join(WATCH_INTERVAL_S * 5)


def _fork_server() -> multiprocessing.context.BaseContext:
    """The fork-server context: workers fork from a clean process that has imported ``handlers``."""
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(["handlers"])
    return ctx
