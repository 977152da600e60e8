"""LiveTalking's avatar layout: names, limits, frame naming, the one writer of avatar directories, and the
reading of single entries within the layout's limits.

An avatar is a directory ``<avatar_id>/`` holding ``full_imgs/NNNNNNNN.png`` (every frame),
``face_imgs/NNNNNNNN.png`` (the face crop of each frame, ``img_size`` square), ``coords.pkl`` (a pickled
list of ``(y1, y2, x1, x2)`` face boxes) and optionally ``landmarks.npy`` ((N, 68, 2)) and ``meta.json``,
which LiveTalking ignores. Frames play at ``engines.constants.FPS``.

``coords.pkl`` is written with ``pickle`` (our own data) and read with ``box_pickle``, which never runs pickle
machinery. Entries are read within the limits below: frame lists, frame sizes from PNG / JPEG headers (never
decoding pixels: a header is all a bomb needs), JSON objects of bounded depth.
"""

from __future__ import annotations

import json
import os
import pickle
import re
import struct
from collections.abc import Sequence
from pathlib import Path
from typing import Any, BinaryIO

import cv2
import numpy as np

from storage.avatar.box_pickle import MAX_BOXES, MAX_PICKLE_BYTES, BoxPickleError, read_boxes_pickle
from storage.base import atomic_file
from storage.errors import StorageError

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


JPEG_SOF_MARKERS = frozenset({0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF})


def image_size(path: Path) -> tuple[int, int]:
    """(width, height) of a PNG or JPEG read from its header, without decoding the pixels."""
    with path.open("rb") as fh:
        head = fh.read(24)
        if head[:8] == PNG_SIGNATURE and head[12:16] == b"IHDR":
            width, height = struct.unpack(">II", head[16:24])
            return width, height
        if head[:2] == b"\xff\xd8":
            fh.seek(2)
            return _jpeg_size(fh, path)
    raise StorageError("invalid_avatar", f"{path} is neither a PNG nor a JPEG")


def _jpeg_size(fh: BinaryIO, path: Path) -> tuple[int, int]:
    while True:
        marker = fh.read(2)
        if len(marker) < 2 or marker[0] != 0xFF:
            raise StorageError("invalid_avatar", f"{path}: JPEG without a frame header")
        if marker[1] in (0xD8, 0x01) or 0xD0 <= marker[1] <= 0xD7:
            continue
        length_bytes = fh.read(2)
        if len(length_bytes) < 2:
            raise StorageError("invalid_avatar", f"{path}: truncated JPEG")
        (length,) = struct.unpack(">H", length_bytes)
        if length < 2:
            raise StorageError("invalid_avatar", f"{path}: corrupt JPEG segment length")
        if marker[1] in JPEG_SOF_MARKERS:
            header = fh.read(5)
            if len(header) < 5:
                raise StorageError("invalid_avatar", f"{path}: truncated JPEG")
            _precision, height, width = struct.unpack(">BHH", header)
            return width, height
        fh.seek(length - 2, os.SEEK_CUR)


Box = tuple[int, int, int, int]


def write_coords(path: Path, coords: Sequence[Sequence[int]]) -> None:
    """Pickle ``coords`` as a list of plain-int ``(y1, y2, x1, x2)`` tuples (what upstream LiveTalking reads)."""
    boxes = [tuple(int(v) for v in box) for box in coords]
    if any(len(box) != 4 for box in boxes):
        raise ValueError("every coords entry must be (y1, y2, x1, x2)")
    with atomic_file(path) as fh:
        pickle.dump(boxes, fh, protocol=4)


