"""LivePortrait inference speed: the optimized engine path vs a plain fp32 eval of the same modules.

In one process, on the same random weights (official layout, written to a temp dir) and the same inputs:

- ``plain``: the modules as loaded (BatchNorm separate, spectral norm recomputed, float32) under
  ``torch.no_grad``, one frame per call, the source-only part of W recomputed every frame — how the
  upstream wrapper runs them;
- ``engine``: ``load_liveportrait`` (BatchNorm folded, spectral norms frozen, ``inference_mode``, W and G in
  the automatic precision — bf16 on CPUs with native bf16, fp16 on CUDA — source motion computed once,
  frames batched through W and G).

Per-module ms (F, M once per portrait; W, G, S per frame) and frames/s of W + G + S over ``--frames``
driving frames; each figure the median of ``--runs`` timed runs after a warm-up, paths timed round-robin.
``max/mean diff`` compares the engine's frames with the plain ones (in [0, 1]).

    python bench/liveportrait.py [--frames 4] [--runs 3] [--size 256] [--device cpu] [--batch 4]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from engines.liveportrait import LivePortrait, load_liveportrait  # noqa: E402
from engines.liveportrait.random_weights import write_random_weights  # noqa: E402

TARGET_SPEEDUP = 1.5
PAPER_MS_4090 = 12.8


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def timed(fn: Callable[[], object], device: torch.device) -> float:
    sync(device)
    start = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - start


def driving(lp: LivePortrait, x: torch.Tensor, frames: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    feature, info = lp.appearance(x), lp.motion(x)
    kp_source = lp.keypoints(info)
    exp = info["exp"].expand(frames, -1, -1).clone()
    exp[:, 19, 1] += torch.linspace(0.0, 0.04, frames, device=exp.device)
    posed = {k: v.expand(frames, *v.shape[1:]) for k, v in info.items()} | {"exp": exp}
    return feature, kp_source, lp.keypoints(posed)


def per_frame_plain(lp: LivePortrait, feature: torch.Tensor, kp_s: torch.Tensor, kp_d: torch.Tensor) -> torch.Tensor:
    """The upstream way: stitch, then W and G one frame at a time, W's source part recomputed each time."""
    out = []
    with torch.no_grad():
        for i in range(kp_d.shape[0]):
            kp = lp.stitch(kp_s, kp_d[i : i + 1])
            out.append(lp.G(lp.W(feature, kp, kp_s)))
    return torch.cat(out)


def batched_engine(lp: LivePortrait, feature: torch.Tensor, kp_s: torch.Tensor, kp_d: torch.Tensor) -> torch.Tensor:
    kp = lp.stitch(kp_s.expand(kp_d.shape[0], -1, -1), kp_d)
    return lp.warp_decode(feature, kp_s, kp)


def module_ms(
    lp: LivePortrait, x: torch.Tensor, feature: torch.Tensor, kp_s: torch.Tensor, device: torch.device
) -> dict:
    with torch.inference_mode():
        src = lp.W.source(feature, kp_s)
        warped = lp.W.warp(feature, src, kp_s)
        return {
            "F": timed(lambda: lp.appearance(x), device),
            "M": timed(lambda: lp.motion(x), device),
            "W": timed(lambda: lp.W.warp(feature, src, kp_s), device),
            "G": timed(lambda: lp.G(warped), device),
            "S": timed(lambda: lp.stitch(kp_s, kp_s), device),
        }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frames", type=int, default=4)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--size", type=int, default=256, help="crop size (256 official; multiples of 128 work)")
    parser.add_argument("--batch", type=int, default=None, help="engine batch size (default per device)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--precision", default="auto")
    args = parser.parse_args()
    device = torch.device(args.device)
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as folder:
        root = write_random_weights(folder, seed=0)
        plain = load_liveportrait(root, "fp32", args.device, optimize=False)
        engine = load_liveportrait(root, args.precision, args.device, batch_size=args.batch or args.frames)
    x = torch.rand(1, 3, args.size, args.size, generator=torch.Generator().manual_seed(1)).to(device)
    feature, kp_s, kp_d = driving(plain, x, args.frames)
    paths = {
        "plain": lambda: per_frame_plain(plain, feature, kp_s, kp_d),
        "engine": lambda: batched_engine(engine, feature, kp_s, kp_d),
    }
    outputs = {name: fn() for name, fn in paths.items()}  # warm-up, and the outputs compared below
    times: dict[str, list[float]] = {name: [] for name in paths}
    modules: dict[str, list[dict]] = {"plain": [], "engine": []}
    for _ in range(args.runs):
        for name, fn in paths.items():
            times[name].append(timed(fn, device))
            modules[name].append(module_ms(plain if name == "plain" else engine, x, feature, kp_s, device))
    diff = (outputs["engine"].float() - outputs["plain"].float()).abs()
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(f"device {name}, engine {engine.info}, crop {args.size}px, {args.frames} frames, median of {args.runs}")
    fps = {k: args.frames / statistics.median(v) for k, v in times.items()}
    for path in paths:
        ms = {m: 1000 * statistics.median(run[m] for run in modules[path]) for m in ("F", "M", "W", "G", "S")}
        per_module = " ".join(f"{m} {v:.0f}" for m, v in ms.items())
        print(f"{path:7} {fps[path]:7.3f} frames/s ({1000 / fps[path]:.0f} ms/frame); per module ms: {per_module}")
    speedup = fps["engine"] / fps["plain"]
    verdict = "meets" if speedup >= TARGET_SPEEDUP else "below"
    print(f"speed-up {speedup:.2f}x ({verdict} the {TARGET_SPEEDUP}x target)")
    print(f"paper: {PAPER_MS_4090} ms/frame on an RTX 4090")
    print(f"engine vs plain: max diff {float(diff.max()):.4f}, mean diff {float(diff.mean()):.5f}")


if __name__ == "__main__":
    main()
