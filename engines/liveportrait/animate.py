"""One portrait animated by LivePortrait: analysed once, then any number of driven frames pasted back.

``prepare`` crops the face with our 68 landmarks (upstream geometry), runs F and M once and keeps the source
keypoints and eye/lip ratios. ``drive`` turns per-frame edits (expression deltas, pose deltas in degrees,
target lip-open and eye-open ratios) into driving keypoints the upstream way: the source transform with the
edited expression and pose, plus the retargeting networks' deltas, then stitching on every frame. ``render``
warps and decodes the frames in batches and pastes each into the full image through the inverse crop.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
import torch

from engines.liveportrait.crop import (
    INPUT_SIZE,
    Crop,
    crop_face,
    eye_ratios,
    lip_ratio,
    paste_back,
)
from engines.liveportrait.pipeline import LivePortrait


@dataclass
class PortraitSource:
    image: np.ndarray  # the full BGR portrait
    crop: Crop
    feature: torch.Tensor  # (1, 32, 16, s/4, s/4)
    info: dict[str, torch.Tensor]  # M's outputs for the crop
    kp_source: torch.Tensor  # (1, 21, 3)
    eye_ratios: np.ndarray  # (2,) source eye-open ratios
    lip_ratio: float  # source lip-open ratio


@dataclass
class FrameEdits:
    """Per-frame edits of a batch of N frames (None: no such edit)."""

    exp: np.ndarray  # (N, 21, 3) expression deltas
    pose: np.ndarray  # (N, 3) pitch, yaw, roll deltas in degrees
    lip_ratio: np.ndarray | None = None  # (N,) target lip-open ratios
    eye_ratio: np.ndarray | None = None  # (N,) target eye-open ratios; NaN where the eyes are left as they are

    def __len__(self) -> int:
        return len(self.exp)


class PortraitAnimator:
    def __init__(self, lp: LivePortrait, input_size: int = INPUT_SIZE) -> None:
        if input_size % 128:
            raise ValueError(f"input_size must be a multiple of 128, got {input_size}")
        self.lp = lp
        self.input_size = input_size

    def prepare(self, image_bgr: np.ndarray, landmarks: np.ndarray) -> PortraitSource:
        """Crop, F and M once per portrait."""
        crop = crop_face(image_bgr, landmarks)
        rgb = cv2.resize(
            cv2.cvtColor(crop.image, cv2.COLOR_BGR2RGB), (self.input_size,) * 2, interpolation=cv2.INTER_AREA
        )
        x = torch.from_numpy(rgb.astype(np.float32) / 255.0).permute(2, 0, 1)[None].contiguous()
        info = self.lp.motion(x)
        return PortraitSource(
            image=image_bgr,
            crop=crop,
            feature=self.lp.appearance(x),
            info=info,
            kp_source=self.lp.keypoints(info),
            eye_ratios=eye_ratios(crop.landmarks),
            lip_ratio=lip_ratio(crop.landmarks),
        )

    def drive(self, src: PortraitSource, edits: FrameEdits) -> torch.Tensor:
        """(N, 21, 3) stitched driving keypoints for the edits."""
        n = len(edits)
        info = {k: v.expand(n, *v.shape[1:]) for k, v in src.info.items()}
        device = src.kp_source.device
        pose = torch.from_numpy(np.asarray(edits.pose, np.float32)).to(device)
        for i, angle in enumerate(("pitch", "yaw", "roll")):
            info[angle] = info[angle] + pose[:, i : i + 1]
        info["exp"] = info["exp"] + torch.from_numpy(np.asarray(edits.exp, np.float32)).to(device)
        kp_source = src.kp_source.expand(n, -1, -1)
        driving = self.lp.keypoints(info)
        if edits.lip_ratio is not None:
            ratios = np.stack([np.full(n, src.lip_ratio), edits.lip_ratio], axis=1).astype(np.float32)
            driving = driving + self.lp.retarget_lip(kp_source, torch.from_numpy(ratios).to(device))
        if edits.eye_ratio is not None:
            driving = driving + self._eye_delta(src, kp_source, edits.eye_ratio)
        return self.lp.stitch(kp_source, driving)

    def _eye_delta(self, src: PortraitSource, kp_source: torch.Tensor, targets: np.ndarray) -> torch.Tensor:
        moved = ~np.isnan(targets)
        delta = torch.zeros_like(kp_source)
        if moved.any():
            rows = np.flatnonzero(moved)
            ratios = np.concatenate([np.tile(src.eye_ratios, (len(rows), 1)), targets[rows, None]], axis=1)
            ratios_t = torch.from_numpy(ratios.astype(np.float32)).to(kp_source.device)
            delta[torch.from_numpy(rows)] = self.lp.retarget_eye(kp_source[: len(rows)], ratios_t)
        return delta

    def render(self, src: PortraitSource, kp_driving: torch.Tensor) -> list[np.ndarray]:
        """Full BGR frames, one per driving keypoint set, the rendered face pasted back softly."""
        out = self.lp.warp_decode(src.feature, src.kp_source, kp_driving)
        faces = out.mul(255.0).add_(0.5).clamp_(0.0, 255.0).to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
        return [paste_back(src.image, cv2.cvtColor(face, cv2.COLOR_RGB2BGR), src.crop.to_crop) for face in faces]
