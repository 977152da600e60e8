"""Video-driven LivePortrait: a portrait (or a source video) reenacted by a driving video's motion.

Upstream's pipeline (``LivePortraitPipeline.execute``) with our face analysis: the source is cropped from our
68 landmarks with upstream's geometry (scale 2.3, offsets vx / vy, rotation-aligned, fed at the engine's
input size with INTER_AREA), the driving video from its landmarks into one unrotated square for the whole
video (scale 2.2, vy -0.1, averaged over the frames) unless it is already a square face crop. M turns the
driving crops into a motion (``driving.Motion``, upstream's motion template); ``driving.KeypointDriver``
makes each output frame's keypoints; W and G render them in batches; the render is pasted back into the
source frame (when both paste-back and stitching are on, as upstream).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass

import cv2
import numpy as np
import torch

from engines.constants import FPS
from engines.face.boxes import smooth_series
from engines.liveportrait.crop import (
    INPUT_SIZE,
    SCALE,
    VX_RATIO,
    VY_RATIO,
    crop_face,
    eye_ratios,
    lip_ratio,
    paste_back,
    warp_crop,
)
from engines.liveportrait.driving import DrivingOptions, KeypointDriver, Motion, concat_motion, motion_of
from engines.liveportrait.pipeline import LivePortrait

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class CropOptions:
    """The source crop (upstream ``--scale``, ``--vx_ratio``, ``--vy_ratio``)."""

    scale: float = SCALE
    vx_ratio: float = VX_RATIO
    vy_ratio: float = VY_RATIO


@dataclass
class Source:
    """What is reenacted: one portrait (``frames`` of length 1) or the frames of a source video."""

    frames: Sequence[np.ndarray]  # full BGR frames
    crops: list[np.ndarray]  # 3x3 source -> 512-px crop transform per frame
    motion: Motion  # M's outputs per frame (one row for a portrait)
    feature: torch.Tensor | None = None  # a portrait's appearance feature (a video's is made per chunk)

    @property
    def is_video(self) -> bool:
        return len(self.frames) > 1 or self.feature is None


class Reenactor:
    def __init__(self, lp: LivePortrait, input_size: int = INPUT_SIZE, batch_frames: int | None = None) -> None:
        if input_size % 128:
            raise ValueError(f"input_size must be a multiple of 128, got {input_size}")
        self.lp, self.input_size = lp, input_size
        self.batch_frames = batch_frames or max(lp.batch_size, 8)

    def network_input(self, image_bgr: np.ndarray, interpolation: int = cv2.INTER_AREA) -> torch.Tensor:
        """(1, 3, s, s) RGB in [0, 1] of a crop (upstream: INTER_AREA for sources, INTER_LINEAR for driving)."""
        size = (self.input_size, self.input_size)
        rgb = cv2.cvtColor(image_bgr, cv2.COLOR_BGR2RGB)
        if rgb.shape[:2] != size:
            rgb = cv2.resize(rgb, size, interpolation=interpolation)
        return torch.from_numpy(rgb.astype(np.float32) / 255.0).permute(2, 0, 1)[None].contiguous()

    # ---- sources -----------------------------------------------------------------------------

    def portrait(self, image: np.ndarray, landmarks: np.ndarray, crop: CropOptions = CropOptions()) -> Source:
        """A portrait source: cropped, F and M once."""
        face = crop_face(image, landmarks, scale=crop.scale, vx=crop.vx_ratio, vy=crop.vy_ratio)
        x = self.network_input(face.image)
        motion = motion_of(self.lp, x, eye_ratios(face.landmarks)[None], np.array([lip_ratio(face.landmarks)]))
        return Source([image], [face.to_crop], motion, feature=self.lp.appearance(x))

    def video(
        self, frames: Sequence[np.ndarray], landmarks: np.ndarray, count: int, crop: CropOptions = CropOptions()
    ) -> Source:
        """A source video's first ``count`` frames: each cropped and through M (F runs per chunk at render)."""
        parts, crops = [], []
        # The crops (and so the paste-back) follow the landmarks smoothed over time as the avatar's boxes are
        # (``smooth_series``): landmark noise does not shake the face. The eye and lip ratios, which a crop's
        # rotation and scale do not change, come from each frame's own landmarks.
        steady = smooth_series(np.asarray(landmarks[:count], np.float64)).astype(np.float32)
        for first in range(0, count, self.batch_frames):
            rows = range(first, min(count, first + self.batch_frames))
            faces = [
                crop_face(frames[i], steady[i], scale=crop.scale, vx=crop.vx_ratio, vy=crop.vy_ratio) for i in rows
            ]
            x = torch.cat([self.network_input(face.image) for face in faces])
            eyes = np.stack([eye_ratios(landmarks[i]) for i in rows])
            lips = np.array([lip_ratio(landmarks[i]) for i in rows])
            parts.append(motion_of(self.lp, x, eyes, lips))
            crops += [face.to_crop for face in faces]
        return Source(_Frames(frames, count), crops, concat_motion(parts, float(FPS)))

    def _video_features(self, source: Source, frames: slice) -> torch.Tensor:
        """F of a source video's frames, cropped again through their transforms (nothing per frame is kept)."""
        rows = range(*frames.indices(len(source.frames)))
        x = [self.network_input(warp_crop(source.frames[i], source.crops[i])) for i in rows]
        return self.lp.appearance(torch.cat(x))

    # ---- driving -----------------------------------------------------------------------------

    def driving_motion(self, crops: Iterable[tuple[np.ndarray, np.ndarray, float]], fps: float) -> Motion:
        """The motion of driving crops: (BGR crop, eye ratios (2,), lip ratio) per frame, M in batches."""
        parts, batch, eyes, lips = [], [], [], []
        for image, eye, lip in crops:
            batch.append(self.network_input(image, cv2.INTER_LINEAR))
            eyes.append(eye)
            lips.append(lip)
            if len(batch) == self.batch_frames:
                parts.append(motion_of(self.lp, torch.cat(batch), np.stack(eyes), np.array(lips)))
                batch, eyes, lips = [], [], []
        if batch:
            parts.append(motion_of(self.lp, torch.cat(batch), np.stack(eyes), np.array(lips)))
        if not parts:
            raise ValueError("the driving video has no frames")
        return concat_motion(parts, fps)

    # ---- render ------------------------------------------------------------------------------

    def render(self, source: Source, driving: Motion, options: DrivingOptions) -> Iterator[np.ndarray]:
        """One BGR frame per driving frame (a source video: per frame of the shorter of the two)."""
        count = min(len(driving), len(source.frames)) if source.is_video else len(driving)
        driving = driving.part(slice(0, count))
        driver = KeypointDriver(self.lp, source.motion, driving, options, video_source=source.is_video)
        paste = options.paste_back and options.stitching
        for first in range(0, count, self.batch_frames):
            frames = slice(first, min(count, first + self.batch_frames))
            kp = driver(frames)
            if source.is_video:
                feature = self._video_features(source, frames)
                kp_source = torch.from_numpy(source.motion.x_s[frames]).to(self.lp.device)
            else:
                assert source.feature is not None
                feature, kp_source = source.feature, torch.from_numpy(source.motion.x_s).to(self.lp.device)
            rendered = self.lp.warp_decode(feature, kp_source, kp)
            faces = rendered.mul(255.0).add_(0.5).clamp_(0.0, 255.0).to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
            for offset, face in enumerate(faces):
                index = first + offset if source.is_video else 0
                face_bgr = cv2.cvtColor(face, cv2.COLOR_RGB2BGR)
                yield paste_back(source.frames[index], face_bgr, source.crops[index]) if paste else face_bgr


class _Frames(Sequence[np.ndarray]):
    """The first ``count`` frames of a (lazily loaded) sequence."""

    def __init__(self, frames: Sequence[np.ndarray], count: int) -> None:
        self._frames, self._count = frames, count

    def __len__(self) -> int:
        return self._count

    def __getitem__(self, index):  # type: ignore[no-untyped-def, override]
        if isinstance(index, slice):
            return [self._frames[i] for i in range(*index.indices(self._count))]
        if not -self._count <= index < self._count:
            raise IndexError(index)
        return self._frames[index % self._count]
