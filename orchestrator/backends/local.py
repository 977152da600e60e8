"""The local backend: ``handlers.dispatch`` on a thread pool in this process (remote id = job id).

Each backend instance is a *runner* named ``host:pid:token``; the job service records that name as
the job's endpoint, so another orchestrator process on the same database leaves the job alone while
its runner lives, and adopts it once the runner is gone (``runner_is_gone``).
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import uuid
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import handlers
from handlers.errors import TaskCancelled
from orchestrator.backends import RemoteState, RemoteStatus, SubmitRejected

log = logging.getLogger(__name__)

MAX_FINISHED_RUNS = 1000  # finished results kept in memory for status() before the oldest are dropped

_live_runners: set[str] = set()
_live_lock = threading.Lock()


class LocalJobAborted(TaskCancelled):
    """Raised from the progress callback to stop a cancelled or timed-out job at its next stage."""


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
    job_id: str
    cancel: threading.Event = field(default_factory=threading.Event)
    future: Future | None = None
    started: bool = False
    progress: dict[str, Any] | None = None
    result: dict[str, Any] | None = None


class LocalBackend:
    """Runs tasks in this process. ``on_change(job_id)`` is called when a job starts, progresses or ends."""

    kind = "local"

    def __init__(
        self,
        workers: int = 2,
        settings: handlers.Settings | None = None,
        on_change: Callable[[str], None] | None = None,
    ) -> None:
        self.endpoint = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.workers = workers
        self.on_change = on_change
        self._settings = settings
        self._executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="local-job")
        self._runs: OrderedDict[str, _Run] = OrderedDict()
        self._lock = threading.Lock()
        self._closed = False
        with _live_lock:
            _live_runners.add(self.endpoint)

    @property
    def spec(self) -> str:
        return "local"

    @property
    def settings(self) -> handlers.Settings:
        if self._settings is None:
            self._settings = handlers.Settings()
        return self._settings

    def submit(
        self,
        task: str,
        payload: dict[str, Any],
        *,
        job_id: str,
        webhook_url: str | None = None,
        timeout_s: float = 0,
        ttl_s: float | None = None,
    ) -> str:
        if self._closed:
            raise SubmitRejected("backend_closed", "The local backend is shut down.")
        run = _Run(job_id)
        with self._lock:
            self._runs[job_id] = run
            self._runs.move_to_end(job_id)
            self._evict_finished()
        run.future = self._executor.submit(self._execute, run, {**payload, "task": task})
        return job_id

    def _execute(self, run: _Run, payload: dict[str, Any]) -> None:
        if run.cancel.is_set():
            return
        run.started = True
        self._changed(run.job_id)

        def progress(stage: str, fraction: float) -> None:
            if run.cancel.is_set():
                raise LocalJobAborted(f"job {run.job_id} was stopped")
            run.progress = {"stage": stage, "fraction": round(float(fraction), 4)}
            self._changed(run.job_id)

        run.result = handlers.dispatch(payload, self.settings, progress)
        self._changed(run.job_id)

    def _changed(self, job_id: str) -> None:
        if self.on_change is not None:
            try:
                self.on_change(job_id)
            except Exception:
                log.exception("on_change callback failed")

    def _evict_finished(self) -> None:
        # a run cancelled before it started has no result, but its future is done: it is finished too
        finished = [job_id for job_id, run in self._runs.items() if run.result is not None or _done(run)]
        for job_id in finished[: max(0, len(finished) - MAX_FINISHED_RUNS)]:
            del self._runs[job_id]

    def status(self, remote_id: str) -> RemoteStatus:
        run = self._runs.get(remote_id)
        if run is None:
            return RemoteStatus(RemoteState.lost, error=f"Job {remote_id} is not running in this process.")
        if run.cancel.is_set() and (run.result is None or "error" in run.result):
            return RemoteStatus(RemoteState.cancelled, error="Cancelled.")
        if run.result is not None:
            return _result_status(run.result)
        if run.future is not None and run.future.done() and not run.future.cancelled():
            exc = run.future.exception()
            if exc is not None:  # dispatch never raises; this is a bug or a BaseException
                error = f"Local run crashed: {exc!r}"
                return RemoteStatus(RemoteState.failed, error=error, error_code="internal_error")
        if run.started:
            return RemoteStatus(RemoteState.running, progress=run.progress)
        return RemoteStatus(RemoteState.queued)

    def cancel(self, remote_id: str) -> None:
        run = self._runs.get(remote_id)
        if run is None:
            return
        run.cancel.set()
        if run.future is not None:
            run.future.cancel()

    def health(self) -> dict[str, Any]:
        with self._lock:
            runs = list(self._runs.values())
        running = sum(1 for r in runs if r.started and r.result is None)
        queued = sum(1 for r in runs if not r.started and not r.cancel.is_set())
        return {
            "ok": not self._closed,
            "runner": self.endpoint,
            "workers": self.workers,
            "running": running,
            "queued": queued,
        }

    def close(self) -> None:
        """Stop taking jobs; queued ones never start. A job already running finishes in its thread but
        nobody reads its result: after a restart the job service runs it again (or fails it)."""
        self._closed = True
        with _live_lock:
            _live_runners.discard(self.endpoint)
        for run in list(self._runs.values()):
            run.cancel.set()
        self._executor.shutdown(wait=False, cancel_futures=True)


def _done(run: _Run) -> bool:
    return run.future is not None and run.future.done()


def _result_status(result: dict[str, Any]) -> RemoteStatus:
    if isinstance(result, dict) and "error" in result:
        return RemoteStatus(RemoteState.failed, error=result["error"], error_code=result.get("error_code"))
    return RemoteStatus(RemoteState.completed, output=result, progress={"stage": "done", "fraction": 1.0})
