"""Task handlers and the one dispatch function every caller uses.

Each task lives in its own module, named in the task table ``TASKS`` (task name -> a function importing
its module on first use), exposing:

- ``load(runtime)``: load its engines into the runtime (idempotent); absent when the task loads nothing;
- ``describe(runtime)``: the engine it would use and why, for ``health`` (no heavy work);
- ``run(request, runtime, progress)``: do the task and return its result model.

The one-shot tasks are ``handlers/<task>.py``. The live-session task (``live_session``) lives in the
``realtime`` package, which ``handlers`` may not import: an entry point that serves live sessions adds it
to the table with ``realtime.serve_live_sessions()`` (aiortc installed); elsewhere it answers
``task_not_served`` naming the ``realtime`` extra.

The runtime (``handlers.runtime.WorkerRuntime``: settings, loaded engines, caches) is built once per
process by the entry point and passed in; ``dispatch(payload)`` without one uses a default runtime
built from the environment on first use.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator
from types import ModuleType
from typing import Any

from pydantic import ValidationError

from errors import CodedError, error_body
from handlers.errors import TaskCancelled, TaskError
from handlers.runtime import WorkerRuntime
from handlers.schemas import LIVE_SESSION_TASK, REQUEST_MODELS, TASK_MODELS, TaskName
from handlers.settings import Settings

log = logging.getLogger(__name__)

Progress = Callable[[str, float], None]
"""Called with a stage name and the fraction of the task done (0..1)."""

WORK_TASKS = [t.value for t in TaskName if t is not TaskName.health]
"""The one-shot jobs (what the orchestrator's /v1/jobs offers); ``live_session`` is a task, not a job."""

TaskLoader = Callable[[], ModuleType]


def _no_progress(stage: str, fraction: float) -> None:
    """The progress callback of callers that do not follow progress."""


def _preprocess_avatar() -> ModuleType:
    from handlers import preprocess_avatar

    return preprocess_avatar


def _generate_video() -> ModuleType:
    from handlers import generate_video

    return generate_video


def _render_emotion() -> ModuleType:
    from handlers import render_emotion

    return render_emotion


def _health() -> ModuleType:
    from handlers import health

    return health


# The task table: each task's module, imported on first use (a worker loads only what it serves).
TASKS: dict[str, TaskLoader] = {
    TaskName.preprocess_avatar.value: _preprocess_avatar,
    TaskName.generate_video.value: _generate_video,
    TaskName.render_emotion.value: _render_emotion,
    TaskName.health.value: _health,
}

LIVE_SESSIONS_UNAVAILABLE = (
    "This worker does not serve live sessions: they need the `realtime` extra (aiortc) and an entry point "
    "that enables them (runpod_handler.py, modal_app.py's LiveWorker, or `realtime.serve_live_sessions()`)."
)


def register_task(task: str, loader: TaskLoader) -> None:
    """Add a task from a package above ``handlers`` to the table (``realtime`` adds ``live_session``)."""
    TASKS[task] = loader


def unavailable_reason(task: str) -> str:
    if task == LIVE_SESSION_TASK:
        return LIVE_SESSIONS_UNAVAILABLE
    return f"Unknown task `{task}`: use one of {', '.join(TASK_MODELS)}."


def task_module(task: str) -> ModuleType:
    """The module that implements ``task``, imported on first use; TaskError when this process has none."""
    loader = TASKS.get(task)
    if loader is None:
        raise TaskError("task_not_served", unavailable_reason(task))
    return loader()


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


def validation_message(exc: ValidationError) -> str:
    """A pydantic error as one line naming each field and what is wrong (no input values echoed)."""
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
        raise TaskError("missing_task", f"Missing `task`: use one of {', '.join(TASK_MODELS)}.")
    model = TASK_MODELS.get(task) if isinstance(task, str) else None
    if model is None:
        raise TaskError("unknown_task", f"Unknown task {task!r}: use one of {', '.join(TASK_MODELS)}.")
    try:
        return model.model_validate(payload)
    except ValidationError as exc:
        raise TaskError("invalid_input", validation_message(exc)) from None


def _served(payload: Any, runtime: WorkerRuntime | None) -> tuple[Any, WorkerRuntime, ModuleType]:
    """The validated request, the runtime and the task's module; TaskError when this worker cannot run it."""
    request = parse(payload)
    runtime = runtime or default_runtime()
    if request.task not in TASKS:
        raise TaskError("task_not_served", unavailable_reason(request.task))
    if request.task not in (TaskName.health.value, *runtime.settings.served_tasks):
        raise TaskError("task_not_served", f"This worker does not serve `{request.task}` (WORKER_TASKS).")
    return request, runtime, task_module(request.task)


def _as_dict(result: Any) -> dict[str, Any]:
    return result.model_dump(mode="json") if hasattr(result, "model_dump") else result


def _refusal(exc: Exception) -> dict[str, str]:
    """The error boundary: a task's exception as ``{"error", "error_code"}``, never a traceback."""
    if isinstance(exc, CodedError):
        log.info("task refused: %s (%s)", exc.message, exc.code)
        return error_body(exc.code, exc.message)
    if isinstance(exc, TaskCancelled):
        log.info("task stopped: %s", exc)
        return error_body("cancelled", f"The task was stopped before it finished ({exc}).")
    log.exception("task failed")
    return error_body("internal_error", f"Internal error ({type(exc).__name__}); see the worker logs.")


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
    "register_task",
    "validation_message",
    "TASKS",
    "WORK_TASKS",
    "REQUEST_MODELS",
    "Progress",
    "Settings",
    "TaskError",
    "WorkerRuntime",
]
