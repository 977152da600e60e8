"""The safe reader of an avatar directory: ``validate_avatar_dir`` checks one against the layout and describes
it, ``load_avatar`` reads it for a render (frames stay on disk, undecoded), with its MuseTalk material.

MuseTalk material: LiveTalking's musetalk avatar layout, read safely here and written by ``write_material``.

LiveTalking's musetalk genavatar writes, next to ``full_imgs/``: ``latents.pt`` (``torch.save`` of a
list of (1, 8, 32, 32) input latents, one per frame), ``mask/NNNNNNNN.png`` (a blend mask per frame,
the size of its crop box), ``mask_coords.pkl`` (crop boxes ``(x1, y1, x2, y2)``), ``avator_info.json``
(sic) and a ``coords.pkl`` of MuseTalk face boxes in ``(x1, y1, x2, y2)`` order, with no ``face_imgs/``.

Our TARs keep the wav2lip layout (``coords.pkl`` of ``(y1, y2, x1, x2)`` boxes, ``face_imgs/``) and add
the same material, with MuseTalk's own face boxes in ``avator_info.json`` (``face_boxes``), so one
avatar serves every engine; LiveTalking's wav2lip reads it as before (its musetalk loader would read
our ``coords.pkl`` in the other order: give it an avatar made with ``models: ["musetalk"]`` only).

``mask_coords.pkl`` goes through our opcode reader, never pickle. ``latents.pt``, a user's ``torch.save`` (a
pickle), is checked by ``read_latents`` before anything is copied, concatenated or converted, so a
small file cannot make the reader allocate more than it holds:

1. The file, unopened by torch: a zip (torch's format since 1.6; the legacy format allocates storages of
   declared size before reading them) whose records are all stored uncompressed (no record can expand),
   whose pickle (``data.pkl``) and record count are what ``num_frames`` latents need at most.
2. ``torch.load(weights_only=True)``: no code runs; torch checks each storage against its record's size.
3. Each tensor: floating point, shape ``(8, 32, 32)`` or ``(n, 8, 32, 32)``, strides that never repeat an
   element (no zero strides), a storage that holds every element it claims; all tensors together claim no
   more bytes than their distinct storages own (no list of references to one tensor); and exactly
   ``num_frames`` latents.
"""

from __future__ import annotations

import json
import math
import pickle
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from storage.avatar.layout import (
    AVATAR_INFO,
    COORDS,
    FACE_IMGS,
    FRAME_DIRS,
    FULL_IMGS,
    IGNORED_DIRS,
    LANDMARK_POINTS,
    LANDMARKS,
    LATENTS,
    MASK_COORDS,
    MASK_DIR,
    MAX_ENTRY_BYTES,
    META,
    TOP_FILES,
    Box,
    frame_files,
    frame_name,
    frame_size,
    image_size,
    invalid,
    is_stray_os_file,
    read_boxes_file,
    read_coords,
    read_json_object,
)
from storage.base import atomic_file
from storage.errors import StorageError

if TYPE_CHECKING:
    import torch


LATENT_SHAPE = (8, 32, 32)


LATENT_ELEMENTS = math.prod(LATENT_SHAPE)


PICKLE_BYTES_PER_LATENT = 256  # torch.save spends about 88 bytes of data.pkl on each tensor of a list


PICKLE_SLACK_BYTES = 8192


RECORDS_SLACK = 16  # data.pkl, version, byteorder, ... beside one record per storage


MAX_ELEMENT_BYTES = 8  # float64


def read_latents(avatar: Path, num_frames: int) -> torch.Tensor:
    """``latents.pt`` as float32 (N, 8, 32, 32): a list of (1, 8, 32, 32) tensors or one stacked tensor,
    N == ``num_frames``; StorageError ``invalid_avatar`` (see the module docstring) otherwise."""
    import torch

    path = avatar / LATENTS
    _check_container(avatar, path, num_frames)
    try:
        value = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for a bad or hostile pickle
        raise invalid(avatar, f"{LATENTS} is not a list of tensors ({type(exc).__name__})") from None
    items = list(value) if isinstance(value, (list, tuple)) else [value]
    if not items or len(items) > num_frames or not all(isinstance(t, torch.Tensor) for t in items):
        raise invalid(avatar, f"{LATENTS} must hold a list of float tensors, one per frame ({num_frames})")
    count = sum(_latents_in(avatar, t) for t in items)
    if count != num_frames:
        raise invalid(
            avatar,
            f"{LATENTS} has {count} latents for {num_frames} frames "
            "(LiveTalking skips frames without a face: prepare the avatar again)",
        )
    latents = torch.cat([t.reshape(-1, *LATENT_SHAPE) for t in items]).float()  # now known to be num_frames
    if not torch.isfinite(latents).all():
        raise invalid(avatar, f"{LATENTS} holds NaN or infinite values")
    return latents


