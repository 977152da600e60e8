"""One engine on the run's device, in a fresh process, loaded as the worker loads it (settings, engine table,
weights resolver):

- ``cold_start``: seconds from the process's spawn to the first frame, by phase (``endtoend.cold_start``);
- ``render``: frames/s of ``engine.render`` on the run's avatar (or portrait) and speech, all included
  (avatar frames decoded through the frame cache, model, blending);
- ``live``: live sessions at 25 fps, through the seam's per-worker scheduler where the checkout has it (else
  concurrent ``render`` streams), adding sessions until one falls behind;
- ``model``: the model work alone (``model_paths``) in the automatic precision (fp16 on CUDA) against fp32
  on the same inputs: frames/s, speed-up, and the fp16 frames' difference in 8-bit levels;
- ``memory_after_load`` / ``memory_peak``: peak GPU memory after loading, and over render and live streams
  (peak RSS on a CPU run);
- ``generate_video``: the task end to end through ``handlers.dispatch`` (``endtoend.requests``).

Each step is isolated: a failure is recorded under ``errors`` and the next step runs.
"""

from __future__ import annotations

import importlib.util
import logging
import statistics
import threading
import time
from collections.abc import Callable
from typing import Any

from bench.gpu import model_paths
from bench.gpu.profiles import Profile
from bench.gpu.specs import by_name
from bench.gpu.worker import Work, device_name, fps, image_diff, memory, runtime, speech, sync
from bench.timing import interleaved_medians

log = logging.getLogger(__name__)

LIVE_FPS = 25.0
LIVE_DELAY_S = 0.3  # a session's first frame is taken this long after its utterance starts
ON_TIME_SHARE = 0.95


def load(name: str, work: Work, profile: Profile, **settings: Any) -> tuple[Any, Any, float]:
    """(engine, runtime, seconds) through the worker's engine table, as a request with ``engine: name`` loads it."""
    from handlers import engine_choice

    built = runtime(work, profile, **settings)
    started = time.perf_counter()
    engine, _ = engine_choice.neural_engine(name, built)
    sync()
    return engine, built, time.perf_counter() - started


def render_fps(engine: Any, avatar: Any, seconds: float, runs: int) -> dict[str, float]:
    audio = speech(seconds)
    for _ in engine.render(avatar, audio):  # warm-up: kernels, cuDNN's choices for these shapes, the frame cache
        pass
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        count = sum(1 for _ in engine.render(avatar, audio))
        sync()
        times.append(time.perf_counter() - started)
    median = statistics.median(times)
    return {"frames": count, "fps": fps(count, median), "ms_per_frame": round(1000 * median / count, 2)}


def _stream(engine: Any, avatar: Any, audio: Any, out: list[float], start: threading.Barrier) -> None:
    start.wait()
    began = time.perf_counter()
    count = sum(1 for _ in engine.render(avatar, audio))
    out.append(count / (time.perf_counter() - began))


def live_sessions(engine: Any, avatar: Any, profile: Profile, deadline: float) -> dict[str, Any]:
    """Live sessions one engine serves at 25 fps: through the per-worker scheduler when the checkout has the
    streaming seam (``engines.lipsync.scheduler``), else concurrent ``render`` streams."""
    if importlib.util.find_spec("engines.lipsync.scheduler") is None:
        return live_streams(engine, avatar, profile, deadline)
    return scheduled_sessions(engine, avatar, profile, deadline)


def _paced_consumer(rendered: set[int], frames: int, start: float, out: list[float]) -> None:
    """A session's clock: frame ``n`` is due at ``start + n / 25``; the share found rendered by then."""
    on_time = 0
    for n in range(frames):
        time.sleep(max(0.0, start + n / LIVE_FPS - time.monotonic()))
        on_time += n in rendered
    out.append(on_time / frames)


def scheduled_sessions(engine: Any, avatar: Any, profile: Profile, deadline: float) -> dict[str, Any]:
    """N live streams on one scheduler (one batched engine call for all of them), each pushed its utterance at
    once and taken at 25 fps after ``LIVE_DELAY_S``: the most N whose every stream has >= 95 % of its frames
    rendered when its clock takes them (no transport: WebRTC encoding is CPU work, measured elsewhere)."""
    from engines.lipsync.scheduler import TARGET_PASS_S, StreamScheduler
    from engines.lipsync.stream import LipSyncStream

    audio = speech(profile.live_seconds)
    tried, best = [], 0
    for count in profile.live_streams:
        if time.monotonic() > deadline:
            break
        scheduler = StreamScheduler(TARGET_PASS_S)  # a live worker's: passes cut to TARGET_PASS_S
        rendered: list[set[int]] = [set() for _ in range(count)]
        shares: list[float] = []
        for done in rendered:
            stream = LipSyncStream(engine, avatar)
            stream.push(audio.samples)
            stream.flush()
            scheduler.add(stream, lambda frames, done=done: done.update(n for n, _ in frames))
        try:
            start = time.monotonic() + LIVE_DELAY_S
            scheduler.start()
            args = [(done, audio.num_frames, start, shares) for done in rendered]
            threads = [threading.Thread(target=_paced_consumer, args=a) for a in args]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
        finally:
            scheduler.stop()
        tried.append({"streams": count, "min_on_time": round(min(shares), 3), "batches": scheduler.passes})
        if min(shares) < ON_TIME_SHARE:
            break
        best = count
    method = f"seam scheduler, frames taken at 25 fps from {LIVE_DELAY_S:g} s after the utterance started"
    return {"method": method, "streams_at_25fps": best, "tried": tried}