def read_boxes_file(path: Path, max_bytes: int = MAX_PICKLE_BYTES, max_boxes: int = MAX_BOXES) -> list[Box]:
    """The boxes of a box-list pickle (``coords.pkl``, MuseTalk's ``mask_coords.pkl``); ``invalid_avatar`` else.
    ``max_boxes``: the avatar's frame count where known (the decoder's work and build budgets scale with it)."""
    with path.open("rb") as fh:
        data = fh.read(max_bytes + 1)
    try:
        boxes = read_boxes_pickle(data, max_bytes=max_bytes, max_boxes=max(1, max_boxes))
    except BoxPickleError as exc:
        raise StorageError("invalid_avatar", f"{path} is not a list of 4-integer boxes: {exc}") from None
    return [(int(a), int(b), int(c), int(d)) for a, b, c, d in boxes.tolist()]


def read_coords(path: Path, max_boxes: int = MAX_BOXES) -> list[Box]:
    """``coords.pkl`` as ``(y1, y2, x1, x2)`` tuples: plain ints, numpy int64 scalars or a 2-D int array."""
    return read_boxes_file(path, max_boxes=max_boxes)


FULL_IMGS = "full_imgs"


FACE_IMGS = "face_imgs"


COORDS = "coords.pkl"


LANDMARKS = "landmarks.npy"


META = "meta.json"


# MuseTalk's material (LiveTalking's musetalk avatar layout; storage/avatar/reader.py reads and writes it)
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


def invalid(path: Path, problem: str) -> StorageError:
    return StorageError("invalid_avatar", f"avatar {path}: {problem}")


def frame_files(avatar: Path, folder: str) -> list[Path]:
    """The frames of ``folder`` in index order; names must run 00000000, 00000001, ... without gaps."""
    directory = avatar / folder
    if not directory.is_dir():
        raise invalid(avatar, f"missing {folder}/")
    by_index: dict[int, Path] = {}
    for entry in directory.iterdir():
        if is_stray_os_file(entry.name):
            continue
        match = FRAME_NAME_RE.match(entry.name)
        if not match or not entry.is_file():
            raise invalid(avatar, f"unexpected entry {folder}/{entry.name} (frames are NNNNNNNN.png or .jpg)")
        index = int(match.group(1))
        if index in by_index:
            raise invalid(avatar, f"{folder}/ has frame {index} twice ({by_index[index].name}, {entry.name})")
        by_index[index] = entry
    for expected in range(len(by_index)):
        if expected not in by_index:
            raise invalid(avatar, f"{folder}/ has a gap: frame {expected:08d} is missing")
    return [by_index[i] for i in range(len(by_index))]


def _json_depth(value: object) -> int:
    """Nesting depth of parsed JSON, walked without recursion."""
    deepest, pending = 0, [(value, 1)]
    while pending:
        item, depth = pending.pop()
        deepest = max(deepest, depth)
        children = item.values() if isinstance(item, dict) else item if isinstance(item, list) else ()
        pending.extend((child, depth + 1) for child in children)
    return deepest


def read_json_object(avatar: Path, name: str) -> dict:
    """The JSON object in ``avatar/name`` ({} when absent), within its size cap and nesting depth."""
    path = avatar / name
    if not path.exists():
        return {}
    if path.stat().st_size > MAX_ENTRY_BYTES[name]:
        raise invalid(avatar, f"{name} is over {MAX_ENTRY_BYTES[name]} bytes")
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError) as exc:
        raise invalid(avatar, f"{name} is not valid JSON: {type(exc).__name__}") from None
    if not isinstance(value, dict):
        raise invalid(avatar, f"{name} must hold a JSON object")
    if _json_depth(value) > MAX_META_DEPTH:
        raise invalid(avatar, f"{name} is nested deeper than {MAX_META_DEPTH} levels")
    return value


def frame_size(avatar: Path, frame: Path) -> tuple[int, int]:
    """A frame's (width, height) from its header; ``invalid_avatar`` past MAX_FRAME_PIXELS."""
    width, height = image_size(frame)
    if width * height > MAX_FRAME_PIXELS or not width or not height:
        raise invalid(avatar, f"{frame.parent.name}/{frame.name} declares {width}x{height} pixels")
    return width, height
