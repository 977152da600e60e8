"""MuseTalk material in an avatar: LiveTalking's musetalk avatar layout, read safely and written.

LiveTalking's musetalk genavatar writes, next to ``full_imgs/``: ``latents.pt`` (``torch.save`` of a
list of (1, 8, 32, 32) input latents, one per frame), ``mask/NNNNNNNN.png`` (a blend mask per frame,
the size of its crop box), ``mask_coords.pkl`` (crop boxes ``(x1, y1, x2, y2)``), ``avator_info.json``
(sic) and a ``coords.pkl`` of MuseTalk face boxes in ``(x1, y1, x2, y2)`` order, with no ``face_imgs/``.

Our TARs keep the wav2lip layout (``coords.pkl`` of ``(y1, y2, x1, x2)`` boxes, ``face_imgs/``) and add
the same material, with MuseTalk's own face boxes in ``avator_info.json`` (``face_boxes``), so one
avatar serves every engine; LiveTalking's wav2lip reads it as before (its musetalk loader would read
our ``coords.pkl`` in the other order: give it an avatar made with ``models: ["musetalk"]`` only).

``latents.pt`` is a pickle: its zip is checked first, then it is loaded only with
``torch.load(weights_only=True)`` and every tensor's shape, strides and storage are checked against the
frame count before anything is copied (``latents.py``); ``mask_coords.pkl`` goes through our opcode
reader, never pickle.
"""

from __future__ import annotations

import json
import pickle
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from storage.avatar.coords import Box, read_boxes_file
from storage.avatar.entries import frame_files, frame_size, invalid, read_json_object
from storage.avatar.latents import read_latents
from storage.avatar.layout import (
    AVATAR_INFO,
    COORDS,
    FACE_IMGS,
    LATENTS,
    MASK_COORDS,
    MASK_DIR,
    frame_name,
)
from storage.base import atomic_file

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


def _check_boxes(avatar: Path, label: str, boxes: list[Box], width: int, height: int, inside: bool) -> None:
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
    _check_boxes(avatar, "face", boxes, width, height, inside=True)
    _check_boxes(avatar, MASK_COORDS, crop_boxes, width, height, inside=False)
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
