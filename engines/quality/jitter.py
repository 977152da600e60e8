"""Jitter of a video: how far the upper face (brows, nose, eyes: points 17-47 of the 68) moves from frame to frame.

The landmarks are found again on every frame (``FaceTracker``); per consecutive pair with a face, the RMS
displacement of the upper-face points is divided by the face size (``lip_sync.face_size``), so the figure
is comparable across resolutions. A render adds no jitter when its figure is no larger than that of the
avatar frames it was made from, taken in the same order (the head's own motion is in both).
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from engines.face import FaceAnalyzer
from engines.face.tracker import FaceTracker
from engines.quality.lip_sync import face_size

UPPER_FACE = list(range(17, 48))


def upper_face_motion(frames: Iterable[np.ndarray], analyzer: FaceAnalyzer) -> np.ndarray:
    """Per consecutive pair of frames with a face: upper-face RMS displacement over the face size."""
    tracker = FaceTracker(analyzer)
    steps, previous = [], None
    for frame in frames:
        landmarks = tracker.update(frame).landmarks
        if landmarks is not None and previous is not None:
            moved = np.asarray(landmarks, np.float64)[UPPER_FACE] - previous[UPPER_FACE]
            steps.append(np.sqrt(np.mean(np.sum(moved**2, axis=1))) / max(face_size(previous), 1e-6))
        previous = None if landmarks is None else np.asarray(landmarks, np.float64)
    return np.array(steps)
