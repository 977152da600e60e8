"""The public SadTalker API: ``load_sadtalker(root, size)`` -> ``SadTalker`` with upstream's math, method by method.

Tensors in, float32 tensors out (on the model's device). Everything but the generator's per-frame work runs
in float32 (once per portrait or cheap); the generator (dense motion, warping, SPADE decoder) runs in the
inference dtype: fp16 on CUDA, bf16 on CPUs with native bf16, else fp32 (``precision`` overrides). The
source's appearance volume and dense-motion inputs are computed once per portrait; frames go in batches.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn

from engines.errors import EngineError
from engines.liveportrait.blocks import fold_batchnorm, freeze_spectral
from engines.liveportrait.warping import SourceMotion
from engines.precision import PRECISIONS, inference_dtype
from engines.sadtalker.audio import mel_windows, smooth_poses
from engines.sadtalker.audio_nets import LATENT, NUM_CLASSES, SEQ_LEN
from engines.sadtalker.facerender import NUM_BINS, NUM_KP, WINDOW
from engines.sadtalker.loader import load_modules

log = logging.getLogger(__name__)

BATCH_SIZE = {"cpu": 4, "cuda": 16}
AUDIO_CHUNK = 256  # mel windows through an audio encoder at once (bounds memory for long speech)
PI = 3.14  # sic: upstream converts degrees with 3.14, not math.pi
DEGREE_BIN, DEGREE_OFFSET = 3.0, 99.0
EXP_COLUMNS, POSE_COLUMNS = slice(0, 64), slice(64, 70)


def pose_degrees(logits: torch.Tensor) -> torch.Tensor:
    """(B, 66) logits -> (B,) degrees: the softmax expectation of 3-degree bins, minus 99."""
    bins = torch.arange(NUM_BINS, dtype=torch.float32, device=logits.device)
    return (torch.softmax(logits.float(), dim=1) * bins).sum(dim=1) * DEGREE_BIN - DEGREE_OFFSET


def rotation(yaw: torch.Tensor, pitch: torch.Tensor, roll: torch.Tensor) -> torch.Tensor:
    """(B, 3, 3) = pitch(x) @ yaw(y) @ roll(z), degrees -> radians with 3.14 as upstream."""
    p, y, r = (a.reshape(-1, 1) / 180 * PI for a in (pitch, yaw, roll))
    one, zero = torch.ones_like(p), torch.zeros_like(p)
    rx = torch.cat([one, zero, zero, zero, p.cos(), -p.sin(), zero, p.sin(), p.cos()], dim=1).reshape(-1, 3, 3)
    ry = torch.cat([y.cos(), zero, y.sin(), zero, one, zero, -y.sin(), zero, y.cos()], dim=1).reshape(-1, 3, 3)
    rz = torch.cat([r.cos(), -r.sin(), zero, r.sin(), r.cos(), zero, zero, zero, one], dim=1).reshape(-1, 3, 3)
    return rx @ ry @ rz


def transform_keypoints(kp_canonical: torch.Tensor, he: dict[str, torch.Tensor]) -> torch.Tensor:
    """Posed keypoints R kp + (0, t_y, 0) + exp: upstream's keypoint_transformation."""
    rot = rotation(*(pose_degrees(he[k]) for k in ("yaw", "pitch", "roll")))
    posed = kp_canonical @ rot.transpose(1, 2)
    shift = torch.zeros_like(posed[:, :1])
    shift[..., 1] = he["t"][:, None, 1]
    return posed + shift + he["exp"].reshape(posed.shape[0], NUM_KP, 3)


def coefficient_windows(rows: torch.Tensor, frames: Sequence[int]) -> torch.Tensor:
    """(len(frames), C, 27): rows i-13 .. i+13 of (T, C) ``rows``, clamped to [0, T-1], for each frame i."""
    radius = WINDOW // 2
    index = torch.tensor([list(range(i - radius, i + radius + 1)) for i in frames], device=rows.device)
    return rows[index.clamp_(0, rows.shape[0] - 1)].transpose(1, 2)


