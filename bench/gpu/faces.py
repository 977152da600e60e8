"""The GPU run's face analysis, recorded here and replayed there.

dlib's 68-landmark model (99 MB, in ``face_recognition_models``) does not fit the 60 MiB the GPU machine can
be sent, and face analysis is CPU work that the GPU run does not measure. So ``make gpu-bundle`` runs the
real analyzer here on the run's inputs, which are generated the same way on both machines (skimage's
astronaut photo and the tests' head motion), and writes what it found to ``faces.json``:

- the portrait (the exact 512x512 photo): its boxes and landmarks, keyed by the image's content, answered
  by :class:`RecordedFaces` wherever a task asks the runtime's face analyzer (generate_video from ``image``);
  any other image is refused, so nothing is replayed for a picture it was not recorded on;
- each avatar size: the face box and landmarks of every frame, written into the avatar's tables.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from engines.errors import EngineError
from engines.face import FaceBox

FACES_FILE = "faces.json"
CHIN_PAD = 10  # the avatar's boxes are padded below the chin, as preprocess_avatar's default pads do
AVATAR_CROP = 256  # stored face crops (LiveTalking's 256 layout: wav2lip256 and MuseTalk read them as they are)


def portrait_bgr() -> np.ndarray:
    """The run's portrait: skimage's astronaut, 512x512, exactly (no resampling, so its bytes match everywhere)."""
    from tests.media import astronaut_bgr

    return astronaut_bgr(512)


def avatar_frames(side: int, frames: int) -> list[np.ndarray]:
    """The avatar's frames: the astronaut with head motion, a ``side``-px crop around her face."""
    from tests.media import head_motion

    moving, _ = head_motion(frames, 25.0, 2 * side)
    x0 = int(0.375 * side)  # the face sits left of centre in the photo
    return [np.ascontiguousarray(full[:side, x0 : x0 + side]) for full in moving]


def image_key(image: np.ndarray) -> str:
    digest = hashlib.sha1(str(image.shape).encode())
    digest.update(np.ascontiguousarray(image).tobytes())
    return digest.hexdigest()


def avatar_key(side: int, frames: int) -> str:
    return f"{side}x{frames}"


def record(analyzer: Any, avatar_sizes: list[tuple[int, int]]) -> dict[str, Any]:
    """Run ``analyzer`` (the real one) on the portrait and on each (side, frames) avatar."""
    portrait = portrait_bgr()
    boxes = analyzer.detect(portrait)
    recorded: dict[str, Any] = {
        "portrait": {
            "key": image_key(portrait),
            "boxes": [[b.x1, b.y1, b.x2, b.y2, b.score] for b in boxes],
            "landmarks": [analyzer.landmarks(portrait, b).tolist() for b in boxes],
        },
        "avatars": {},
    }
    for side, count in avatar_sizes:
        frames = avatar_frames(side, count)
        coords, landmarks = [], []
        for frame in frames:
            box = analyzer.detect(frame)[0]
            landmarks.append(analyzer.landmarks(frame, box).tolist())
            coords.append([box.y1, min(side, box.y2 + CHIN_PAD), box.x1, box.x2])
        recorded["avatars"][avatar_key(side, count)] = {
            "frames_sha1": frames_digest(frames),
            "coords": coords,
            "landmarks": landmarks,
        }
    return recorded


def frames_digest(frames: list[np.ndarray]) -> str:
    digest = hashlib.sha1()
    for frame in frames:
        digest.update(frame.tobytes())
    return digest.hexdigest()


def write_recording(folder: Path, recorded: dict[str, Any]) -> Path:
    path = folder / FACES_FILE
    path.write_text(json.dumps(recorded))
    return path


def read_recording(folder: Path) -> dict[str, Any]:
    return json.loads((folder / FACES_FILE).read_text())


class RecordedFaces:
    """A face analyzer that answers from a recording, for the recorded images only."""

    name = "recorded"

    def __init__(self, recorded: dict[str, Any]) -> None:
        portrait = recorded["portrait"]
        self._boxes = {portrait["key"]: [FaceBox(*b[:4], b[4]) for b in portrait["boxes"]]}
        self._landmarks = {
            (portrait["key"], tuple(b[:4])): np.asarray(lm, np.float32)
            for b, lm in zip(portrait["boxes"], portrait["landmarks"], strict=True)
        }

    def _key(self, image: np.ndarray) -> str:
        key = image_key(image)
        if key not in self._boxes:
            h, w = image.shape[:2]
            raise EngineError("no_face", f"the {w}x{h} image was not recorded by make gpu-bundle (faces.json)")
        return key

    def detect(self, image_bgr: np.ndarray, upsample: int = 0) -> list[FaceBox]:
        return list(self._boxes[self._key(image_bgr)])

    def landmarks(self, image_bgr: np.ndarray, box: FaceBox) -> np.ndarray:
        found = self._landmarks.get((self._key(image_bgr), (box.x1, box.y1, box.x2, box.y2)))
        if found is None:
            raise EngineError("no_face", f"no recorded landmarks for the box {box}")
        return found.copy()


def use_recorded_faces(runtime: Any, recorded: dict[str, Any]) -> None:
    """Make ``runtime``'s face analyzer the recording (stored before the real one would be loaded)."""
    runtime.engines.once(("face", "dlib_hog"), lambda: RecordedFaces(recorded))


def write_avatar(folder: Path, side: int, count: int, recorded: dict[str, Any]) -> tuple[Path, bool]:
    """The avatar folder (LiveTalking layout + landmarks) from frames made here and the recorded tables;
    returns it and whether the frames are the ones the recording was made on (they should be, bit for bit)."""
    from storage.avatar.layout import AvatarWriter

    tables = recorded["avatars"][avatar_key(side, count)]
    frames = avatar_frames(side, count)
    writer = AvatarWriter(folder)
    for i, (frame, (y1, y2, x1, x2)) in enumerate(zip(frames, tables["coords"], strict=True)):
        crop = cv2.resize(frame[y1:y2, x1:x2], (AVATAR_CROP, AVATAR_CROP), interpolation=cv2.INTER_AREA)
        writer.write_frame(i, frame, crop)
    writer.write_tables([tuple(c) for c in tables["coords"]], np.asarray(tables["landmarks"], np.float32))
    return writer.path, frames_digest(frames) == tables["frames_sha1"]
