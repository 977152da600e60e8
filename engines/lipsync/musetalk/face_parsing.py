"""Face parsing for MuseTalk's blend mask: a BiSeNet (ResNet-18 context path) key-compatible with
``face-parse-bisent/79999_iter.pth`` (19 CelebAMask-HQ classes), and upstream's ``jaw`` mask mode.

Used only when that file is present; otherwise the mask comes from the 68 landmarks (``avatar.py``).
Jaw mode: the skin class (1) widened downwards by a cone-shaped kernel, eroded at the cheeks, minus the
nose (10), plus the mouth and lips (11, 12, 13); 255 inside, 0 outside.
"""

from __future__ import annotations

import logging
from pathlib import Path

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from engines.checkpoints import check_state, module_shapes, read_tensors
from engines.lipsync.musetalk.loader import FACE_PARSING_WEIGHTS

log = logging.getLogger(__name__)

CLASSES = 19
PARSE_SIZE = 512
SKIN, NOSE, MOUTH_AND_LIPS = 1, 10, (11, 12, 13)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CHEEK_WIDTH = 90  # upstream v1.5's left/right cheek width at the 512-px parsing size


class ConvBNReLU(nn.Module):
    def __init__(self, cin: int, cout: int, ks: int = 3, padding: int = 1) -> None:
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, ks, 1, padding, bias=False)
        self.bn = nn.BatchNorm2d(cout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn(self.conv(x)))


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.downsample = None
        if cin != cout or stride != 1:
            self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        residual = self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x)))))
        shortcut = x if self.downsample is None else self.downsample(x)
        return F.relu(shortcut + residual)


