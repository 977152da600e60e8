"""Timing helpers shared by the model benchmarks: device-synchronised runs, medians timed round-robin."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import torch


def timed(fn: Callable[[], object], device: torch.device) -> float:
    """Seconds ``fn`` takes, waiting for queued CUDA work before and after."""
    if device.type == "cuda":
        torch.cuda.synchronize()
    started = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - started


def interleaved_medians(paths: dict[str, Callable[[], object]], runs: int, device: torch.device) -> dict[str, float]:
    """Median seconds of each path, timed round-robin so load from other processes hits all alike."""
    for fn in paths.values():
        fn()  # warm-up: allocator, oneDNN primitive cache, cuDNN autotuning, compilation
    times: dict[str, list[float]] = {name: [] for name in paths}
    for _ in range(runs):
        for name, fn in paths.items():
            times[name].append(timed(fn, device))
    return {name: statistics.median(t) for name, t in times.items()}
