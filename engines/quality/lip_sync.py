"""Lip-sync score of a rendered clip: does the mouth open when the speech is loud?

The measure, from the output alone (nothing the engine reports is trusted):

- **mouth opening** per frame: the 68 landmarks are found again on the output frame (``FaceTracker``:
  a detection when the face is acquired and every 10th frame, the shape predictor on the previous
  frame's box in between); the opening is the mean of the three inner-lip gaps (points 61-67, 62-66,
  63-65) divided by the face size, the RMS distance of the rigid points (eyes 36-47, nose 27-35) from
  their centroid, so head motion towards or away from the camera does not read as speech;
- **audio energy** per frame: the RMS of the 16 kHz samples in the frame's 40 ms window
  ([i/25, (i+1)/25) s, the engines' own frame timing), linear amplitude;
- **score**: the Pearson correlation of the two series over the frames where a face was found, at the
  best lag within +-2 frames (80 ms: landmark models and engines may trail the sound by a frame or
  two), and that lag; positive = the mouth moves after the sound. A mouth that never moves, too few
  frames with a face (under 8), or a face found on under half the frames (a render that destroyed it)
  scores 0.

Speech whose mouth follows it scores well above 0.5; a still mouth 0; a mouth moving at random near 0.
Cost: one shape-predictor fit per measured frame plus a small detection every 10th (``bench/quality.py``);
``stride`` k measures every k-th frame only.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np

from engines.face import FaceAnalyzer
from engines.face.tracker import FaceTracker
from engines.lipsync.visemes import frame_rms

MAX_LAG_FRAMES = 2
MIN_FRAMES = 8  # fewer frames with a face (at a lag) than this: no score
MIN_FACE_SHARE = 0.5  # a face on fewer of the measured frames than this (a garbage render): no score
INNER_LIP_PAIRS = ((61, 67), (62, 66), (63, 65))
RIGID_POINTS = list(range(27, 48))  # nose and eyes: they do not move when the mouth does
FLAT = 1e-9  # a series varying less than this (std) is constant: no correlation


def face_size(landmarks: np.ndarray) -> float:
    """RMS distance of the rigid points (eyes, nose) from their centroid, in pixels."""
    rigid = np.asarray(landmarks, np.float64)[RIGID_POINTS]
    return float(np.sqrt(np.mean(np.sum((rigid - rigid.mean(axis=0)) ** 2, axis=1))))


def mouth_opening(landmarks: np.ndarray) -> float:
    """Mean inner-lip gap over the face size (68 iBUG landmarks): about 0 closed, 0.3-0.6 wide open."""
    lm = np.asarray(landmarks, np.float64)
    gap = np.mean([np.hypot(*(lm[a] - lm[b])) for a, b in INNER_LIP_PAIRS])
    return float(gap / max(face_size(lm), 1e-6))


def audio_energy(samples: np.ndarray, num_frames: int) -> np.ndarray:
    """(num_frames,) RMS of each 25-fps frame's 40 ms of 16 kHz audio."""
    return frame_rms(samples, num_frames).astype(np.float64)


def _pearson(a: np.ndarray, b: np.ndarray) -> float:
    if len(a) < MIN_FRAMES or a.std() < FLAT or b.std() < FLAT:
        return 0.0
    return float(np.corrcoef(a, b)[0, 1])


def correlation_at_lag(opening: np.ndarray, energy: np.ndarray, lag: int) -> float:
    """Pearson correlation of opening[i + lag] with energy[i] over the frames where both are known."""
    n = min(len(opening), len(energy))
    mouth, sound = opening[:n], energy[:n]
    if lag >= 0:
        mouth, sound = mouth[lag:], sound[: n - lag]
    else:
        mouth, sound = mouth[: n + lag], sound[-lag:]
    known = np.isfinite(mouth) & np.isfinite(sound)
    return _pearson(mouth[known], sound[known])


def best_lag_correlation(
    opening: np.ndarray, energy: np.ndarray, max_lag: int = MAX_LAG_FRAMES
) -> tuple[float, int, float]:
    """(best correlation, its lag, correlation at lag 0); ties go to the smallest lag."""
    by_lag = {lag: correlation_at_lag(opening, energy, lag) for lag in range(-max_lag, max_lag + 1)}
    lag = max(sorted(by_lag, key=abs), key=lambda k: by_lag[k])
    return by_lag[lag], lag, by_lag[0]


@dataclass(frozen=True)
class LipSyncScore:
    correlation: float  # Pearson at ``lag``, -1..1 (0 when undefined)
    lag: int  # frames; > 0: the mouth moves after the sound
    correlation_at_zero: float
    frames: int
    frames_without_face: int  # among the measured frames

    def as_dict(self) -> dict[str, float | int]:
        out = asdict(self)
        out["correlation"] = round(self.correlation, 4)
        out["correlation_at_zero"] = round(self.correlation_at_zero, 4)
        return out


class LipSyncMeter:
    """Measures frames as they are produced (memory: one float per frame), scored against the audio at the end.

    ``stride`` k > 1 measures every k-th frame only (k times cheaper): the energy is known for every frame,
    so each lag still pairs measured frames with the sound at full 25-fps resolution, on fewer pairs.
    """

    def __init__(self, analyzer: FaceAnalyzer, stride: int = 1) -> None:
        if stride < 1:
            raise ValueError(f"stride must be at least 1, got {stride}")
        self.stride = stride
        self._tracker = FaceTracker(analyzer)
        self._openings: list[float] = []
        self._lost = 0

    def add(self, frame: np.ndarray) -> float:
        """The mouth opening of the next frame (NaN when no face was found on it, or it is not measured)."""
        if len(self._openings) % self.stride:
            self._openings.append(math.nan)
            return math.nan
        track = self._tracker.update(frame)
        opening = math.nan if track.landmarks is None else mouth_opening(track.landmarks)
        self._lost += track.landmarks is None
        self._openings.append(opening)
        return opening

    @property
    def openings(self) -> np.ndarray:
        return np.array(self._openings, dtype=np.float64)

    def score(self, samples: np.ndarray) -> LipSyncScore:
        """The score of the frames added so far against the driving audio (16 kHz mono)."""
        opening = self.openings
        measured = -(-len(opening) // self.stride)
        if self._lost > (1.0 - MIN_FACE_SHARE) * measured:
            return LipSyncScore(0.0, 0, 0.0, len(opening), self._lost)
        correlation, lag, at_zero = best_lag_correlation(opening, audio_energy(samples, len(opening)))
        return LipSyncScore(correlation, lag, at_zero, len(opening), self._lost)


def score_lip_sync(frames, samples: np.ndarray, analyzer: FaceAnalyzer, stride: int = 1) -> LipSyncScore:
    """The lip-sync score of BGR ``frames`` (any iterable, consumed once) driven by ``samples``."""
    meter = LipSyncMeter(analyzer, stride)
    for frame in frames:
        meter.add(frame)
    return meter.score(samples)