def driving_rows(source: torch.Tensor, coeffs: torch.Tensor, still: bool, expression_scale: float) -> torch.Tensor:
    """(T, C) rows the mapping reads: exp scaled, the source's crop params appended (C=73), pose frozen if still."""
    rows = coeffs[:, :70].float().clone()
    rows[:, EXP_COLUMNS] *= expression_scale
    if source.shape[1] > 70:
        rows = torch.cat((rows, source[:, 70:].expand(rows.shape[0], -1)), dim=1)
    if still:
        rows[:, 64:] = source[:, 64:]
    return rows


class SadTalker:
    """SadTalker's networks ready for inference; methods as ``shared/reference/sadtalker.md`` lists them."""

    def __init__(self, modules: dict[str, nn.Module], size: int, device: torch.device, dtype: torch.dtype) -> None:
        self.size, self.device, self.dtype = size, device, dtype
        self.batch_size = BATCH_SIZE.get(device.type, 4)
        self.kp_extractor = modules["kp_extractor"]
        self.generator = modules["generator"]
        self.face_3drecon = modules["face_3drecon"]
        self.audio2exp = modules["audio2exp"]
        self.audio2pose = modules["audio2pose"]
        self.mappings = {70: modules["mapping70"], 73: modules["mapping73"]}
        self._source: tuple[torch.Tensor, torch.Tensor, torch.Tensor, SourceMotion] | None = None

    @property
    def info(self) -> dict[str, object]:
        precision = str(self.dtype).removeprefix("torch.")
        return {"device": self.device.type, "precision": precision, "size": self.size, "batch_size": self.batch_size}

    def _in(self, x: torch.Tensor | np.ndarray) -> torch.Tensor:
        return torch.as_tensor(x).to(self.device, torch.float32)

    # ---- coefficients ------------------------------------------------------------------------------

    def face_coeffs(self, img224: torch.Tensor) -> torch.Tensor:
        """(B, 3, 224, 224) aligned RGB in [0, 1] -> (B, 257) raw face_3drecon output."""
        with torch.inference_mode():
            return self.face_3drecon(self._in(img224)).float()

    @staticmethod
    def audio_windows(wav16k: np.ndarray, fps: float = 25) -> torch.Tensor:
        """float32 samples at 16 kHz -> (T, 80, 16) mel windows, T = int(len / 640)."""
        return torch.from_numpy(mel_windows(np.asarray(wav16k, dtype=np.float32), fps))

    def _encode(self, encoder: nn.Module, windows: torch.Tensor) -> torch.Tensor:
        """(N, 80, 16) -> (N, 512) through an audio encoder, in chunks."""
        parts = [encoder(windows[i : i + AUDIO_CHUNK, None]).flatten(1) for i in range(0, len(windows), AUDIO_CHUNK)]
        return torch.cat(parts) if parts else windows.new_zeros(0, 512)

    def audio_to_exp(
        self, windows: torch.Tensor, ref_coeffs: torch.Tensor, blink_ratio: torch.Tensor | np.ndarray
    ) -> torch.Tensor:
        """(B, T, 80, 16), (B, 70) or per-frame (B, T, 70), (B, T) -> (B, T, 64) expression coefficients."""
        windows, ref, ratio = self._in(windows), self._in(ref_coeffs), self._in(blink_ratio)
        batch, frames = windows.shape[:2]
        ref = ref[..., EXP_COLUMNS]
        if ref.dim() == 2:
            ref = ref[:, None].expand(batch, frames, -1)
        with torch.inference_mode():
            audio = self._encode(self.audio2exp.audio_encoder, windows.reshape(batch * frames, 80, 16))
            inputs = torch.cat((audio, ref.reshape(batch * frames, -1), ratio.reshape(batch * frames, 1)), dim=1)
            return self.audio2exp.mapping1(inputs).reshape(batch, frames, -1).float()

    @staticmethod
    def pose_chunks(num_frames: int) -> int:
        """How many latents audio_to_pose draws for ``num_frames``: ceil((T - 1) / 32)."""
        return math.ceil(max(num_frames - 1, 0) / SEQ_LEN)

    def audio_to_pose(
        self,
        windows: torch.Tensor,
        ref_coeffs: torch.Tensor,
        pose_style: int,
        noise: torch.Tensor,
        smooth: bool = True,
    ) -> torch.Tensor:
        """(B, T, 80, 16), (B, 70), style in [0, 46), (B, ceil((T-1)/32), 64) -> (B, T, 6) poses.

        Frame 0 keeps the reference pose; windows 1..T-1 go in chunks of 32, chunk k decoded from latent
        ``noise[:, k]``; a remainder chunk takes the last 32 windows (left-padded by repeating the first when
        fewer exist) and keeps its last motions. ``smooth``: upstream's Savitzky-Golay filter over time.
        """
        windows, ref, noise = self._in(windows), self._in(ref_coeffs), self._in(noise)
        if not 0 <= int(pose_style) < NUM_CLASSES:
            raise ValueError(f"pose_style must be in [0, {NUM_CLASSES}), got {pose_style}")
        batch, frames = windows.shape[:2]
        chunks = self.pose_chunks(frames)
        if tuple(noise.shape) != (batch, chunks, LATENT):
            raise ValueError(
                f"noise must be ({batch}, {chunks}, {LATENT}) for {frames} frames, got {tuple(noise.shape)}"
            )
        ref_pose = (ref[:, 0] if ref.dim() == 3 else ref)[:, POSE_COLUMNS]
        decoder = self.audio2pose.netG.decoder
        with torch.inference_mode():
            motions = [ref_pose.new_zeros(batch, 1, 6)]
            full, rest = divmod(frames - 1, SEQ_LEN)
            if frames > 1:  # one frame is the reference pose alone: no window to encode
                emb = self._encode(self.audio2pose.audio_encoder, windows[:, 1:].reshape(-1, 80, 16))
                emb = emb.reshape(batch, frames - 1, -1)
            for k in range(full):
                part = emb[:, k * SEQ_LEN : (k + 1) * SEQ_LEN]
                motions.append(decoder(noise[:, k], int(pose_style), ref_pose, part))
            if rest:
                part = emb[:, -SEQ_LEN:]
                if part.shape[1] < SEQ_LEN:
                    part = torch.cat((part[:, :1].expand(-1, SEQ_LEN - part.shape[1], -1), part), dim=1)
                motions.append(decoder(noise[:, full], int(pose_style), ref_pose, part)[:, -rest:])
            pose = ref_pose[:, None] + torch.cat(motions, dim=1)
        if smooth:
            pose = torch.from_numpy(smooth_poses(pose.cpu().numpy())).to(self.device)
        return pose.float()

    # ---- face render -------------------------------------------------------------------------------

    def source_keypoints(self, img: torch.Tensor) -> torch.Tensor:
        """(B, 3, S, S) RGB in [0, 1] -> (B, 15, 3) canonical keypoints."""
        with torch.inference_mode():
            return self.kp_extractor(self._in(img)).float()

    def mapping(self, window: torch.Tensor) -> dict[str, torch.Tensor]:
        """(B, C, 27) coefficient window (C = 70: mapping_00229, 73: mapping_00109) -> pose logits, t, exp."""
        window = self._in(window)
        net = self.mappings.get(window.shape[1])
        if net is None:
            raise ValueError(f"a mapping window has 70 or 73 coefficients, got {window.shape[1]}")
        with torch.inference_mode():
            return {k: v.float() for k, v in net(window).items()}

    def render(
        self,
        source_img: torch.Tensor,
        source_coeffs: torch.Tensor,
        coeff_seq: torch.Tensor,
        still: bool = False,
        expression_scale: float = 1.0,
    ) -> torch.Tensor:
        """(1, 3, S, S) in [0, 1], (1, 70) crop / (1, 73) full, (T, 70) exp + pose -> (T, 3, S, S) in [0, 1]."""
        frames = list(self.render_batches(source_img, source_coeffs, coeff_seq, still, expression_scale))
        return torch.cat(frames) if frames else self._in(source_img).new_zeros(0, *source_img.shape[1:])

    def render_batches(
        self,
        source_img: torch.Tensor,
        source_coeffs: torch.Tensor,
        coeff_seq: torch.Tensor,
        still: bool = False,
        expression_scale: float = 1.0,
    ) -> Iterator[torch.Tensor]:
        """``render`` batch by batch (``batch_size`` frames each): memory independent of length."""
        for first in range(0, coeff_seq.shape[0], self.batch_size):
            chunk = range(first, min(coeff_seq.shape[0], first + self.batch_size))
            yield self.render_frames(source_img, source_coeffs, coeff_seq, chunk, still, expression_scale)

    def render_frames(
        self,
        source_img: torch.Tensor,
        source_coeffs: torch.Tensor,
        coeff_seq: torch.Tensor,
        frames: Sequence[int],
        still: bool = False,
        expression_scale: float = 1.0,
    ) -> torch.Tensor:
        """Frames ``frames`` of the (T, 70) coefficient sequence, as one batch (a stream's frames)."""
        source, src_coeffs = self._in(source_img), self._in(source_coeffs)
        rows = driving_rows(src_coeffs, self._in(coeff_seq), still, expression_scale)
        with torch.inference_mode():
            kp_canonical, feature, src = self._source_state(source, src_coeffs)
            he = self.mappings[rows.shape[1]](coefficient_windows(rows, frames))
            n = len(frames)
            kp_driving = transform_keypoints(kp_canonical.expand(n, -1, -1), he)
            part = SourceMotion(*(t.expand(n, *t.shape[1:]) for t in (src.compressed, src.kp_source, src.heat_source)))
            out = self.generator.render(feature.expand(n, *feature.shape[1:]), part, kp_driving)
            return out.float().clamp_(0.0, 1.0)

    def _source_state(
        self, source: torch.Tensor, coeffs: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, SourceMotion]:
        """Canonical keypoints, appearance volume and dense-motion inputs of the source: once per portrait."""
        cached = self._source
        if cached is not None and torch.equal(cached[0], source) and torch.equal(cached[1], coeffs):
            return cached[2], cached[3][0], cached[3][1]
        kp_canonical = self.kp_extractor(source).float()
        window = coeffs[:, :, None].expand(-1, -1, WINDOW)
        kp_source = transform_keypoints(kp_canonical, self.mappings[coeffs.shape[1]](window))
        feature, src = self.generator.source(source, kp_source)
        self._source = (source.clone(), coeffs.clone(), kp_canonical, (feature, src))
        return kp_canonical, feature, src


