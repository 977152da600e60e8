"""The CPU lip-sync engine: viseme mouth shapes rendered by a landmark-driven lower-face warp.

Per 25-fps frame a mouth shape comes from the phoneme timeline (text) or the audio (loudness and
spectral shape); the avatar frame (ping-pong order) gets its jaw, chin and lips moved by a
piecewise-affine warp and the opened mouth painted in (``engines.lipsync.warp``): with the avatar's own
teeth and tongue when one of its frames shows an open mouth, else a shaded interior
(``engines.lipsync.mouth``). Silent frames are the avatar's own frames, untouched. Nothing above the
nose is ever modified.

Per avatar frame precomputations (triangulation, basis fields, masks, colours) are cached across
requests in a byte-bounded LRU keyed by the avatar's landmarks, so warm requests only warp. Avatars
stored without landmarks.npy get landmarks from the face analyzer inside each frame's stored box,
computed for a frame the first time it is warped.
"""

from __future__ import annotations

import hashlib
import logging
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import numpy as np

from engines.context import EngineContext
from engines.errors import EngineError
from engines.face import FaceAnalyzer, FaceBox
from engines.lipsync import AvatarFrames, DrivingAudio, register
from engines.lipsync.mouth import MouthDonor, make_donor, most_open_frame
from engines.lipsync.stream import FrameJob, mouth_shapes, render_offline
from engines.lipsync.visemes import mouth_track_from_audio, mouth_track_from_phonemes
from engines.lipsync.warp import MouthWarp, face_axes, prepare_mouth_warp, render_mouth

logger = logging.getLogger(__name__)

VERSION = "1.1"
WARP_CACHE_BYTES = 256 * 1024 * 1024
DONOR_CACHE_AVATARS = 64  # avatars whose open-mouth donor (a small crop, or None) is kept
MIN_SHAPE = 1e-3  # below this on every component the frame is shown as is


