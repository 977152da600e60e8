"""Checking an avatar directory against the layout and describing it (frames stay on disk, undecoded)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from storage.avatar.coords import Box, read_coords
from storage.avatar.entries import frame_files, frame_size, invalid, read_json_object
from storage.avatar.images import image_size
from storage.avatar.layout import (
    COORDS,
    FACE_IMGS,
    FRAME_DIRS,
    FULL_IMGS,
    IGNORED_DIRS,
    LANDMARK_POINTS,
    LANDMARKS,
    MAX_ENTRY_BYTES,
    META,
    TOP_FILES,
    is_stray_os_file,
)
from storage.avatar.musetalk import StoredMaterial, is_musetalk_only, read_material, xyxy_to_coords
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
    musetalk: StoredMaterial | None = None  # MuseTalk's material, when the avatar has it


def _check_boxes(avatar: Path, coords: list[Box], width: int, height: int) -> None:
    for i, (y1, y2, x1, x2) in enumerate(coords):
        if not (0 <= y1 < y2 <= height and 0 <= x1 < x2 <= width):
            raise invalid(
                avatar, f"box {i} (y1, y2, x1, x2) = {(y1, y2, x1, x2)} is outside the {width}x{height} frame"
            )


def _read_landmarks(avatar: Path, frames: int) -> np.ndarray | None:
    path = avatar / LANDMARKS
    if not path.exists():
        return None
    if path.stat().st_size > MAX_ENTRY_BYTES[LANDMARKS]:
        raise invalid(avatar, f"{LANDMARKS} is over {MAX_ENTRY_BYTES[LANDMARKS]} bytes")
    try:
        landmarks = np.load(path, allow_pickle=False)
    except Exception as exc:
        raise invalid(avatar, f"{LANDMARKS} is not a readable .npy array: {exc}") from exc
    if landmarks.shape != (frames, LANDMARK_POINTS, 2) or landmarks.dtype.kind not in "fiu":
        expected = f"numbers in shape ({frames}, {LANDMARK_POINTS}, 2)"
        raise invalid(avatar, f"{LANDMARKS} has shape {landmarks.shape} of {landmarks.dtype}, expected {expected}")
    if not np.isfinite(landmarks).all():
        raise invalid(avatar, f"{LANDMARKS} holds NaN or infinite values")
    return landmarks


def _read_meta(avatar: Path) -> dict:
    return read_json_object(avatar, META)


def _same_size(avatar: Path, frames: list[Path], size: tuple[int, int]) -> None:
    """Every frame's header declares ``size``: a larger one would be decoded at render time."""
    for frame in frames[1:]:
        found = image_size(frame)
        if found != size:
            first = f"{size[0]}x{size[1]}"
            raise invalid(avatar, f"{frame.parent.name}/{frame.name} is {found[0]}x{found[1]}, the first frame {first}")


def _check_entries(avatar: Path) -> None:
    if not avatar.is_dir():
        raise invalid(avatar, "not a directory")
    for entry in avatar.iterdir():
        if entry.name in IGNORED_DIRS and entry.is_dir() and not entry.is_symlink():
            continue
        if entry.name not in (*TOP_FILES, *FRAME_DIRS) and not is_stray_os_file(entry.name):
            raise invalid(avatar, f"unexpected entry {entry.name!r} (allowed: {', '.join((*FRAME_DIRS, *TOP_FILES))})")
    if not (avatar / COORDS).is_file():
        raise invalid(avatar, f"missing {COORDS}")


Inspected = tuple[AvatarInfo, list[Box], list[Path], list[Path], np.ndarray | None, StoredMaterial | None]
MUSETALK_FACE_SIZE = 256


def _inspect(avatar: Path, every_frame: bool) -> Inspected:
    _check_entries(avatar)
    full = frame_files(avatar, FULL_IMGS)
    coords = read_coords(avatar / COORDS, max_boxes=len(full))  # one box per frame: the decoder's budgets
    musetalk_only = is_musetalk_only(avatar)  # LiveTalking's musetalk layout: (x1, y1, x2, y2), no face_imgs/
    if musetalk_only:
        coords = [xyxy_to_coords(box) for box in coords]
    faces = [] if musetalk_only else frame_files(avatar, FACE_IMGS)
    if not coords:
        raise invalid(avatar, "has no frames")
    if len(full) != len(coords) or (faces and len(faces) != len(coords)):
        raise invalid(
            avatar, f"frame counts differ: {FULL_IMGS} {len(full)}, {FACE_IMGS} {len(faces)}, {COORDS} {len(coords)}"
        )
    width, height = frame_size(avatar, full[0])
    face_w, face_h = frame_size(avatar, faces[0]) if faces else (MUSETALK_FACE_SIZE, MUSETALK_FACE_SIZE)
    if face_w != face_h:
        raise invalid(avatar, f"face crops must be square, {faces[0].name} is {face_w}x{face_h}")
    if every_frame:
        _same_size(avatar, full, (width, height))
        _same_size(avatar, faces, (face_w, face_h))
    _check_boxes(avatar, coords, width, height)
    landmarks = _read_landmarks(avatar, len(coords))
    material = read_material(avatar, len(coords), width, height, check_latents=every_frame)
    info = AvatarInfo(avatar, len(coords), face_w, width, height, landmarks is not None, _read_meta(avatar))
    return info, coords, full, faces, landmarks, material


def validate_avatar_dir(path: Path, label: str | None = None) -> AvatarInfo:
    """Check an avatar directory: names, counts, every frame's declared size, boxes, finite landmarks, meta;
    StorageError ``invalid_avatar`` if wrong. Runs before an avatar is installed or used from a folder.

    ``label`` (e.g. the store URI of the TAR it came from) replaces the folder's path in error messages.
    """
    try:
        return _inspect(path, every_frame=True)[0]
    except StorageError as exc:
        if label is None:
            raise
        raise StorageError(exc.code, exc.message.replace(str(path), label)) from None


def load_avatar(path: Path) -> LoadedAvatar:
    """Describe a validated avatar: coords, frame paths, landmarks; frames stay on disk, undecoded. Checks all
    but the size of each frame after the first (``validate_avatar_dir`` did, before it was installed)."""
    info, coords, full, faces, landmarks, material = _inspect(path, every_frame=False)
    return LoadedAvatar(info, coords, full, faces, landmarks, info.meta, material)
