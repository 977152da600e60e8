"""``torch.compile`` where an engine offers it (MuseTalk: UNet + VAE decoder; LivePortrait: W + G), CUDA only.

The model cases of ``model_paths`` on the engine as the worker loads it (automatic precision) against the
same weights loaded with compilation: the first call's seconds (compilation included), then frames/s of
both, timed round-robin, and the compiled frames' difference in 8-bit levels."""

from __future__ import annotations

import time
from types import SimpleNamespace
from typing import Any

import torch

from bench.gpu import model_paths
from bench.gpu.engine_bench import load
from bench.gpu.profiles import Profile
from bench.gpu.worker import Work, device_name, fps, image_diff, sync
from bench.timing import interleaved_medians

OFFERED = ("musetalk", "liveportrait")


def compiled_engine(name: str, work: Work, profile: Profile) -> Any:
    """The engine's model loaded again with compilation on (what MUSETALK_COMPILE / LIVEPORTRAIT_COMPILE do)."""
    if name == "musetalk":
        from engines.lipsync.musetalk.model import load_musetalk

        return SimpleNamespace(model=load_musetalk(work.weights / "musetalk", compile=True))
    from engines.liveportrait import load_liveportrait

    return SimpleNamespace(lp=load_liveportrait(work.weights / "liveportrait", compile_modules=True))


def run(name: str, work: Work, profile: Profile) -> dict[str, Any]:
    if name not in OFFERED:
        raise ValueError(f"{name} offers no torch.compile path")
    if not torch.cuda.is_available():
        return {"skipped": "torch.compile is applied on CUDA only"}
    engine, _, _ = load(name, work, profile)
    plain = model_paths.cases(name, engine, profile)
    fast = model_paths.cases(name, compiled_engine(name, work, profile), profile)
    figures: dict[str, Any] = {"device": device_name()}
    for label, (call, frames) in fast.items():
        started = time.perf_counter()
        compiled_frames = call()  # compiles
        sync()
        first_s = time.perf_counter() - started
        seconds = interleaved_medians({"compiled": call, "plain": plain[label][0]}, profile.runs, torch.device("cuda"))
        figures[label] = {
            "first_call_s": round(first_s, 1),
            "fps": fps(frames, seconds["compiled"]),
            "plain_fps": fps(frames, seconds["plain"]),
            "speedup": round(seconds["plain"] / seconds["compiled"], 2),
            **image_diff(compiled_frames, plain[label][0]()),
        }
    return figures
