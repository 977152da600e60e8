"""Each engine's model work alone (no avatar decoding, no blending): the figure the published numbers give.

``cases(name, engine, profile)`` -> label -> (call, frames per call). A call returns the frames as an array
in 8-bit levels, so the same case on two precisions can be compared."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from bench.gpu.profiles import Profile

Case = tuple[Callable[[], np.ndarray], int]


def wav2lip_cases(engine: Any, profile: Profile) -> dict[str, Case]:
    rng = np.random.default_rng(0)
    size = engine.model.img_size
    cases = {}
    for batch in profile.wav2lip_batches:
        windows = rng.uniform(-4.0, 4.0, (batch, 1, 80, 16)).astype(np.float32)
        faces = rng.integers(0, 256, (batch, size, size, 6), dtype=np.uint8)
        faces[:, size // 2 :, :, :3] = 0  # the masked lower half, as the engine feeds it
        cases[f"batch {batch}"] = (lambda w=windows, f=faces: engine.generate(w, f), batch)
    return cases


def musetalk_cases(engine: Any, profile: Profile) -> dict[str, Case]:
    model, batch = engine.model, profile.musetalk_batch
    rng = np.random.default_rng(0)
    faces = rng.integers(0, 256, (batch, 256, 256, 3), dtype=np.uint8)
    seconds = max(1.0, batch / 25 + 0.2)
    latents = model.face_latents(faces)
    chunks = model.audio_chunks((0.1 * rng.standard_normal(int(16000 * seconds))).astype(np.float32))[:batch]
    return {f"batch {batch}": (lambda: model.generate(latents, chunks), batch)}


def liveportrait_cases(engine: Any, profile: Profile) -> dict[str, Case]:
    """Per frame W + G + stitching on a batch of driving keypoints (F and M run once per portrait)."""
    lp, batch, size = engine.lp, profile.liveportrait_batch, int(profile.settings["liveportrait_input_size"])
    x = torch.rand(1, 3, size, size, generator=torch.Generator().manual_seed(1)).to(lp.device)
    with torch.inference_mode():
        feature, info = lp.appearance(x), lp.motion(x)
        kp_s = lp.keypoints(info)
        exp = info["exp"].expand(batch, -1, -1).clone()
        exp[:, 19, 1] += torch.linspace(0.0, 0.04, batch, device=exp.device)
        kp_d = lp.keypoints({k: v.expand(batch, *v.shape[1:]) for k, v in info.items()} | {"exp": exp})

    def frames() -> np.ndarray:
        with torch.inference_mode():
            kp = lp.stitch(kp_s.expand(batch, -1, -1), kp_d)
            return lp.warp_decode(feature, kp_s, kp).float().mul(255.0).cpu().numpy()

    return {f"batch {batch}": (frames, batch)}


CASES: dict[str, Callable[[Any, Profile], dict[str, Case]]] = {
    "wav2lip96": wav2lip_cases,
    "wav2lip256": wav2lip_cases,
    "musetalk": musetalk_cases,
    "liveportrait": liveportrait_cases,
}


def cases(name: str, engine: Any, profile: Profile) -> dict[str, Case]:
    """The engine's model cases; none for an engine without a model-level entry (its render figure stands)."""
    build = CASES.get(name)
    return build(engine, profile) if build else {}
