"""Photos with several faces: the largest is used by default and the result says how many there were
(``faces_found``); ``face_index`` picks another (render_emotion, generate_video from an image); preprocess keeps
to the largest face through the whole video. The image: the astronaut's face twice, at two scales."""

from __future__ import annotations

import base64

import cv2
import numpy as np
import pytest

import handlers
from engines.face import find_face, load_face_analyzer
from engines.lipsync.portrait_avatar import build_portrait_avatar
from handlers.runtime import WorkerRuntime
from storage.avatar.archive import unpack_avatar
from storage.avatar.reader import load_avatar
from storage.local import path_from_file_uri
from tests.media import astronaut_bgr, write_video

WIDTH, HEIGHT = 640, 380
SPLIT_X = 362  # the big face lies left of this column, the small one right of it


def two_faces(dx: int = 0, dy: int = 0) -> np.ndarray:
    """The astronaut's face at 360 px on the left and at 270 px on the right (moved by dx, dy)."""
    face = astronaut_bgr(512)[0:256, 96:352]
    canvas = np.full((HEIGHT, WIDTH, 3), 180, np.uint8)
    canvas[10 + dy : 370 + dy, 0:360] = cv2.resize(face, (360, 360), interpolation=cv2.INTER_AREA)
    canvas[55 - dy : 325 - dy, 365 + dx : 635 + dx] = cv2.resize(face, (270, 270), interpolation=cv2.INTER_AREA)
    return canvas


def data_uri(image: np.ndarray) -> str:
    return "data:image/png;base64," + base64.b64encode(cv2.imencode(".png", image)[1].tobytes()).decode()


def changed_columns(before: np.ndarray, after: np.ndarray) -> tuple[int, int]:
    """The first and last columns a render changed."""
    columns = np.flatnonzero(np.abs(before.astype(int) - after.astype(int)).max(axis=(0, 2)) > 8)
    assert columns.size, "the render changed nothing"
    return int(columns[0]), int(columns[-1])


def test_render_emotion_uses_the_largest_face_and_says_how_many_there_are(runtime: WorkerRuntime) -> None:
    image = two_faces()
    default = handlers.dispatch(
        {"task": "render_emotion", "user_id": "u1", "image": data_uri(image), "emotion": "happy"}, runtime
    )
    assert default["faces_found"] == 2 and default["face_index"] == 0, default
    first, last = changed_columns(image, cv2.imread(str(path_from_file_uri(default["renders"][0]["uri"]))))
    assert last < SPLIT_X, (first, last)  # only the big face moved

    second = handlers.dispatch(
        {"task": "render_emotion", "user_id": "u1", "image": data_uri(image), "emotion": "happy", "face_index": 1},
        runtime,
    )
    assert second["faces_found"] == 2 and second["face_index"] == 1, second
    first, last = changed_columns(image, cv2.imread(str(path_from_file_uri(second["renders"][0]["uri"]))))
    assert first > SPLIT_X, (first, last)  # only the small face moved

    missing = handlers.dispatch(
        {"task": "render_emotion", "user_id": "u1", "image": data_uri(image), "emotion": "sad", "face_index": 2},
        runtime,
    )
    assert missing["error_code"] == "face_not_found" and "it has 2" in missing["error"], missing
    one = handlers.dispatch(
        {"task": "render_emotion", "user_id": "u1", "image": data_uri(image[:, :360].copy()), "emotion": "sad"},
        runtime,
    )
    assert one["faces_found"] == 1 and one["face_index"] == 0


def test_a_portrait_avatar_animates_the_chosen_face() -> None:
    analyzer = load_face_analyzer()
    image = two_faces()
    assert find_face(image, analyzer).faces_found == 2
    largest = build_portrait_avatar(image, analyzer, seconds=0.2)
    smaller = build_portrait_avatar(image, analyzer, seconds=0.2, face_index=1)
    assert largest.faces_found == smaller.faces_found == 2
    assert largest.landmarks[:, :, 0].max() < SPLIT_X < smaller.landmarks[:, :, 0].min()


def test_generate_video_from_a_photo_reports_its_faces_and_refuses_a_missing_one(runtime: WorkerRuntime) -> None:
    base = {"task": "generate_video", "user_id": "u1", "image": data_uri(two_faces()), "text": "Hi."}
    made = handlers.dispatch({**base, "face_index": 1}, runtime)
    assert made["faces_found"] == 2 and made["face_index"] == 1, made
    assert made["video"]["bytes"] > 1000
    refused = handlers.dispatch({**base, "face_index": 5}, runtime)
    assert refused["error_code"] == "face_not_found", refused
    with_avatar = {"task": "generate_video", "user_id": "u1", "avatar_id": "a1", "text": "Hi.", "face_index": 0}
    assert handlers.dispatch(with_avatar, runtime)["error_code"] == "invalid_input"


@pytest.mark.slow
def test_preprocess_keeps_to_the_largest_face_in_every_frame(runtime: WorkerRuntime, tmp_path) -> None:
    frames = [two_faces(dx=int(6 * np.sin(i / 4)), dy=int(4 * np.cos(i / 5))) for i in range(30)]
    video = write_video(tmp_path / "two.mp4", frames, 25.0)
    payload = {"task": "preprocess_avatar", "user_id": "u1", "avatar_id": "two", "video": video.as_uri()}
    result = handlers.dispatch(payload, runtime)
    assert "error" not in result, result
    avatar = load_avatar(unpack_avatar(path_from_file_uri(result["avatar"]["uri"]), tmp_path / "unpacked", "two"))
    boxes = np.asarray(avatar.coords)  # (y1, y2, x1, x2) per frame
    assert len(boxes) == 30 and boxes[:, 3].max() < SPLIT_X + 20 and boxes[:, 2].min() < 200, boxes[:3]
