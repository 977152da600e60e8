"""Building blocks shared by LivePortrait's F, W and G, named like the official checkpoints' keys.

Every block keeps the submodule names of the published state dicts (``conv``/``norm``, ``conv1``/``norm1``,
``weight_orig``/``weight_u``/``weight_v`` for spectral-normalised convs) so the files load strictly.
``fold_batchnorm`` rewrites eval-mode BatchNorms into the convolution before them for inference.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

SPADE_HIDDEN = 128
SPADE_SLOPE = 0.2
CONV_BEFORE_NORM = ("conv", "compress")  # attribute names of a conv whose output feeds the block's `norm`


class ConvNormBlock(nn.Module):
    """A 3x3 conv and the BatchNorm after it, as ``conv`` and ``norm``; the blocks below add what follows."""

    conv_type: type[nn.Conv2d | nn.Conv3d] = nn.Conv2d
    norm_type: type[nn.BatchNorm2d | nn.BatchNorm3d] = nn.BatchNorm2d

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.conv = self.conv_type(cin, cout, kernel_size=3, padding=1)
        self.norm: nn.Module = self.norm_type(cout)


class ConvNormBlock3d(ConvNormBlock):
    """The same with a 3x3x3 Conv3d and a BatchNorm3d."""

    conv_type = nn.Conv3d
    norm_type = nn.BatchNorm3d


class SameBlock2d(ConvNormBlock):
    """Conv 3x3 + BatchNorm + ReLU (or LeakyReLU 0.01), resolution kept."""

    def __init__(self, cin: int, cout: int, leaky: bool = False) -> None:
        super().__init__(cin, cout)
        self.leaky = leaky

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.norm(self.conv(x))
        return F.leaky_relu(out) if self.leaky else F.relu(out)


class DownBlock2d(ConvNormBlock):
    """Conv 3x3 + BatchNorm + ReLU + 2x2 average pooling."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.avg_pool2d(F.relu(self.norm(self.conv(x))), 2)


class DownBlock3d(ConvNormBlock3d):
    """Conv3d 3x3x3 + BatchNorm + ReLU + (1, 2, 2) average pooling (depth kept)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.norm(self.conv(x)))
        batch, channels, depth, height, width = out.shape
        # (1, 2, 2) pooling as 2D pooling of the depth slices: same sums, and it has a bf16 CPU kernel
        pooled = F.avg_pool2d(out.reshape(batch, channels * depth, height, width), 2)
        return pooled.reshape(batch, channels, depth, height // 2, width // 2)


class UpBlock3d(ConvNormBlock3d):
    """Nearest (1, 2, 2) upsampling + Conv3d 3x3x3 + BatchNorm + ReLU."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.norm(self.conv(F.interpolate(x, scale_factor=(1.0, 2.0, 2.0)))))


