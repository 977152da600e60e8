"""Random Wav2Lip weights saved like the official checkpoints, a small avatar with a known face box, and what
real weights would give (``real_weights_like``)."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import torch

from engines.lipsync import AvatarFrames, pingpong_index
from engines.lipsync.wav2lip.engine import paste_face
from engines.lipsync.wav2lip.model import Wav2Lip, build_model
from tests.media import head_motion


def random_model(variant: str, seed: int = 0) -> Wav2Lip:
    """An eval-mode model with random weights and non-trivial BatchNorm statistics."""
    torch.manual_seed(seed)
    model = build_model(variant)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.normal_(0.0, 0.2)
                module.running_var.uniform_(0.5, 2.0)
                module.weight.uniform_(0.6, 1.4)
                module.bias.normal_(0.0, 0.1)
                module.num_batches_tracked.fill_(1000)
    return model.eval()


def _optimizer_state(model: Wav2Lip) -> dict:
    """A real Adam state dict (one step over the output conv), as training scripts save it."""
    params = [p.detach().clone().requires_grad_(True) for p in model.output_block[1].parameters()]
    optimizer = torch.optim.Adam(params, lr=1e-4)
    for p in params:
        p.grad = torch.ones_like(p)
    optimizer.step()
    for p in params:
        p.grad = None
    return optimizer.state_dict()


def write_checkpoint(
    path: Path, variant: str, prefix: str = "module.", official: bool = True, seed: int = 0, legacy: bool = False
) -> Path:
    """Save random weights as ``{"state_dict", "optimizer", "global_step", "global_epoch"}`` or bare.

    ``legacy`` writes torch's pre-1.6 (non-zip) format, as the 2020 official checkpoints are.
    """
    model = random_model(variant, seed)
    optimizer = _optimizer_state(model)
    state = {prefix + k: v for k, v in model.state_dict().items()}
    payload = {"state_dict": state, "optimizer": optimizer, "global_step": 0, "global_epoch": 0} if official else state
    torch.save(payload, path, _use_new_zipfile_serialization=not legacy)
    return path


FACE_BOX_256 = (36, 100, 80, 142)  # (y1, y2, x1, x2): the astronaut's face in 256-px frames, chin padded


def small_avatar(frames: int = 6, size: int = 256, with_crops: bool = True, crop_size: int = 96) -> AvatarFrames:
    """Head-motion frames with a fixed face box (the motion is small) and optional stored face crops."""
    images, _ = head_motion(frames, 25.0, size)
    y1, y2, x1, x2 = FACE_BOX_256
    crops = None
    if with_crops:
        import cv2

        crops = [cv2.resize(img[y1:y2, x1:x2], (crop_size, crop_size), interpolation=cv2.INTER_AREA) for img in images]
    return AvatarFrames(frames=images, coords=[FACE_BOX_256] * frames, face_crops=crops)


def speech_like(seconds: float, silence_s: float = 0.0, sample_rate: int = 16000) -> np.ndarray:
    """Silence then an amplitude-modulated harmonic tone (a stand-in for voiced speech)."""
    t = np.arange(int(seconds * sample_rate)) / sample_rate
    voiced = sum(np.sin(2 * np.pi * f * t) / k for k, f in enumerate((140.0, 280.0, 420.0, 700.0), 1))
    envelope = 0.5 + 0.5 * np.sin(2 * np.pi * 4.0 * t)
    tone = (0.2 * envelope * voiced).astype(np.float32)
    return np.concatenate([np.zeros(int(silence_s * sample_rate), np.float32), tone])


def real_weights_like(avatar: AvatarFrames, frames: list[np.ndarray], start: int = 0) -> list[np.ndarray]:
    """What a trained 96-px Wav2Lip gives: the talking mouth (of ``frames``, output frames ``start``...) at 96 px,
    with a colour cast, pasted by its engine."""
    out = []
    for i, frame in enumerate(frames, start):
        k = pingpong_index(i, len(avatar))
        y1, y2, x1, x2 = avatar.coords[k]
        small = cv2.resize(frame[y1:y2, x1:x2], (96, 96), interpolation=cv2.INTER_AREA)
        face = np.clip(cv2.resize(small, (x2 - x1, y2 - y1)).astype(int) + (12, -6, 4), 0, 255).astype(np.uint8)
        out.append(paste_face(avatar.frames[k], face, (y1, y2, x1, x2)))
    return out
