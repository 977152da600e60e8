"""LivePortrait's appearance extractor (F), SPADE decoder (G) and stitching/retargeting MLPs (S).

Hyper-parameters are the official ``models.yaml`` ones; parameter names and shapes match the published
checkpoints key for key (see ``tests/engines/test_liveportrait.py``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from engines.liveportrait.blocks import DownBlock2d, ResBlock3d, SameBlock2d, SPADEResnetBlock

NUM_KP = 21
FEATURE_CHANNELS = 32  # of the appearance feature volume
FEATURE_DEPTH = 16
STITCHING_SIZES = (2 * 3 * NUM_KP, (128, 128, 64), 3 * NUM_KP + 2)
LIP_SIZES = (3 * NUM_KP + 2, (128, 128, 64), 3 * NUM_KP)
EYE_SIZES = (3 * NUM_KP + 3, (256, 256, 128, 128, 64), 3 * NUM_KP)


class AppearanceFeatureExtractor(nn.Module):
    """F: (B, 3, H, W) image in [0, 1] -> (B, 32, 16, H/4, W/4) appearance feature volume."""

    def __init__(self, expansion: int = 64, max_features: int = 512, num_resblocks: int = 6) -> None:
        super().__init__()
        self.first = SameBlock2d(3, expansion)
        self.down_blocks = nn.ModuleList(
            [DownBlock2d(expansion, 2 * expansion), DownBlock2d(2 * expansion, 4 * expansion)]
        )
        self.second = nn.Conv2d(4 * expansion, max_features, kernel_size=1)
        self.resblocks_3d = nn.Sequential()
        for i in range(num_resblocks):
            self.resblocks_3d.add_module(f"3dr{i}", ResBlock3d(FEATURE_CHANNELS))

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        out = self.first(image)
        for block in self.down_blocks:
            out = block(out)
        out = self.second(out)
        batch, _, height, width = out.shape
        return self.resblocks_3d(out.reshape(batch, FEATURE_CHANNELS, FEATURE_DEPTH, height, width))


class SPADEDecoder(nn.Module):
    """G: the warped (B, 256, h, w) feature -> (B, 3, 8h, 8w) RGB in [0, 1] (two 2x upsamplings, pixel shuffle)."""

    def __init__(self, label_channels: int = 256, out_channels: int = 64) -> None:
        super().__init__()
        width = 2 * label_channels
        self.fc = nn.Conv2d(label_channels, width, 3, padding=1)
        for i in range(6):
            setattr(self, f"G_middle_{i}", SPADEResnetBlock(width, width, label_channels))
        self.up_0 = SPADEResnetBlock(width, label_channels, label_channels)
        self.up_1 = SPADEResnetBlock(label_channels, out_channels, label_channels)
        self.conv_img = nn.Sequential(nn.Conv2d(out_channels, 3 * 4, kernel_size=3, padding=1), nn.PixelShuffle(2))

    def forward(self, feature: torch.Tensor) -> torch.Tensor:
        x = self.fc(feature)
        for i in range(6):
            x = getattr(self, f"G_middle_{i}")(x, feature)
        x = self.up_0(F.interpolate(x, scale_factor=2.0), feature)
        x = self.up_1(F.interpolate(x, scale_factor=2.0), feature)
        return torch.sigmoid(self.conv_img(F.leaky_relu(x, 0.2)))


class RetargetingMLP(nn.Module):
    """S: a ReLU MLP (``mlp.0``, ``mlp.2``, ...), the stitching, lip or eye retargeting network."""

    def __init__(self, input_size: int, hidden_sizes: tuple[int, ...], output_size: int) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        width = input_size
        for hidden in hidden_sizes:
            layers += [nn.Linear(width, hidden), nn.ReLU()]
            width = hidden
        layers.append(nn.Linear(width, output_size))
        self.mlp = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.mlp(x)
