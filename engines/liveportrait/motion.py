"""LivePortrait's motion extractor (M): a ConvNeXt-V2-tiny backbone with pose/keypoint/expression heads.

Keys live under ``detector.`` as in the official ``motion_extractor.pth``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from engines.liveportrait.model import NUM_KP

DEPTHS = (3, 3, 9, 3)
DIMS = (96, 192, 384, 768)
NUM_BINS = 66  # pose logits: degrees = softmax . bin index * 3 - 97.5
EPS = 1e-6
HEADS = ("kp", "pitch", "yaw", "roll", "t", "exp", "scale")


class ChannelsFirstLayerNorm(nn.Module):
    """LayerNorm over the channel axis of an (N, C, H, W) tensor."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mean = x.mean(1, keepdim=True)
        var = (x - mean).pow(2).mean(1, keepdim=True)
        x = (x - mean) / torch.sqrt(var + EPS)
        return self.weight[:, None, None] * x + self.bias[:, None, None]


class GRN(nn.Module):
    """Global response normalisation over the spatial axes of an (N, H, W, C) tensor."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.gamma = nn.Parameter(torch.zeros(1, 1, 1, dim))
        self.beta = nn.Parameter(torch.zeros(1, 1, 1, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        norms = torch.norm(x, p=2, dim=(1, 2), keepdim=True)
        return self.gamma * (x * (norms / (norms.mean(dim=-1, keepdim=True) + EPS))) + self.beta + x


class ConvNeXtBlock(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.dwconv = nn.Conv2d(dim, dim, kernel_size=7, padding=3, groups=dim)
        self.norm = nn.LayerNorm(dim, eps=EPS)
        self.pwconv1 = nn.Linear(dim, 4 * dim)
        self.grn = GRN(4 * dim)
        self.pwconv2 = nn.Linear(4 * dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.norm(self.dwconv(x).permute(0, 2, 3, 1))
        out = self.pwconv2(self.grn(F.gelu(self.pwconv1(out))))
        return x + out.permute(0, 3, 1, 2)


class ConvNeXtV2(nn.Module):
    def __init__(self, num_kp: int = NUM_KP) -> None:
        super().__init__()
        stem = nn.Sequential(nn.Conv2d(3, DIMS[0], kernel_size=4, stride=4), ChannelsFirstLayerNorm(DIMS[0]))
        downs = [
            nn.Sequential(ChannelsFirstLayerNorm(DIMS[i]), nn.Conv2d(DIMS[i], DIMS[i + 1], kernel_size=2, stride=2))
            for i in range(3)
        ]
        self.downsample_layers = nn.ModuleList([stem, *downs])
        self.stages = nn.ModuleList(
            nn.Sequential(*(ConvNeXtBlock(d) for _ in range(n))) for d, n in zip(DIMS, DEPTHS, strict=True)
        )
        self.norm = nn.LayerNorm(DIMS[-1], eps=EPS)
        width = DIMS[-1]
        self.fc_kp = nn.Linear(width, 3 * num_kp)
        self.fc_scale = nn.Linear(width, 1)
        self.fc_pitch = nn.Linear(width, NUM_BINS)
        self.fc_yaw = nn.Linear(width, NUM_BINS)
        self.fc_roll = nn.Linear(width, NUM_BINS)
        self.fc_t = nn.Linear(width, 3)
        self.fc_exp = nn.Linear(width, 3 * num_kp)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        for down, stage in zip(self.downsample_layers, self.stages, strict=True):
            x = stage(down(x))
        pooled = self.norm(x.mean((-2, -1)))
        return {name: getattr(self, f"fc_{name}")(pooled) for name in HEADS}


class MotionExtractor(nn.Module):
    """M: (B, 3, 256, 256) image in [0, 1] -> raw head outputs (pose logits, t, exp, scale, kp)."""

    def __init__(self) -> None:
        super().__init__()
        self.detector = ConvNeXtV2()

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return self.detector(x)