def live_streams(engine: Any, avatar: Any, profile: Profile, deadline: float) -> dict[str, Any]:
    """The most concurrent render streams that each keep 25 fps (no batching across streams, no transport)."""
    audio = speech(profile.live_seconds)
    tried, best = [], 0
    for count in profile.live_streams:
        if time.monotonic() > deadline:
            break
        rates: list[float] = []
        barrier = threading.Barrier(count)
        threads = [threading.Thread(target=_stream, args=(engine, avatar, audio, rates, barrier)) for _ in range(count)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        tried.append({"streams": count, "min_fps": round(min(rates), 1), "mean_fps": round(statistics.mean(rates), 1)})
        if min(rates) < LIVE_FPS:
            break
        best = count
    return {"method": "concurrent render() threads (no scheduler on this checkout)", "streams_at_25fps": best} | {
        "tried": tried
    }


def model_figures(name: str, engine: Any, work: Work, profile: Profile) -> dict[str, Any]:
    """Automatic precision against fp32, case by case, timed round-robin (median of ``profile.runs``)."""
    import torch

    fast = model_paths.cases(name, engine, profile)
    if not fast:
        return {}
    fp32_settings = {f"{prefix}_precision": "fp32" for prefix in ("wav2lip", "musetalk", "liveportrait")}
    plain, _, _ = load(name, work, profile, **fp32_settings)
    slow = model_paths.cases(name, plain, profile)
    device = torch.device(profile.device if torch.cuda.is_available() else "cpu")
    figures = {}
    for label, (call, frames) in fast.items():
        seconds = interleaved_medians({"auto": call, "fp32": slow[label][0]}, profile.runs, device)
        figures[label] = {
            "fps": fps(frames, seconds["auto"]),
            "ms_per_frame": round(1000 * seconds["auto"] / frames, 3),
            "fp32_fps": fps(frames, seconds["fp32"]),
            "speedup_vs_fp32": round(seconds["fp32"] / seconds["auto"], 2),
            **image_diff(call(), slow[label][0]()),
        }
    return figures


def step(result: dict[str, Any], name: str, deadline: float, measure: Callable[[], Any]) -> None:
    """``result[name] = measure()``; a failure (or no time left) is recorded under ``errors`` and the run goes on."""
    if time.monotonic() > deadline:
        result.setdefault("errors", {})[name] = "out of time (the section's box)"
        return
    try:
        result[name] = measure()
    except Exception as exc:  # one step's failure must not lose the others' figures
        log.exception("%s failed", name)
        result.setdefault("errors", {})[name] = f"{type(exc).__name__}: {exc}"


def run(
    name: str, work: Work, profile: Profile, deadline: float, spawned_at: float, save: Callable[[dict], None]
) -> dict[str, Any]:
    """Cold start first (this process is fresh), then the engine's figures, then generate_video end to end;
    ``save`` gets the figures so far after each step."""
    from bench.gpu import endtoend

    spec = by_name(name)
    engine, built, avatar, cold = endtoend.cold_start(name, work, profile, spawned_at)
    result: dict[str, Any] = {"device": device_name(), "info": dict(getattr(engine, "info", {})), "paper": spec.paper}
    result |= {"cold_start": cold, "memory_after_load": memory()}
    steps: list[tuple[str, Callable[[], Any]]] = [
        ("render", lambda: render_fps(engine, avatar, profile.render_seconds, profile.runs)),
        ("live", lambda: live_sessions(engine, avatar, profile, deadline)),
        ("memory_peak", memory),
        ("model", lambda: model_figures(name, engine, work, profile)),
        ("generate_video", lambda: endtoend.requests(name, work, built, profile.e2e_requests)),
    ]
    if not spec.portrait:
        steps.append(("decode_ms_per_frame", lambda: endtoend.decode_ms_per_frame(work)))
    for label, measure in steps:
        save(result)
        step(result, label, deadline, measure)
    return result
