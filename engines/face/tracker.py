"""Face tracking over video: detect rarely and small, follow with the 68 landmarks in between.

Policy (``FaceTracker``):

- Acquire: run the analyzer's detector on the frame downscaled so its longest side is 320 px, then
  640 px if that found nothing (HOG's 80 px window means a face must be at least ~1/8 of the longest
  side). Boxes are scaled back to full-frame pixels. Detections scoring under 30 % of the best one
  are dropped (HOG's weak false positives); of the rest, with no face seen before the largest wins,
  and when re-acquiring the one nearest the face tracked before wins, so the same person is kept.
- Follow: each new frame, the box derived from the previous frame's landmarks seeds the shape
  predictor (run on a small crop around the box, so its cost does not grow with the frame size);
  when the face moved more than 5 % of its size the predictor runs a second time from the new box.
- Drift: the follow step is rejected, and the face re-acquired, when the new box changes size by more
  than 25 %, moves more than 35 % of its size, is mostly outside the frame or becomes tiny.
- Verify: every ``verify_every`` frames (10 by default), and at once when the face's 24x24 grey patch
  stops resembling the previous frame's (a cut or an occlusion: correlation under 0.6), the detector
  runs on a small region around the tracked face, rescaled so the face is about 110 px. No face
  there, or one that disagrees with the tracked box, re-acquires on the whole frame; no face anywhere
  reports the frame as faceless (``FaceTrack(None, None)``) and the next frames re-acquire until one
  is found.

Box convention: every box reported is derived from the 68 landmarks so that it matches where dlib's
HOG detector puts its square box for the same face (constants fitted on frontal faces at native
resolution: the landmarks span the box width and run from ~7 % below its top to ~7 % below its
bottom). Boxes therefore stay comparable from frame to frame whether a frame was detected or
tracked, and LiveTalking's ``pads`` apply to them as to its S3FD boxes (dlib's box is a little
tighter at the forehead than S3FD's).
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import cv2
import numpy as np

from engines.face import FaceAnalyzer, FaceBox

DETECT_SIDES = (320, 640)
VERIFY_EVERY = 10
VERIFY_FACE_PX = 110
VERIFY_MARGIN = 0.5
VERIFY_MIN_IOU = 0.3
LANDMARK_MARGIN = 0.5
REFINE_SHIFT = 0.05
MAX_SIZE_CHANGE = 1.25
MAX_SHIFT = 0.35
MIN_INSIDE = 0.5
MIN_FACE_PX = 16
# HOG fires weakly on face-like texture: only detections scoring at least this share of the best one compete.
MIN_RELATIVE_SCORE = 0.3
# A followed face whose small grey patch correlates less than this with the previous frame's (a cut, an
# occlusion, the face leaving) is verified at once instead of at the next scheduled check.
PATCH_PX = 24
MIN_PATCH_SIMILARITY = 0.6
# Landmark extent in units of dlib's HOG box side: x from 0.01 to 1.015, y from 0.067 to 1.067.
EXTENT_X0, EXTENT_X1, EXTENT_Y0, EXTENT_Y1 = 0.01, 1.015, 0.067, 1.067


@dataclass(frozen=True)
class FaceTrack:
    """One frame's face: detector-convention box and 68x2 float32 landmarks, both None when no face."""

    box: FaceBox | None
    landmarks: np.ndarray | None
    detected: bool = False


@dataclass
class TrackerStats:
    frames: int = 0
    acquisitions: int = 0
    verifications: int = 0
    faceless_frames: int = 0
    detect_s: float = 0.0
    landmarks_s: float = 0.0


def box_from_landmarks(landmarks: np.ndarray, score: float = 1.0) -> FaceBox:
    """The square box dlib's detector would give for a face with these 68 landmarks."""
    x0, y0 = landmarks.min(axis=0)
    x1, y1 = landmarks.max(axis=0)
    side = ((x1 - x0) / (EXTENT_X1 - EXTENT_X0) + (y1 - y0) / (EXTENT_Y1 - EXTENT_Y0)) / 2.0
    left, top = x0 - EXTENT_X0 * side, y0 - EXTENT_Y0 * side
    return FaceBox(round(left), round(top), round(left + side), round(top + side), score)


def iou(a: FaceBox, b: FaceBox) -> float:
    w = min(a.x2, b.x2) - max(a.x1, b.x1)
    h = min(a.y2, b.y2) - max(a.y1, b.y1)
    inter = max(0, w) * max(0, h)
    union = a.area + b.area - inter
    return inter / union if union else 0.0