class WarpCache:
    """Byte-bounded, thread-safe LRU of per-avatar-frame warp precomputations."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self._items: OrderedDict[tuple[str, int], MouthWarp] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    def get(self, key: tuple[str, int], make: Callable[[], MouthWarp]) -> MouthWarp:
        with self._lock:
            item = self._items.get(key)
            if item is not None:
                self._items.move_to_end(key)
                return item
        item = make()  # outside the lock: concurrent requests for other avatars do not wait
        with self._lock:
            if key not in self._items:
                self._items[key] = item
                self._bytes += item.nbytes
            while self._bytes > self.max_bytes and len(self._items) > 1:
                _, evicted = self._items.popitem(last=False)
                self._bytes -= evicted.nbytes
        return item

    def __len__(self) -> int:
        return len(self._items)


def mouth_track(audio: DrivingAudio) -> np.ndarray:
    """(frames, 3) open/spread/round for every output frame."""
    if audio.phonemes:
        return mouth_track_from_phonemes(audio.phonemes, audio.samples, audio.num_frames)
    return mouth_track_from_audio(audio.samples, audio.num_frames)


def avatar_key(avatar: AvatarFrames, landmarks: np.ndarray | None) -> str:
    """A digest naming the avatar: frame size and landmarks, else frame size, face boxes and first frame."""
    digest = hashlib.blake2b(digest_size=16)
    digest.update(repr(avatar.frames[0].shape).encode())
    if landmarks is not None:
        digest.update(np.ascontiguousarray(landmarks, dtype=np.float32).tobytes())
    else:
        digest.update(np.asarray(avatar.coords, dtype=np.int64).tobytes())
        digest.update(np.ascontiguousarray(avatar.frames[0]).tobytes())
    return digest.hexdigest()


@register("viseme_warp")
class VisemeWarpEngine:
    """CPU lip-sync without weights; frames are yielded one by one (memory independent of length)."""

    name = "viseme_warp"
    version = VERSION

    def __init__(self, faces: FaceAnalyzer, cache_bytes: int = WARP_CACHE_BYTES) -> None:
        self._faces = faces  # finds the mouth of avatars stored without landmarks.npy
        self._warps = WarpCache(cache_bytes)
        self._donors: OrderedDict[str, MouthDonor | None] = OrderedDict()
        self._donors_lock = threading.Lock()

    @classmethod
    def load(cls, weights: Path | None, context: EngineContext) -> VisemeWarpEngine:
        """A ready engine (no weights: ``weights`` is ignored) finding mouths with ``context.faces``; imports the
        triangulation code now so the first request does not pay for it."""
        import scipy.spatial  # noqa: F401

        if context.faces is None:
            raise EngineError("invalid_arguments", "The viseme_warp engine needs a face analyzer (`context.faces`).")
        return cls(context.faces)

    batch_size = 4
    lookahead_frames = 0
    audio_span = (3, 3)  # the text track anticipates the sound: its fade-in is over when the sound starts
    uses_mouth_shapes = True

    def render(self, avatar: AvatarFrames, audio: DrivingAudio) -> Iterator[np.ndarray]:
        return render_offline(self, avatar, audio)

    def stream_state(self, avatar: AvatarFrames) -> str:
        """The avatar's key in the warp cache (after checking its frames and landmarks)."""
        if len(avatar) == 0 or len(avatar.frames) != len(avatar):
            raise EngineError("invalid_avatar", f"the avatar has {len(avatar.frames)} frames for {len(avatar)} boxes")
        if avatar.landmarks is not None and avatar.landmarks.shape != (len(avatar), 68, 2):
            shape = avatar.landmarks.shape
            raise EngineError("invalid_avatar", f"landmarks of shape {shape} do not fit {len(avatar)} frames")
        return avatar_key(avatar, avatar.landmarks)

    def render_frames(self, jobs: Sequence[FrameJob]) -> list[np.ndarray]:
        """Each job's frame with the mouth shape of its audio frame: the text's shapes, else the audio's."""
        return [
            self.render_frame(job.avatar, job.source, mouth_shapes(job.window)[job.audio_frame], job.state)
            for job in jobs
        ]

    def render_frame(
        self, avatar: AvatarFrames, index: int, shape: np.ndarray, frame_key: str | None = None
    ) -> np.ndarray:
        """Avatar frame ``index`` with the mouth ``shape`` (open, spread, round): one frame at a time, for a
        caller that keeps its own clock (a live session). ``frame_key``: ``avatar_key`` of the avatar, if known."""
        frame = avatar.frames[index]
        if float(np.max(shape)) < MIN_SHAPE:
            return frame
        key = frame_key or avatar_key(avatar, avatar.landmarks)
        warp = self._warps.get((key, index), lambda: self._prepare(avatar, index, frame, key))
        return render_mouth(frame, warp, shape)

    def _prepare(self, avatar: AvatarFrames, index: int, frame: np.ndarray, key: str) -> MouthWarp:
        donor = self.mouth_donor(avatar, key)
        if avatar.landmarks is not None:
            return prepare_mouth_warp(frame, avatar.landmarks[index], donor)
        y1, y2, x1, x2 = (int(v) for v in avatar.coords[index])  # no landmarks.npy: find them in the stored box
        return prepare_mouth_warp(frame, self._faces.landmarks(frame, FaceBox(x1, y1, x2, y2)), donor)

    def mouth_donor(self, avatar: AvatarFrames, key: str) -> MouthDonor | None:
        """The avatar's most open mouth, if a frame shows one (``engines.lipsync.mouth``); needs its landmarks."""
        with self._donors_lock:
            if key in self._donors:
                self._donors.move_to_end(key)
                return self._donors[key]
        donor = None
        index = None if avatar.landmarks is None else most_open_frame(avatar.landmarks)
        if index is not None:
            landmarks = avatar.landmarks[index]
            donor = make_donor(avatar.frames[index], landmarks, face_axes(landmarks)[0])
            logger.debug("avatar %s: inner mouth from frame %d", key[:8], index)
        with self._donors_lock:
            self._donors[key] = donor
            while len(self._donors) > DONOR_CACHE_AVATARS:
                self._donors.popitem(last=False)
        return donor


__all__ = ["VisemeWarpEngine", "WarpCache", "mouth_track"]
