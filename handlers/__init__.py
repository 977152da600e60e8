"""Task handlers and the one dispatch function every caller uses.

Each task lives in its own module (``handlers/<task>.py``) exposing:

- ``load(settings)``: load its engines once per process (idempotent);
- ``describe(settings)``: the engine it would use and why, for ``health`` (no heavy work);
- ``run(request, settings, progress)``: do the task and return its result model.
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Callable, Iterator
from types import ModuleType
from typing import Any

from pydantic import ValidationError

from engines.errors import EngineError
from handlers.errors import TaskCancelled, TaskError
from handlers.schemas import REQUEST_MODELS, TaskName
from handlers.settings import Settings
from storage.errors import StorageError

log = logging.getLogger(__name__)

Progress = Callable[[str, float], None]
"""Called with a stage name and the fraction of the task done (0..1)."""

WORK_TASKS = [t.value for t in TaskName if t is not TaskName.health]


def _no_progress(stage: str, fraction: float) -> None:
    pass


def task_module(task: str) -> ModuleType | None:
    """The module that implements ``task``, or None when it is not built yet."""
    name = f"handlers.{task}"
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as exc:
        if exc.name == name:
            return None
        raise


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


def _served(payload: Any, settings: Settings | None) -> tuple[Any, Settings, ModuleType]:
    """The validated request, the settings and the task's module; TaskError when this worker cannot run it."""
    request = parse(payload)
    settings = settings or Settings()
    if request.task not in (TaskName.health.value, *settings.served_tasks):
        raise TaskError("task_not_served", f"This worker does not serve `{request.task}` (WORKER_TASKS).")
    module = task_module(request.task)
    if module is None:
        raise TaskError("not_implemented", f"Task `{request.task}` is not implemented in this version.")
    return request, settings, module


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
    payload: dict[str, Any], settings: Settings | None = None, progress: Progress | None = None
) -> dict[str, Any]:
    """Run one task. Never raises for bad input: returns ``{"error", "error_code"}`` instead."""
    try:
        request, settings, module = _served(payload, settings)
        return _as_dict(module.run(request, settings, progress or _no_progress))
    except Exception as exc:
        return _refusal(exc)


def dispatch_stream(
    payload: dict[str, Any], settings: Settings | None = None, progress: Progress | None = None
) -> Iterator[dict[str, Any]]:
    """Run one task as a sequence of dicts: the items a task streams as they are made, its result last.

    Only ``generate_video`` with ``stream: true`` streams (one item per stored segment); every other
    request yields just its result. Like ``dispatch``, an error ends the sequence as ``{"error", "error_code"}``.
    Stopping the iteration early stops the task (and a streamed video's published segments are deleted).
    """
    try:
        request, settings, module = _served(payload, settings)
        stream = getattr(module, "stream", None)
        if stream is None:
            yield _as_dict(module.run(request, settings, progress or _no_progress))
            return
        for item in stream(request, settings, progress or _no_progress):
            yield _as_dict(item)
    except Exception as exc:
        yield _refusal(exc)


def load_engines(settings: Settings | None = None, tasks: list[str] | None = None) -> dict[str, str]:
    """Load the engines of the served tasks once; returns task -> "ok" or the load error."""
    settings = settings or Settings()
    status = {}
    for task in tasks if tasks is not None else settings.served_tasks:
        module = task_module(task)
        if module is None:
            status[task] = "not_implemented"
            continue
        try:
            module.load(settings)
            status[task] = "ok"
        except Exception as exc:
            log.exception("loading engines for %s failed", task)
            status[task] = f"{type(exc).__name__}: {exc}"
    return status


__all__ = ["dispatch", "dispatch_stream", "load_engines", "parse", "task_module", "Progress", "Settings", "TaskError"]
