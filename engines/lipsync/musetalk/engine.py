"""The ``musetalk`` lip-sync engine: avatar frames + speech -> full frames, MuseTalk 1.5 per batch.

Per output frame: the avatar frame (ping-pong), its stored input latents and the frame's whisper window
go through one UNet step and the VAE decoder in batches; the 256x256 face is resized into the face box
and blended through the frame's jaw mask. An avatar prepared for MuseTalk carries its material
(``AvatarFrames.material["musetalk"]``); one without it gets the material computed on first use and
kept by the engine for that stored avatar version (a few avatars), with a logged note.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import torch

from engines.context import EngineContext, required_weights
from engines.errors import EngineError
from engines.lipsync import FPS, AvatarFrames, DrivingAudio, register
from engines.lipsync.musetalk.avatar import (
    MuseTalkMaterial,
    blend_mask,
    face_crop,
    landmark_boxes,
    paste_face,
)
from engines.lipsync.musetalk.model import MuseTalk, load_musetalk
from engines.lipsync.stream import AudioWindow, FrameJob, render_offline

log = logging.getLogger(__name__)

ENGINE_NAME = "musetalk"
ENGINE_VERSION = "1.5"
BATCH_SIZE = {"cpu": 4, "cuda": 16}
LATENT_BATCH = 8  # faces encoded at once when building material
COMPUTED_KEPT = 4  # avatars whose computed material the engine keeps (by stored version)


def box_from_coords(coords: tuple[int, int, int, int]) -> tuple[int, int, int, int]:
    """Our avatars' ``(y1, y2, x1, x2)`` face box as MuseTalk's ``(x1, y1, x2, y2)``."""
    y1, y2, x1, x2 = (int(v) for v in coords)
    return x1, y1, x2, y2


def build_material(
    model: MuseTalk,
    frames: Sequence[np.ndarray],
    boxes: list[tuple[int, int, int, int]],
    landmarks: np.ndarray | None = None,
    parser=None,
) -> MuseTalkMaterial:
    """Input latents, blend masks and crop boxes for frames with MuseTalk face boxes (x1, y1, x2, y2)."""
    latents = []
    for first in range(0, len(frames), LATENT_BATCH):
        picked = range(first, min(len(frames), first + LATENT_BATCH))
        crops = np.stack([face_crop(frames[i], boxes[i]) for i in picked])
        latents.append(model.face_latents(crops).float().cpu())
    masks, crop_boxes = [], []
    for i, frame in enumerate(frames):
        mask, crop = blend_mask(frame, boxes[i], None if landmarks is None else landmarks[i], parser)
        masks.append(mask)
        crop_boxes.append(crop)
    return MuseTalkMaterial(np.asarray(boxes, np.int64), np.asarray(crop_boxes, np.int64), masks, torch.cat(latents))


def avatar_boxes(avatar: AvatarFrames, bbox_shift: int = 0, extra_margin: int = 10) -> list[tuple[int, int, int, int]]:
    """MuseTalk face boxes: from the landmarks when stored (upstream's rule, smoothed over time), else the avatar's
    face boxes (already smoothed by its preprocessing)."""
    if avatar.landmarks is not None:
        height, width = avatar.frames[0].shape[:2]
        return landmark_boxes(avatar.landmarks, height, width, bbox_shift, extra_margin)
    return [box_from_coords(coords) for coords in avatar.coords]


@register(ENGINE_NAME)
class MuseTalkEngine:
    """MuseTalk 1.5 behind the lip-sync engine interface."""

    name = ENGINE_NAME
    version = ENGINE_VERSION

    def __init__(self, model: MuseTalk, *, batch_size: int | None = None, parser=None, weights: str | None = None):
        self.model = model
        self.batch_size = batch_size or BATCH_SIZE.get(model.device.type, 4)
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        self.parser = parser
        self.weights = weights
        self._computed: OrderedDict[str, MuseTalkMaterial] = OrderedDict()
        self._lock = threading.Lock()

    @classmethod
    def load(cls, weights: Path | None, context: EngineContext) -> MuseTalkEngine:
        """``weights``: upstream's ``models/`` folder, or its ``musetalkV15/unet.pth`` (as the weights resolver
        finds); options ``batch_size``, ``compile`` (torch.compile on CUDA)."""
        from engines.lipsync.musetalk.face_parsing import load_face_parser

        root = required_weights(weights, ENGINE_NAME)
        if root.is_file():
            root = root.parent.parent
        model = load_musetalk(root, context.precision, context.device, bool(context.option("compile", False)))
        parser = load_face_parser(root, model.device)
        engine = cls(model, batch_size=context.option("batch_size"), parser=parser, weights=str(root))
        log.info("musetalk ready: %s", engine.info)
        return engine

    @property
    def info(self) -> dict[str, object]:
        mask = "face-parsing" if self.parser is not None else "landmarks"
        return {"device": self.model.device.type, "precision": self.model.precision, "batch_size": self.batch_size} | {
            "blend_mask": mask
        }

    def material(self, avatar: AvatarFrames) -> MuseTalkMaterial:
        """The avatar's MuseTalk material; for an avatar without it, computed once per stored version."""
        found = avatar.material.get(ENGINE_NAME)
        if callable(found):  # stored material, read on first use
            found = avatar.material[ENGINE_NAME] = found()
        if found is None and avatar.key is not None:
            with self._lock:
                found = self._computed.get(avatar.key)
                if found is not None:
                    self._computed.move_to_end(avatar.key)
        if found is not None:
            if len(found) != len(avatar):
                raise EngineError(
                    "invalid_avatar", f"The avatar's MuseTalk material has {len(found)} frames, not {len(avatar)}."
                )
            return found
        material = self._compute(avatar)
        if avatar.key is not None:
            with self._lock:
                self._computed[avatar.key] = material
                while len(self._computed) > COMPUTED_KEPT:
                    self._computed.popitem(last=False)
        return material

    def _compute(self, avatar: AvatarFrames) -> MuseTalkMaterial:
        started = time.perf_counter()
        frames = [avatar.frames[i] for i in range(len(avatar))]
        material = build_material(self.model, frames, avatar_boxes(avatar), avatar.landmarks, self.parser)
        avatar.material[ENGINE_NAME] = material
        log.info(
            "avatar has no MuseTalk material: computed it for %d frames in %.1f s (kept for this avatar version; "
            "preprocess_avatar with model 'musetalk' stores it and saves this time)",
            len(avatar),
            time.perf_counter() - started,
        )
        return material

    lookahead_frames = 2  # frame k's whisper window: audio frames k-2..k+2
    audio_span = (2, 2)
    uses_mouth_shapes = False

    def render(self, avatar: AvatarFrames, audio: DrivingAudio) -> Iterator[np.ndarray]:
        """Yield ``audio.num_frames`` full BGR frames, one batch of model work at a time."""
        return render_offline(self, avatar, audio)

    def stream_state(self, avatar: AvatarFrames) -> MuseTalkMaterial:
        if len(avatar) == 0:
            raise EngineError("invalid_avatar", "The avatar has no frames.")
        return self.material(avatar)

    def _chunks(self, window: AudioWindow) -> torch.Tensor:
        """(frames, 50, 384) whisper windows of the audio window's frames, computed once per window."""
        found = window.cache.get(ENGINE_NAME)
        if found is None:
            found = window.cache[ENGINE_NAME] = self.model.audio_chunks(
                window.samples, fps=FPS, num_frames=window.num_frames
            )
        return found

    def render_frames(self, jobs: Sequence[FrameJob]) -> list[np.ndarray]:
        latents = torch.cat([job.state.latents[[job.source]] for job in jobs])
        chunks = torch.stack([self._chunks(job.window)[job.audio_frame] for job in jobs])
        faces = self.model.generate(latents, chunks)
        out = []
        for face, job in zip(faces, jobs, strict=True):
            material, j = job.state, job.source
            out.append(
                paste_face(job.avatar.frames[j], face, material.boxes[j], material.masks[j], material.crop_boxes[j])
            )
        return out
