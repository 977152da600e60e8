"""Wav2Lip inference speed: the engine's optimized path vs a plain fp32 eval of the same weights.

For each variant and batch size, in one process, on the same random weights (non-trivial BatchNorm
statistics) and the same inputs, frames/s of:

- ``baseline``: the model as loaded (BatchNorm separate, NCHW float32) under ``torch.no_grad``, which
  is how upstream inference runs it;
- ``fp32``: the engine's path in float32 (BatchNorm folded into the convs, ``inference_mode``,
  channels-last, audio pass then face pass, uint8 in and out);
- ``engine``: the same with the engine's automatic precision (bf16 on CPUs with native bf16, fp16 on
  CUDA) — what ``wav2lip96`` / ``wav2lip256`` serve.

Each figure is the median of ``--runs`` timed runs after one warm-up, the paths timed round-robin so
load from other processes on a shared machine hits them alike; ``max/mean diff`` is the output's
difference to the baseline in 8-bit levels (the engine outputs uint8).

    python bench/wav2lip.py [--variants wav2lip96,wav2lip256] [--batches 16,64] [--runs 3] [--device cpu]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.timing import interleaved_medians  # noqa: E402
from engines.context import EngineContext  # noqa: E402
from engines.lipsync.wav2lip import build_model, load_wav2lip  # noqa: E402
from engines.lipsync.wav2lip.engine import Wav2Lip96Engine, Wav2Lip256Engine, Wav2LipEngine  # noqa: E402

ENGINES: dict[str, type[Wav2LipEngine]] = {"wav2lip96": Wav2Lip96Engine, "wav2lip256": Wav2Lip256Engine}
IMG_SIZE = {"wav2lip96": 96, "wav2lip256": 256}
TARGET_SPEEDUP = 2.0


def random_checkpoint(variant: str, folder: Path) -> Path:
    torch.manual_seed(0)
    model = build_model(variant)
    with torch.no_grad():
        for bn in (m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)):
            bn.running_mean.normal_(0.0, 0.2)
            bn.running_var.uniform_(0.5, 2.0)
            bn.weight.uniform_(0.6, 1.4)
            bn.bias.normal_(0.0, 0.1)
    path = folder / f"{variant}.pth"
    torch.save({"state_dict": model.state_dict(), "global_step": 0, "global_epoch": 0}, path)
    return path


def inputs(batch: int, size: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    mel = rng.uniform(-4.0, 4.0, (batch, 1, 80, 16)).astype(np.float32)
    faces = rng.integers(0, 256, (batch, size, size, 6), dtype=np.uint8)
    faces[:, size // 2 :, :, :3] = 0  # the masked lower half, as the engine feeds it
    return mel, faces


def baseline_path(
    variant: str, path: Path, mel_np: np.ndarray, faces_np: np.ndarray, device: torch.device
) -> Callable[[], np.ndarray]:
    """The plain fp32 model under no_grad, returning its output x 255 as NHWC."""
    plain = load_wav2lip(path, variant, device)
    mel = torch.from_numpy(mel_np).to(device)
    face = torch.from_numpy(faces_np).to(device).permute(0, 3, 1, 2).float().div(255.0).contiguous()

    def forward() -> np.ndarray:
        with torch.no_grad():
            return plain(mel, face).mul(255.0).cpu().numpy().transpose(0, 2, 3, 1)

    return forward


def bench_case(variant: str, path: Path, batch: int, runs: int, device: torch.device) -> list[dict]:
    mel_np, faces_np = inputs(batch, IMG_SIZE[variant])
    paths: dict[str, Callable[[], np.ndarray]] = {"baseline": baseline_path(variant, path, mel_np, faces_np, device)}
    for precision in ("fp32", "auto"):
        engine = ENGINES[variant].load(path, EngineContext(device.type, precision, {"batch_size": batch}))
        if precision == "auto" and engine.dtype == torch.float32:
            break  # no faster precision on this device: the fp32 row is the engine
        label = "fp32" if precision == "fp32" else f"engine ({engine.info['precision']})"
        paths[label] = lambda e=engine: e.generate(mel_np, faces_np)
    seconds = interleaved_medians(paths, runs, device)
    reference = paths["baseline"]()
    rows = []
    for label, fn in paths.items():
        diff = np.abs(fn().astype(np.float64) - reference)
        speedup = seconds["baseline"] / seconds[label]
        rows.append({"path": label, "fps": batch / seconds[label], "speedup": speedup, "max": diff.max()})
        rows[-1]["mean"] = diff.mean()
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--variants", default="wav2lip96,wav2lip256")
    parser.add_argument("--batches", default="16,64")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    device = torch.device(args.device)
    name = torch.cuda.get_device_name(0) if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    print(f"Wav2Lip frames/s on {name} (torch {torch.__version__}), median of {args.runs} runs")
    print(f"{'variant':11} {'batch':>5}  {'path':18} {'frames/s':>9} {'speedup':>8} {'max diff':>9} {'mean diff':>9}")
    with tempfile.TemporaryDirectory() as folder:
        for variant in args.variants.split(","):
            path = random_checkpoint(variant, Path(folder))
            for batch in (int(b) for b in args.batches.split(",")):
                for row in bench_case(variant, path, batch, args.runs, device):
                    print(
                        f"{variant:11} {batch:>5}  {row['path']:18} {row['fps']:>9.2f} {row['speedup']:>7.2f}x "
                        f"{row['max']:>9.2f} {row['mean']:>9.3f}",
                        flush=True,
                    )
    print(f"target: engine >= {TARGET_SPEEDUP:.0f}x the baseline; diffs in 8-bit levels (baseline x 255)")


if __name__ == "__main__":
    main()
