"""From per-frame face tracks to LiveTalking avatar coords: gap filling, pads, 5-frame smoothing.

``FaceBoxStream`` works frame by frame with bounded look-ahead (the smoothing window plus the longest
gap it may fill), so a caller can write each frame as soon as its box is final and memory does not
grow with the video length.

- Gaps: a run of at most ``max_gap`` frames without a face is filled from its neighbours (boxes and
  landmarks interpolated linearly; copied from the one neighbour at the start or end of the video).
  A longer run raises ``FaceGapError`` naming it; a video with no face at all raises ``NoFaceError``.
- Pads ``(top, bottom, left, right)`` grow the box and it is clamped to the frame, as upstream does.
- Smoothing follows upstream's ``get_smoothened_boxes(boxes, T=5)``: box ``i`` becomes the mean of
  boxes ``i .. i+4``, truncated to ints; the last frames share the last full window.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

import numpy as np

from engines.face import FaceBox
from engines.face.tracker import FaceTrack

SMOOTH_WINDOW = 5


class NoFaceError(Exception):
    """No frame of the video had a face."""


class FaceGapError(Exception):
    """Frames ``first`` to ``last`` (inclusive) had no face: more than the allowed gap."""

    def __init__(self, first: int, last: int) -> None:
        super().__init__(f"no face in frames {first}-{last}")
        self.first = first
        self.last = last


@dataclass(frozen=True)
class AvatarFrame:
    """A frame's final crop box ``coords`` = (y1, y2, x1, x2) in LiveTalking's order, plus its landmarks."""

    index: int
    coords: tuple[int, int, int, int]
    landmarks: np.ndarray
    filled: bool


@dataclass
class _Raw:
    index: int
    box: np.ndarray  # padded and clamped x1, y1, x2, y2 (int64)
    landmarks: np.ndarray
    filled: bool


def pad_box(box: FaceBox, pads: tuple[int, int, int, int], width: int, height: int) -> np.ndarray:
    """x1, y1, x2, y2 grown by pads (top, bottom, left, right) and clamped to the frame, as upstream."""
    top, bottom, left, right = pads
    return np.array(
        [max(0, box.x1 - left), max(0, box.y1 - top), min(width, box.x2 + right), min(height, box.y2 + bottom)],
        dtype=np.int64,
    )


def smooth_series(values: np.ndarray, window: int = SMOOTH_WINDOW) -> np.ndarray:
    """The avatar's temporal smoothing for any per-frame values (boxes, landmarks...): row ``i`` becomes the mean
    of rows ``i .. i+window-1`` (upstream's rule), the last rows sharing the last full window; float64."""
    values = np.asarray(values, dtype=np.float64)
    window = min(window, len(values))
    out = values.copy()
    for i in range(len(values)):
        start = min(i, len(values) - window)
        out[i] = np.mean(values[start : start + window], axis=0)
    return out


def smooth_boxes(boxes: np.ndarray, window: int = SMOOTH_WINDOW) -> np.ndarray:
    """Whole-array form of the stream's smoothing (x1, y1, x2, y2 rows): forward window mean, truncated."""
    return smooth_series(np.asarray(boxes, dtype=np.int64), window).astype(np.int64)


def _interpolate(a: FaceTrack, b: FaceTrack, t: float) -> tuple[FaceBox, np.ndarray]:
    assert a.box is not None and b.box is not None and a.landmarks is not None and b.landmarks is not None
    ca = np.array([a.box.x1, a.box.y1, a.box.x2, a.box.y2], dtype=np.float64)
    cb = np.array([b.box.x1, b.box.y1, b.box.x2, b.box.y2], dtype=np.float64)
    x1, y1, x2, y2 = (int(v) for v in np.rint(ca + (cb - ca) * t))
    landmarks = (a.landmarks + (b.landmarks - a.landmarks) * np.float32(t)).astype(np.float32)
    return FaceBox(x1, y1, x2, y2, 0.0), landmarks


class FaceBoxStream:
    """Push one ``FaceTrack`` per frame; get back the frames whose coords are final, in order."""

    def __init__(
        self,
        width: int,
        height: int,
        pads: tuple[int, int, int, int],
        smooth: bool = True,
        max_gap: int = 12,
        window: int = SMOOTH_WINDOW,
    ) -> None:
        self.width, self.height, self.pads, self.max_gap = width, height, tuple(pads), max_gap
        self.window = window if smooth else 1
        self.filled_frames = 0
        self._next_index = 0
        self._gap_start: int | None = None
        self._last_face: tuple[int, FaceTrack] | None = None
        self._pending: deque[_Raw] = deque()
        self._emitted: deque[np.ndarray] = deque(maxlen=max(1, self.window - 1))

    @property
    def failed(self) -> bool:
        """A gap already exceeds ``max_gap``: the stream will raise, so callers can stop keeping frames."""
        return self._gap_start is not None and self._next_index - self._gap_start > self.max_gap

    @property
    def lookahead(self) -> int:
        """At most this many frames are held back before their coords are final."""
        return self.max_gap + self.window

    def push(self, track: FaceTrack) -> list[AvatarFrame]:
        index = self._next_index
        self._next_index += 1
        if track.box is None or track.landmarks is None:
            if self._gap_start is None:
                self._gap_start = index
            return []
        if self._gap_start is not None:
            if index - self._gap_start > self.max_gap:
                raise FaceGapError(self._gap_start, index - 1)
            self._fill(self._gap_start, index, track)
            self._gap_start = None
        self._append(index, track.box, track.landmarks, filled=False)
        self._last_face = (index, track)
        return self._drain()

    def finish(self) -> list[AvatarFrame]:
        """The remaining frames, once the video has ended."""
        if self._last_face is None:
            raise NoFaceError()
        if self._gap_start is not None:
            if self.failed:
                raise FaceGapError(self._gap_start, self._next_index - 1)
            _, last = self._last_face
            assert last.box is not None and last.landmarks is not None
            for index in range(self._gap_start, self._next_index):
                self._append(index, last.box, last.landmarks, filled=True)
            self._gap_start = None
        ready = self._drain()
        while self._pending:
            ready.append(self._emit(self._window_boxes()))
        return ready

    def _fill(self, first: int, stop: int, after: FaceTrack) -> None:
        for index in range(first, stop):
            if self._last_face is None:
                assert after.box is not None and after.landmarks is not None
                box, landmarks = after.box, after.landmarks
            else:
                before_index, before = self._last_face
                box, landmarks = _interpolate(before, after, (index - before_index) / (stop - before_index))
            self._append(index, box, landmarks, filled=True)

    def _append(self, index: int, box: FaceBox, landmarks: np.ndarray, filled: bool) -> None:
        self.filled_frames += int(filled)
        padded = pad_box(box, self.pads, self.width, self.height)
        self._pending.append(_Raw(index, padded, landmarks, filled))

    def _drain(self) -> list[AvatarFrame]:
        ready = []
        while len(self._pending) >= self.window:
            ready.append(self._emit([raw.box for raw in list(self._pending)[: self.window]]))
        return ready

    def _window_boxes(self) -> list[np.ndarray]:
        """The stream's last full window (emitted and pending boxes), for the frames at the very end."""
        boxes = [*self._emitted, *(raw.box for raw in self._pending)]
        return boxes[-self.window :]

    def _emit(self, window: list[np.ndarray]) -> AvatarFrame:
        raw = self._pending.popleft()
        self._emitted.append(raw.box)
        x1, y1, x2, y2 = (int(v) for v in np.mean(window, axis=0).astype(np.int64))
        return AvatarFrame(raw.index, (y1, y2, x1, x2), raw.landmarks, raw.filled)
