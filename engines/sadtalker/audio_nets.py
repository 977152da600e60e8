"""SadTalker's audio networks: audio2exp (SimpleWrapperV2) and audio2pose (the CVAE decoder on a ResUnet).

Names and shapes follow the ``audio2exp.*`` and ``audio2pose.*`` entries of ``SadTalker_V0.0.2_{size}.safetensors``
(upstream ``auido2exp.yaml`` / ``auido2pose.yaml``). ``TrainingOnlyParts`` holds the audio2pose entries that
inference never uses (the CVAE encoder, the motion discriminator): the loader checks them and drops them.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

EXP_DIM = 64
POSE_DIM = 6
SEQ_LEN = 32  # audio2pose predicts motion in chunks of 32 frames
LATENT = 64
NUM_CLASSES = 46  # pose styles
AUDIO_EMB = 512
AUDIO_EMB_OUT = 6
DECODER_SIZES = (128, SEQ_LEN * POSE_DIM)
ENCODER_HIDDEN = 128
UNET_FILTERS = (32, 64, 128, 256)
DISCRIMINATOR_WIDTHS = (POSE_DIM, 256, 512, 1024)

# Wav2Lip's audio encoder: (cin, cout, kernel, stride, padding, residual) per block
AUDIO_BLOCKS = (
    (1, 32, 3, 1, 1, False),
    (32, 32, 3, 1, 1, True),
    (32, 32, 3, 1, 1, True),
    (32, 64, 3, (3, 1), 1, False),
    (64, 64, 3, 1, 1, True),
    (64, 64, 3, 1, 1, True),
    (64, 128, 3, 3, 1, False),
    (128, 128, 3, 1, 1, True),
    (128, 128, 3, 1, 1, True),
    (128, 256, 3, (3, 2), 1, False),
    (256, 256, 3, 1, 1, True),
    (256, 512, 3, 1, 0, False),
    (512, 512, 1, 1, 0, False),
)


class AudioConv(nn.Module):
    """Conv2d + BatchNorm (``conv_block.0`` / ``.1``), plus the input when residual, then ReLU."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int | tuple[int, int], padding: int, residual: bool):
        super().__init__()
        self.conv_block = nn.Sequential(nn.Conv2d(cin, cout, kernel, stride, padding), nn.BatchNorm2d(cout))
        self.residual = residual

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv_block(x)
        return F.relu(out + x if self.residual else out)


def audio_encoder() -> nn.Sequential:
    """(N, 1, 80, 16) mel windows -> (N, 512, 1, 1)."""
    return nn.Sequential(*(AudioConv(*block) for block in AUDIO_BLOCKS))


class Audio2Exp(nn.Module):
    """audio2exp: per frame, Linear(audio 512 + reference expression 64 + blink ratio 1) -> expression 64."""

    def __init__(self) -> None:
        super().__init__()
        self.audio_encoder = audio_encoder()
        self.mapping1 = nn.Linear(AUDIO_EMB + EXP_DIM + 1, EXP_DIM)

    def forward(self, windows: torch.Tensor, ref_exp: torch.Tensor, ratio: torch.Tensor) -> torch.Tensor:
        """(N, 1, 80, 16), (N, 64), (N, 1) -> (N, 64)."""
        audio = self.audio_encoder(windows).flatten(1)
        return self.mapping1(torch.cat((audio, ref_exp, ratio), dim=1))


