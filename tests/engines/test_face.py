"""The default face analyzer on a real photo: the face it returns first is the real one."""

import cv2
import numpy as np

from engines.face import load_face_analyzer
from tests.media import ASTRONAUT_FACE_CENTER, astronaut_bgr


def _contains(box, point) -> bool:
    return box.x1 <= point[0] <= box.x2 and box.y1 <= point[1] <= box.y2


def test_largest_real_face_first_on_degraded_photos():
    analyzer = load_face_analyzer()
    source = astronaut_bgr()
    webp = cv2.imdecode(cv2.imencode(".webp", source, [cv2.IMWRITE_WEBP_QUALITY, 60])[1], cv2.IMREAD_COLOR)
    noisy = np.clip(source + np.random.default_rng(0).normal(0, 4, source.shape), 0, 255).astype(np.uint8)
    for image in (source, webp, noisy):
        boxes = analyzer.detect(image)
        assert boxes and _contains(boxes[0], ASTRONAUT_FACE_CENTER)
        assert all(b.score >= 0.3 * max(x.score for x in boxes) for b in boxes)


def test_landmarks_fall_on_the_face():
    analyzer = load_face_analyzer()
    image = astronaut_bgr()
    points = analyzer.landmarks(image, analyzer.detect(image)[0])
    assert points.shape == (68, 2) and points.dtype == np.float32
    nose_tip, chin = points[30], points[8]
    assert abs(nose_tip[0] - ASTRONAUT_FACE_CENTER[0]) < 15 and chin[1] > nose_tip[1] + 20


def test_no_face_in_coffee():
    from tests.media import coffee_bgr

    assert load_face_analyzer().detect(coffee_bgr()) == []