class ResBlock3d(nn.Module):
    """Pre-activation residual block: BN, ReLU, conv, BN, ReLU, conv, plus the input."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv3d(channels, channels, kernel_size=3, padding=1)
        self.conv2 = nn.Conv3d(channels, channels, kernel_size=3, padding=1)
        self.norm1 = nn.BatchNorm3d(channels)
        self.norm2: nn.Module = nn.BatchNorm3d(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv1(F.relu(self.norm1(x)))
        return self.conv2(F.relu(self.norm2(out))) + x


class HourglassEncoder(nn.Module):
    def __init__(self, expansion: int, cin: int, num_blocks: int, max_features: int) -> None:
        super().__init__()
        widths = [cin] + [min(max_features, expansion * 2 ** (i + 1)) for i in range(num_blocks)]
        self.down_blocks = nn.ModuleList(DownBlock3d(widths[i], widths[i + 1]) for i in range(num_blocks))

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        outs = [x]
        for block in self.down_blocks:
            outs.append(block(outs[-1]))
        return outs


class HourglassDecoder(nn.Module):
    def __init__(self, expansion: int, cin: int, num_blocks: int, max_features: int) -> None:
        super().__init__()
        blocks = []
        for i in reversed(range(num_blocks)):
            width_in = (1 if i == num_blocks - 1 else 2) * min(max_features, expansion * 2 ** (i + 1))
            blocks.append(UpBlock3d(width_in, min(max_features, expansion * 2**i)))
        self.up_blocks = nn.ModuleList(blocks)
        self.out_filters = expansion + cin
        self.conv = nn.Conv3d(self.out_filters, self.out_filters, kernel_size=3, padding=1)
        self.norm: nn.Module = nn.BatchNorm3d(self.out_filters)

    def forward(self, skips: list[torch.Tensor]) -> torch.Tensor:
        out = skips[-1]
        for block, skip in zip(self.up_blocks, reversed(skips[:-1]), strict=True):
            out = torch.cat((block(out), skip), dim=1)
        return F.relu(self.norm(self.conv(out)))


class Hourglass(nn.Module):
    """3D U-Net: (1, 2, 2)-pooling encoder, nearest-upsampling decoder with skip concatenation."""

    def __init__(self, expansion: int, cin: int, num_blocks: int, max_features: int) -> None:
        super().__init__()
        self.encoder = HourglassEncoder(expansion, cin, num_blocks, max_features)
        self.decoder = HourglassDecoder(expansion, cin, num_blocks, max_features)
        self.out_filters = self.decoder.out_filters

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.encoder(x))


class SpectralConv2d(nn.Conv2d):
    """A Conv2d whose weight is ``weight_orig / sigma`` with sigma = u . (W v) from the stored vectors.

    That is what ``torch.nn.utils.spectral_norm`` computes in eval mode (no power iteration), stored
    under the same keys; ``freeze_spectral`` replaces it by a plain weight once for inference.
    """

    def __init__(self, cin: int, cout: int, kernel: int, padding: int, bias: bool = True) -> None:
        super().__init__(cin, cout, kernel, padding=padding, bias=bias)
        weight = self.weight
        del self.weight
        self.weight_orig = nn.Parameter(weight.detach())
        self.register_buffer("weight_u", torch.zeros(cout))
        self.register_buffer("weight_v", torch.zeros(cin * kernel * kernel))

    def normalized_weight(self) -> torch.Tensor:
        matrix = self.weight_orig.reshape(self.weight_orig.shape[0], -1)
        sigma = torch.dot(self.weight_u, torch.mv(matrix, self.weight_v))
        return self.weight_orig / sigma

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._conv_forward(x, self.normalized_weight(), self.bias)


class SPADE(nn.Module):
    """Parameter-free instance norm modulated by gamma/beta convolved from the (resized) label map."""

    def __init__(self, channels: int, label_channels: int) -> None:
        super().__init__()
        self.mlp_shared = nn.Sequential(nn.Conv2d(label_channels, SPADE_HIDDEN, 3, padding=1), nn.ReLU())
        self.mlp_gamma = nn.Conv2d(SPADE_HIDDEN, channels, 3, padding=1)
        self.mlp_beta = nn.Conv2d(SPADE_HIDDEN, channels, 3, padding=1)

    def forward(self, x: torch.Tensor, seg: torch.Tensor) -> torch.Tensor:
        """``seg`` is the label map, already resized (nearest) to ``x``'s size by the caller."""
        # fp16 statistics in float32 (as upstream's autocast does); bf16 has float32's range
        normalized = F.instance_norm(x.float()).to(x.dtype) if x.dtype == torch.float16 else F.instance_norm(x)
        actv = self.mlp_shared(seg)
        return self.mlp_gamma(actv).add_(1).mul_(normalized).add_(self.mlp_beta(actv))


