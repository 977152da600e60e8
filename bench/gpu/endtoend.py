"""Cold start to the first frame, and generate_video end to end, for one engine.

``cold_start`` (seconds since the runner spawned this process, by phase): ``import`` (handlers, torch),
``cpu_part`` (``handlers.warmup.load_cpu_part``: what a CPU memory snapshot would hold), ``load`` (the
engine's weights read from local disk, their pages dropped from the page cache first, and moved to the
device), ``material`` (MuseTalk: the avatar's latents, computed on first use), ``first_frame`` (the first
frame out of ``render``).

``requests``: ``generate_video`` through ``handlers.dispatch``, as a worker serves it (text spoken by eSpeak,
the avatar's TAR fetched from a file:// store and unpacked, frames decoded, H.264 encoded on the CPU, the
mp4 stored): the first request with a cold avatar cache, the next ones warm. ``timings_ms`` split the
stages; ``decode_ms_per_frame`` is measured apart (PNG decoding of the avatar's frames, which the first
request does inside ``render``).
"""

from __future__ import annotations

import time
from typing import Any

from bench.gpu.profiles import Profile
from bench.gpu.weights import weight_files
from bench.gpu.worker import AVATAR_ID, USER_ID, Stopwatch, Work, reset_peak, speech, sync


def cold_start(name: str, work: Work, profile: Profile, spawned_at: float) -> tuple[Any, Any, Any, dict[str, Any]]:
    """(engine, runtime, avatar, phases): the worker's start-up for ``name``, timed from the process's spawn."""
    clock = Stopwatch(spawned_at)
    import torch  # noqa: F401  (timed with the imports a worker makes)

    from bench.gpu.specs import by_name
    from bench.gpu.worker import bench_avatar, drop_page_cache, runtime
    from handlers import engine_choice
    from handlers.warmup import load_cpu_part

    clock.lap("import")
    built = runtime(work, profile)
    status = load_cpu_part(built)
    clock.lap("cpu_part")
    dropped = drop_page_cache(weight_files(work.weights, name))
    reset_peak()
    clock.lap("page_cache_drop")
    engine, _ = engine_choice.neural_engine(name, built)
    sync()
    clock.lap("load")
    avatar = bench_avatar(by_name(name), built, work)
    if hasattr(engine, "material"):
        engine.material(avatar)
    sync()
    clock.lap("material")
    next(iter(engine.render(avatar, speech(profile.first_frame_seconds))))
    sync()
    clock.lap("first_frame")
    phases = {"seconds": clock.laps, "to_first_frame_s": round(clock.total() - clock.laps["page_cache_drop"], 3)}
    return engine, built, avatar, phases | {"page_cache_dropped": dropped, "cpu_part_status": status}


def decode_ms_per_frame(work: Work) -> float:
    import cv2

    frames = sorted((work.avatar_dir / "full_imgs").glob("*.png"))
    started = time.perf_counter()
    for path in frames:
        cv2.imread(str(path))
    return round(1000 * (time.perf_counter() - started) / len(frames), 3)


def payload(name: str, work: Work, portrait: bool) -> dict[str, Any]:
    """The request: the run's text (or, on a run with ``e2e_audio_seconds``, its audio file) for the avatar or
    the portrait."""
    request = {"task": "generate_video", "user_id": USER_ID, "engine": name}
    speech_input = {"audio": work.audio.as_uri()} if work.audio.is_file() else {"text": work.text_file.read_text()}
    return request | speech_input | ({"image": work.portrait.as_uri()} if portrait else {"avatar_id": AVATAR_ID})


def summary(result: dict[str, Any], wall_s: float) -> dict[str, Any]:
    if "error_code" in result:
        raise RuntimeError(f"generate_video failed: {result['error_code']}: {result['error']}")
    return {
        "wall_s": round(wall_s, 3),
        "video_s": result["duration_s"],
        "frames": result["num_frames"],
        "size": f"{result['width']}x{result['height']}",
        "real_time_factor": round(result["duration_s"] / wall_s, 2),
        "fps": round(result["num_frames"] / wall_s, 1),
        "timings_ms": result["timings_ms"],
    }


def requests(name: str, work: Work, built: Any, count: int) -> dict[str, Any]:
    """``count`` generate_video requests: ``first`` (cold avatar cache) and ``warm`` (the last one)."""
    import handlers
    from bench.gpu.specs import by_name

    request = payload(name, work, by_name(name).portrait)
    runs = []
    for _ in range(count):
        started = time.perf_counter()
        result = handlers.dispatch(request, built)
        runs.append(summary(result, time.perf_counter() - started))
    return {"first": runs[0], "warm": runs[-1] if count > 1 else None}
