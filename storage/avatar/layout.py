"""LiveTalking's avatar layout: names, frame naming, and the one writer of avatar directories.

An avatar is a directory ``<avatar_id>/`` holding ``full_imgs/NNNNNNNN.png`` (every frame),
``face_imgs/NNNNNNNN.png`` (the face crop of each frame, ``img_size`` square), ``coords.pkl`` (a pickled
list of ``(y1, y2, x1, x2)`` face boxes) and optionally ``landmarks.npy`` ((N, 68, 2)) and ``meta.json``,
which LiveTalking ignores. Frames play at ``engines.constants.FPS``.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from storage.avatar.coords import write_coords
from storage.errors import StorageError

FULL_IMGS = "full_imgs"
FACE_IMGS = "face_imgs"
COORDS = "coords.pkl"
LANDMARKS = "landmarks.npy"
META = "meta.json"
# MuseTalk's material (LiveTalking's musetalk avatar layout; storage/avatar/musetalk.py reads and writes it)
MASK_DIR = "mask"
MASK_COORDS = "mask_coords.pkl"
LATENTS = "latents.pt"
AVATAR_INFO = "avator_info.json"  # sic: upstream's spelling
# MuseTalk's realtime_inference leaves its (empty) output folder in the avatars LiveTalking users copy over:
# accepted and left out of what we unpack or pack.
IGNORED_DIRS = ("vid_output",)
FRAME_DIRS = (FULL_IMGS, FACE_IMGS, MASK_DIR)  # face_imgs/ (wav2lip) and mask/ (musetalk) are per engine
VARIABLE_SIZE_DIRS = (MASK_DIR,)  # each mask is its frame's crop-box size
TOP_FILES = (COORDS, LANDMARKS, META, MASK_COORDS, LATENTS, AVATAR_INFO)
# ASCII digits only, and \Z: "$" would also accept a name ending in a newline.
FRAME_NAME_RE = re.compile(r"^([0-9]{8})\.(png|jpg)\Z")
LANDMARK_POINTS = 68
MIB = 1024 * 1024
# Per-file caps, far above what a 5-minute 4K avatar needs: a larger entry is a bomb, refused before writing.
MAX_FRAME_FILE_BYTES = 64 * MIB
MAX_ENTRY_BYTES = {
    COORDS: 16 * MIB,
    LANDMARKS: 64 * MIB,
    META: 1 * MIB,
    MASK_COORDS: 16 * MIB,
    LATENTS: 320 * MIB,  # 7500 frames (5 min) of (8, 32, 32) float32 latents
    AVATAR_INFO: 16 * MIB,  # holds MuseTalk's face boxes in our TARs
}
MAX_FRAME_PIXELS = 4096 * 4096
MAX_META_DEPTH = 32
# Files operating systems leave in folders (Finder, Explorer, AppleDouble): skipped, never an error.
STRAY_OS_FILES = frozenset({".DS_Store", "Thumbs.db", "desktop.ini"})


def frame_name(i: int) -> str:
    """The file name of frame ``i``: ``00000000.png``."""
    return f"{i:08d}.png"


def check_avatar_id(avatar_id: str) -> str:
    """``avatar_id`` if it is a plain folder name; StorageError ``invalid_avatar_id`` otherwise."""
    if not avatar_id or len(avatar_id) > 255 or avatar_id.startswith(".") or any(c in avatar_id for c in "/\\\x00"):
        raise StorageError(
            "invalid_avatar_id", f"avatar id {avatar_id!r} must be a plain folder name (no '/', not starting with '.')"
        )
    return avatar_id


def is_stray_os_file(name: str) -> bool:
    """Whether a file name is one an OS leaves behind (``.DS_Store``, ``Thumbs.db``, AppleDouble ``._*``)."""
    return name in STRAY_OS_FILES or name.startswith("._")


def max_entry_bytes(rel: str) -> int:
    """The largest file the layout allows at ``rel`` (a name ``layout_rel`` accepted)."""
    return MAX_ENTRY_BYTES.get(rel, MAX_FRAME_FILE_BYTES)


def layout_rel(name: str, is_dir: bool) -> str | None:
    """``name`` (relative to the avatar folder) if the layout allows it for this entry type, else None."""
    if is_dir:
        return name if name in ("", *FRAME_DIRS) else None
    if name in TOP_FILES:
        return name
    folder, _, file_name = name.partition("/")
    return name if folder in FRAME_DIRS and FRAME_NAME_RE.match(file_name) else None


class AvatarWriter:
    """Writes one avatar directory in the layout: ``write_frame`` for each frame, then ``write_tables``.

    ``write_frame`` may be called from several threads at once and in any order (each frame is its own
    pair of files); ``png_params`` are OpenCV ``imwrite`` flags.
    """

    def __init__(self, avatar_dir: Path, png_params: Sequence[int] = ()) -> None:
        self.path = avatar_dir
        self._png_params = list(png_params)
        (avatar_dir / FULL_IMGS).mkdir(parents=True)
        (avatar_dir / FACE_IMGS).mkdir()

    def write_frame(self, index: int, full: np.ndarray, face: np.ndarray) -> None:
        """Frame ``index``: the full BGR frame and its (already resized, square) face crop."""
        name = frame_name(index)
        self._imwrite(self.path / FULL_IMGS / name, full)
        self._imwrite(self.path / FACE_IMGS / name, face)

    def write_tables(
        self,
        coords: Sequence[Sequence[int]],
        landmarks: np.ndarray | Sequence[np.ndarray] | None = None,
        meta: dict[str, Any] | None = None,
    ) -> None:
        """``coords.pkl`` (plain ints, as LiveTalking writes it), and ``landmarks.npy`` / ``meta.json`` if given."""
        write_coords(self.path / COORDS, coords)
        if landmarks is not None:
            np.save(self.path / LANDMARKS, np.asarray(landmarks, dtype=np.float32))
        if meta is not None:
            (self.path / META).write_text(json.dumps(meta, indent=2))

    def _imwrite(self, path: Path, image: np.ndarray) -> None:
        if not cv2.imwrite(str(path), image, self._png_params):
            raise OSError(f"could not write {path}")
