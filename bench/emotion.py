"""render_emotion on the CPU engine (landmark_warp): latency per 512x512 still and per batch of seven.

Portrait: the 512x512 astronaut (tests.media). After ``--warmup`` untimed iterations, ``--iters``
timed ones; p50 and p95 in milliseconds.

- still: face analysis (detection + landmarks + control points) and one render, the figure the target
  (p50 <= 50 ms) is about; also each part alone, and PNG / JPEG encoding of the result;
- batch: one analysis and all seven emotions rendered (and, separately, also PNG-encoded);
- dispatch: ``handlers.dispatch`` end to end from a data: URI to a file:// store (decode, analysis,
  render, encode, upload), one emotion and all seven.

    python bench/emotion.py [--iters 30] [--warmup 3] [--side 512]
"""

from __future__ import annotations

import argparse
import base64
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

TARGET_P50_MS = 50.0


def measure(fn: Callable[[], object], iters: int, warmup: int) -> tuple[float, float]:
    """(p50, p95) in milliseconds."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(iters):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1000.0)
    times.sort()
    return statistics.median(times), times[min(len(times) - 1, round(0.95 * (len(times) - 1)))]


def engine_cases(side: int) -> dict[str, Callable[[], object]]:
    from engines.expression import DEFAULT_ENGINE, EMOTIONS, encode_image, load_expression_engine
    from engines.face import load_face_analyzer
    from tests.media import astronaut_bgr

    engine = load_expression_engine(DEFAULT_ENGINE, load_face_analyzer())
    image = astronaut_bgr(side)
    analysis = engine.analyze(image)
    happy = engine.render(analysis, "happy", 0.7)

    def batch(encode: str | None) -> None:
        shared = engine.analyze(image)
        for emotion in EMOTIONS:
            out = engine.render(shared, emotion, 0.7)
            if encode:
                encode_image(out, encode)

    return {
        "still: analysis + render (happy)": lambda: engine.render(engine.analyze(image), "happy", 0.7),
        "  analysis only": lambda: engine.analyze(image),
        "  render only (happy)": lambda: engine.render(analysis, "happy", 0.7),
        "  render only (surprised)": lambda: engine.render(analysis, "surprised", 0.7),
        "  encode png": lambda: encode_image(happy, "png"),
        "  encode jpg": lambda: encode_image(happy, "jpg"),
        "batch of 7: analysis + renders": lambda: batch(None),
        "batch of 7: + png encoding": lambda: batch("png"),
    }


def dispatch_cases(side: int, store_dir: Path) -> dict[str, Callable[[], object]]:
    import cv2

    import handlers
    from engines.expression import EMOTIONS
    from handlers.settings import Settings
    from tests.media import astronaut_bgr

    runtime = handlers.worker_runtime(Settings(avatar_store_uri=store_dir.as_uri()))
    png = cv2.imencode(".png", astronaut_bgr(side))[1].tobytes()
    uri = "data:image/png;base64," + base64.b64encode(png).decode()

    def run(**fields) -> None:
        result = handlers.dispatch({"task": "render_emotion", "user_id": "bench", "image": uri, **fields}, runtime)
        if "error" in result:
            raise RuntimeError(result)

    return {
        "dispatch: 1 emotion, png": lambda: run(emotion="happy"),
        "dispatch: 7 emotions, jpg": lambda: run(emotions=list(EMOTIONS), output_format="jpg"),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iters", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--side", type=int, default=512)
    args = parser.parse_args()

    print(f"render_emotion, landmark_warp engine, {args.side}x{args.side} portrait, {args.iters} iterations")
    print(f"{'case':<36} {'p50 ms':>8} {'p95 ms':>8}")
    results = {}
    with tempfile.TemporaryDirectory(prefix="bench-emotion-") as tmp:
        cases = {**engine_cases(args.side), **dispatch_cases(args.side, Path(tmp))}
        for name, fn in cases.items():
            p50, p95 = measure(fn, args.iters, args.warmup)
            results[name] = p50
            print(f"{name:<36} {p50:8.1f} {p95:8.1f}")
    still = results["still: analysis + render (happy)"]
    verdict = "meets" if still <= TARGET_P50_MS else "misses"
    print(f"still p50 {still:.1f} ms {verdict} the target of {TARGET_P50_MS:.0f} ms")


if __name__ == "__main__":
    main()
