"""`health`: device, the engine each task would use and why, weights found, versions."""

from __future__ import annotations

import importlib.metadata
import os
import platform
from typing import Any

import handlers
from handlers.schemas import HealthRequest
from handlers.settings import Settings

PACKAGES = ("serverless-talking-head", "torch", "av", "numpy", "opencv-python-headless", "dlib-bin", "runpod", "modal")


def _version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def _cpu() -> dict[str, Any]:
    name = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            name = next((line.split(":", 1)[1].strip() for line in cpuinfo if line.startswith("model name")), name)
    except OSError:
        pass
    return {"type": "cpu", "cuda": False, "name": name, "cores": os.cpu_count()}


def device() -> dict[str, Any]:
    """CUDA when torch sees it, else CPU. Importing torch is skipped when it is not installed."""
    try:
        import torch
    except ImportError:
        return _cpu()
    if torch.cuda.is_available():
        return {"type": "cuda", "cuda": True, "name": torch.cuda.get_device_name(0), "cuda_version": torch.version.cuda}
    return _cpu()


def load(settings: Settings) -> None:
    pass


def describe(settings: Settings) -> dict[str, Any]:
    return {"engine": "none"}


def run(request: HealthRequest, settings: Settings, progress: handlers.Progress) -> dict[str, Any]:
    tasks: dict[str, Any] = {}
    for task in handlers.WORK_TASKS:
        module = handlers.task_module(task)
        if module is None:
            tasks[task] = {"status": "not_implemented"}
        elif task not in settings.served_tasks:
            tasks[task] = {"status": "not_served"}
        else:
            tasks[task] = {"status": "ok", **module.describe(settings)}
    return {
        "status": "ok",
        "device": device(),
        "tasks": tasks,
        "python": platform.python_version(),
        "versions": {p: _version(p) for p in PACKAGES},
    }
