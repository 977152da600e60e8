"""SadTalker's face renderer: keypoint extractor, occlusion-aware SPADE generator, mapping network.

Hyper-parameters are upstream's ``facerender.yaml`` (256 and 512 share them); parameter names and shapes
match the ``kp_extractor.*`` / ``generator.*`` entries of ``SadTalker_V0.0.2_{size}.safetensors`` and the
``mapping`` dicts of ``mapping_00229`` / ``mapping_00109``. The face-vid2vid parts (appearance encoder,
dense motion with occlusion, SPADE blocks) are LivePortrait's modules, which have the same layout.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from engines.liveportrait.blocks import DownBlock2d, SameBlock2d, UpBlock3d
from engines.liveportrait.model import FEATURE_CHANNELS, FEATURE_DEPTH, AppearanceFeatureExtractor, SPADEDecoder
from engines.liveportrait.warping import DenseMotionNetwork, SourceMotion, coordinate_grid, warp_feature

NUM_KP = 15
NUM_BINS = 66
MASK_FLOOR = 1e-3  # dense-motion mask weights below this are zeroed (upstream, not renormalised)
KP_TEMPERATURE = 0.1
KP_SCALE = 0.25  # the keypoint detector sees the image at a quarter of its size
KP_WIDTHS = (3, 64, 128, 256, 512, 1024)  # KPHourglass down path (block_expansion 32, max 1024)
KP_DEPTH = 16
WINDOW = 27  # coefficient rows per mapping window (frame i-13 .. i+13)
MAPPING_WIDTH = 1024
MAPPING_LAYERS = 3
MAPPING_DILATION = 3


class AntiAliasDownsample(nn.Module):
    """Gaussian blur (sigma (1/scale - 1)/2, depthwise) then every (1/scale)-th pixel; ``weight`` is stored."""

    def __init__(self, channels: int = 3, scale: float = KP_SCALE) -> None:
        super().__init__()
        sigma = (1 / scale - 1) / 2
        size = 2 * round(sigma * 4) + 1
        coords = torch.arange(size, dtype=torch.float32) - (size - 1) / 2
        bell = torch.exp(-(coords**2) / (2 * sigma**2))
        kernel = bell[:, None] * bell[None, :]
        self.register_buffer("weight", (kernel / kernel.sum()).expand(channels, 1, size, size).clone())
        self.pad = size // 2
        self.step = int(1 / scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.conv2d(F.pad(x, (self.pad,) * 4), self.weight, groups=x.shape[1])
        return out[:, :, :: self.step, :: self.step]


class KPHourglass(nn.Module):
    """2D down path, a 1x1 conv to ``KP_DEPTH`` x 1024 channels viewed as a volume, 3D up path."""

    def __init__(self) -> None:
        super().__init__()
        self.down_blocks = nn.Sequential()
        for i in range(len(KP_WIDTHS) - 1):
            self.down_blocks.add_module(f"down{i}", DownBlock2d(KP_WIDTHS[i], KP_WIDTHS[i + 1]))
        self.conv = nn.Conv2d(KP_WIDTHS[-1], KP_WIDTHS[-1] * KP_DEPTH, kernel_size=1)
        widths = [KP_WIDTHS[-1] >> i for i in range(len(KP_WIDTHS))]  # 1024 -> 512 -> ... -> 32
        self.up_blocks = nn.Sequential()
        for i in range(len(widths) - 1):
            self.up_blocks.add_module(f"up{i}", UpBlock3d(widths[i], widths[i + 1]))
        self.out_filters = widths[-1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv(self.down_blocks(x))
        batch, channels, height, width = out.shape
        return self.up_blocks(out.reshape(batch, channels // KP_DEPTH, KP_DEPTH, height, width))


class KPDetector(nn.Module):
    """kp_extractor: (B, 3, S, S) in [0, 1] -> (B, 15, 3) canonical keypoints (softmax-weighted grid means)."""

    def __init__(self) -> None:
        super().__init__()
        self.predictor = KPHourglass()
        self.kp = nn.Conv3d(self.predictor.out_filters, NUM_KP, kernel_size=3, padding=1)
        self.down = AntiAliasDownsample()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.kp(self.predictor(self.down(x)))
        batch, kp, depth, height, width = logits.shape
        heat = F.softmax(logits.reshape(batch, kp, -1).float() / KP_TEMPERATURE, dim=2)
        grid = coordinate_grid(depth, height, width, like=heat)
        # an elementwise product summed over the volume, as upstream: a matmul sums in another order, and the
        # sharp softmax (temperature 0.1) makes the keypoints sensitive to it
        return (heat.reshape(batch, kp, depth, height, width, 1) * grid).sum(dim=(2, 3, 4))


class SadTalkerDecoder(SPADEDecoder):
    """LivePortrait's SPADE decoder with SadTalker's output conv (64 -> 3, no pixel shuffle): output = input size x4."""

    def __init__(self) -> None:
        super().__init__()
        self.conv_img = nn.Conv2d(64, 3, kernel_size=3, padding=1)


class SadTalkerGenerator(AppearanceFeatureExtractor):
    """OcclusionAwareSPADEGenerator: appearance volume (the inherited encoder), dense motion + occlusion,
    warping, SPADE decoding. ``source`` holds what depends on the source image alone."""

    def __init__(self) -> None:
        super().__init__()
        self.dense_motion_network = DenseMotionNetwork(NUM_KP, mask_floor=MASK_FLOOR)
        width = FEATURE_CHANNELS * FEATURE_DEPTH
        self.third = SameBlock2d(width, width // 2, leaky=True)
        self.fourth = nn.Conv2d(width // 2, width // 2, kernel_size=1)
        self.decoder = SadTalkerDecoder()
        self.layout = torch.contiguous_format  # channels_last once prepared for inference

    def source(self, image: torch.Tensor, kp_source: torch.Tensor) -> tuple[torch.Tensor, SourceMotion]:
        """(appearance volume, source motion) of ``image`` posed at ``kp_source``: once per portrait."""
        feature = super().forward(image.to(self.second.weight.dtype))
        return feature, self.dense_motion_network.source(feature, kp_source)

    def render(self, feature: torch.Tensor, src: SourceMotion, kp_driving: torch.Tensor) -> torch.Tensor:
        """(B, 3, S, S) in [0, 1] for driving keypoints (B, 15, 3); feature/src batched like them."""
        warped = warp_feature(self, feature, src, kp_driving)
        return self.decoder(warped.contiguous(memory_format=self.layout))

    def forward(self, image: torch.Tensor, kp_driving: torch.Tensor, kp_source: torch.Tensor) -> torch.Tensor:
        feature, src = self.source(image, kp_source)
        return self.render(feature, src, kp_driving)


class MappingNet(nn.Module):
    """(B, C, 27) window of 3DMM coefficients -> head pose logits (66 bins), t (3) and keypoint deltas (45)."""

    def __init__(self, coeff_nc: int) -> None:
        super().__init__()
        self.coeff_nc = coeff_nc
        self.first = nn.Sequential(nn.Conv1d(coeff_nc, MAPPING_WIDTH, kernel_size=7))
        for i in range(MAPPING_LAYERS):
            conv = nn.Conv1d(MAPPING_WIDTH, MAPPING_WIDTH, kernel_size=3, dilation=MAPPING_DILATION)
            setattr(self, f"encoder{i}", nn.Sequential(nn.LeakyReLU(0.1), conv))
        self.fc_roll = nn.Linear(MAPPING_WIDTH, NUM_BINS)
        self.fc_pitch = nn.Linear(MAPPING_WIDTH, NUM_BINS)
        self.fc_yaw = nn.Linear(MAPPING_WIDTH, NUM_BINS)
        self.fc_t = nn.Linear(MAPPING_WIDTH, 3)
        self.fc_exp = nn.Linear(MAPPING_WIDTH, 3 * NUM_KP)

    def forward(self, window: torch.Tensor) -> dict[str, torch.Tensor]:
        out = self.first(window)
        trim = MAPPING_DILATION
        for i in range(MAPPING_LAYERS):
            out = getattr(self, f"encoder{i}")(out) + out[:, :, trim:-trim]
        out = out.mean(dim=2)
        return {
            "yaw": self.fc_yaw(out),
            "pitch": self.fc_pitch(out),
            "roll": self.fc_roll(out),
            "t": self.fc_t(out),
            "exp": self.fc_exp(out),
        }