class ResidualConv(nn.Module):
    """[BN, ReLU, conv3 (stride), BN, ReLU, conv3] + [conv3 (stride), BN]."""

    def __init__(self, cin: int, cout: int, stride: int | tuple[int, int]) -> None:
        super().__init__()
        self.conv_block = nn.Sequential(
            nn.BatchNorm2d(cin),
            nn.ReLU(),
            nn.Conv2d(cin, cout, 3, stride=stride, padding=1),
            nn.BatchNorm2d(cout),
            nn.ReLU(),
            nn.Conv2d(cout, cout, 3, padding=1),
        )
        self.conv_skip = nn.Sequential(nn.Conv2d(cin, cout, 3, stride=stride, padding=1), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv_block(x) + self.conv_skip(x)


class Upsample(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.upsample = nn.ConvTranspose2d(channels, channels, kernel_size=(2, 1), stride=(2, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.upsample(x)


class ResUnet(nn.Module):
    """A 1-channel residual U-Net over (B, 1, 32, 6) pose sequences, halving time three times."""

    def __init__(self) -> None:
        super().__init__()
        f0, f1, f2, f3 = UNET_FILTERS
        self.input_layer = nn.Sequential(
            nn.Conv2d(1, f0, 3, padding=1), nn.BatchNorm2d(f0), nn.ReLU(), nn.Conv2d(f0, f0, 3, padding=1)
        )
        self.input_skip = nn.Sequential(nn.Conv2d(1, f0, 3, padding=1))
        self.residual_conv_1 = ResidualConv(f0, f1, (2, 1))
        self.residual_conv_2 = ResidualConv(f1, f2, (2, 1))
        self.bridge = ResidualConv(f2, f3, (2, 1))
        self.upsample_1 = Upsample(f3)
        self.up_residual_conv1 = ResidualConv(f3 + f2, f2, 1)
        self.upsample_2 = Upsample(f2)
        self.up_residual_conv2 = ResidualConv(f2 + f1, f1, 1)
        self.upsample_3 = Upsample(f1)
        self.up_residual_conv3 = ResidualConv(f1 + f0, f0, 1)
        self.output_layer = nn.Sequential(nn.Conv2d(f0, 1, 1), nn.Sigmoid())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x1 = self.input_layer(x) + self.input_skip(x)
        x2 = self.residual_conv_1(x1)
        x3 = self.residual_conv_2(x2)
        out = self.up_residual_conv1(torch.cat((self.upsample_1(self.bridge(x3)), x3), dim=1))
        out = self.up_residual_conv2(torch.cat((self.upsample_2(out), x2), dim=1))
        out = self.up_residual_conv3(torch.cat((self.upsample_3(out), x1), dim=1))
        return self.output_layer(out)


class PoseDecoder(nn.Module):
    """The CVAE decoder: (ref pose 6, z + class bias 64, audio 32 x 6) -> MLP -> ResUnet -> (B, 32, 6) motion."""

    def __init__(self) -> None:
        super().__init__()
        self.resunet = ResUnet()
        self.MLP = nn.Sequential()
        sizes = (POSE_DIM + LATENT + SEQ_LEN * AUDIO_EMB_OUT, *DECODER_SIZES)
        for i in range(len(sizes) - 1):
            self.MLP.add_module(f"L{i}", nn.Linear(sizes[i], sizes[i + 1]))
            last = i == len(sizes) - 2
            self.MLP.add_module("sigmoid" if last else f"A{i}", nn.Sigmoid() if last else nn.ReLU())
        self.pose_linear = nn.Linear(POSE_DIM, POSE_DIM)
        self.linear_audio = nn.Linear(AUDIO_EMB, AUDIO_EMB_OUT)
        self.classbias = nn.Parameter(torch.randn(NUM_CLASSES, LATENT))

    def forward(self, z: torch.Tensor, style: int, ref: torch.Tensor, audio_emb: torch.Tensor) -> torch.Tensor:
        """z (B, 64), ref (B, 6), audio_emb (B, 32, 512) -> (B, 32, 6)."""
        batch = z.shape[0]
        audio = self.linear_audio(audio_emb).reshape(batch, -1)
        x = self.MLP(torch.cat((ref, z + self.classbias[style], audio), dim=-1)).reshape(batch, SEQ_LEN, -1)
        return self.pose_linear(self.resunet(x.unsqueeze(1)).squeeze(1))


class PoseCVAE(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.decoder = PoseDecoder()


class AudioEncoderHolder(nn.Module):
    """Upstream's AudioEncoder wrapper: its Sequential is ``audio_encoder.audio_encoder``."""

    def __init__(self) -> None:
        super().__init__()
        self.audio_encoder = audio_encoder()

    def forward(self, windows: torch.Tensor) -> torch.Tensor:
        """(N, 1, 80, 16) -> (N, 512)."""
        return self.audio_encoder(windows).flatten(1)


class Audio2Pose(nn.Module):
    """audio2pose for inference: the audio encoder and the CVAE decoder (``netG.decoder``)."""

    def __init__(self) -> None:
        super().__init__()
        self.audio_encoder = AudioEncoderHolder()
        self.netG = PoseCVAE()


class PoseEncoder(nn.Module):
    """The CVAE encoder (training only): same ResUnet, an MLP to the latent mean and log-variance."""

    def __init__(self) -> None:
        super().__init__()
        self.resunet = ResUnet()
        self.MLP = nn.Sequential()
        self.MLP.add_module(
            "L0", nn.Linear(SEQ_LEN * POSE_DIM + LATENT + SEQ_LEN * AUDIO_EMB_OUT + POSE_DIM, ENCODER_HIDDEN)
        )
        self.MLP.add_module("A0", nn.ReLU())
        self.linear_means = nn.Linear(ENCODER_HIDDEN, LATENT)
        self.linear_logvar = nn.Linear(ENCODER_HIDDEN, LATENT)
        self.linear_audio = nn.Linear(AUDIO_EMB, AUDIO_EMB_OUT)
        self.classbias = nn.Parameter(torch.randn(NUM_CLASSES, LATENT))


class ConvNormRelu1d(nn.Module):
    def __init__(self, cin: int, cout: int, kernel: int) -> None:
        super().__init__()
        self.conv = nn.Conv1d(cin, cout, kernel, bias=False)
        self.norm = nn.BatchNorm1d(cout)


class PoseDiscriminator(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        w = DISCRIMINATOR_WIDTHS
        self.seq = nn.Sequential(
            ConvNormRelu1d(w[0], w[1], 4),
            ConvNormRelu1d(w[1], w[2], 4),
            ConvNormRelu1d(w[2], w[3], 3),
            nn.Conv1d(w[3], 1, kernel_size=3),
        )


class TrainingOnlyParts(nn.Module):
    """audio2pose entries used only in training (``netG.encoder.*``, ``netD_motion.*``): layout only."""

    def __init__(self) -> None:
        super().__init__()
        self.netG = nn.Module()
        self.netG.encoder = PoseEncoder()
        self.netD_motion = PoseDiscriminator()
