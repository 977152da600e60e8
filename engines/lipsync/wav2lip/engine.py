"""The Wav2Lip lip-sync engines (``wav2lip96``, ``wav2lip256``): avatar frames + speech -> full frames.

Per output frame: the avatar frame (ping-pong), its face crop resized to the model's size with the
lower half masked, stacked with the unmasked crop (6 channels, [0, 1]) and the frame's 16-column mel
window (computed once per audio window of the stream, ``engines.lipsync.stream``). Batches run the audio
encoder once per window, then the face pass; frames whose audio window is silent skip the model and show the
original frame (the stream's silence gate decides before that). The generated face is resized to the box and
blended into the frame with a feathered mask that keeps the upper face (eyes) original, colour-matched to the
frame at the mask's rim (``engines.face.paste``).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from functools import lru_cache
from pathlib import Path

import cv2
import numpy as np
import torch

from engines.context import EngineContext, required_weights
from engines.errors import EngineError
from engines.face.paste import paste
from engines.lipsync import FPS, AvatarFrames, DrivingAudio, register
from engines.lipsync.stream import AudioWindow, FrameJob, render_offline
from engines.lipsync.wav2lip.audio import mel_window_starts, mel_windows, melspectrogram, window_rms
from engines.lipsync.wav2lip.loader import load_wav2lip
from engines.lipsync.wav2lip.model import WAV2LIP96, WAV2LIP256, Wav2Lip
from engines.precision import inference_dtype

log = logging.getLogger(__name__)

ENGINE_VERSION = "1.0"
BATCH_SIZE = {"cpu": 16, "cuda": 64}
SILENCE_DBFS = -50.0  # a mel window whose audio RMS is below this shows the original frame
BLEND_TOP = 0.40  # box-height fraction above which the original face is kept (eyes, nose bridge)
BLEND_RAMP = 0.15  # box-height fraction over which the generated face fades in below BLEND_TOP
FEATHER = 0.08  # fraction of the box's smaller side feathered at the left, right and bottom edges


@lru_cache(maxsize=64)
def blend_mask(height: int, width: int) -> np.ndarray:
    """(h, w) float32 weights of the generated face: 0 above the mouth region and at the edges, 1 inside."""
    rows = np.arange(height, dtype=np.float32) / max(height - 1, 1)
    vertical = np.clip((rows - BLEND_TOP) / BLEND_RAMP, 0.0, 1.0)
    feather = max(2.0, FEATHER * min(height, width))
    bottom = np.clip((height - 1 - np.arange(height, dtype=np.float32)) / feather, 0.0, 1.0)
    cols = np.arange(width, dtype=np.float32)
    sides = np.clip(np.minimum(cols, width - 1 - cols) / feather, 0.0, 1.0)
    mask = (vertical * bottom)[:, None] * sides[None, :]
    mask.flags.writeable = False
    return mask


def model_input(crop_bgr: np.ndarray, size: int) -> np.ndarray:
    """(S, S, 6) uint8: the crop with its lower half zeroed, then the crop itself."""
    if crop_bgr.shape[:2] != (size, size):
        shrink = crop_bgr.shape[0] > size
        crop_bgr = cv2.resize(crop_bgr, (size, size), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)
    masked = crop_bgr.copy()
    masked[size // 2 :] = 0
    return np.concatenate((masked, crop_bgr), axis=2)


def paste_face(frame: np.ndarray, face_bgr: np.ndarray, box: tuple[int, int, int, int]) -> np.ndarray:
    """A copy of ``frame`` with ``face_bgr`` resized into ``box`` (y1, y2, x1, x2), feathered and colour-matched
    (``engines.face.paste``: pixels outside the mask stay as they were)."""
    y1, y2, x1, x2 = box
    top = int((y2 - y1) * BLEND_TOP)  # rows above have weight 0: leave them untouched
    face = cv2.resize(face_bgr, (x2 - x1, y2 - y1), interpolation=cv2.INTER_LINEAR)
    return paste(frame, face[top:], blend_mask(y2 - y1, x2 - x1)[top:], (y1 + top, x1))


def clamp_box(box: Sequence[int], height: int, width: int) -> tuple[int, int, int, int] | None:
    y1, y2, x1, x2 = (int(v) for v in box)
    y1, y2, x1, x2 = max(0, y1), min(height, y2), max(0, x1), min(width, x2)
    return (y1, y2, x1, x2) if y2 - y1 >= 4 and x2 - x1 >= 4 else None


class Wav2LipEngine:
    """Shared implementation; the registered subclasses fix the variant."""

    name: str
    variant: str
    version = ENGINE_VERSION

    def __init__(
        self,
        model: Wav2Lip,
        *,
        batch_size: int | None = None,
        silence_dbfs: float = SILENCE_DBFS,
        a_alpha: float = 1.0,
        weights: str | None = None,
    ) -> None:
        if model.variant != self.variant:
            raise EngineError("invalid_checkpoint", f"The {self.variant} engine got a {model.variant} model.")
        param = next(model.parameters())
        self.model, self.device, self.dtype = model, param.device, param.dtype
        self.channels_last = param.dim() == 4 and param.is_contiguous(memory_format=torch.channels_last)
        self.batch_size = batch_size or BATCH_SIZE.get(self.device.type, 16)
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        self.silence_rms = 10.0 ** (silence_dbfs / 20.0)
        self.a_alpha = a_alpha
        self.weights = weights

    @classmethod
    def load(cls, weights: Path | None, context: EngineContext) -> Wav2LipEngine:
        """Load the checkpoint ``weights`` for this variant on ``context.device``; options ``batch_size``,
        ``silence_dbfs``."""
        path = required_weights(weights, cls.variant)
        target = torch.device(context.device)
        dtype = inference_dtype(target, context.precision)
        model = load_wav2lip(path, cls.variant, target, optimize=True, dtype=dtype, channels_last=True)
        batch_size, silence_dbfs = context.option("batch_size"), context.option("silence_dbfs", SILENCE_DBFS)
        engine = cls(model, batch_size=batch_size, silence_dbfs=silence_dbfs, weights=str(path))
        log.info("%s ready: %s", cls.variant, engine.info)
        return engine

    @property
    def info(self) -> dict[str, object]:
        precision = str(self.dtype).removeprefix("torch.")
        return {"device": self.device.type, "precision": precision, "batch_size": self.batch_size}

    lookahead_frames = 5  # frame k's mel window: audio frames k..k+4, and half an STFT window past them
    audio_span = (0, 4)
    uses_mouth_shapes = False

    def render(self, avatar: AvatarFrames, audio: DrivingAudio) -> Iterator[np.ndarray]:
        """Yield ``audio.num_frames`` full BGR frames, one batch of model work at a time."""
        return render_offline(self, avatar, audio)

    def stream_state(self, avatar: AvatarFrames) -> None:
        if len(avatar) == 0:
            raise EngineError("invalid_avatar", "The avatar has no frames.")

    def _features(self, window: AudioWindow) -> tuple[np.ndarray, list[int], np.ndarray]:
        """The window's mel spectrogram, each frame's first mel column, and whether its mel window is heard."""
        found = window.cache.get("wav2lip")
        if found is None:
            mel = melspectrogram(window.samples)
            starts = mel_window_starts(mel.shape[1], FPS, window.num_frames)
            found = window.cache["wav2lip"] = (mel, starts, window_rms(window.samples, starts) >= self.silence_rms)
        return found

    def render_frames(self, jobs: Sequence[FrameJob]) -> list[np.ndarray]:
        frames = [job.avatar.frames[job.source] for job in jobs]
        boxes = [
            clamp_box(job.avatar.coords[job.source], *frame.shape[:2]) for job, frame in zip(jobs, frames, strict=True)
        ]
        features = [self._features(job.window) for job in jobs]
        active = [k for k, job in enumerate(jobs) if features[k][2][job.audio_frame] and boxes[k] is not None]
        faces = {}
        if active:
            crops = [self._crop(jobs[k].avatar, jobs[k].source, frames[k], boxes[k]) for k in active]
            windows = np.concatenate(
                [mel_windows(features[k][0], [features[k][1][jobs[k].audio_frame]]) for k in active]
            )
            generated = self.generate(windows, np.stack([model_input(c, self.model.img_size) for c in crops]))
            faces = dict(zip(active, generated, strict=True))
        return [paste_face(frame, faces[k], boxes[k]) if k in faces else frame.copy() for k, frame in enumerate(frames)]

    @staticmethod
    def _crop(avatar: AvatarFrames, index: int, frame: np.ndarray, box: tuple[int, int, int, int]) -> np.ndarray:
        if avatar.face_crops is not None:
            return avatar.face_crops[index]
        y1, y2, x1, x2 = box
        return frame[y1:y2, x1:x2]

    def generate(self, windows: np.ndarray, faces: np.ndarray) -> np.ndarray:
        """(B, 1, 80, 16) float mel windows + (B, S, S, 6) uint8 faces -> (B, S, S, 3) uint8 BGR faces."""
        with torch.inference_mode():
            mel = torch.from_numpy(windows).to(self.device, self.dtype)
            # NHWC uint8 permuted to NCHW is already channels-last: no copy on the way in.
            face = torch.from_numpy(faces).to(self.device).permute(0, 3, 1, 2).to(self.dtype).div_(255.0)
            if not self.channels_last:
                face = face.contiguous()
            out = self.model.decode_faces(self.model.encode_audio(mel, self.a_alpha), face)
            out = out.float().mul_(255.0).add_(0.5).clamp_(0.0, 255.0).to(torch.uint8)
            return out.permute(0, 2, 3, 1).cpu().numpy()


@register(WAV2LIP96)
class Wav2Lip96Engine(Wav2LipEngine):
    variant = WAV2LIP96


@register(WAV2LIP256)
class Wav2Lip256Engine(Wav2LipEngine):
    variant = WAV2LIP256
