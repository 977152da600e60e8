"""Face tracking on generated head motion, and the gap/pad/smoothing stream that turns tracks into coords."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from engines.face import FaceBox, load_face_analyzer
from engines.face.boxes import FaceBoxStream, FaceGapError, NoFaceError, pad_box, smooth_boxes
from engines.face.tracker import FaceTrack, FaceTracker, box_from_landmarks, iou
from tests.media import astronaut_bgr, coffee_bgr, head_motion


@pytest.fixture(scope="module")
def analyzer():
    return load_face_analyzer()


@pytest.fixture(scope="module")
def motion():
    return head_motion(40, 25.0, 512)


def contains(box: FaceBox, point: tuple[float, float]) -> bool:
    return box.x1 <= point[0] <= box.x2 and box.y1 <= point[1] <= box.y2


def best_detection(analyzer, frame: np.ndarray) -> FaceBox:
    return max(analyzer.detect(frame, 0), key=lambda b: b.score)


def test_tracks_head_motion_with_one_detection(analyzer, motion):
    frames, centres = motion
    tracker = FaceTracker(analyzer)

    tracks = list(tracker.track(frames))

    assert len(tracks) == len(frames)
    assert tracker.stats.acquisitions == 1  # detected once, followed by landmarks afterwards
    assert 1 <= tracker.stats.verifications <= len(frames) // tracker.verify_every
    for track, centre in zip(tracks, centres, strict=True):
        assert track.box is not None and contains(track.box, centre)
        assert track.landmarks.shape == (68, 2) and track.landmarks.dtype == np.float32
        assert np.hypot(track.box.center[0] - centre[0], track.box.center[1] - centre[1]) < 8
    # Same box convention as dlib's detector run at full resolution on the same frame.
    for i in (0, 17, 39):
        reference = best_detection(analyzer, frames[i])
        assert iou(tracks[i].box, reference) > 0.65
        assert 0.85 < (tracks[i].box.x2 - tracks[i].box.x1) / (reference.x2 - reference.x1) < 1.15


def test_box_from_landmarks_matches_the_detector(analyzer):
    image = astronaut_bgr()
    detected = best_detection(analyzer, image)
    derived = box_from_landmarks(analyzer.landmarks(image, detected))
    assert iou(derived, detected) > 0.8


def test_cut_to_a_faceless_shot_and_back(analyzer, motion):
    frames, centres = motion
    coffee = cv2.resize(coffee_bgr(), (512, 512))
    sequence = frames[:12] + [coffee] * 4 + frames[16:24]
    tracker = FaceTracker(analyzer)

    tracks = list(tracker.track(sequence))

    assert [t.box is None for t in tracks] == [False] * 12 + [True] * 4 + [False] * 8
    assert tracks[16].detected and contains(tracks[16].box, centres[16])
    assert tracker.stats.faceless_frames == 4


def two_heads(right_scale: float) -> np.ndarray:
    """A 700x360 frame with the astronaut's head on the left (face ~114 px) and on the right (scaled)."""
    head = astronaut_bgr()[40:230, 130:320]  # 190x190 around the 88 px face
    canvas = np.full((360, 700, 3), 90, dtype=np.uint8)
    left = cv2.resize(head, None, fx=1.3, fy=1.3, interpolation=cv2.INTER_LINEAR)
    canvas[20 : 20 + left.shape[0], 20 : 20 + left.shape[1]] = left
    right = cv2.resize(head, None, fx=right_scale, fy=right_scale, interpolation=cv2.INTER_LINEAR)
    h, w = right.shape[:2]
    canvas[20 : 20 + h, 690 - w : 690] = right
    return canvas


