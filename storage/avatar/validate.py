"""Checking an avatar directory against the layout and describing it (frames stay on disk, undecoded)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from storage.avatar.coords import Box, read_coords
from storage.avatar.images import image_size
from storage.avatar.layout import (
    COORDS,
    FACE_IMGS,
    FRAME_DIRS,
    FRAME_NAME_RE,
    FULL_IMGS,
    LANDMARK_POINTS,
    LANDMARKS,
    META,
    TOP_FILES,
)
from storage.errors import StorageError


@dataclass
class AvatarInfo:
    path: Path
    num_frames: int
    img_size: int
    width: int
    height: int
    has_landmarks: bool
    meta: dict = field(default_factory=dict)


@dataclass
class LoadedAvatar:
    info: AvatarInfo
    coords: list[Box]
    full_frame_paths: list[Path]
    face_crop_paths: list[Path]
    landmarks: np.ndarray | None
    meta: dict


def invalid(path: Path, problem: str) -> StorageError:
    return StorageError("invalid_avatar", f"avatar {path}: {problem}")


def frame_files(avatar: Path, folder: str) -> list[Path]:
    """The frames of ``folder`` in index order; names must run 00000000, 00000001, ... without gaps."""
    directory = avatar / folder
    if not directory.is_dir():
        raise invalid(avatar, f"missing {folder}/")
    by_index: dict[int, Path] = {}
    for entry in directory.iterdir():
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


def _check_boxes(avatar: Path, coords: list[Box], width: int, height: int) -> None:
    for i, (y1, y2, x1, x2) in enumerate(coords):
        if not (0 <= y1 < y2 <= height and 0 <= x1 < x2 <= width):
            raise invalid(
                avatar, f"box {i} (y1, y2, x1, x2) = {(y1, y2, x1, x2)} is outside the {width}x{height} frame"
            )


def _read_landmarks_shape(avatar: Path) -> tuple[int, ...] | None:
    path = avatar / LANDMARKS
    if not path.exists():
        return None
    try:
        return np.load(path, mmap_mode="r", allow_pickle=False).shape
    except Exception as exc:
        raise invalid(avatar, f"{LANDMARKS} is not a readable .npy array: {exc}") from exc


def _read_meta(avatar: Path) -> dict:
    path = avatar / META
    if not path.exists():
        return {}
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise invalid(avatar, f"{META} is not valid JSON: {exc}") from exc
    if not isinstance(meta, dict):
        raise invalid(avatar, f"{META} must hold a JSON object")
    return meta


def _inspect(avatar: Path) -> tuple[AvatarInfo, list[Box], list[Path], list[Path]]:
    if not avatar.is_dir():
        raise invalid(avatar, "not a directory")
    for entry in avatar.iterdir():
        if entry.name not in (*TOP_FILES, *FRAME_DIRS):
            raise invalid(avatar, f"unexpected entry {entry.name!r} (allowed: {', '.join((*FRAME_DIRS, *TOP_FILES))})")
    if not (avatar / COORDS).is_file():
        raise invalid(avatar, f"missing {COORDS}")
    coords = read_coords(avatar / COORDS)
    full, faces = frame_files(avatar, FULL_IMGS), frame_files(avatar, FACE_IMGS)
    if not coords:
        raise invalid(avatar, "has no frames")
    if not len(full) == len(faces) == len(coords):
        raise invalid(
            avatar, f"frame counts differ: {FULL_IMGS} {len(full)}, {FACE_IMGS} {len(faces)}, {COORDS} {len(coords)}"
        )
    width, height = image_size(full[0])
    face_w, face_h = image_size(faces[0])
    if face_w != face_h:
        raise invalid(avatar, f"face crops must be square, {faces[0].name} is {face_w}x{face_h}")
    _check_boxes(avatar, coords, width, height)
    shape = _read_landmarks_shape(avatar)
    if shape is not None and shape != (len(coords), LANDMARK_POINTS, 2):
        raise invalid(avatar, f"{LANDMARKS} has shape {shape}, expected ({len(coords)}, {LANDMARK_POINTS}, 2)")
    info = AvatarInfo(avatar, len(coords), face_w, width, height, shape is not None, _read_meta(avatar))
    return info, coords, full, faces


def validate_avatar_dir(path: Path, label: str | None = None) -> AvatarInfo:
    """Check the layout (names, counts, sizes) of an avatar directory; StorageError ``invalid_avatar`` if wrong.

    ``label`` (e.g. the store URI of the TAR it came from) replaces the folder's path in error messages.
    """
    try:
        return _inspect(path)[0]
    except StorageError as exc:
        if label is None:
            raise
        raise StorageError(exc.code, exc.message.replace(str(path), label)) from None


def load_avatar(path: Path) -> LoadedAvatar:
    """Validate and describe an avatar: coords, frame paths, landmarks; frames stay on disk, undecoded."""
    info, coords, full, faces = _inspect(path)
    landmarks = np.load(path / LANDMARKS, allow_pickle=False) if info.has_landmarks else None
    return LoadedAvatar(info, coords, full, faces, landmarks, info.meta)
