"""``sadtalker`` lip-sync engine: one portrait animated from speech audio (generate_video, GPU).

Per request: the face box from the portrait's 68 landmarks (upstream's crop), the 73 coefficients from the
aligned 224-px face, expression from audio2exp (with upstream's random blink schedule, seeded), head pose
from audio2pose (pose style, seeded latents, smoothed; frozen in still mode), then frames rendered in
batches and pasted back into the portrait (feathered, colour-matched; see ``PasteBack``).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch

from engines.context import EngineContext, required_weights
from engines.errors import EngineError
from engines.lipsync import AvatarFrames, DrivingAudio, register
from engines.lipsync.stream import FrameJob, render_offline
from engines.sadtalker.audio import SAMPLES_PER_FRAME, blink_ratios
from engines.sadtalker.loader import checkpoints_dir
from engines.sadtalker.model import SadTalker, load_sadtalker
from engines.sadtalker.preprocess import MODES, PasteBack, align_224, coeffs_73, crop_landmarks, cut_square, face_box

log = logging.getLogger(__name__)

ENGINE_VERSION = "1.0"
SEED = 0  # blinks and pose latents: the same request renders the same video


@register("sadtalker")
class SadTalkerLipSync:
    version = ENGINE_VERSION

    def __init__(
        self,
        model: SadTalker,
        preprocess: str = "crop",
        still: bool = False,
        pose_style: int = 0,
        expression_scale: float = 1.0,
        blink: bool = True,
    ) -> None:
        if preprocess not in MODES:
            raise EngineError("invalid_input", f"SadTalker preprocess {preprocess!r}: use one of {', '.join(MODES)}.")
        self.model = model
        self.preprocess, self.still, self.pose_style = preprocess, still, pose_style
        self.expression_scale, self.blink = expression_scale, blink

    @classmethod
    def load(cls, weights: Path | None, context: EngineContext) -> SadTalkerLipSync:
        """From the weights root (``checkpoints/`` inside) or any file of it. Options: ``size`` picks the weights
        (256 or 512); ``render_size`` renders at another multiple of 128 with them (128: about 4x cheaper, less
        detail); ``preprocess``, ``still``, ``pose_style``, ``expression_scale``, ``blink`` as upstream's flags."""
        root = checkpoints_dir(required_weights(weights, "sadtalker"))
        model = load_sadtalker(root, context.option("size", 256), context.precision, context.device)
        render_size = context.option("render_size")
        if render_size:
            if render_size % 128:
                raise EngineError(
                    "invalid_input", f"SadTalker render size must be a multiple of 128, not {render_size}."
                )
            model.size = render_size
        flags = ("preprocess", "still", "pose_style", "expression_scale", "blink")
        engine = cls(model, **{name: context.options[name] for name in flags if name in context.options})
        log.info("sadtalker lip-sync ready: %s", engine.info)
        return engine

    @property
    def info(self) -> dict[str, object]:
        return {**self.model.info, "preprocess": self.preprocess, "still": self.still, "pose_style": self.pose_style}

    def coefficients(self, samples: np.ndarray, num_frames: int, ref: np.ndarray) -> torch.Tensor:
        """(T, 70) expression + pose rows driven by the speech (padded with silence to whole frames)."""
        wav = np.zeros(num_frames * SAMPLES_PER_FRAME, np.float32)
        wav[: min(len(samples), len(wav))] = samples[: len(wav)]
        windows = self.model.audio_windows(wav)[None]
        rng = np.random.default_rng(SEED)
        ratio = blink_ratios(num_frames, rng) if self.blink else np.zeros(num_frames, np.float32)
        ref_t = torch.from_numpy(ref[None, :70])
        exp = self.model.audio_to_exp(windows, ref_t, torch.from_numpy(ratio)[None])
        noise = torch.randn(1, self.model.pose_chunks(num_frames), 64, generator=torch.Generator().manual_seed(SEED))
        pose = self.model.audio_to_pose(windows, ref_t, self.pose_style, noise)
        return torch.cat((exp[0], pose[0]), dim=1)

    lookahead_frames = 15  # a frame's mapping window reaches 13 frames ahead, its mel window 2 more
    audio_span = (2, 2)
    uses_mouth_shapes = False

    @property
    def batch_size(self) -> int:
        return self.model.batch_size

    def render(self, avatar: AvatarFrames, audio: DrivingAudio) -> Iterator[np.ndarray]:
        """Yield ``audio.num_frames`` frames of the avatar's first frame (the portrait) speaking."""
        return render_offline(self, avatar, audio)

    def stream_state(self, avatar: AvatarFrames) -> PortraitState:
        """The portrait's crop, its coefficients and paste-back, once per stream."""
        if len(avatar) == 0:
            raise EngineError("invalid_avatar", "The avatar has no frames.")
        if avatar.landmarks is None:
            raise EngineError("invalid_avatar", "The sadtalker engine needs the portrait's landmarks.")
        portrait, landmarks = avatar.frames[0], avatar.landmarks[0]
        height, width = portrait.shape[:2]
        box = face_box(landmarks, width, height, self.preprocess).box
        if box[2] - box[0] < 8 or box[3] - box[1] < 8:
            raise EngineError("no_face", "The portrait's face is too small for SadTalker.")
        size = self.model.size
        square = cut_square(cv2.cvtColor(portrait, cv2.COLOR_BGR2RGB), box, size)
        aligned, params = align_224(square, crop_landmarks(landmarks, box, size))
        raw = self.model.face_coeffs(torch.from_numpy(aligned).permute(2, 0, 1)[None].float() / 255.0)
        coeffs = coeffs_73(raw.cpu().numpy(), params)[0]
        source = torch.from_numpy(square).permute(2, 0, 1)[None].float() / 255.0
        columns = 73 if "full" in self.preprocess else 70
        return PortraitState(coeffs, source, torch.from_numpy(coeffs[None, :columns]), PasteBack(portrait, box))

    def render_frames(self, jobs: Sequence[FrameJob]) -> list[np.ndarray]:
        """Frames of one stream and window go through the face renderer together."""
        out: list[np.ndarray] = []
        for group in same_source(jobs):
            state, window = group[0].state, group[0].window
            key = ("sadtalker", id(state))
            rows = window.cache.get(key)
            if rows is None:
                samples = np.asarray(window.samples, np.float32)
                rows = window.cache[key] = self.coefficients(samples, window.num_frames, state.coeffs)
            frames = [job.audio_frame for job in group]
            batch = self.model.render_frames(
                state.source, state.source_coeffs, rows, frames, self.still, self.expression_scale
            )
            faces = batch.mul(255.0).add_(0.5).clamp_(0, 255).to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
            out += [state.paste(cv2.cvtColor(face, cv2.COLOR_RGB2BGR)) for face in faces]
        return out


@dataclass(eq=False)
class PortraitState:
    coeffs: np.ndarray  # the portrait's 73 coefficients
    source: torch.Tensor  # (1, 3, size, size) RGB crop in [0, 1]
    source_coeffs: torch.Tensor  # (1, 70 or 73): what the renderer's mapping reads of the source
    paste: PasteBack


def same_source(jobs: Sequence[FrameJob]) -> list[list[FrameJob]]:
    """``jobs`` cut where the stream or its audio window changes."""
    groups: list[list[FrameJob]] = []
    for job in jobs:
        if groups and groups[-1][0].state is job.state and groups[-1][0].window is job.window:
            groups[-1].append(job)
        else:
            groups.append([job])
    return groups