def test_largest_face_first_then_the_same_face(analyzer):
    # The right face starts smaller and grows past the left one: the tracker must stay on the left.
    frames = [two_heads(1.0 + 0.6 * i / 19) for i in range(20)]
    first, last = analyzer.detect(frames[0], 0), analyzer.detect(frames[-1], 0)
    assert len(first) == len(last) == 2 and first[0].x1 < 300 < last[0].x1  # largest first: left, then right
    tracker = FaceTracker(analyzer, verify_every=4)

    tracks = list(tracker.track(frames))

    assert all(t.box is not None and t.box.x2 < 300 for t in tracks)
    assert tracker.stats.verifications >= 4


# ---- FaceBoxStream ---------------------------------------------------------------------------------


def track(x: int, y: int = 100, side: int = 100) -> FaceTrack:
    landmarks = np.full((68, 2), (x + side / 2, y + side / 2), dtype=np.float32)
    return FaceTrack(FaceBox(x, y, x + side, y + side), landmarks)


NONE = FaceTrack(None, None)


def run_stream(tracks: list[FaceTrack], **kwargs) -> list:
    options = {"pads": (0, 0, 0, 0), "smooth": False, "max_gap": 3, **kwargs}
    stream = FaceBoxStream(1000, 600, **options)
    out = []
    for t in tracks:
        out.extend(stream.push(t))
        assert len(stream._pending) <= stream.lookahead
    return out + stream.finish()


def test_short_gaps_are_interpolated_and_ends_copied():
    frames = run_stream([NONE, track(100), NONE, NONE, NONE, track(140), NONE])
    assert [f.index for f in frames] == list(range(7))
    assert [f.coords[2] for f in frames] == [100, 100, 110, 120, 130, 140, 140]  # x1
    assert [f.filled for f in frames] == [True, False, True, True, True, False, True]
    assert frames[3].landmarks[0, 0] == pytest.approx(170.0)


def test_long_gap_is_named():
    with pytest.raises(FaceGapError) as error:
        run_stream([track(100), NONE, NONE, NONE, NONE, track(100)])
    assert (error.value.first, error.value.last) == (1, 4)
    with pytest.raises(FaceGapError) as trailing:
        run_stream([track(100)] + [NONE] * 4)
    assert (trailing.value.first, trailing.value.last) == (1, 4)


def test_no_face_at_all():
    with pytest.raises(NoFaceError):
        run_stream([NONE] * 10)


def test_failed_stream_lets_the_caller_stop_keeping_frames():
    stream = FaceBoxStream(1000, 600, (0, 0, 0, 0), max_gap=2)
    stream.push(track(100))
    stream.push(NONE)
    stream.push(NONE)
    assert not stream.failed
    stream.push(NONE)
    assert stream.failed


def test_pads_grow_and_clamp_like_upstream():
    box = FaceBox(10, 20, 110, 120)
    # pads are (top, bottom, left, right); the result is x1, y1, x2, y2 clamped to the 115x500 frame
    assert pad_box(box, (5, 10, 20, 30), 115, 500).tolist() == [0, 15, 115, 130]


def upstream_get_smoothened_boxes(boxes: np.ndarray, T: int) -> np.ndarray:
    """LiveTalking's genavatar.py smoothing, as written upstream (in place, on an int array)."""
    for i in range(len(boxes)):
        window = boxes[len(boxes) - T :] if i + T > len(boxes) else boxes[i : i + T]
        boxes[i] = np.mean(window, axis=0)
    return boxes


def test_smoothing_matches_upstream_window():
    rng = np.random.default_rng(7)
    xs = rng.integers(90, 130, size=12)
    raw = np.array([[x, 100, x + 100, 200] for x in xs], dtype=np.int64)
    frames = run_stream([track(int(x)) for x in xs], smooth=True)
    coords = np.array([[f.coords[2], f.coords[0], f.coords[3], f.coords[1]] for f in frames])

    assert np.array_equal(coords, smooth_boxes(raw))
    # Identical to upstream where its windows are untouched by its in-place update (all but the tail).
    upstream = upstream_get_smoothened_boxes(raw.copy(), 5)
    assert np.array_equal(coords[: len(xs) - 4], upstream[: len(xs) - 4])
    assert all(isinstance(v, int) for v in frames[0].coords)
