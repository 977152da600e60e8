"""Cold start and per-request overhead of the RunPod worker on the CPU engines, and what memory snapshots cover.

1. Ready time: seconds from starting `python` to a worker that can take a job (the handler module,
   the RunPod SDK and every served task's engines loaded, as `python runpod_handler.py` does before
   handing over to the SDK), in a fresh process each run; median of 3. The plain SDK import (with
   its py-cpuinfo subprocess, which the worker avoids) is timed alongside as the baseline.
2. Warm overhead: what a job costs beyond the task itself, measured in one warm process as the
   median of `handler(job)` (and of the SDK's own `run_job`, which is what RunPod calls) minus the
   median of `handlers.dispatch(payload)` for the same payload, for health and render_emotion.

3. Start-up parts (Modal's memory snapshots): in a fresh process, ``import`` (handlers), the CPU part
   (``handlers.warmup.load_cpu_part``: torch and the engines' modules, face analyzer, eSpeak, the CPU
   engines) and the neural part (``handlers.load_engines``: a random wav2lip96 checkpoint read and placed
   on the device, here the CPU). A CPU memory snapshot restores the first two instead of running them; the
   neural part runs after every restore; a GPU snapshot holds all three. Restore times need Modal and are
   not measured here; on a GPU, bench/gpu.sh's cold start splits the same phases.

    python bench/coldstart.py [--runs 3] [--health-calls 200] [--emotion-calls 15]
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import logging
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

READY_TARGET_S = 2.0
OVERHEAD_TARGET_MS = 50.0
TASKS = "preprocess_avatar,generate_video,render_emotion"

READY_PROBE = """
import time
t0 = time.perf_counter()
import runpod_handler
t1 = time.perf_counter()
runpod_handler.import_sdk()
t2 = time.perf_counter()
state = runpod_handler.init_worker()
t3 = time.perf_counter()
import json
print(json.dumps({"handler_import": t1 - t0, "sdk_import": t2 - t1, "engines": t3 - t2, "status": state.load_status}))
"""


def ready_once(env: dict[str, str]) -> dict:
    started = time.perf_counter()
    out = subprocess.run(
        [sys.executable, "-c", READY_PROBE], cwd=REPO_ROOT, env=env, capture_output=True, text=True, check=True
    )
    wall = time.perf_counter() - started
    return {"wall": wall, **json.loads(out.stdout.strip().splitlines()[-1])}


def plain_sdk_import_s() -> float:
    probe = "import time; t = time.perf_counter(); import runpod.serverless; print(time.perf_counter() - t)"
    out = subprocess.run([sys.executable, "-c", probe], cwd=REPO_ROOT, capture_output=True, text=True, check=True)
    return float(out.stdout.strip().splitlines()[-1])


def bench_ready(runs: int, store: Path) -> None:
    env = {**os.environ, "WORKER_TASKS": TASKS, "AVATAR_STORE_URI": store.as_uri(), "LOG_LEVEL": "WARNING"}
    results = [ready_once(env) for _ in range(runs)]
    plain = [plain_sdk_import_s() for _ in range(runs)]
    failed = {task: s for task, s in results[-1]["status"].items() if s != "ok"}
    print(f"cold start to ready ({TASKS}; median of {runs} fresh processes)")
    for key, label in [
        ("wall", "process start -> ready"),
        ("handler_import", "  import runpod_handler"),
        ("sdk_import", "  import_sdk()"),
        ("engines", "  load_engines"),
    ]:
        values = [r[key] for r in results]
        print(f"  {label:<36} {statistics.median(values):6.2f} s   (runs: {', '.join(f'{v:.2f}' for v in values)})")
    print(f"  {'baseline: import runpod.serverless':<36} {statistics.median(plain):6.2f} s   (plain, with py-cpuinfo)")
    verdict = "meets" if statistics.median(r["wall"] for r in results) <= READY_TARGET_S else "misses"
    print(f"  target <= {READY_TARGET_S:.1f} s: {verdict}" + (f"; not loaded: {failed}" if failed else ""))


def median_ms(call: Callable[[], object], n: int) -> float:
    times = []
    for _ in range(n):
        started = time.perf_counter()
        call()
        times.append((time.perf_counter() - started) * 1000)
    return statistics.median(times)


def face_data_uri() -> str:
    import cv2
    from skimage import data

    face = cv2.cvtColor(data.astronaut(), cv2.COLOR_RGB2BGR)[0:256, 96:352]
    return "data:image/jpeg;base64," + base64.b64encode(cv2.imencode(".jpg", face)[1].tobytes()).decode()


def bench_overhead(health_calls: int, emotion_calls: int, store: Path) -> None:
    os.environ.update(WORKER_TASKS="render_emotion", AVATAR_STORE_URI=store.as_uri(), RUNPOD_LOG_LEVEL="ERROR")
    os.environ.pop("RUNPOD_WEBHOOK_POST_OUTPUT", None)
    logging.disable(logging.INFO)  # per-job log lines would be part of what is timed, and flood the output
    from runpod.serverless.modules.rp_job import run_job

    import handlers
    import runpod_handler

    state = runpod_handler.init_worker()
    payloads = {
        "health": ({"task": "health"}, health_calls),
        "render_emotion": (
            {"task": "render_emotion", "user_id": "bench", "image": face_data_uri(), "emotion": "happy"},
            emotion_calls,
        ),
    }
    print(f"\nwarm per-request overhead (median ms; render_emotion served: {state.load_status})")
    for task, (payload, n) in payloads.items():
        job = {"id": "bench", "input": payload}
        first = runpod_handler.handler(job)  # warm caches (torch import for health's device check, engines)
        if "error_code" in first:
            print(f"  {task}: skipped, {first['error_code']}: {json.loads(first['error'])['error']}")
            continue
        direct = median_ms(lambda p=payload: handlers.dispatch(p, state.runtime), n)
        via_handler = median_ms(lambda j=job: runpod_handler.handler(j), n)
        via_sdk = median_ms(lambda j=job: asyncio.run(run_job(runpod_handler.handler, dict(j))), n)
        print(
            f"  {task:<15} dispatch {direct:8.2f}   handler {via_handler:8.2f} (+{via_handler - direct:.2f})"
            f"   SDK run_job {via_sdk:8.2f} (+{via_sdk - direct:.2f})   n={n}"
        )
    print(f"  target overhead <= {OVERHEAD_TARGET_MS:.0f} ms")


PARTS_PROBE = """
import time
t0 = time.perf_counter()
import handlers
from handlers.runtime import WorkerRuntime
from handlers.warmup import load_cpu_part
t1 = time.perf_counter()
runtime = WorkerRuntime.from_env()
cpu = load_cpu_part(runtime)
t2 = time.perf_counter()
neural = handlers.load_engines(runtime)
t3 = time.perf_counter()
import json
print(json.dumps({"import": t1 - t0, "cpu_part": t2 - t1, "neural": t3 - t2, "status": [cpu, neural]}))
"""
PARTS = (
    ("import", "import handlers", "CPU snapshot"),
    ("cpu_part", "CPU part: torch, engines' modules, faces, eSpeak, CPU engines", "CPU snapshot"),
    ("neural", "neural engines: weights read, put on the device", "after the restore"),
)


def bench_parts(runs: int, work: Path) -> None:
    sys.path.insert(0, str(REPO_ROOT))
    from tests.engines.wav2lip_fixtures import write_checkpoint

    checkpoint = write_checkpoint(work / "wav2lip96.pth", "wav2lip96")
    env = {**os.environ, "WORKER_TASKS": TASKS, "AVATAR_STORE_URI": (work / "store").as_uri(), "LOG_LEVEL": "WARNING"}
    env |= {"WAV2LIP96_CHECKPOINT": str(checkpoint), "WEIGHTS_DIR": str(work / "weights")}
    results = []
    for _ in range(runs):
        out = subprocess.run(
            [sys.executable, "-c", PARTS_PROBE], cwd=REPO_ROOT, env=env, capture_output=True, text=True
        )
        if out.returncode:
            raise SystemExit(f"start-up probe failed:\n{out.stderr[-3000:]}")
        results.append(json.loads(out.stdout.strip().splitlines()[-1]))
    medians = {key: statistics.median(r[key] for r in results) for key, _, _ in PARTS}
    total = sum(medians.values())
    print(f"\nstart-up parts (fresh process, median of {runs}; neural engine: random wav2lip96 weights, on the CPU)")
    for key, label, covered in PARTS:
        print(f"  {label:<66} {medians[key]:6.2f} s   {covered}")
    snapped = medians["import"] + medians["cpu_part"]
    print(f"  CPU memory snapshot (MODAL_WORKER_MEMORY_SNAPSHOT=1) covers {snapped:.2f} of {total:.2f} s (restored)")
    print(f"  GPU memory snapshot (MODAL_WORKER_GPU_SNAPSHOT=1, alpha) covers all {total:.2f} s, device state included")
    print("  unmeasured (need Modal): restore times, container start, image and Volume mount; on a GPU the neural")
    print("  part's device share: bench/gpu.sh's cold start (phases import, cpu_part, load, first_frame)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--health-calls", type=int, default=200)
    parser.add_argument("--emotion-calls", type=int, default=15)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        bench_ready(args.runs, Path(tmp) / "ready-store")
        bench_parts(args.runs, Path(tmp))
        bench_overhead(args.health_calls, args.emotion_calls, Path(tmp) / "store")


if __name__ == "__main__":
    main()
