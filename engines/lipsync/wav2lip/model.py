"""Wav2Lip generators: the original 96-px model and LiveTalking's 256-px variant.

Parameter names and shapes match the published checkpoints exactly (see the layout reference), so
``load_state_dict(strict=True)`` works on them. ``fold_batchnorm`` rewrites a model for inference.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

WAV2LIP96 = "wav2lip96"
WAV2LIP256 = "wav2lip256"
VARIANTS = (WAV2LIP96, WAV2LIP256)
IMG_SIZE = {WAV2LIP96: 96, WAV2LIP256: 256}
MEL_BANDS = 80
MEL_WINDOW = 16
FACE_CHANNELS = 6  # masked crop + reference crop


@dataclass(frozen=True)
class ConvSpec:
    cin: int
    cout: int
    kernel: int
    stride: int | tuple[int, int]
    padding: int
    residual: bool = False
    transpose: bool = False
    output_padding: int = 0


def _down(cin: int, cout: int, stride: int | tuple[int, int], n_residual: int) -> list[ConvSpec]:
    """A strided 3x3 conv followed by ``n_residual`` shape-preserving residual 3x3 convs."""
    return [ConvSpec(cin, cout, 3, stride, 1)] + [ConvSpec(cout, cout, 3, 1, 1, residual=True)] * n_residual


def _up(cin: int, cout: int, kernel: int, stride: int, padding: int, n_residual: int) -> list[ConvSpec]:
    """A transposed conv (doubling the size when strided) then residual 3x3 convs."""
    head = ConvSpec(cin, cout, kernel, stride, padding, transpose=True, output_padding=1 if stride == 2 else 0)
    return [head] + [ConvSpec(cout, cout, 3, 1, 1, residual=True)] * n_residual


AUDIO_ENCODER = [
    *_down(1, 32, 1, 2),  # 80x16
    *_down(32, 64, (3, 1), 2),  # 27x16
    *_down(64, 128, 3, 2),  # 9x6
    *_down(128, 256, (3, 2), 1),  # 3x3
    ConvSpec(256, 512, 3, 1, 0),  # 1x1
    ConvSpec(512, 512, 1, 1, 0),
]

_FACE_ENCODER_COMMON = [
    [ConvSpec(6, 16, 7, 1, 3)],
    _down(16, 32, 2, 2),
    _down(32, 64, 2, 3),
    _down(64, 128, 2, 2),
    _down(128, 256, 2, 2),
    _down(256, 512, 2, 1),
]
_FACE_DECODER_TAIL = [
    _up(768, 384, 3, 2, 1, 2),
    _up(512, 256, 3, 2, 1, 2),
    _up(320, 128, 3, 2, 1, 2),
    _up(160, 64, 3, 2, 1, 2),
]

# 96: 96 48 24 12 6 3 1 ; decoder 1 3 6 12 24 48 96
FACE_ENCODER_96 = [*_FACE_ENCODER_COMMON, [ConvSpec(512, 512, 3, 1, 0), ConvSpec(512, 512, 1, 1, 0)]]
FACE_DECODER_96 = [
    [ConvSpec(512, 512, 1, 1, 0)],
    _up(1024, 512, 3, 1, 0, 1),
    _up(1024, 512, 3, 2, 1, 2),
    *_FACE_DECODER_TAIL,
]

# 256: 256 128 64 32 16 8 4 1 ; decoder 1 4 8 16 32 64 128 256
FACE_ENCODER_256 = [
    *_FACE_ENCODER_COMMON,
    _down(512, 512, 2, 1),
    [ConvSpec(512, 512, 4, 1, 0), ConvSpec(512, 512, 1, 1, 0)],
]
FACE_DECODER_256 = [
    [ConvSpec(512, 512, 1, 1, 0)],
    _up(1024, 512, 4, 1, 0, 1),
    _up(1024, 512, 3, 2, 1, 1),
    _up(1024, 512, 3, 2, 1, 2),
    *_FACE_DECODER_TAIL,
]


class ConvBlock(nn.Module):
    """Conv (or transposed conv) + BatchNorm (+ residual) + ReLU; the submodule name is the checkpoint's."""

    def __init__(self, spec: ConvSpec) -> None:
        super().__init__()
        if spec.transpose:
            conv: nn.Module = nn.ConvTranspose2d(
                spec.cin, spec.cout, spec.kernel, spec.stride, spec.padding, spec.output_padding
            )
        else:
            conv = nn.Conv2d(spec.cin, spec.cout, spec.kernel, spec.stride, spec.padding)
        self.conv_block = nn.Sequential(conv, nn.BatchNorm2d(spec.cout))
        self.residual = spec.residual

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv_block(x)
        if self.residual:
            out = out + x
        return torch.relu(out)