def _confident(faces: list[FaceBox]) -> list[FaceBox]:
    """Faces scoring at least MIN_RELATIVE_SCORE of the best one, largest first."""
    if not faces:
        return []
    best = max(face.score for face in faces)
    return [face for face in faces if face.score >= MIN_RELATIVE_SCORE * best]


def _side(box: FaceBox) -> float:
    return float(max(1, box.x2 - box.x1, box.y2 - box.y1))


def _distance(a: FaceBox, b: FaceBox) -> float:
    (ax, ay), (bx, by) = a.center, b.center
    return float(np.hypot(ax - bx, ay - by))


def _inside_fraction(box: FaceBox, width: int, height: int) -> float:
    clipped = FaceBox(max(0, box.x1), max(0, box.y1), min(width, box.x2), min(height, box.y2))
    return clipped.area / box.area if box.area else 0.0


def _scaled(box: FaceBox, scale: float, dx: float = 0.0, dy: float = 0.0) -> FaceBox:
    return FaceBox(
        round(box.x1 / scale + dx), round(box.y1 / scale + dy), round(box.x2 / scale + dx), round(box.y2 / scale + dy),
        box.score,
    )  # fmt: skip


def _region(box: FaceBox, margin: float, width: int, height: int) -> tuple[int, int, int, int]:
    """(x1, y1, x2, y2) of the box grown by ``margin`` of its side on each side, clamped to the frame."""
    grow = margin * _side(box)
    return (
        max(0, int(box.x1 - grow)), max(0, int(box.y1 - grow)),
        min(width, int(box.x2 + grow) + 1), min(height, int(box.y2 + grow) + 1),
    )  # fmt: skip


def _patch(frame: np.ndarray, box: FaceBox) -> np.ndarray | None:
    """The face region as a small zero-mean, unit-norm grey vector (None when it is empty or flat)."""
    h, w = frame.shape[:2]
    crop = frame[max(0, box.y1) : min(h, box.y2), max(0, box.x1) : min(w, box.x2)]
    if crop.size == 0:
        return None
    small = cv2.resize(crop, (PATCH_PX, PATCH_PX), interpolation=cv2.INTER_AREA)
    grey = (cv2.cvtColor(small, cv2.COLOR_BGR2GRAY) if small.ndim == 3 else small).astype(np.float32).ravel()
    grey -= grey.mean()
    norm = float(np.linalg.norm(grey))
    return grey / norm if norm > 1e-3 else None


def _settled(before: FaceBox, after: FaceBox) -> bool:
    """The landmark fit barely moved the box: another predictor pass would not change it."""
    side = _side(before)
    return _distance(before, after) <= REFINE_SHIFT * side and abs(_side(after) / side - 1) <= REFINE_SHIFT


def _similar(before: np.ndarray | None, after: np.ndarray | None) -> bool:
    if before is None or after is None:
        return before is None and after is None
    return float(np.dot(before, after)) >= MIN_PATCH_SIMILARITY


