"""The local backend: ``handlers.dispatch`` in worker processes of this orchestrator (remote id = job id).

Each backend instance is a *runner* named ``host:pid:token``; the job service records that name as
the job's endpoint, so another orchestrator process on the same database leaves the job alone while
its runner lives, and adopts it once the runner is gone (``runner_is_gone``) or has stopped beating on it
(``heartbeat_at`` older than ``silent_after_s``, LEASE_S: a runner on a host that died). Tasks run in a
``WorkerPool``: a task that crashes its process fails with ``worker_crashed`` and the pool replaces the
process; the orchestrator keeps serving. Each change of a job (started, progress, its final status) is pushed to
``on_status(job_id, status)`` as it happens: the job service applies it through the job lifecycle at once, as it
applies a webhook, so a local job's result never waits for a poll.

Live sessions (``live_session``, long-running) have a pool of their own, so they never hold up the one-shot
jobs: ``session_workers`` processes (REALTIME_MAX_SESSIONS), one session at a time each, every process capped
at ``session_memory_bytes`` of address space (RLIMIT_AS): a session that crashes or runs out of memory fails
alone (``worker_crashed``) and its process is replaced.
"""

from __future__ import annotations

import functools
import logging
import os
import socket
import threading
import uuid
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import handlers
from handlers.schemas import LIVE_SESSION_TASK
from orchestrator.core.backends.base import Ownership, RemoteState, RemoteStatus, Submission
from orchestrator.core.backends.errors import SubmitRejected
from orchestrator.core.backends.worker_pool import TaskRunner, WorkerPool
from orchestrator.core.config import BackendKind
from orchestrator.core.db import utcnow
from orchestrator.core.models import JobView

log = logging.getLogger(__name__)

SESSION_TASKS = frozenset({LIVE_SESSION_TASK})
MAX_FINISHED_RUNS = 1000  # finished results kept in memory for status() before the oldest are dropped

_live_runners: set[str] = set()
_live_lock = threading.Lock()


def run_live_session(
    payload: dict[str, Any], runtime: handlers.WorkerRuntime, progress: Any, limits: Any = None
) -> dict[str, Any]:
    """The ``live_session`` task in a local worker process: ``handlers.dispatch`` with realtime's task added, under
    ``limits`` (``realtime.limits.RealtimeSettings``, read where the backend was made: the orchestrator's
    environment, not the fork server's)."""
    import realtime

    realtime.serve_live_sessions(limits)
    return handlers.dispatch(payload, runtime, progress)


def live_session_runner() -> TaskRunner:
    """``run_live_session`` under the REALTIME_* limits of this process's environment (when ``realtime`` is here)."""
    import realtime

    if not realtime.available():
        return run_live_session
    from realtime.limits import RealtimeSettings

    return functools.partial(run_live_session, limits=RealtimeSettings())


def runner_is_gone(runner: str | None) -> bool:
    """True when the runner that owned a local job certainly no longer runs it.

    Same process: the runner is gone once its backend is closed. Another process on this host: gone
    when that pid no longer exists. Another host: unknown (False); the job's deadline still applies.
    """
    host, _, rest = (runner or "").partition(":")
    pid_text, _, _token = rest.partition(":")
    if host != socket.gethostname() or not pid_text.isdigit():
        return False
    pid = int(pid_text)
    if pid == os.getpid():
        with _live_lock:
            return runner not in _live_runners
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


@dataclass
class _Run:
    """A job of this runner: what the worker pool runs (a ``PoolJob``) and what ``status`` reports."""

    job_id: str
    payload: dict[str, Any]
    changed: Callable[[str], None]  # the backend's: pushes the run's status
    cancel: threading.Event = field(default_factory=threading.Event)
    started: bool = False
    progress: dict[str, Any] | None = None
    result: dict[str, Any] | None = None

    @property
    def finished(self) -> bool:
        return self.result is not None or (self.cancel.is_set() and not self.started)

    def on_start(self) -> None:
        self.started = True
        self.changed(self.job_id)

    def on_progress(self, stage: str, fraction: float) -> None:
        self.progress = {"stage": stage, "fraction": round(float(fraction), 4)}
        self.changed(self.job_id)

    def on_result(self, result: dict[str, Any]) -> None:
        self.result = result
        self.changed(self.job_id)