def _blocks(specs: list[ConvSpec]) -> nn.Sequential:
    return nn.Sequential(*(ConvBlock(s) for s in specs))


class Wav2Lip(nn.Module):
    """U-Net generator: masked + reference face (B, 6, S, S) and a mel window (B, 1, 80, 16) -> (B, 3, S, S).

    The forward is split in an audio pass and a face pass so an engine can batch them separately.
    """

    variant: str
    img_size: int

    def __init__(self, face_encoder: list[list[ConvSpec]], face_decoder: list[list[ConvSpec]], variant: str) -> None:
        super().__init__()
        self.variant = variant
        self.img_size = IMG_SIZE[variant]
        self.face_encoder_blocks = nn.ModuleList(_blocks(specs) for specs in face_encoder)
        self.audio_encoder = _blocks(AUDIO_ENCODER)
        self.face_decoder_blocks = nn.ModuleList(_blocks(specs) for specs in face_decoder)
        self.output_block = nn.Sequential(
            ConvBlock(ConvSpec(80, 32, 3, 1, 1)), nn.Conv2d(32, 3, kernel_size=1), nn.Sigmoid()
        )

    def encode_audio(self, mel: torch.Tensor, a_alpha: float = 1.0) -> torch.Tensor:
        """(B, 1, 80, 16) mel windows -> (B, 512, 1, 1) embeddings, scaled by the gain ``a_alpha``."""
        embedding = self.audio_encoder(mel)
        return embedding if a_alpha == 1.0 else embedding * a_alpha

    def decode_faces(self, audio_embedding: torch.Tensor, face: torch.Tensor) -> torch.Tensor:
        """Face pass: encode the 6-channel faces, decode from the audio embedding with skip connections."""
        features = []
        x = face
        for block in self.face_encoder_blocks:
            x = block(x)
            features.append(x)
        x = audio_embedding
        for block in self.face_decoder_blocks:
            x = torch.cat((block(x), features.pop()), dim=1)
        return self.output_block(x)

    def forward(self, mel: torch.Tensor, face: torch.Tensor, a_alpha: float = 1.0) -> torch.Tensor:
        return self.decode_faces(self.encode_audio(mel, a_alpha), face)


def build_model(variant: str) -> Wav2Lip:
    """An untrained model of ``variant`` (``wav2lip96`` or ``wav2lip256``)."""
    if variant == WAV2LIP96:
        return Wav2Lip(FACE_ENCODER_96, FACE_DECODER_96, variant)
    if variant == WAV2LIP256:
        return Wav2Lip(FACE_ENCODER_256, FACE_DECODER_256, variant)
    raise ValueError(f"unknown Wav2Lip variant {variant!r}: use one of {', '.join(VARIANTS)}")


@torch.no_grad()
def _fold_into_conv(conv: nn.Conv2d | nn.ConvTranspose2d, bn: nn.BatchNorm2d) -> None:
    scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
    # Conv2d weights are (out, in, k, k); ConvTranspose2d weights are (in, out, k, k).
    shape = (1, -1, 1, 1) if isinstance(conv, nn.ConvTranspose2d) else (-1, 1, 1, 1)
    conv.weight.mul_(scale.reshape(shape))
    bias = conv.bias if conv.bias is not None else torch.zeros_like(bn.running_mean)
    conv.bias = nn.Parameter((bias - bn.running_mean) * scale + bn.bias)


def fold_batchnorm(model: nn.Module) -> nn.Module:
    """Fold every eval-mode BatchNorm into the conv before it (in place); same outputs, fewer ops."""
    for block in model.modules():
        if isinstance(block, ConvBlock) and isinstance(block.conv_block[1], nn.BatchNorm2d):
            _fold_into_conv(block.conv_block[0], block.conv_block[1])
            block.conv_block[1] = nn.Identity()
    return model.eval()