class FaceTracker:
    """Follows one face through a video; see the module docstring for the policy."""

    def __init__(
        self, analyzer: FaceAnalyzer, verify_every: int = VERIFY_EVERY, detect_sides: tuple[int, ...] = DETECT_SIDES
    ) -> None:
        self.analyzer = analyzer
        self.verify_every = verify_every
        self.detect_sides = detect_sides
        self.stats = TrackerStats()
        self._box: FaceBox | None = None
        self._last_seen: FaceBox | None = None
        self._patch: np.ndarray | None = None
        self._since_verify = 0

    @property
    def policy(self) -> str:
        """One line for results and avatar metadata."""
        sides = "/".join(map(str, self.detect_sides))
        return (
            f"detect at longest side {sides} px, follow with 68 landmarks, verify on a face ROI every "
            f"{self.verify_every} frames or on appearance change, re-detect on drift"
        )

    def track(self, frames: Iterable[np.ndarray]) -> Iterator[FaceTrack]:
        for frame in frames:
            yield self.update(frame)

    def update(self, frame: np.ndarray) -> FaceTrack:
        """The face in the next frame of the sequence."""
        self.stats.frames += 1
        self._since_verify += 1
        if self._box is None:
            return self._acquire(frame)
        previous_patch = self._patch
        followed = self._follow(frame, self._box)
        if followed is None:
            return self._acquire(frame)
        if not _similar(previous_patch, self._patch) or self._since_verify >= self.verify_every:
            return self._verify(frame, followed)
        return followed

    def _commit(self, frame: np.ndarray, box: FaceBox, landmarks: np.ndarray, detected: bool) -> FaceTrack:
        self._box = self._last_seen = box
        self._patch = _patch(frame, box)
        if detected:
            self._since_verify = 0
        return FaceTrack(box, landmarks, detected)

    def _lose(self) -> FaceTrack:
        self._box = self._patch = None
        self.stats.faceless_frames += 1
        return FaceTrack(None, None)

    def _acquire(self, frame: np.ndarray) -> FaceTrack:
        self.stats.acquisitions += 1
        faces = _confident(self._detect_full(frame))
        if not faces:
            return self._lose()
        near = self._last_seen
        chosen = min(faces, key=lambda f: _distance(f, near)) if near is not None else faces[0]
        landmarks, box = self._fit(frame, chosen, passes=3)
        return self._commit(frame, box, landmarks, detected=True)

    def _follow(self, frame: np.ndarray, previous: FaceBox) -> FaceTrack | None:
        landmarks, box = self._fit(frame, previous, passes=2)
        h, w = frame.shape[:2]
        ratio = _side(box) / _side(previous)
        drifted = (
            not 1 / MAX_SIZE_CHANGE <= ratio <= MAX_SIZE_CHANGE
            or _distance(box, previous) > MAX_SHIFT * _side(previous)
            or _inside_fraction(box, w, h) < MIN_INSIDE
            or _side(box) < MIN_FACE_PX
        )
        return None if drifted else self._commit(frame, box, landmarks, detected=False)

    def _verify(self, frame: np.ndarray, followed: FaceTrack) -> FaceTrack:
        self.stats.verifications += 1
        self._since_verify = 0
        assert followed.box is not None
        faces = self._detect_around(frame, followed.box)
        if any(iou(face, followed.box) >= VERIFY_MIN_IOU for face in faces):
            return followed
        return self._acquire(frame)

    def _fit(self, frame: np.ndarray, seed: FaceBox, passes: int) -> tuple[np.ndarray, FaceBox]:
        """Landmarks from a seed box, re-run from the derived box while it still moves noticeably."""
        box = seed
        for _ in range(passes):
            landmarks = self._landmarks(frame, box)
            new_box = box_from_landmarks(landmarks)
            box, settled = new_box, _settled(box, new_box)
            if settled:
                break
        return landmarks, box

    def _landmarks(self, frame: np.ndarray, box: FaceBox) -> np.ndarray:
        started = time.perf_counter()
        h, w = frame.shape[:2]
        x1, y1, x2, y2 = _region(box, LANDMARK_MARGIN, w, h)
        local = FaceBox(box.x1 - x1, box.y1 - y1, box.x2 - x1, box.y2 - y1)
        points = self.analyzer.landmarks(frame[y1:y2, x1:x2], local)
        points += np.array([x1, y1], dtype=np.float32)
        self.stats.landmarks_s += time.perf_counter() - started
        return points

    def _detect_full(self, frame: np.ndarray) -> list[FaceBox]:
        h, w = frame.shape[:2]
        tried: set[float] = set()
        for side in self.detect_sides:
            scale = min(1.0, side / max(h, w))
            if scale in tried:
                continue
            tried.add(scale)
            faces = self._detect_scaled(frame, scale)
            if faces:
                return faces
        return []

    def _detect_around(self, frame: np.ndarray, box: FaceBox) -> list[FaceBox]:
        h, w = frame.shape[:2]
        x1, y1, x2, y2 = _region(box, VERIFY_MARGIN, w, h)
        if x2 <= x1 or y2 <= y1:
            return []
        faces = self._detect_scaled(frame[y1:y2, x1:x2], VERIFY_FACE_PX / _side(box))
        return [_scaled(f, 1.0, x1, y1) for f in faces]

    def _detect_scaled(self, image: np.ndarray, scale: float) -> list[FaceBox]:
        started = time.perf_counter()
        if scale != 1.0:
            interpolation = cv2.INTER_AREA if scale < 1.0 else cv2.INTER_LINEAR
            image = cv2.resize(image, None, fx=scale, fy=scale, interpolation=interpolation)
        faces = [_scaled(f, scale) for f in self.analyzer.detect(image, 0)]
        self.stats.detect_s += time.perf_counter() - started
        return faces
