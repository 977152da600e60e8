"""The quality report of every render, measured on the frames as the engine produces them, within a time budget.

``QualityMeter`` gets each output frame with its audio energy (and which avatar frame it was made from) and
reports, at the end:

- **lip sync**: mouth opening vs the frame's audio RMS, Pearson at the best lag within +-2 frames, and that
  lag (``engines.quality.lip_sync.best_lag_correlation``), on the frames it measured. With the avatar
  frame's landmarks known (the usual case) the opening is read from the output's pixels inside the mouth
  region those landmarks give, with no landmark fit (``engines.quality.mouth_pixels.MouthRegion``: the dark
  interior's darkness below the lips' median brightness over the central half of the mouth, down to
  ``mouth_pixels.JAW_DROP`` face sizes under the lower lip, in face sizes; about 0.006 ms a 256-px frame, plus 0.05 ms
  once per avatar frame), so every frame of every engine is measured (viseme_warp at ~1.5 ms a frame: ~3 %).
  Without them the 68 landmarks are fitted (``FaceTracker``, a detection every 10 measured frames) and the
  opening is ``lip_sync.mouth_opening``. Either way a frame is measured only while the meter's time so far
  is within ``budget`` (5 %) of the engine's render time so far, and, with the clip's length known, at least
  ``MIN_MEASURED`` frames evenly spread. Unmeasured frames are left out of the correlation; the lag keeps
  full 25-fps resolution because the energy is known for every frame.
- **a mouth the engine did not move scores 0**: with the avatar's landmarks known, ``mouth_motion`` is the
  standard deviation of (output opening - avatar frame's opening, both read the same way) over the measured
  frames; under ``MIN_MOTION`` the render left the avatar's mouth as it was (the avatar's own mouth and head
  motion can correlate with speech by chance) and the lip-sync score is 0.
- **face lost**: with the avatar's landmarks, measured frames whose nose box (points 29-35, inside every
  engine's lower-face paste) correlates with the avatar frame's under ``mouth_pixels.LOST_NCC`` (normalised
  cross-correlation, green channel: real-like renders >= 0.98, random weights' smear 0.4-0.7); without them,
  frames where the tracker finds no face. Over half the measured frames lost: the lip-sync score is 0.
- **silence held still**: among the frames deep in silence (the frame and ``SILENCE_MARGIN`` frames either
  side below ``SILENCE_DBFS``, so the crossfade in and out of speech does not count), the share whose face
  box equals the avatar frame's (mean absolute difference at most ``STILL_LEVEL`` grey levels).
- the **A/V offset** of the muxed file, when the caller gives it (``engines.codecs.video_in.av_offset_ms``).
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass

import cv2
import numpy as np

from engines.face import FaceAnalyzer
from engines.face.tracker import FaceTracker
from engines.lipsync import AvatarFrames
from engines.lipsync.silence import SPEECH_ON_DBFS
from engines.quality.lip_sync import MIN_FACE_SHARE, best_lag_correlation, mouth_opening
from engines.quality.mouth_pixels import MouthRegion, mouth_and_nose_boxes

BUDGET = 0.05  # the meter's time, as a share of the engine's render time
SILENCE_DBFS = SPEECH_ON_DBFS  # frame RMS below this is silence: the seam's gate (engines.lipsync.silence)
SILENCE_MARGIN = 2  # frames either side that must be silent too (crossfades into speech are not "still")
STILL_LEVEL = 1.0  # mean absolute difference (grey levels) of the face box at most this: the avatar's own frame
MIN_MEASURED = 24  # with the clip's length known, at least this many frames are measured, evenly spread
MIN_MOTION = 0.03  # std of the opening's change from the avatar frame's (face sizes): viseme_warp ~0.1, still 0


@dataclass(frozen=True)
class QualityReport:
    lip_sync: float  # Pearson correlation at ``lag_frames``, -1..1 (0: undefined, or the face was lost)
    lag_frames: int  # > 0: the mouth moves after the sound
    lip_sync_at_zero: float
    frames: int
    frames_measured: int
    frames_face_lost: int  # among the measured frames
    mouth_motion: float | None  # std of the opening minus the avatar frame's; None without the avatar's landmarks
    silent_frames: int  # frames deep in silence whose avatar frame was known
    silent_held_still: float | None  # share of those showing the avatar's frame; None without silent frames
    av_offset_ms: float | None  # audio start minus video start in the muxed file
    cost_ms: float  # time the meter spent
    cost_share: float | None  # cost_ms over the render time it was given

    def as_dict(self) -> dict[str, float | int | None]:
        out = asdict(self)
        for key in ("lip_sync", "lip_sync_at_zero", "mouth_motion", "silent_held_still", "cost_share"):
            if out[key] is not None:
                out[key] = round(out[key], 4)
        out["cost_ms"] = round(self.cost_ms, 1)
        return out


class QualityMeter:
    """Feed every output frame in order (``add``), then ``report``. Memory: a few numbers per frame."""

    def __init__(
        self,
        analyzer: FaceAnalyzer,
        avatar: AvatarFrames | None = None,
        budget: float | None = BUDGET,
        expected_frames: int | None = None,
    ) -> None:
        self.analyzer, self.avatar, self.budget = analyzer, avatar, budget
        self.floor_stride = max(1, (expected_frames or 0) // MIN_MEASURED)
        self._tracker = FaceTracker(analyzer)
        self._openings: list[float] = []
        self._energy: list[float] = []
        self._silent: list[bool] = []
        self._still: list[bool | None] = []  # at silent frames whose avatar frame is known
        self._changes: list[float] = []  # output opening minus the avatar frame's, at measured frames
        self._mouths: dict[int, MouthRegion] = {}  # per avatar frame
        self._boxes: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None  # of every avatar frame
        self._lost = 0
        self._measured = 0
        self.cost_s = 0.0
        self.render_s = 0.0

    def add(self, frame: np.ndarray, energy: float, source: int | None = None, render_s: float | None = None) -> None:
        """One output frame: its audio RMS, the avatar frame it was made from, the engine's seconds for it."""
        started = time.perf_counter()
        self.render_s += render_s or 0.0
        self._energy.append(float(energy))
        due = (
            self.budget is None
            or render_s is None
            or self.cost_s <= self.budget * self.render_s
            or (self.floor_stride > 1 and len(self._energy) % self.floor_stride == 1)
        )
        self._openings.append(self._measure(frame, source) if due else math.nan)
        silent = 20.0 * math.log10(max(float(energy), 1e-9)) < SILENCE_DBFS
        self._silent.append(silent)
        self._still.append(self._held_still(frame, source) if silent else None)
        self.cost_s += time.perf_counter() - started

    def _measure(self, frame: np.ndarray, source: int | None) -> float:
        self._measured += 1
        if source is None or self.avatar is None or self.avatar.landmarks is None:
            landmarks = self._tracker.update(frame).landmarks
            if landmarks is None:
                self._lost += 1
                return math.nan
            return mouth_opening(landmarks)
        mouth = self._mouths.get(source)
        if mouth is None:
            if self._boxes is None:
                self._boxes = mouth_and_nose_boxes(self.avatar.landmarks, *frame.shape[:2])
            mouths, noses, sizes = self._boxes
            mouth = MouthRegion(self.avatar.frames[source], mouths[source], noses[source], float(sizes[source]))
            self._mouths[source] = mouth
        if mouth.face_lost(frame):
            self._lost += 1
            return math.nan
        opening = mouth.opening(frame)
        self._changes.append(opening - mouth.avatar_opening)
        return opening

    def _held_still(self, frame: np.ndarray, source: int | None) -> bool | None:
        if source is None or self.avatar is None:
            return None
        y1, y2, x1, x2 = self.avatar.coords[source]
        difference = cv2.norm(frame[y1:y2, x1:x2], self.avatar.frames[source][y1:y2, x1:x2], cv2.NORM_L1)
        return difference / ((y2 - y1) * (x2 - x1) * frame.shape[2]) <= STILL_LEVEL

    def report(self, av_offset_ms: float | None = None) -> QualityReport:
        opening, energy = np.array(self._openings), np.array(self._energy)
        correlation = lag = at_zero = 0
        motion = float(np.std(self._changes)) if self._changes else None
        moved = motion is None or motion >= MIN_MOTION
        if moved and self._measured and self._lost <= (1.0 - MIN_FACE_SHARE) * self._measured:
            correlation, lag, at_zero = best_lag_correlation(opening, energy)
        still = self._deep_silence_still()
        return QualityReport(
            lip_sync=float(correlation),
            lag_frames=int(lag),
            lip_sync_at_zero=float(at_zero),
            frames=len(opening),
            frames_measured=self._measured,
            frames_face_lost=self._lost,
            mouth_motion=motion,
            silent_frames=len(still),
            silent_held_still=float(np.mean(still)) if still else None,
            av_offset_ms=None if av_offset_ms is None else round(float(av_offset_ms), 1),
            cost_ms=1000.0 * self.cost_s,
            cost_share=self.cost_s / self.render_s if self.render_s > 0 else None,
        )

    def _deep_silence_still(self) -> list[bool]:
        silent = np.array(self._silent, dtype=bool)
        deep = silent.copy()
        for shift in range(1, SILENCE_MARGIN + 1):
            deep[shift:] &= silent[:-shift]
            deep[:-shift] &= silent[shift:]
        return [bool(self._still[i]) for i in np.flatnonzero(deep) if self._still[i] is not None]
