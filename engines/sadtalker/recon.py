"""face_3drecon: Deep3DFaceRecon's ResNet-50 regressor of the 257 3DMM coefficients.

Layout of torchvision's ResNet-50 (``backbone.conv1/bn1/layer1..4``, no fc) plus ``final_layers.0..6``: 1x1
convs from the pooled 2048 features to id 80, exp 64, tex 80, angles 3, gamma 27, txy 2, tz 1, concatenated.
Input: an aligned 224x224 RGB crop in [0, 1] (no mean/std normalisation).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

COEFF_SIZES = (80, 64, 80, 3, 27, 2, 1)  # id, exp, tex, angle, gamma, txy, tz
NUM_COEFFS = sum(COEFF_SIZES)  # 257
EXP = slice(80, 144)
ANGLES = slice(224, 227)
TRANS = slice(254, 257)
BLOCKS = (3, 4, 6, 3)
EXPANSION = 4


class Bottleneck(nn.Module):
    """1x1, 3x3 (stride here, as torchvision), 1x1 with BatchNorms; projection shortcut when shapes change."""

    def __init__(self, cin: int, width: int, stride: int) -> None:
        super().__init__()
        cout = width * EXPANSION
        self.conv1 = nn.Conv2d(cin, width, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, cout, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(cout)
        self.downsample: nn.Module | None = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride=stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return F.relu(out + (x if self.downsample is None else self.downsample(x)))


class ResNet50(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        cin = 64
        for i, count in enumerate(BLOCKS):
            width = 64 * 2**i
            blocks = [
                Bottleneck(cin if j == 0 else width * EXPANSION, width, 2 if i and j == 0 else 1) for j in range(count)
            ]
            setattr(self, f"layer{i + 1}", nn.Sequential(*blocks))
            cin = width * EXPANSION
        self.out_channels = cin

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.max_pool2d(F.relu(self.bn1(self.conv1(x))), kernel_size=3, stride=2, padding=1)
        for i in range(len(BLOCKS)):
            x = getattr(self, f"layer{i + 1}")(x)
        return x.mean(dim=(2, 3), keepdim=True)


class ReconNet(nn.Module):
    """(B, 3, 224, 224) RGB in [0, 1] -> (B, 257) coefficients."""

    def __init__(self) -> None:
        super().__init__()
        self.backbone = ResNet50()
        self.final_layers = nn.ModuleList(nn.Conv2d(self.backbone.out_channels, n, 1) for n in COEFF_SIZES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = self.backbone(x)
        return torch.cat([layer(pooled) for layer in self.final_layers], dim=1).flatten(1)