class Resnet18(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        widths = [(64, 64, 1), (64, 128, 2), (128, 256, 2), (256, 512, 2)]
        for index, (cin, cout, stride) in enumerate(widths, start=1):
            setattr(self, f"layer{index}", nn.Sequential(BasicBlock(cin, cout, stride), BasicBlock(cout, cout)))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        x = self.layer1(self.maxpool(F.relu(self.bn1(self.conv1(x)))))
        feat8 = self.layer2(x)
        feat16 = self.layer3(feat8)
        return feat8, feat16, self.layer4(feat16)


class AttentionRefinement(nn.Module):
    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.conv = ConvBNReLU(cin, cout)
        self.conv_atten = nn.Conv2d(cout, cout, 1, bias=False)
        self.bn_atten = nn.BatchNorm2d(cout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feat = self.conv(x)
        return feat * torch.sigmoid(self.bn_atten(self.conv_atten(feat.mean((2, 3), keepdim=True))))


class ContextPath(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.resnet = Resnet18()
        self.arm16 = AttentionRefinement(256, 128)
        self.arm32 = AttentionRefinement(512, 128)
        self.conv_head32 = ConvBNReLU(128, 128)
        self.conv_head16 = ConvBNReLU(128, 128)
        self.conv_avg = ConvBNReLU(512, 128, ks=1, padding=0)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        feat8, feat16, feat32 = self.resnet(x)
        avg = self.conv_avg(feat32.mean((2, 3), keepdim=True))
        up32 = F.interpolate(self.arm32(feat32) + avg, feat16.shape[2:], mode="nearest")
        up32 = self.conv_head32(up32)
        up16 = F.interpolate(self.arm16(feat16) + up32, feat8.shape[2:], mode="nearest")
        return feat8, self.conv_head16(up16)


class FeatureFusion(nn.Module):
    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.convblk = ConvBNReLU(cin, cout, ks=1, padding=0)
        self.conv1 = nn.Conv2d(cout, cout // 4, 1, bias=False)
        self.conv2 = nn.Conv2d(cout // 4, cout, 1, bias=False)

    def forward(self, spatial: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        feat = self.convblk(torch.cat([spatial, context], dim=1))
        atten = torch.sigmoid(self.conv2(F.relu(self.conv1(feat.mean((2, 3), keepdim=True)))))
        return feat * atten + feat


class Output(nn.Module):
    def __init__(self, cin: int, mid: int, classes: int) -> None:
        super().__init__()
        self.conv = ConvBNReLU(cin, mid)
        self.conv_out = nn.Conv2d(mid, classes, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv_out(self.conv(x))


class BiSeNet(nn.Module):
    """Inference needs only the main head; the two auxiliary heads exist for the checkpoint's keys."""

    def __init__(self, classes: int = CLASSES) -> None:
        super().__init__()
        self.cp = ContextPath()
        self.ffm = FeatureFusion(256, 256)
        self.conv_out = Output(256, 256, classes)
        self.conv_out16 = Output(128, 64, classes)
        self.conv_out32 = Output(128, 64, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feat8, context8 = self.cp(x)
        logits = self.conv_out(self.ffm(feat8, context8))
        return F.interpolate(logits, x.shape[2:], mode="bilinear", align_corners=True)


def _cone_kernel(cone: int = 21, tail: int = 12) -> np.ndarray:
    """Upstream's jaw dilation kernel: a downward-widening cone then a straight tail."""
    size = cone + tail
    kernel = np.zeros((size, size), np.uint8)
    centre = size // 2
    for row in range(cone // 2, cone):
        half = row - cone // 2
        kernel[row, centre - half : centre + half + 1] = 1
    base = int(kernel[cone - 1].sum())
    kernel[cone:, max(0, centre - base // 2) : centre + base // 2 + 1] = 1
    return kernel


class FaceParser:
    """``jaw_region(crop_bgr)`` -> 0/255 uint8 mask of the crop's size, from BiSeNet's parsing."""

    def __init__(self, net: BiSeNet, device: torch.device) -> None:
        self.net, self.device = net.to(device).eval(), device
        self.kernel = _cone_kernel()
        self.cheek_kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (35, 3))
        self.cheeks = np.zeros((PARSE_SIZE, PARSE_SIZE), np.uint8)  # 255 on the outer cheeks
        self.cheeks[:, : PARSE_SIZE // 2 - CHEEK_WIDTH] = 255
        self.cheeks[:, PARSE_SIZE // 2 + CHEEK_WIDTH :] = 255

    @torch.inference_mode()
    def parse(self, crop_bgr: np.ndarray) -> np.ndarray:
        """(512, 512) class labels of the crop (resized bilinearly, ImageNet-normalised RGB)."""
        rgb = cv2.resize(crop_bgr[..., ::-1], (PARSE_SIZE, PARSE_SIZE), interpolation=cv2.INTER_LINEAR)
        x = torch.from_numpy(np.ascontiguousarray(rgb)).to(self.device).permute(2, 0, 1).float() / 255.0
        mean = torch.tensor(IMAGENET_MEAN, device=self.device)[:, None, None]
        std = torch.tensor(IMAGENET_STD, device=self.device)[:, None, None]
        return self.net(((x - mean) / std)[None])[0].argmax(0).cpu().numpy()

    def jaw_region(self, crop_bgr: np.ndarray) -> np.ndarray:
        labels = self.parse(crop_bgr)
        skin = np.where(labels == SKIN, 255, 0).astype(np.uint8)
        dilated = cv2.dilate(skin, self.kernel, iterations=1)
        eroded = cv2.erode(dilated, self.cheek_kernel, iterations=2)
        face = (eroded & self.cheeks) | (dilated & ~self.cheeks)
        region = ((face == 255) & (labels != NOSE)) | np.isin(labels, MOUTH_AND_LIPS)
        mask = np.where(region, 255, 0).astype(np.uint8)
        height, width = crop_bgr.shape[:2]
        return cv2.resize(mask, (width, height), interpolation=cv2.INTER_LINEAR)


def load_face_parser(root: Path, device: torch.device) -> FaceParser | None:
    """The BiSeNet parser from ``root/face-parse-bisent/79999_iter.pth``, or None when the file is absent."""
    path = Path(root) / FACE_PARSING_WEIGHTS
    if not path.is_file():
        log.info("no %s: MuseTalk blend masks come from the 68 landmarks (jaw mode)", path)
        return None
    with torch.device("meta"):
        net = BiSeNet()
    state = read_tensors(path, "face-parsing checkpoint")
    check_state(state, module_shapes(net), path, "BiSeNet face-parsing")
    net.load_state_dict(state, strict=True, assign=True)
    return FaceParser(net.float(), device)
