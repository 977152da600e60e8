"""What every section of the GPU run shares: its work folder's layout, the worker runtime it measures (the
worker's own settings, engine table and avatar loading, with the recorded face analysis), and the inputs."""

from __future__ import annotations

import os
import resource
import time
from pathlib import Path
from typing import Any

import numpy as np

from bench.gpu.faces import portrait_bgr, read_recording, use_recorded_faces
from bench.gpu.profiles import Profile
from bench.gpu.specs import BenchEngine

AVATAR_ID = "bench-avatar"
USER_ID = "bench"


class Work:
    """The run's work folder: weights, the recording, the file:// store with the avatar TAR and portrait."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.weights = root / "weights"
        self.inputs = root / "inputs"  # faces.json
        self.store = root / "store"
        self.avatars = root / "avatar-cache"

    @property
    def avatar_dir(self) -> Path:
        return self.root / "avatar-src" / AVATAR_ID

    @property
    def avatar_tar(self) -> Path:
        return self.store / "avatars" / USER_ID / f"{AVATAR_ID}.tar"

    @property
    def portrait(self) -> Path:
        return self.store / "inputs" / "portrait.png"

    @property
    def text_file(self) -> Path:
        return self.inputs / "speech.txt"

    @property
    def audio(self) -> Path:
        return self.store / "inputs" / "speech.wav"


def settings_env(work: Work, engine: BenchEngine | None, profile: Profile) -> dict[str, str]:
    """The worker settings of the run (as environment variables), pointing at the random weights."""
    env = {
        "WEIGHTS_DIR": str(work.weights),
        "AVATAR_STORE_URI": work.store.as_uri(),
        "AVATAR_LOCAL_PATH": str(work.avatars),
        "WORKER_TASKS": "generate_video",
    }
    if engine is not None:
        env |= engine.settings_env(work.weights)
    return env


def runtime(work: Work, profile: Profile, **settings: Any) -> Any:
    """The worker runtime of this process's settings (the runner sets ``settings_env``; ``settings`` override
    fields), with the recorded face analysis."""
    from handlers.runtime import WorkerRuntime
    from handlers.settings import Settings

    settings = {**profile.settings, **settings}
    built = WorkerRuntime.build(Settings(**settings))
    use_recorded_faces(built, read_recording(work.inputs))
    return built


def bench_avatar(engine: BenchEngine, built_runtime: Any, work: Work) -> Any:
    """The engine's input: the portrait animated (image engines) or the stored avatar, as a request gets it."""
    if engine.portrait:
        from engines.lipsync.portrait_avatar import build_portrait_avatar

        return build_portrait_avatar(portrait_bgr(), built_runtime.engines.face_analyzer())
    from handlers.sources import stored_avatar
    from storage.avatar.reader import load_avatar

    return stored_avatar(load_avatar(work.avatar_dir), built_runtime.engines.frames)


def speech(seconds: float) -> Any:
    """DrivingAudio of ``seconds`` of a voiced, modulated tone (the tests' stand-in for speech)."""
    from engines.lipsync import DrivingAudio
    from tests.engines.wav2lip_fixtures import speech_like

    return DrivingAudio(speech_like(seconds))


def device_name() -> str:
    import torch

    if torch.cuda.is_available():
        return torch.cuda.get_device_name(0)
    return f"CPU ({os.cpu_count()} cores, {torch.get_num_threads()} torch threads)"


def sync() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()


def reset_peak() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()


def memory() -> dict[str, float]:
    """Peak GPU memory since the last reset (MiB), or on a CPU run the process's peak RSS."""
    import torch

    if torch.cuda.is_available():
        return {
            "gpu_peak_allocated_mib": round(torch.cuda.max_memory_allocated() / 2**20, 1),
            "gpu_peak_reserved_mib": round(torch.cuda.max_memory_reserved() / 2**20, 1),
        }
    return {"cpu_peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}


def drop_page_cache(files: list[Path]) -> bool:
    """Ask the kernel to forget the files' cached pages, so a load reads them from disk; False if it cannot."""
    if not hasattr(os, "posix_fadvise"):
        return False
    for path in files:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)
    return True


def fps(frames: int, seconds: float) -> float:
    return round(frames / seconds, 2) if seconds > 0 else float("inf")


class Stopwatch:
    """Named laps since a start time (the process's spawn, when the runner passed it)."""

    def __init__(self, started: float | None = None) -> None:
        self.started = started or time.time()
        self.last = self.started
        self.laps: dict[str, float] = {}

    def lap(self, name: str) -> float:
        now = time.time()
        self.laps[name] = round(now - self.last, 3)
        self.last = now
        return self.laps[name]

    def total(self) -> float:
        return round(self.last - self.started, 3)


def image_diff(a: np.ndarray, b: np.ndarray) -> dict[str, float]:
    diff = np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64))
    return {"max_diff": round(float(diff.max()), 2), "mean_diff": round(float(diff.mean()), 3)}
