"""Invisible paste-back (``engines.face.paste``) through each engine's own paste function.

Per engine: the identity round trip (the frame's own crop pasted back unchanged) leaves every pixel outside
the mask byte-identical and the inside at >= 45 dB; a generated face with a colour cast is pulled to the
frame's colour at the mask's rim (no seam), while a plain feathered blend would keep the cast.
"""

from __future__ import annotations

from collections.abc import Callable

import cv2
import numpy as np
import pytest

from engines.face import find_face, load_face_analyzer
from engines.face.paste import edge_ramp, paste
from engines.lipsync.musetalk.avatar import blend_mask as musetalk_mask
from engines.lipsync.musetalk.avatar import landmark_box
from engines.lipsync.musetalk.avatar import paste_face as musetalk_paste
from engines.lipsync.wav2lip.engine import BLEND_TOP
from engines.lipsync.wav2lip.engine import blend_mask as wav2lip_mask
from engines.lipsync.wav2lip.engine import paste_face as wav2lip_paste
from engines.liveportrait.crop import CROP_SIZE, crop_face, paste_back, soft_mask
from engines.sadtalker.preprocess import PasteBack, face_box
from tests.media import astronaut_bgr, psnr

CAST = np.array([30, -12, -25])  # BGR: a bluish, less red render
PasteCase = Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]  # face -> (pasted frame, weights over the frame)


@pytest.fixture(scope="module")
def portrait() -> tuple[np.ndarray, np.ndarray]:
    image = astronaut_bgr(512)
    return image, find_face(image, load_face_analyzer()).landmarks


def _full(weights: np.ndarray, top_left: tuple[int, int], shape: tuple[int, ...]) -> np.ndarray:
    full = np.zeros(shape[:2], np.float32)
    y, x = top_left
    full[y : y + weights.shape[0], x : x + weights.shape[1]] = weights[: shape[0] - y, : shape[1] - x]
    return full


def _wav2lip(image: np.ndarray, landmarks: np.ndarray) -> tuple[np.ndarray, PasteCase]:
    x1, y1 = (int(v) for v in landmarks.min(0))
    x2, y2 = (int(v) + 10 for v in landmarks.max(0))
    box = (y1, y2, x1, x2)
    weights = _full(wav2lip_mask(y2 - y1, x2 - x1), (y1, x1), image.shape)
    weights[: y1 + int((y2 - y1) * BLEND_TOP)] = 0  # the rows paste_face leaves out
    return image[y1:y2, x1:x2], lambda face: (wav2lip_paste(image, face, box), weights)


def _musetalk(image: np.ndarray, landmarks: np.ndarray) -> tuple[np.ndarray, PasteCase]:
    x1, y1, x2, y2 = box = landmark_box(landmarks, *image.shape[:2])
    mask, crop = musetalk_mask(image, box, landmarks)
    weights = _full(mask.astype(np.float32) / 255.0, (crop[1], crop[0]), image.shape)
    return image[y1:y2, x1:x2], lambda face: (musetalk_paste(image, face, box, mask, crop), weights)


def _liveportrait(image: np.ndarray, landmarks: np.ndarray) -> tuple[np.ndarray, PasteCase]:
    crop = crop_face(image, landmarks)
    back = np.linalg.inv(crop.to_crop)[:2]
    weights = cv2.warpAffine(soft_mask(CROP_SIZE), back, image.shape[1::-1], flags=cv2.INTER_LINEAR)
    return crop.image, lambda face: (paste_back(image, face, crop.to_crop), weights)


def _sadtalker(image: np.ndarray, landmarks: np.ndarray) -> tuple[np.ndarray, PasteCase]:
    x1, y1, x2, y2 = box = face_box(landmarks, image.shape[1], image.shape[0]).box
    paster = PasteBack(image, box)
    return image[y1:y2, x1:x2], lambda face: (paster(face), _full(paster.alpha, (y1, x1), image.shape))


ENGINES = {"wav2lip": _wav2lip, "musetalk": _musetalk, "liveportrait": _liveportrait, "sadtalker": _sadtalker}


@pytest.mark.parametrize("engine", ENGINES)
def test_identity_round_trip_is_lossless_outside_the_mask(engine: str, portrait) -> None:
    image, landmarks = portrait
    crop, paste_case = ENGINES[engine](image, landmarks)
    pasted, weights = paste_case(crop)
    inside = weights > 0
    assert 0.02 < inside.mean() < 0.6  # a face-sized mask
    assert np.array_equal(pasted[~inside], image[~inside])
    assert psnr(pasted[inside], image[inside]) >= 45.0


@pytest.mark.parametrize("engine", ENGINES)
def test_a_colour_cast_is_pulled_to_the_frame_at_the_rim(engine: str, portrait) -> None:
    image, landmarks = portrait
    crop, paste_case = ENGINES[engine](image, landmarks)
    tinted = np.clip(crop.astype(int) + CAST, 0, 255).astype(np.uint8)
    pasted, weights = paste_case(tinted)
    rim, core = (weights > 0.02) & (weights < 0.98), weights >= 0.98
    for where in (rim, core):
        cast = (pasted[where].astype(float) - image[where]).mean(axis=0)
        plain = (weights[where, None] * CAST).mean(axis=0)  # what a blend without colour matching leaves
        assert np.abs(cast).max() < 0.25 * np.abs(plain).max(), (engine, cast, plain)
    assert np.array_equal(pasted[weights == 0], image[weights == 0])


def test_paste_touches_only_the_mask_and_clips_to_the_frame() -> None:
    frame = astronaut_bgr(128)
    face = np.full((60, 60, 3), 200, np.uint8)
    weights = edge_ramp(60, 60, 8.0)
    out = paste(frame, face, weights, (-20, 90))  # reaches above and right of the frame
    touched = np.zeros((128, 128), bool)
    touched[:40, 90:] = weights[20:, :38] > 0
    assert np.array_equal(out[~touched], frame[~touched])
    assert not np.array_equal(out[touched], frame[touched])
    assert np.array_equal(paste(frame, frame[10:70, 20:80], weights, (10, 20)), frame)
