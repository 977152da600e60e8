"""LivePortrait's warping network (W): dense motion with occlusion from implicit keypoints, then feature warping.

Keys match the official ``warping_module.pth`` (``dense_motion_network.*``, ``third.*``, ``fourth.*``).
The parts that depend only on the source (compressed feature, source heatmaps) can be computed once and
reused for every driving frame: see ``SourceMotion``.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import torch
import torch.nn.functional as F
from torch import nn

from engines.liveportrait.blocks import Hourglass, SameBlock2d
from engines.liveportrait.model import FEATURE_CHANNELS, FEATURE_DEPTH, NUM_KP

KP_VARIANCE = 0.01
COMPRESS = 4
HOURGLASS = {"expansion": 32, "num_blocks": 5, "max_features": 1024}
OUT_CHANNELS = 256


@lru_cache(maxsize=8)
def _grid(depth: int, height: int, width: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """(d, h, w, 3) coordinates in [-1, 1] as (x, y, z): right, down, inward."""
    axes = [2 * (torch.arange(n, dtype=dtype, device=device) / (n - 1)) - 1 for n in (width, height, depth)]
    z, y, x = torch.meshgrid(axes[2], axes[1], axes[0], indexing="ij")
    return torch.stack((x, y, z), dim=-1)


def coordinate_grid(depth: int, height: int, width: int, like: torch.Tensor) -> torch.Tensor:
    return _grid(depth, height, width, like.dtype, like.device)


def keypoint_heatmaps(kp: torch.Tensor, grid: torch.Tensor) -> torch.Tensor:
    """(B, K, 3) keypoints -> (B, K, d, h, w) Gaussians of variance ``KP_VARIANCE`` on ``grid``."""
    diff = grid[None, None] - kp[:, :, None, None, None, :]
    return torch.exp(-0.5 * diff.pow(2).sum(-1) / KP_VARIANCE)


@dataclass
class SourceMotion:
    """What the dense motion network needs from the source alone, reusable across driving frames."""

    compressed: torch.Tensor  # (B, 4, d, h, w)
    kp_source: torch.Tensor  # (B, K, 3)
    heat_source: torch.Tensor  # (B, K, d, h, w)


class DenseMotionNetwork(nn.Module):
    """Sparse motions around each keypoint blended by a predicted mask, plus an occlusion map.

    ``mask_floor``: mask weights below it are zeroed after the softmax (SadTalker's face-vid2vid does this
    with 1e-3, not renormalised; LivePortrait keeps every weight).
    """

    def __init__(self, num_kp: int = NUM_KP, mask_floor: float = 0.0) -> None:
        super().__init__()
        self.num_kp = num_kp
        self.mask_floor = mask_floor
        self.hourglass = Hourglass(cin=(num_kp + 1) * (COMPRESS + 1), **HOURGLASS)
        self.mask = nn.Conv3d(self.hourglass.out_filters, num_kp + 1, kernel_size=7, padding=3)
        self.compress = nn.Conv3d(FEATURE_CHANNELS, COMPRESS, kernel_size=1)
        self.norm: nn.Module = nn.BatchNorm3d(COMPRESS)
        self.occlusion = nn.Conv2d(self.hourglass.out_filters * FEATURE_DEPTH, 1, kernel_size=7, padding=3)

    def source(self, feature: torch.Tensor, kp_source: torch.Tensor) -> SourceMotion:
        compressed = F.relu(self.norm(self.compress(feature.to(self.compress.weight.dtype))))
        grid = coordinate_grid(*compressed.shape[2:], like=kp_source)
        return SourceMotion(compressed.float(), kp_source, keypoint_heatmaps(kp_source, grid))

    def forward(self, src: SourceMotion, kp_driving: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """-> deformation (B, d, h, w, 3) in grid_sample coordinates and occlusion map (B, 1, h, w).

        Sampling and the motion blend run in float32 (coordinates need the precision); the convolutions
        run in the network's dtype.
        """
        batch, channels, depth, height, width = src.compressed.shape
        kp_count = self.num_kp + 1
        dtype = self.mask.weight.dtype
        grid = coordinate_grid(depth, height, width, like=kp_driving)
        per_kp = grid[None, None] - kp_driving[:, :, None, None, None, :] + src.kp_source[:, :, None, None, None, :]
        motions = torch.cat((grid.expand(batch, 1, -1, -1, -1, -1), per_kp), dim=1)

        repeated = src.compressed.unsqueeze(1).expand(-1, kp_count, -1, -1, -1, -1)
        deformed = F.grid_sample(
            repeated.reshape(batch * kp_count, channels, depth, height, width),
            motions.reshape(batch * kp_count, depth, height, width, 3),
            align_corners=False,
        ).reshape(batch, kp_count, channels, depth, height, width)

        heat = keypoint_heatmaps(kp_driving, grid) - src.heat_source
        heat = torch.cat((heat.new_zeros(batch, 1, depth, height, width), heat), dim=1)
        stacked = torch.cat((heat.unsqueeze(2), deformed), dim=2).reshape(batch, -1, depth, height, width)
        prediction = self.hourglass(stacked.to(dtype))

        mask = F.softmax(self.mask(prediction).float(), dim=1).unsqueeze(-1)  # (B, K+1, d, h, w, 1)
        if self.mask_floor:
            mask = mask.masked_fill(mask < self.mask_floor, 0.0)
        deformation = (motions * mask).sum(dim=1)
        occlusion = torch.sigmoid(self.occlusion(prediction.reshape(batch, -1, height, width)))
        return deformation, occlusion


def warp_feature(net: nn.Module, feature: torch.Tensor, src: SourceMotion, kp_driving: torch.Tensor) -> torch.Tensor:
    """The feature volume warped to ``kp_driving`` by ``net``'s ``dense_motion_network``, then ``third``,
    ``fourth`` and the occlusion map: face-vid2vid's warping, shared with SadTalker's generator."""
    deformation, occlusion = net.dense_motion_network(src, kp_driving)
    warped = F.grid_sample(feature.float(), deformation, align_corners=False)
    batch, channels, depth, height, width = warped.shape
    flat = warped.reshape(batch, channels * depth, height, width).to(net.fourth.weight.dtype)
    return net.fourth(net.third(flat)) * occlusion


class WarpingNetwork(nn.Module):
    """W: warp the (B, 32, 16, 64, 64) source feature from kp_source to kp_driving -> (B, 256, 64, 64)."""

    def __init__(self) -> None:
        super().__init__()
        self.dense_motion_network = DenseMotionNetwork()
        self.third = SameBlock2d(FEATURE_CHANNELS * FEATURE_DEPTH, OUT_CHANNELS, leaky=True)
        self.fourth = nn.Conv2d(OUT_CHANNELS, OUT_CHANNELS, kernel_size=1)

    def source(self, feature: torch.Tensor, kp_source: torch.Tensor) -> SourceMotion:
        return self.dense_motion_network.source(feature, kp_source)

    def warp(self, feature: torch.Tensor, src: SourceMotion, kp_driving: torch.Tensor) -> torch.Tensor:
        return warp_feature(self, feature, src, kp_driving)

    def forward(self, feature: torch.Tensor, kp_driving: torch.Tensor, kp_source: torch.Tensor) -> torch.Tensor:
        return self.warp(feature, self.source(feature, kp_source), kp_driving)