def prepare_generator(generator: nn.Module, device: torch.device, dtype: torch.dtype) -> nn.Module:
    """BatchNorms folded into their convs, spectral norms frozen, on ``device`` in ``dtype``; in reduced
    precision the SPADE decoder channels-last (oneDNN's fast path there; slower in fp32 on a CPU)."""
    generator = freeze_spectral(fold_batchnorm(generator)).to(device, dtype)
    if dtype != torch.float32 or device.type == "cuda":
        generator.decoder.to(memory_format=torch.channels_last)
        generator.layout = torch.channels_last
    return generator.eval().requires_grad_(False)


def load_sadtalker(
    root: str | Path, size: int = 256, precision: str = "auto", device: str | None = None, optimize: bool = True
) -> SadTalker:
    """Load ``root/checkpoints`` strictly for ``size`` px renders. ``precision``: auto | fp32 | bf16 | fp16 (the
    generator's per-frame dtype); ``optimize=False`` keeps the plain float32 modules (the reference path)."""
    if precision not in PRECISIONS:
        raise EngineError(
            "invalid_precision", f"SadTalker precision {precision!r}: use one of {', '.join(PRECISIONS)}."
        )
    target = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    modules = {name: module.to(target) for name, module in load_modules(root, size).items()}
    dtype = inference_dtype(target, precision) if optimize else torch.float32
    if optimize:
        modules["generator"] = prepare_generator(modules["generator"], target, dtype)
    model = SadTalker(modules, size, target, dtype)
    log.info("SadTalker ready: %s", model.info)
    return model
