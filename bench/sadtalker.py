"""SadTalker render speed: the engine path vs a plain fp32 eval of the same modules, in one process.

On the same random weights (official layout, written to a temp dir) and the same inputs:

- ``plain``: the modules as loaded (BatchNorm separate, spectral norm recomputed, float32) under
  ``torch.no_grad``, one frame per call, the generator's source encoding and dense-motion inputs recomputed
  for every frame — how upstream's ``make_animation`` runs them;
- ``engine``: ``load_sadtalker`` (BatchNorm folded, spectral norms frozen, ``inference_mode``, the generator
  in the automatic precision — bf16 on CPUs with native bf16, fp16 on CUDA — source features once per
  portrait, frames batched).

Frames/s of the render over ``--frames`` frames (the median of ``--runs`` runs, paths timed round-robin after a
warm-up; the engine's once-per-portrait source work is reported apart), per-module ms, and how far the engine's
frames are from the plain ones. ``--size 128`` runs the same modules on a quarter of the pixels.

    python bench/sadtalker.py [--frames 4] [--runs 3] [--size 256] [--device cpu] [--precision auto]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.timing import interleaved_medians, timed  # noqa: E402
from engines.liveportrait.warping import warp_feature  # noqa: E402
from engines.sadtalker import SadTalker, load_sadtalker  # noqa: E402
from engines.sadtalker.model import coefficient_windows, driving_rows, transform_keypoints  # noqa: E402
from engines.sadtalker.random_weights import write_random_weights  # noqa: E402

TARGET_SPEEDUP = 1.5
SEED_SECONDS = {"LivePortrait on an L4": (5, 10), "SadTalker on an M3": (40, 50)}  # seed 001, per 10 s of video


def plain_render(st: SadTalker, source: torch.Tensor, coeffs: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """Upstream's loop: per frame, mapping, keypoints and the whole generator (source part included)."""
    frames = []
    with torch.no_grad():
        window = coeffs[:, :, None].expand(-1, -1, 27)
        kp_canonical = st.kp_extractor(source)
        kp_source = transform_keypoints(kp_canonical, st.mappings[coeffs.shape[1]](window))
        driving = driving_rows(coeffs, rows, False, 1.0)
        for i in range(rows.shape[0]):
            he = st.mappings[coeffs.shape[1]](coefficient_windows(driving, range(i, i + 1)))
            frames.append(st.generator(source, transform_keypoints(kp_canonical, he), kp_source))
    return torch.cat(frames)


def module_ms(st: SadTalker, source: torch.Tensor, coeffs: torch.Tensor, device: torch.device) -> dict[str, float]:
    """One frame through each part (the generator's per-frame parts in its own dtype)."""
    gen = st.generator
    with torch.inference_mode():
        window = coeffs[:, :, None].expand(-1, -1, 27)
        kp = st.kp_extractor(source)
        kp_s = transform_keypoints(kp, st.mappings[coeffs.shape[1]](window))
        feature, src = gen.source(source, kp_s)
        warped = warp_feature(gen, feature, src, kp_s).contiguous(memory_format=gen.layout)
        return {
            "kp_extractor": 1000 * timed(lambda: st.kp_extractor(source), device),
            "source": 1000 * timed(lambda: gen.source(source, kp_s), device),
            "mapping": 1000 * timed(lambda: st.mappings[coeffs.shape[1]](window), device),
            "dense_motion": 1000 * timed(lambda: gen.dense_motion_network(src, kp_s), device),
            "dense_motion+warp": 1000 * timed(lambda: warp_feature(gen, feature, src, kp_s), device),
            "decoder": 1000 * timed(lambda: gen.decoder(warped), device),
        }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frames", type=int, default=4)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--size", type=int, default=256, help="render size (256/512 official; multiples of 128)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--precision", default="auto")
    args = parser.parse_args()
    device = torch.device(args.device)
    with tempfile.TemporaryDirectory() as folder:
        write_random_weights(folder, seed=0)
        plain = load_sadtalker(folder, 256, "fp32", args.device, optimize=False)
        engine = load_sadtalker(folder, 256, args.precision, args.device)
    engine.batch_size = min(engine.batch_size, args.frames)
    g = torch.Generator().manual_seed(1)
    source = torch.rand(1, 3, args.size, args.size, generator=g).to(device)
    coeffs = (torch.randn(1, 70, generator=g) * 0.2).to(device)
    rows = (coeffs + 0.1 * torch.randn(args.frames, 70, generator=g).to(device)).clone()
    paths = {
        "plain": lambda: plain_render(plain, source, coeffs, rows),
        "engine": lambda: engine.render(source, coeffs, rows),
    }
    outputs = {name: fn() for name, fn in paths.items()}
    engine._source = None
    source_s = timed(lambda: engine.render(source, coeffs, rows[:1]), device)
    medians = interleaved_medians(paths, args.runs, device)
    diff = (outputs["engine"].float() - outputs["plain"].float()).abs() * 255
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(f"device {name}, engine {engine.info}, {args.size}px, {args.frames} frames, median of {args.runs}")
    fps = {k: args.frames / v for k, v in medians.items()}
    for path, st in (("plain", plain), ("engine", engine)):
        ms = module_ms(st, source, coeffs, device)
        per_module = " ".join(f"{m} {v:.0f}" for m, v in ms.items())
        print(f"{path:7} {fps[path]:7.3f} frames/s ({1000 / fps[path]:.0f} ms/frame); per module ms: {per_module}")
    print(f"engine: first frame of a new portrait {source_s:.2f} s (source features computed once)")
    speedup = fps["engine"] / fps["plain"]
    print(f"speed-up {speedup:.2f}x ({'meets' if speedup >= TARGET_SPEEDUP else 'below'} the {TARGET_SPEEDUP}x target)")
    per_10s = 250 / fps["engine"]
    seed = "; ".join(f"{k} {lo}-{hi} s" for k, (lo, hi) in SEED_SECONDS.items())
    print(f"engine: {per_10s:.0f} s of rendering per 10 s of video at 25 fps (seed 001: {seed})")
    print(f"engine vs plain: max {float(diff.max()):.2f} / mean {float(diff.mean()):.3f} grey levels")


if __name__ == "__main__":
    main()
