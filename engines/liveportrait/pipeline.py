"""The public LivePortrait API: ``load_liveportrait(root)`` -> ``LivePortrait`` with the upstream wrapper's math.

Conventions (all tensors on the model's device, float32 unless noted):
images (B, 3, 256, 256) RGB in [0, 1]; keypoints (B, 21, 3); poses in degrees (B, 1).
F, M and the S MLPs run in float32 (once per portrait, or tiny); W and G, the per-frame cost, run in the
inference dtype (fp16 on CUDA, bf16 on CPUs with native bf16, else fp32) with sampling in float32.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

import torch
from torch import nn

from engines.errors import EngineError
from engines.liveportrait.blocks import ChannelPaddedConv, fold_batchnorm, freeze_spectral
from engines.liveportrait.loader import load_parts
from engines.liveportrait.model import NUM_KP
from engines.liveportrait.motion import NUM_BINS
from engines.liveportrait.warping import SourceMotion
from engines.precision import PRECISIONS, inference_dtype

log = logging.getLogger(__name__)

BATCH_SIZE = {"cpu": 2, "cuda": 16}
POSE_BIN_DEGREES = 3.0
POSE_OFFSET_DEGREES = 97.5


def pose_degrees(pose: torch.Tensor) -> torch.Tensor:
    """(B, 66) pose logits -> (B,) degrees (softmax expectation over 3-degree bins); other shapes pass through."""
    if pose.dim() > 1 and pose.shape[1] == NUM_BINS:
        bins = torch.arange(NUM_BINS, dtype=torch.float32, device=pose.device)
        return (torch.softmax(pose.float(), dim=1) * bins).sum(dim=1) * POSE_BIN_DEGREES - POSE_OFFSET_DEGREES
    return pose


def rotation_matrix(pitch: torch.Tensor, yaw: torch.Tensor, roll: torch.Tensor) -> torch.Tensor:
    """(B, 3, 3) transpose of Rz(roll) Ry(yaw) Rx(pitch), angles in degrees (shape (B,) or (B, 1))."""
    x, y, z = (a.reshape(-1, 1) / 180 * math.pi for a in (pitch, yaw, roll))
    one, zero = torch.ones_like(x), torch.zeros_like(x)
    rot_x = torch.cat([one, zero, zero, zero, x.cos(), -x.sin(), zero, x.sin(), x.cos()], dim=1).reshape(-1, 3, 3)
    rot_y = torch.cat([y.cos(), zero, y.sin(), zero, one, zero, -y.sin(), zero, y.cos()], dim=1).reshape(-1, 3, 3)
    rot_z = torch.cat([z.cos(), -z.sin(), zero, z.sin(), z.cos(), zero, zero, zero, one], dim=1).reshape(-1, 3, 3)
    return (rot_z @ rot_y @ rot_x).permute(0, 2, 1)


class LivePortrait:
    """F, M, W, G and the three S networks, ready for inference (see the module docstring)."""

    def __init__(
        self,
        modules: dict[str, nn.Module],
        device: torch.device,
        dtype: torch.dtype,
        batch_size: int | None = None,
        compile_modules: bool = False,
    ) -> None:
        self.device, self.dtype = device, dtype
        self.batch_size = batch_size or BATCH_SIZE.get(device.type, 2)
        self.F = modules["appearance_feature_extractor"]
        self.M = modules["motion_extractor"]
        self.W = modules["warping_module"]
        self.G = modules["spade_generator"]
        self.S_stitch = modules["stitching_retargeting_module.stitching"]
        self.S_lip = modules["stitching_retargeting_module.lip"]
        self.S_eye = modules["stitching_retargeting_module.eye"]
        self._warp, self._decode = self.W.warp, self.G
        if compile_modules:
            self._warp, self._decode = torch.compile(self.W.warp), torch.compile(self.G)
        self._source: tuple[torch.Tensor, torch.Tensor, SourceMotion] | None = None
        conv = self.G.fc.weight
        self.layout = (
            torch.channels_last if conv.is_contiguous(memory_format=torch.channels_last) else torch.contiguous_format
        )

    @property
    def info(self) -> dict[str, object]:
        return {
            "device": self.device.type,
            "precision": str(self.dtype).removeprefix("torch."),
            "batch_size": self.batch_size,
        }

    def appearance(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, 256, 256) in [0, 1] -> (B, 32, 16, 64, 64) float32 feature volume."""
        with torch.inference_mode():
            return self.F(x.to(self.device, torch.float32)).float()

    def motion(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """(B, 3, 256, 256) -> pitch, yaw, roll (B, 1) degrees; t (B, 3); exp, kp (B, 21, 3); scale (B, 1)."""
        with torch.inference_mode():
            raw = self.M(x.to(self.device, torch.float32))
        batch = x.shape[0]
        info = {k: v.float() for k, v in raw.items()}
        for angle in ("pitch", "yaw", "roll"):
            info[angle] = pose_degrees(info[angle])[:, None]
        info["kp"] = info["kp"].reshape(batch, -1, 3)
        info["exp"] = info["exp"].reshape(batch, -1, 3)
        return info

    @staticmethod
    def keypoints(info: dict[str, torch.Tensor]) -> torch.Tensor:
        """Posed keypoints scale * (kp @ R + exp) + t, with t applied to x and y only -> (B, 21, 3)."""
        kp = info["kp"]
        batch = kp.shape[0]
        rot = rotation_matrix(*(pose_degrees(info[a]) for a in ("pitch", "yaw", "roll")))
        posed = kp.reshape(batch, -1, 3) @ rot + info["exp"].reshape(batch, -1, 3)
        posed = posed * info["scale"][..., None]
        shift = torch.zeros_like(posed[:, :1])
        shift[..., :2] = info["t"][:, None, :2]
        return posed + shift

    def stitch(self, kp_source: torch.Tensor, kp_driving: torch.Tensor) -> torch.Tensor:
        """kp_driving plus the stitching network's expression delta and (tx, ty) shift."""
        batch = kp_source.shape[0]
        with torch.inference_mode():
            delta = self.S_stitch(torch.cat((kp_source.reshape(batch, -1), kp_driving.reshape(batch, -1)), dim=1))
        out = kp_driving + delta[:, : 3 * NUM_KP].reshape(batch, NUM_KP, 3)
        shift = torch.zeros_like(out[:, :1])
        shift[..., :2] = delta[:, None, 3 * NUM_KP : 3 * NUM_KP + 2]
        return out + shift

    def retarget_lip(self, kp_source: torch.Tensor, lip_ratio: torch.Tensor) -> torch.Tensor:
        """lip_ratio (B, 2) = [source lip-open ratio, target ratio] -> (B, 21, 3) keypoint delta."""
        return self._retarget(self.S_lip, kp_source, lip_ratio)

    def retarget_eye(self, kp_source: torch.Tensor, eye_ratio: torch.Tensor) -> torch.Tensor:
        """eye_ratio (B, 3) = [source eye ratios (2), target ratio] -> (B, 21, 3) keypoint delta."""
        return self._retarget(self.S_eye, kp_source, eye_ratio)

    @staticmethod
    def _retarget(mlp: nn.Module, kp_source: torch.Tensor, ratio: torch.Tensor) -> torch.Tensor:
        batch = kp_source.shape[0]
        with torch.inference_mode():
            delta = mlp(torch.cat((kp_source.reshape(batch, -1), ratio.reshape(batch, -1).to(kp_source)), dim=1))
        return delta.reshape(batch, -1, 3)

    def warp_decode(self, feature: torch.Tensor, kp_source: torch.Tensor, kp_driving: torch.Tensor) -> torch.Tensor:
        """Render (B, 3, 512, 512) RGB in [0, 1] float32; a batch-1 feature/kp_source serves every driving frame.

        The source-only part of W is computed once per (feature, kp_source) pair and reused.
        """
        frames = kp_driving.shape[0]
        outputs = []
        with torch.inference_mode():
            src = self._source_motion(feature, kp_source)
            for first in range(0, frames, self.batch_size):
                chunk = slice(first, min(frames, first + self.batch_size))
                kp = kp_driving[chunk].to(self.device, torch.float32)
                part_src = _select(src, chunk, kp.shape[0])
                part_feature = _batch(feature, chunk, kp.shape[0]).to(self.device)
                warped = self._warp(part_feature, part_src, kp).contiguous(memory_format=self.layout)
                outputs.append(self._decode(warped).float())
        return torch.cat(outputs)

    def _source_motion(self, feature: torch.Tensor, kp_source: torch.Tensor) -> SourceMotion:
        cached = self._source
        if cached is not None and cached[0] is feature and cached[1] is kp_source:
            return cached[2]
        src = self.W.source(feature.to(self.device), kp_source.to(self.device, torch.float32))
        self._source = (feature, kp_source, src)
        return src


def _batch(t: torch.Tensor, chunk: slice, size: int) -> torch.Tensor:
    return t.expand(size, *t.shape[1:]) if t.shape[0] == 1 else t[chunk]


def _select(src: SourceMotion, chunk: slice, size: int) -> SourceMotion:
    return SourceMotion(
        _batch(src.compressed, chunk, size), _batch(src.kp_source, chunk, size), _batch(src.heat_source, chunk, size)
    )


def prepare_for_inference(
    modules: dict[str, nn.Module], device: torch.device, dtype: torch.dtype
) -> dict[str, nn.Module]:
    """Fold BatchNorm, freeze spectral norms, pad odd conv widths, move to ``device``; W and G to ``dtype``.

    G's 2D convs use the channels-last layout (oneDNN's fast path, about 1.5x in bf16); W's 3D convs keep
    NCDHW, where the padded mask conv is fastest.
    """
    ready = {}
    for name, module in modules.items():
        module = freeze_spectral(fold_batchnorm(module))
        if name == "warping_module":
            dense = module.dense_motion_network
            dense.mask = ChannelPaddedConv(dense.mask)
            dense.hourglass.decoder.conv = ChannelPaddedConv(dense.hourglass.decoder.conv)
        module = module.to(device)
        if name in ("warping_module", "spade_generator"):
            module = module.to(dtype)
        if name == "spade_generator":
            module = module.to(memory_format=torch.channels_last)
        ready[name] = module.eval().requires_grad_(False)
    return ready


def load_liveportrait(
    root: str | Path,
    precision: str = "auto",
    device: str | None = None,
    optimize: bool = True,
    batch_size: int | None = None,
    compile_modules: bool = False,
) -> LivePortrait:
    """Load the official files under ``root`` strictly and prepare them for inference.

    ``precision``: auto (default) | fp32 | bf16 | fp16. ``optimize=False`` keeps the plain float32 eval modules
    (the reference path). ``compile_modules`` wraps W and G in ``torch.compile``, on CUDA only. ``device``
    None: CUDA when there is one.
    """
    if precision not in PRECISIONS:
        allowed = ", ".join(PRECISIONS)
        raise EngineError("invalid_precision", f"LivePortrait precision {precision!r}: use one of {allowed}.")
    target = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    modules = load_parts(root)
    dtype = inference_dtype(target, precision) if optimize else torch.float32
    if optimize:
        modules = prepare_for_inference(modules, target, dtype)
    else:
        modules = {k: m.to(target) for k, m in modules.items()}
    lp = LivePortrait(modules, target, dtype, batch_size, compile_modules and target.type == "cuda")
    log.info("LivePortrait ready: %s", lp.info)
    return lp
