"""Task handlers and the one dispatch function every caller uses.

Each task lives in its own module (``handlers/<task>.py``) exposing:

- ``load(runtime)``: load its engines into the runtime (idempotent); absent when the task loads nothing;
- ``describe(runtime)``: the engine it would use and why, for ``health`` (no heavy work);
- ``run(request, runtime, progress)``: do the task and return its result model.

The runtime (``handlers.runtime.WorkerRuntime``: settings, loaded engines, caches) is built once per
process by the entry point and passed in; ``dispatch(payload)`` without one uses a default runtime
built from the environment on first use.
"""

from __future__ import annotations

import importlib
import logging
import threading
from collections.abc import Callable, Iterator
from types import ModuleType
from typing import Any

from pydantic import ValidationError

from engines.errors import EngineError
from handlers.errors import TaskCancelled, TaskError
from handlers.runtime import WorkerRuntime
from handlers.schemas import REQUEST_MODELS, TaskName
from handlers.settings import Settings
from storage.errors import StorageError

log = logging.getLogger(__name__)

Progress = Callable[[str, float], None]
"""Called with a stage name and the fraction of the task done (0..1)."""

WORK_TASKS = [t.value for t in TaskName if t is not TaskName.health]


def _no_progress(stage: str, fraction: float) -> None:
    """The progress callback of callers that do not follow progress."""


def task_module(task: str) -> ModuleType:
    """The module that implements ``task`` (one of ``TaskName``), imported on first use."""
    return importlib.import_module(f"handlers.{TaskName(task).value}")


def worker_runtime(settings: Settings | None = None) -> WorkerRuntime:
    """A new runtime for an entry point: under ``settings`` when given, else read from the environment."""
    return WorkerRuntime.build(settings) if settings is not None else WorkerRuntime.from_env()


_default: list[WorkerRuntime] = []
_default_lock = threading.Lock()


def default_runtime() -> WorkerRuntime:
    """The process's runtime for callers that pass none, built from the environment on first use."""
    with _default_lock:
        if not _default:
            _default.append(WorkerRuntime.from_env())
        return _default[0]


def error(code: str, message: str) -> dict[str, str]:
    return {"error": message, "error_code": code}


def _validation_message(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors(include_url=False):
        field = ".".join(str(p) for p in err["loc"]) or "input"
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            msg = "unknown field"
        parts.append(f"`{field}`: {msg}")
    return "Invalid input: " + "; ".join(parts)


def parse(payload: Any) -> Any:
    """Validate a payload into its task's request model; raise TaskError naming what is wrong."""
    if not isinstance(payload, dict):
        raise TaskError("invalid_input", "The payload must be a JSON object with a `task` field.")
    task = payload.get("task")
    if task is None:
        raise TaskError("missing_task", f"Missing `task`: use one of {', '.join(REQUEST_MODELS)}.")
    model = REQUEST_MODELS.get(task) if isinstance(task, str) else None
    if model is None:
        raise TaskError("unknown_task", f"Unknown task {task!r}: use one of {', '.join(REQUEST_MODELS)}.")
    try:
        return model.model_validate(payload)
    except ValidationError as exc:
        raise TaskError("invalid_input", _validation_message(exc)) from None


def _served(payload: Any, runtime: WorkerRuntime | None) -> tuple[Any, WorkerRuntime, ModuleType]:
    """The validated request, the runtime and the task's module; TaskError when this worker cannot run it."""
    request = parse(payload)
    runtime = runtime or default_runtime()
    if request.task not in (TaskName.health.value, *runtime.settings.served_tasks):
        raise TaskError("task_not_served", f"This worker does not serve `{request.task}` (WORKER_TASKS).")
    return request, runtime, task_module(request.task)


def _as_dict(result: Any) -> dict[str, Any]:
    return result.model_dump(mode="json") if hasattr(result, "model_dump") else result


def _refusal(exc: Exception) -> dict[str, str]:
    """The error boundary: a task's exception as ``{"error", "error_code"}``, never a traceback."""
    if isinstance(exc, (TaskError, EngineError, StorageError)):
        log.info("task refused: %s (%s)", exc.message, exc.code)
        return error(exc.code, exc.message)
    if isinstance(exc, TaskCancelled):
        log.info("task stopped: %s", exc)
        return error("cancelled", f"The task was stopped before it finished ({exc}).")
    log.exception("task failed")
    return error("internal_error", f"Internal error ({type(exc).__name__}); see the worker logs.")


def dispatch(
    payload: dict[str, Any], runtime: WorkerRuntime | None = None, progress: Progress | None = None
) -> dict[str, Any]:
    """Run one task. Never raises for bad input: returns ``{"error", "error_code"}`` instead."""
    try:
        request, runtime, module = _served(payload, runtime)
        return _as_dict(module.run(request, runtime, progress or _no_progress))
    except Exception as exc:
        return _refusal(exc)


def dispatch_stream(
    payload: dict[str, Any], runtime: WorkerRuntime | None = None, progress: Progress | None = None
) -> Iterator[dict[str, Any]]:
    """Run one task as a sequence of dicts: the items a task streams as they are made, its result last.

    Only ``generate_video`` with ``stream: true`` streams (one item per stored segment); every other
    request yields just its result. Like ``dispatch``, an error ends the sequence as ``{"error", "error_code"}``.
    Stopping the iteration early stops the task (and a streamed video's published segments are deleted).
    """
    try:
        request, runtime, module = _served(payload, runtime)
        stream = getattr(module, "stream", None)
        if stream is None:
            yield _as_dict(module.run(request, runtime, progress or _no_progress))
            return
        for item in stream(request, runtime, progress or _no_progress):
            yield _as_dict(item)
    except Exception as exc:
        yield _refusal(exc)


def load_engines(runtime: WorkerRuntime, tasks: list[str] | None = None) -> dict[str, str]:
    """Load the engines of the served tasks into ``runtime``; returns task -> "ok" or the load error."""
    status = {}
    for task in tasks if tasks is not None else runtime.settings.served_tasks:
        try:
            task_module(task).load(runtime)
            status[task] = "ok"
        except Exception as exc:
            log.exception("loading engines for %s failed", task)
            status[task] = f"{type(exc).__name__}: {exc}"
    return status


__all__ = [
    "dispatch",
    "dispatch_stream",
    "default_runtime",
    "worker_runtime",
    "load_engines",
    "parse",
    "task_module",
    "Progress",
    "Settings",
    "TaskError",
    "WorkerRuntime",
]