def _check_container(avatar: Path, path: Path, num_frames: int) -> None:
    """The zip's own declarations, read without torch: sizes, compression and the pickle's length."""
    size = path.stat().st_size
    limit = min(MAX_ENTRY_BYTES[LATENTS], num_frames * LATENT_ELEMENTS * MAX_ELEMENT_BYTES + 1024 * 1024)
    if size > limit:
        raise invalid(avatar, f"{LATENTS} is {size} bytes, more than {num_frames} latents take ({limit})")
    try:
        with zipfile.ZipFile(path) as archive:
            records = archive.infolist()
    except (zipfile.BadZipFile, OSError, ValueError):
        raise invalid(avatar, f"{LATENTS} is not a torch.save zip file (save it with torch 1.6 or later)") from None
    if len(records) > num_frames + RECORDS_SLACK:
        raise invalid(avatar, f"{LATENTS} has {len(records)} records, more than {num_frames} latents need")
    pickle_limit = PICKLE_BYTES_PER_LATENT * num_frames + PICKLE_SLACK_BYTES
    for record in records:
        if record.compress_type != zipfile.ZIP_STORED or record.file_size != record.compress_size:
            raise invalid(avatar, f"{LATENTS}: record {record.filename!r} is compressed (torch.save stores them)")
        if record.filename.endswith("data.pkl") and record.file_size > pickle_limit:
            raise invalid(avatar, f"{LATENTS}: its pickle is {record.file_size} bytes, over {pickle_limit}")
    if sum(record.file_size for record in records) > size:
        raise invalid(avatar, f"{LATENTS}: its records declare more bytes than the file holds")


def _latents_in(avatar: Path, tensor: torch.Tensor) -> int:
    """How many (8, 32, 32) latents ``tensor`` holds, from its shape and strides alone (nothing is read)."""
    shape = tuple(tensor.shape)
    if not tensor.is_floating_point() or str(tensor.layout) != "torch.strided":
        raise invalid(avatar, f"{LATENTS} must hold dense float tensors")
    if shape[-3:] != LATENT_SHAPE or len(shape) not in (3, 4):
        raise invalid(avatar, f"{LATENTS} holds a tensor of shape {list(shape)}, expected (1, 8, 32, 32)")
    if any(stride < 1 for size, stride in zip(shape, tensor.stride(), strict=True) if size > 1):
        raise invalid(avatar, f"{LATENTS} holds a tensor with zero strides (it repeats elements it does not hold)")
    span = 1 + sum((size - 1) * stride for size, stride in zip(shape, tensor.stride(), strict=True) if size > 0)
    needed = (tensor.storage_offset() + span) * tensor.element_size() if tensor.numel() else 0
    if needed > tensor.untyped_storage().nbytes() or tensor.numel() > span:
        raise invalid(avatar, f"{LATENTS} holds a tensor claiming more elements than its storage holds")
    return shape[0] if len(shape) == 4 else 1


if TYPE_CHECKING:
    import torch


MUSETALK_VERSION = "v15"


class MaterialLike(Protocol):
    """What the MuseTalk engine computes per avatar (``engines.lipsync.musetalk.avatar.MuseTalkMaterial``)."""

    boxes: Sequence[Sequence[int]]
    crop_boxes: Sequence[Sequence[int]]
    masks: Sequence[np.ndarray]
    latents: torch.Tensor


@dataclass
class StoredMaterial:
    """An avatar's MuseTalk material as stored: boxes (x1, y1, x2, y2), mask files; latents read when asked."""

    avatar: Path
    boxes: list[Box]
    crop_boxes: list[Box]
    mask_paths: list[Path]

    def latents(self) -> torch.Tensor:
        """(N, 8, 32, 32) float32, read and checked now (a render that does not use MuseTalk never reads them)."""
        return read_latents(self.avatar, len(self.boxes))


def has_material(avatar: Path) -> bool:
    return (avatar / LATENTS).is_file()


def is_musetalk_only(avatar: Path) -> bool:
    """LiveTalking's musetalk layout: material, no face_imgs/, coords.pkl in (x1, y1, x2, y2) order."""
    return has_material(avatar) and not (avatar / FACE_IMGS).exists()


def xyxy_to_coords(box: Box) -> Box:
    x1, y1, x2, y2 = box
    return y1, y2, x1, x2