class LocalBackend:
    """Runs tasks in ``workers`` worker processes. ``on_status(job_id, status)`` is called when a job starts,
    progresses or ends, with its status then. ``run_task`` is what a worker calls (``handlers.dispatch``)."""

    kind = BackendKind.local
    cheap_status = True

    def __init__(
        self,
        workers: int = 2,
        settings: handlers.Settings | None = None,
        on_status: Callable[[str, RemoteStatus], None] | None = None,
        run_task: TaskRunner = handlers.dispatch,
        silent_after_s: float | None = None,
        *,
        session_workers: int = 4,
        session_memory_bytes: int | None = None,
        run_session: TaskRunner | None = None,
    ) -> None:
        self.endpoint = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.workers = workers
        self.on_status = on_status
        self.settings = settings or handlers.Settings()
        self._run_task = run_task
        self.silent_after_s = silent_after_s
        self.session_workers = session_workers
        self.session_memory_bytes = session_memory_bytes
        self._run_session = run_session
        self._pool: WorkerPool | None = None
        self._session_pool: WorkerPool | None = None
        self._runs: OrderedDict[str, _Run] = OrderedDict()
        # claimed in this process, not yet handed to submit: still ours (a claim writes the row before submit runs)
        self._claimed: set[str] = set()
        self._lock = threading.Lock()
        self._closed = False
        with _live_lock:
            _live_runners.add(self.endpoint)

    @property
    def spec(self) -> str:
        return BackendKind.local.value

    @property
    def pool(self) -> WorkerPool:
        """The worker pool, started on first use (a service that only reads jobs starts no process)."""
        with self._lock:
            if self._pool is None:
                self._pool = WorkerPool(self.workers, self.settings, self._run_task)
            return self._pool

    @property
    def session_pool(self) -> WorkerPool:
        """The live sessions' worker processes (started on first use)."""
        with self._lock:
            if self._session_pool is None:
                self._session_pool = WorkerPool(
                    self.session_workers,
                    self.settings.model_copy(update={"worker_tasks": ",".join(SESSION_TASKS)}),  # what they serve
                    self._run_session or live_session_runner(),
                    memory_limit_bytes=self.session_memory_bytes,
                    name="local-session",
                )
            return self._session_pool

    def submit(self, job: Submission) -> str:
        if self._closed:
            raise SubmitRejected("backend_closed", "The local backend is shut down.")
        run = _Run(job.job_id, {**job.payload, "task": job.task}, self._changed)
        with self._lock:
            self._runs[job.job_id] = run
            self._runs.move_to_end(job.job_id)
            self._claimed.discard(job.job_id)
            self._evict_finished()
        (self.session_pool if job.task in SESSION_TASKS else self.pool).put(run)
        return job.job_id

    def _changed(self, job_id: str) -> None:
        """Push the run's status now (from the worker pool's thread that saw the change)."""
        if self.on_status is not None:
            try:
                self.on_status(job_id, self.status(job_id))
            except Exception:
                log.exception("on_status callback failed for job %s", job_id)

    def _evict_finished(self) -> None:
        finished = [job_id for job_id, run in self._runs.items() if run.finished]
        for job_id in finished[: max(0, len(finished) - MAX_FINISHED_RUNS)]:
            del self._runs[job_id]

    def status(self, remote_id: str) -> RemoteStatus:
        run = self._runs.get(remote_id)
        if run is None and remote_id in self._claimed:
            return RemoteStatus(RemoteState.queued)  # claimed here, being handed over
        if run is None:
            return RemoteStatus(RemoteState.lost, error=f"Job {remote_id} is not running in this process.")
        if run.cancel.is_set() and (run.result is None or "error" in run.result):
            return RemoteStatus(RemoteState.cancelled, error="Cancelled.")
        if run.result is not None:
            return _result_status(run.result)
        if run.started:
            return RemoteStatus(RemoteState.running, progress=run.progress)
        return RemoteStatus(RemoteState.queued)

    def cancel(self, remote_id: str) -> None:
        run = self._runs.get(remote_id)
        if run is not None:
            run.cancel.set()

    def claim_values(self, job: JobView) -> dict[str, Any]:
        """A (re-)run starts from scratch in this process, which becomes the job's runner."""
        with self._lock:
            self._claimed.add(job.id)
        return {
            "endpoint": self.endpoint,
            "remote_id": job.id,
            "started_at": None,
            "progress": None,
            "heartbeat_at": utcnow(),
        }

    def ownership(self, job: JobView) -> Ownership:
        if job.endpoint == self.endpoint:
            return Ownership.here if job.id in self._runs or job.id in self._claimed else Ownership.gone
        return Ownership.gone if runner_is_gone(job.endpoint) or self._silent(job) else Ownership.elsewhere

    def _silent(self, job: JobView) -> bool:
        """The job's runner stopped beating (it runs on a host that died, or lost its database)."""
        if self.silent_after_s is None or job.heartbeat_at is None:
            return False
        return (utcnow() - job.heartbeat_at).total_seconds() > self.silent_after_s

    def parse_webhook(self, body: dict[str, Any]) -> tuple[str, RemoteStatus] | None:
        return None

    def health(self) -> dict[str, Any]:
        with self._lock:
            runs = list(self._runs.values())
        return {
            "ok": not self._closed,
            "runner": self.endpoint,
            "workers": self.workers,
            "running": sum(1 for r in runs if r.started and r.result is None),
            "queued": sum(1 for r in runs if not r.started and not r.cancel.is_set()),
        }

    def close(self) -> None:
        """Stop taking jobs; queued ones never start and running ones stop with their workers: after a
        restart the job service runs them again (or fails them)."""
        self._closed = True
        with _live_lock:
            _live_runners.discard(self.endpoint)
        for run in list(self._runs.values()):
            run.cancel.set()
        for pool in (self._pool, self._session_pool):
            if pool is not None:
                pool.close()


def _result_status(result: dict[str, Any]) -> RemoteStatus:
    if isinstance(result, dict) and "error" in result:
        return RemoteStatus(RemoteState.failed, error=result["error"], error_code=result.get("error_code"))
    return RemoteStatus(RemoteState.completed, output=result, progress={"stage": "done", "fraction": 1.0})
