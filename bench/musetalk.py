"""MuseTalk 1.5 inference speed: the engine's optimized path vs plain fp32 of the same modules.

Full-size modules (the shipped MuseTalk 1.5 / sd-vae / whisper-tiny configs) with random weights, built
once in this process. Per batch of frames, the model work a prepared avatar needs (UNet step + VAE
decode), frames/s of:

- ``fp32``: the modules in float32 under ``torch.no_grad``, called as upstream's realtime inference does
  (positional encoding, UNet at timestep 0, decode), the baseline;
- ``engine``: ``MuseTalk.generate`` with the automatic precision (bf16 on CPUs with native bf16, fp16
  on CUDA; the modules converted once), ``inference_mode``, uint8 out.

Then the engine's per-stage ms: audio (whisper features + windows, per second of speech), UNet, VAE
decode (per frame), blend (resize + masked paste into a 512x512 frame, per frame). Each figure is the
median of ``--runs`` runs after a warm-up, paths timed round-robin; ``max/mean diff`` is the engine's
output against the baseline in 8-bit levels.

    python bench/musetalk.py [--batch 4] [--runs 3] [--device cpu|cuda] [--compile]
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.timing import interleaved_medians  # noqa: E402
from engines.lipsync.musetalk.avatar import blend_mask, landmark_box, paste_face  # noqa: E402
from engines.lipsync.musetalk.loader import CONFIGS, load_feature_extractor  # noqa: E402
from engines.lipsync.musetalk.model import MuseTalk  # noqa: E402
from engines.precision import inference_dtype  # noqa: E402

TARGET_SPEEDUP = 1.5
PUBLISHED_FPS = {"V100": 30.0, "4090": 72.0}


def random_modules(device: torch.device) -> tuple[torch.nn.Module, torch.nn.Module, torch.nn.Module]:
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import WhisperConfig
    from transformers.models.whisper.modeling_whisper import WhisperEncoder

    torch.manual_seed(0)
    configs = [json.loads((CONFIGS / n).read_text()) for n in ("musetalk.json", "sd_vae.json", "whisper_tiny.json")]
    unet = UNet2DConditionModel.from_config(configs[0])
    vae = AutoencoderKL.from_config(configs[1])
    whisper = WhisperEncoder(WhisperConfig(**configs[2]))
    return tuple(torch.nn.Module.to(m, device).eval().requires_grad_(False) for m in (unet, vae, whisper))


def baseline(model: MuseTalk, latents: torch.Tensor, chunks: torch.Tensor) -> Callable[[], np.ndarray]:
    """Upstream's realtime call sequence on the fp32 modules, under no_grad."""
    positions = model._positions.float()

    def forward() -> np.ndarray:
        with torch.no_grad():
            predicted = model.unet(
                latents, torch.tensor([0], device=model.device), encoder_hidden_states=chunks + positions
            )
            image = model.vae.decode(predicted.sample / model.scaling).sample
            image = (image / 2 + 0.5).clamp(0, 1).permute(0, 2, 3, 1).float().cpu().numpy()
            return (image * 255).round().astype(np.uint8)[..., ::-1]

    return forward


def blend_case(batch: int) -> Callable[[], None]:
    frame = np.random.default_rng(0).integers(0, 256, (512, 512, 3), dtype=np.uint8)
    landmarks = np.stack([np.linspace(180, 330, 68), np.linspace(200, 360, 68)], axis=1).astype(np.float32)
    box = landmark_box(landmarks, 512, 512)
    mask, crop = blend_mask(frame, box, landmarks)
    face = np.random.default_rng(1).integers(0, 256, (256, 256, 3), dtype=np.uint8)
    return lambda: [paste_face(frame, face, box, mask, crop) for _ in range(batch)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--compile", action="store_true", help="torch.compile the engine's UNet and decoder (CUDA)")
    args = parser.parse_args()
    device = torch.device(args.device)
    name = torch.cuda.get_device_name(0) if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    unet, vae, whisper = random_modules(device)
    extractor = load_feature_extractor(Path("/nonexistent"))
    plain = MuseTalk(unet, vae, whisper, extractor, device, torch.float32)
    dtype = inference_dtype(device, "auto")
    fast_modules = [torch.nn.Module.to(copy.deepcopy(m), dtype=dtype) for m in (unet, vae, whisper)]
    fast = MuseTalk(*fast_modules, extractor, device, dtype)
    if args.compile and device.type == "cuda":
        from engines.lipsync.musetalk.model import _compile

        _compile(fast)
    rng = np.random.default_rng(0)
    faces = rng.integers(0, 256, (args.batch, 256, 256, 3), dtype=np.uint8)
    speech = (0.1 * rng.standard_normal(16000)).astype(np.float32)
    latents = plain.face_latents(faces)
    chunks = plain.audio_chunks(speech)[: args.batch].clone()
    paths = {
        "fp32": baseline(plain, latents, chunks),
        f"engine ({fast.precision})": lambda: fast.generate(latents, chunks),
    }
    seconds = interleaved_medians(paths, args.runs, device)
    reference = paths["fp32"]().astype(np.float64)
    print(f"MuseTalk 1.5 frames/s on {name} (torch {torch.__version__}), batch {args.batch}, median of {args.runs}")
    print(f"{'path':18} {'frames/s':>9} {'speedup':>8} {'max diff':>9} {'mean diff':>9}")
    for label, fn in paths.items():
        diff = np.abs(fn().astype(np.float64) - reference)
        speedup = seconds["fp32"] / seconds[label]
        print(f"{label:18} {args.batch / seconds[label]:>9.2f} {speedup:>7.2f}x {diff.max():>9.1f} {diff.mean():>9.2f}")
    stages = {
        "audio (per s of speech)": (lambda: fast.audio_chunks(speech), 1),
        "UNet (per frame)": (lambda: fast.unet_step(latents, chunks), args.batch),
        "VAE decode (per frame)": (lambda p=fast.unet_step(latents, chunks): fast.decode(p), args.batch),
        "blend (per frame)": (blend_case(args.batch), args.batch),
    }
    stage_s = interleaved_medians({k: fn for k, (fn, _) in stages.items()}, args.runs, device)
    print("engine stages: " + ", ".join(f"{k} {1000 * stage_s[k] / n:.1f} ms" for k, (_, n) in stages.items()))
    if device.type == "cuda":
        published = ", ".join(f"{v:.0f} fps on {k}" for k, v in PUBLISHED_FPS.items())
        print(f"published (prepared avatar, fp16): {published}")
    print(f"target: engine >= {TARGET_SPEEDUP}x the fp32 baseline on this CPU; diffs in 8-bit levels")


if __name__ == "__main__":
    main()