def _face_boxes(avatar: Path, info: dict[str, Any], num_frames: int) -> list[Box]:
    boxes = info.get("face_boxes")
    if boxes is None:  # LiveTalking's own layout: coords.pkl holds them
        return read_boxes_file(avatar / COORDS, max_boxes=num_frames)
    if not isinstance(boxes, list) or not all(
        isinstance(b, list) and len(b) == 4 and all(isinstance(v, int) for v in b) for b in boxes
    ):
        raise invalid(avatar, f"{AVATAR_INFO}: face_boxes must be a list of [x1, y1, x2, y2] integers")
    return [tuple(b) for b in boxes]


def _check_material_boxes(avatar: Path, label: str, boxes: list[Box], width: int, height: int, inside: bool) -> None:
    for i, (x1, y1, x2, y2) in enumerate(boxes):
        if not (x1 < x2 and y1 < y2) or (inside and not (x1 >= 0 and y1 >= 0 and x2 <= width and y2 <= height)):
            raise invalid(avatar, f"{label} box {i} (x1, y1, x2, y2) = {(x1, y1, x2, y2)} does not fit the frame")


def _check_masks(avatar: Path, masks: list[Path], crop_boxes: list[Box]) -> None:
    """Each mask's header declares its crop box's size (headers only: nothing is decoded here)."""
    for mask, (x1, y1, x2, y2) in zip(masks, crop_boxes, strict=True):
        if frame_size(avatar, mask) != (x2 - x1, y2 - y1):
            raise invalid(avatar, f"{MASK_DIR}/{mask.name} is not the size of its crop box {(x1, y1, x2, y2)}")


def read_material(
    avatar: Path, num_frames: int, width: int, height: int, check_latents: bool = True
) -> StoredMaterial | None:
    """The avatar's MuseTalk material, checked for counts and boxes (and ``latents.pt``); None when it has none."""
    if not has_material(avatar):
        return None
    for name in (MASK_COORDS,):
        if not (avatar / name).is_file():
            raise invalid(avatar, f"has {LATENTS} but no {name}")
    boxes = _face_boxes(avatar, read_json_object(avatar, AVATAR_INFO), num_frames)
    crop_boxes = read_boxes_file(avatar / MASK_COORDS, max_boxes=num_frames)
    masks = frame_files(avatar, MASK_DIR)
    counts = {"face boxes": len(boxes), MASK_COORDS: len(crop_boxes), f"{MASK_DIR}/": len(masks)}
    if any(count != num_frames for count in counts.values()):
        listed = ", ".join(f"{k} {v}" for k, v in counts.items())
        raise invalid(avatar, f"MuseTalk material counts differ from the {num_frames} frames: {listed}")
    _check_material_boxes(avatar, "face", boxes, width, height, inside=True)
    _check_material_boxes(avatar, MASK_COORDS, crop_boxes, width, height, inside=False)
    _check_masks(avatar, masks, crop_boxes)
    material = StoredMaterial(avatar, boxes, crop_boxes, masks)
    if check_latents:
        material.latents()
    return material


def write_material(avatar: Path, material: MaterialLike, info: dict[str, Any], with_face_boxes: bool = True) -> None:
    """Add ``material`` (the engine's MuseTalkMaterial) to an avatar folder in LiveTalking's musetalk layout.

    ``with_face_boxes`` records MuseTalk's face boxes in ``avator_info.json`` (our TARs, whose
    ``coords.pkl`` holds the wav2lip boxes); without it the caller writes them as ``coords.pkl``.
    """
    import cv2
    import torch

    (avatar / MASK_DIR).mkdir()
    for i, mask in enumerate(material.masks):
        if not cv2.imwrite(str(avatar / MASK_DIR / frame_name(i)), mask):
            raise OSError(f"could not write mask {i} of {avatar}")
    with atomic_file(avatar / MASK_COORDS) as fh:
        pickle.dump([tuple(int(v) for v in box) for box in material.crop_boxes], fh, protocol=4)
    latents = [t[None].to(torch.float16).clone() for t in material.latents]  # LiveTalking keeps fp16 latents
    with atomic_file(avatar / LATENTS) as fh:
        torch.save(latents, fh)
    record = {"version": MUSETALK_VERSION, **info}
    if with_face_boxes:
        record["face_boxes"] = np.asarray(material.boxes, dtype=np.int64).tolist()
    (avatar / AVATAR_INFO).write_text(json.dumps(record))


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


def _check_coords(avatar: Path, coords: list[Box], width: int, height: int) -> None:
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
    _check_coords(avatar, coords, width, height)
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
