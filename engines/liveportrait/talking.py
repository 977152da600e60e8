"""``liveportrait`` lip-sync engine: one portrait animated by our own speech timeline (generate_video, GPU).

No driving video: the mouth track of the speech (visemes' open / spread / round, from the phoneme timeline
when the speech came from text, else from the audio) sets the lip retargeting ratio and the lip-shape
expression entries; blinks follow the portrait avatar's schedule through eye retargeting; a small idle head
motion (incommensurate sines) keeps the head alive; every frame is stitched. Frames go through W and G in
batches and are pasted back into the portrait.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from engines.context import EngineContext, required_weights
from engines.errors import EngineError
from engines.lipsync import FPS, AvatarFrames, DrivingAudio, register
from engines.lipsync.portrait_avatar import blink_schedule
from engines.lipsync.visemes import mouth_track_from_audio, mouth_track_from_phonemes
from engines.liveportrait.animate import FrameEdits, PortraitAnimator
from engines.liveportrait.crop import INPUT_SIZE
from engines.liveportrait.editing import mouth_edit
from engines.liveportrait.loader import weights_root
from engines.liveportrait.pipeline import LivePortrait, load_liveportrait

log = logging.getLogger(__name__)

ENGINE_VERSION = "1.0"
IDLE_DEGREES = (1.5, 2.0, 1.0)  # pitch, yaw, roll amplitudes
IDLE_PERIODS_S = (4.1, 5.7, 6.3)


def idle_pose(num_frames: int, first: int = 0, fps: float = FPS) -> np.ndarray:
    """(N, 3) pitch, yaw, roll deltas in degrees of frames ``first..first+N``: 0 at frame 0."""
    t = (first + np.arange(num_frames, dtype=np.float64)) / fps
    columns = [a * np.sin(2 * math.pi * t / p) for a, p in zip(IDLE_DEGREES, IDLE_PERIODS_S, strict=True)]
    return np.stack(columns, axis=1).astype(np.float32)


def speech_edits(track: np.ndarray, closure: np.ndarray, eye_open: float, first: int) -> FrameEdits:
    """The edits of frames ``first..first+len(track)``: mouth shapes, blinks (NaN: eyes untouched), idle pose."""
    shapes = [mouth_edit(*row) for row in track]
    eye = np.where(closure > 0, eye_open * (1.0 - closure), np.nan).astype(np.float32)
    return FrameEdits(
        exp=np.stack([delta for _, delta in shapes]),
        pose=idle_pose(len(track), first),
        lip_ratio=np.array([ratio for ratio, _ in shapes], np.float32),
        eye_ratio=eye,
    )


@register("liveportrait")
class LivePortraitLipSync:
    version = ENGINE_VERSION

    def __init__(self, lp: LivePortrait, input_size: int = INPUT_SIZE, batch_frames: int | None = None) -> None:
        self.lp = lp
        self.animator = PortraitAnimator(lp, input_size)
        self.batch_frames = batch_frames or max(lp.batch_size, 8)

    @classmethod
    def load(cls, weights: Path | None, context: EngineContext) -> LivePortraitLipSync:
        """From the weights root, or its ``base_models/warping_module.pth`` (the file that stands for the set);
        options ``input_size``, ``compile`` (torch.compile on CUDA)."""
        root = weights_root(required_weights(weights, "liveportrait"))
        compile_modules = bool(context.option("compile", False))
        lp = load_liveportrait(root, context.precision, context.device, compile_modules=compile_modules)
        engine = cls(lp, context.option("input_size", INPUT_SIZE))
        log.info("liveportrait lip-sync ready: %s", engine.info)
        return engine

    @property
    def info(self) -> dict[str, object]:
        return self.animator.lp.info

    def render(self, avatar: AvatarFrames, audio: DrivingAudio) -> Iterator[np.ndarray]:
        """Yield ``audio.num_frames`` frames of the avatar's first frame (the portrait) speaking."""
        if len(avatar) == 0:
            raise EngineError("invalid_avatar", "The avatar has no frames.")
        if avatar.landmarks is None:
            raise EngineError("invalid_avatar", "The liveportrait engine needs the portrait's landmarks.")
        src = self.animator.prepare(avatar.frames[0], avatar.landmarks[0])
        n = audio.num_frames
        if audio.phonemes:
            track = mouth_track_from_phonemes(audio.phonemes, audio.samples, n)
        else:
            track = mouth_track_from_audio(audio.samples, n)
        closure = blink_schedule(n)
        eye_open = float(np.mean(src.eye_ratios))
        for first in range(0, n, self.batch_frames):
            part = slice(first, min(n, first + self.batch_frames))
            edits = speech_edits(track[part], closure[part], eye_open, first)
            yield from self.animator.render(src, self.animator.drive(src, edits))
