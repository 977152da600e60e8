"""``torch.compile`` where an engine offers it (MuseTalk: UNet + VAE decoder; LivePortrait: W + G).

The engine as a worker loads it, then again with its ``{engine}_compile`` setting on (``MUSETALK_COMPILE=1`` /
``LIVEPORTRAIT_COMPILE=1``, the worker's own switches, options of the rows of ``engines.table``); the model
cases of ``model_paths`` on both: the first compiled call's seconds (compilation included), then frames/s of
both, timed round-robin, and the compiled frames' difference in 8-bit levels. Compilation happens on CUDA
only: on a CPU run the switch is a no-op and the section just keeps this code path working.
"""

from __future__ import annotations

import time
from typing import Any

import torch

from bench.gpu import model_paths
from bench.gpu.engine_bench import load
from bench.gpu.profiles import Profile
from bench.gpu.worker import Work, device_name, fps, image_diff, sync
from bench.timing import interleaved_medians


def compile_setting(name: str) -> str | None:
    """The settings field that switches ``torch.compile`` on for engine ``name``, if its row has one."""
    from engines import table

    setting = f"{name}_compile"
    return setting if setting in table.row(name).options else None


def run(name: str, work: Work, profile: Profile) -> dict[str, Any]:
    setting = compile_setting(name)
    if setting is None:
        raise ValueError(f"{name} offers no torch.compile path")
    plain_engine, _, _ = load(name, work, profile)
    compiled_engine, _, load_s = load(name, work, profile, **{setting: True})
    plain = model_paths.cases(name, plain_engine, profile)
    fast = model_paths.cases(name, compiled_engine, profile)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    figures: dict[str, Any] = {"device": device_name(), "compiled": device.type == "cuda", "load_s": round(load_s, 2)}
    for label, (call, frames) in fast.items():
        started = time.perf_counter()
        compiled_frames = call()  # compiles (CUDA)
        sync()
        first_s = time.perf_counter() - started
        seconds = interleaved_medians({"compiled": call, "plain": plain[label][0]}, profile.runs, device)
        figures[label] = {
            "first_call_s": round(first_s, 1),
            "fps": fps(frames, seconds["compiled"]),
            "plain_fps": fps(frames, seconds["plain"]),
            "speedup": round(seconds["plain"] / seconds["compiled"], 2),
            **image_diff(compiled_frames, plain[label][0]()),
        }
    return figures
