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
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np

from engines.context import EngineContext, required_weights
from engines.errors import EngineError
from engines.lipsync import FPS, AvatarFrames, DrivingAudio, register
from engines.lipsync.portrait_avatar import blink_schedule
from engines.lipsync.stream import FrameJob, mouth_shapes, render_offline
from engines.liveportrait.animate import FrameEdits, PortraitAnimator, PortraitSource
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

    lookahead_frames = 0
    audio_span = (3, 3)  # as viseme_warp: the fade-in is over when the sound starts
    uses_mouth_shapes = True

    @property
    def batch_size(self) -> int:
        return self.batch_frames

    def render(self, avatar: AvatarFrames, audio: DrivingAudio) -> Iterator[np.ndarray]:
        """Yield ``audio.num_frames`` frames of the avatar's first frame (the portrait) speaking."""
        return render_offline(self, avatar, audio)

    def stream_state(self, avatar: AvatarFrames) -> tuple[PortraitSource, float]:
        """The portrait prepared once per stream, and its eyes' open ratio (blinks close it)."""
        if len(avatar) == 0:
            raise EngineError("invalid_avatar", "The avatar has no frames.")
        if avatar.landmarks is None:
            raise EngineError("invalid_avatar", "The liveportrait engine needs the portrait's landmarks.")
        src = self.animator.prepare(avatar.frames[0], avatar.landmarks[0])
        return src, float(np.mean(src.eye_ratios))

    def render_frames(self, jobs: Sequence[FrameJob]) -> list[np.ndarray]:
        """Runs of consecutive frames of one stream go through W and G together."""
        out: list[np.ndarray] = []
        for run in consecutive_runs(jobs):
            src, eye_open = run[0].state
            first, window = run[0].index, run[0].window
            track = mouth_shapes(window)[[job.audio_frame for job in run]]
            closure = blink_schedule(first + len(run))[first:]
            edits = speech_edits(track, closure, eye_open, first)
            out += self.animator.render(src, self.animator.drive(src, edits))
        return out


def consecutive_runs(jobs: Sequence[FrameJob]) -> list[list[FrameJob]]:
    """``jobs`` cut where the stream, the audio window or the frame sequence changes."""
    runs: list[list[FrameJob]] = []
    for job in jobs:
        last = runs[-1][-1] if runs else None
        if last is not None and last.state is job.state and last.window is job.window and last.index + 1 == job.index:
            runs[-1].append(job)
        else:
            runs.append([job])
    return runs
