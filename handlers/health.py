"""`health`: device, the engine each task would use and why, weights found, versions.

``live_session`` is reported beside the jobs: ``unavailable`` (with the reason) where this process cannot
serve live sessions, ``not_served`` where WORKER_TASKS leaves it out, else its limits and engine."""

from __future__ import annotations

import importlib.metadata
import logging
import os
import platform
from typing import Any

import handlers
from handlers.runtime import WorkerRuntime
from handlers.schemas import LIVE_SESSION_TASK, HealthRequest

log = logging.getLogger(__name__)

PACKAGES = ("serverless-talking-head", "torch", "av", "numpy", "opencv-python-headless", "dlib-bin", "runpod", "modal")


def _version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def cpu_name() -> str:
    """The processor's model name from /proc/cpuinfo (no subprocess), else what ``platform`` knows."""
    fallback = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            return next((line.split(":", 1)[1].strip() for line in cpuinfo if line.startswith("model name")), fallback)
    except OSError:
        return fallback


def _cpu() -> dict[str, Any]:
    return {"type": "cpu", "cuda": False, "name": cpu_name(), "cores": os.cpu_count()}


def device() -> dict[str, Any]:
    """CUDA when torch sees it, else CPU. Importing torch (seconds) is skipped when it is not installed or is a
    CPU-only build (its version says ``+cpu``)."""
    try:
        if importlib.metadata.version("torch").endswith("+cpu"):
            return _cpu()
        import torch
    except (ImportError, importlib.metadata.PackageNotFoundError):
        return _cpu()
    if torch.cuda.is_available():
        return {"type": "cuda", "cuda": True, "name": torch.cuda.get_device_name(0), "cuda_version": torch.version.cuda}
    return _cpu()


def _task_status(task: str, runtime: WorkerRuntime) -> dict[str, Any]:
    """One task's entry; a task that fails to import or describe itself is reported, not fatal to health."""
    try:
        if task not in handlers.TASKS:
            return {"status": "unavailable", "reason": handlers.unavailable_reason(task)}
        if task not in runtime.settings.served_tasks:
            return {"status": "not_served"}
        return {"status": "ok", **handlers.task_module(task).describe(runtime)}
    except Exception as exc:
        log.exception("health: task %s cannot describe itself", task)
        return {"status": "error", "error": f"{type(exc).__name__}: {exc}"}


def run(request: HealthRequest, runtime: WorkerRuntime, progress: handlers.Progress) -> dict[str, Any]:
    tasks = {task: _task_status(task, runtime) for task in (*handlers.WORK_TASKS, LIVE_SESSION_TASK)}
    return {
        "status": "ok",
        "device": device(),
        "tasks": tasks,
        "python": platform.python_version(),
        "versions": {p: _version(p) for p in PACKAGES},
    }