def resize_label(seg: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """The label map at ``like``'s spatial size (nearest), as every SPADE in a block sees it."""
    return seg if seg.shape[2:] == like.shape[2:] else F.interpolate(seg, size=like.shape[2:], mode="nearest")


class SPADEResnetBlock(nn.Module):
    def __init__(self, cin: int, cout: int, label_channels: int) -> None:
        super().__init__()
        middle = min(cin, cout)
        self.learned_shortcut = cin != cout
        self.conv_0 = SpectralConv2d(cin, middle, 3, padding=1)
        self.conv_1 = SpectralConv2d(middle, cout, 3, padding=1)
        if self.learned_shortcut:
            self.conv_s = SpectralConv2d(cin, cout, 1, padding=0, bias=False)
        self.norm_0 = SPADE(cin, label_channels)
        self.norm_1 = SPADE(middle, label_channels)
        if self.learned_shortcut:
            self.norm_s = SPADE(cin, label_channels)

    def forward(self, x: torch.Tensor, seg: torch.Tensor) -> torch.Tensor:
        seg = resize_label(seg, x)
        shortcut = self.conv_s(self.norm_s(x, seg)) if self.learned_shortcut else x
        dx = self.conv_0(F.leaky_relu(self.norm_0(x, seg), SPADE_SLOPE))
        dx = self.conv_1(F.leaky_relu(self.norm_1(dx, seg), SPADE_SLOPE))
        return shortcut + dx


# ---- inference rewrites ----------------------------------------------------------------------


@torch.no_grad()
def fold_into_conv(conv: nn.Conv2d | nn.Conv3d, bn: nn.BatchNorm2d | nn.BatchNorm3d) -> None:
    """conv then eval-mode BN == one conv with scaled weights and shifted bias (in place)."""
    scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
    conv.weight.mul_(scale.reshape((-1,) + (1,) * (conv.weight.dim() - 1)))
    bias = conv.bias if conv.bias is not None else torch.zeros_like(bn.running_mean)
    conv.bias = nn.Parameter((bias - bn.running_mean) * scale + bn.bias)


def fold_batchnorm(model: nn.Module) -> nn.Module:
    """Fold every BatchNorm that directly follows a conv into it (in place); eval outputs unchanged."""
    for block in list(model.modules()):
        if isinstance(block, ResBlock3d) and isinstance(block.norm2, nn.BatchNorm3d):
            fold_into_conv(block.conv1, block.norm2)  # norm1 precedes the ReLU, so it stays
            block.norm2 = nn.Identity()
            continue
        for conv_name in CONV_BEFORE_NORM:
            conv, norm = getattr(block, conv_name, None), getattr(block, "norm", None)
            if isinstance(conv, nn.Conv2d | nn.Conv3d) and isinstance(norm, nn.BatchNorm2d | nn.BatchNorm3d):
                fold_into_conv(conv, norm)
                block.norm = nn.Identity()
    return model.eval()


@torch.no_grad()
def freeze_spectral(model: nn.Module) -> nn.Module:
    """Replace every spectral-normalised conv by a plain conv holding its normalised weight."""
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, SpectralConv2d):
                plain = nn.Conv2d(
                    child.in_channels,
                    child.out_channels,
                    child.kernel_size,
                    padding=child.padding,
                    bias=child.bias is not None,
                    device=child.weight_orig.device,
                    dtype=child.weight_orig.dtype,
                )
                plain.weight.copy_(child.normalized_weight())
                if child.bias is not None:
                    plain.bias.copy_(child.bias)
                setattr(parent, name, plain)
    return model


class ChannelPaddedConv(nn.Module):
    """A conv whose channel counts are zero-padded to multiples oneDNN blocks well; same outputs.

    The dense-motion mask conv (142 -> 22 channels, 7x7x7) runs about 3x faster in bf16 as 144 -> 32.
    """

    def __init__(self, conv: nn.Conv2d | nn.Conv3d, multiple: int = 16) -> None:
        super().__init__()
        cin, cout = conv.in_channels, conv.out_channels
        self.pad_in = -cin % multiple
        self.out_channels = cout
        padded = torch.zeros(cout + -cout % (2 * multiple), cin + self.pad_in, *conv.weight.shape[2:])
        padded[:cout, :cin] = conv.weight.detach()
        bias = torch.zeros(padded.shape[0])
        if conv.bias is not None:
            bias[:cout] = conv.bias.detach()
        self.weight = nn.Parameter(padded.to(conv.weight), requires_grad=False)
        self.bias = nn.Parameter(bias.to(conv.weight), requires_grad=False)
        self.padding = conv.padding
        self.conv = F.conv3d if conv.weight.dim() == 5 else F.conv2d

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.pad_in:
            x = F.pad(x, (0, 0) * (x.dim() - 2) + (0, self.pad_in))
        return self.conv(x, self.weight, self.bias, padding=self.padding)[:, : self.out_channels]
