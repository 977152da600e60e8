"""Avatars LiveTalking plays unchanged: an avatar folder rewritten for one of its loaders.

LiveTalking's loaders (lipku/LiveTalking ``avatars/wav2lip_avatar.py`` and ``avatars/musetalk_avatar.py``,
``load_avatar``) read, from ``data/avatars/<id>/``:

- wav2lip: ``full_imgs/*`` and ``face_imgs/*`` (sorted by the integer file stem, ``cv2.imread``), and
  ``coords.pkl`` (``pickle.load``; one ``(y1, y2, x1, x2)`` box per frame, pasted as
  ``frame[y1:y2, x1:x2] = resize(face, (x2 - x1, y2 - y1))``). Our avatars are that already.
- musetalk: ``full_imgs/*``, ``coords.pkl`` with boxes in **its** order ``(x1, y1, x2, y2)``, ``mask/*``,
  ``mask_coords.pkl`` (crop boxes ``(x1, y1, x2, y2)``), ``latents.pt`` (``torch.load``: a list of
  (1, 8, 32, 32) latents). Its paste-back slices the frame with the crop box and blends the mask over it with
  ``cv2.blendLinear``, so a crop box reaching outside the frame makes every speaking frame fail there: the
  export clips crop boxes (and their masks) to the frame. The face box must lie inside its crop box.

Our combined avatar keeps wav2lip's ``coords.pkl`` (and MuseTalk's boxes in ``avator_info.json``), which
LiveTalking's musetalk loader would read in the wrong order: the musetalk export writes MuseTalk's boxes as
``coords.pkl`` and leaves ``face_imgs/`` out (LiveTalking's musetalk layout, which our importer recognises).
"""

from __future__ import annotations

import json
import pickle
import shutil
from pathlib import Path

import cv2
import numpy as np

from storage.avatar.layout import (
    AVATAR_INFO,
    FACE_IMGS,
    FULL_IMGS,
    LANDMARKS,
    LATENTS,
    MASK_COORDS,
    MASK_DIR,
    META,
    Box,
    frame_name,
    invalid,
    read_json_object,
    write_coords,
)
from storage.avatar.reader import AvatarInfo, LoadedAvatar, load_avatar, validate_avatar_dir
from storage.base import atomic_file

MODELS = ("wav2lip", "musetalk")
IGNORED_BY_LIVETALKING = (LANDMARKS, META)  # ours, kept: LiveTalking never opens them


def export_livetalking(avatar_dir: Path, dest: Path, model: str) -> AvatarInfo:
    """Write ``avatar_dir`` (any avatar we accept) into the new folder ``dest`` in LiveTalking's ``model`` layout."""
    if model not in MODELS:
        raise ValueError(f"model must be one of {MODELS}, got {model!r}")
    loaded = load_avatar(avatar_dir)
    dest.mkdir(parents=True)
    _copy_folder(loaded.full_frame_paths, dest / FULL_IMGS)
    for name in IGNORED_BY_LIVETALKING:
        if (avatar_dir / name).is_file():
            shutil.copyfile(avatar_dir / name, dest / name)
    if model == "wav2lip":
        if not loaded.face_crop_paths:
            raise invalid(avatar_dir, f"has no {FACE_IMGS}/ (a LiveTalking musetalk avatar): no wav2lip export")
        _copy_folder(loaded.face_crop_paths, dest / FACE_IMGS)
        write_coords(dest / "coords.pkl", loaded.coords)
    else:
        _write_musetalk(avatar_dir, loaded, dest)
    return validate_avatar_dir(dest)


def _copy_folder(frames: list[Path], folder: Path) -> None:
    folder.mkdir()
    for i, src in enumerate(frames):
        shutil.copyfile(src, folder / f"{i:08d}{src.suffix}")


def _write_musetalk(avatar_dir: Path, loaded: LoadedAvatar, dest: Path) -> None:
    material = loaded.musetalk
    if material is None:
        raise invalid(avatar_dir, "has no MuseTalk material: prepare it with `model: musetalk` first")
    width, height = loaded.info.width, loaded.info.height
    (dest / MASK_DIR).mkdir()
    crop_boxes = []
    for i, (mask_path, box) in enumerate(zip(material.mask_paths, material.crop_boxes, strict=True)):
        clipped = clip_box(box, width, height)
        target = dest / MASK_DIR / frame_name(i)
        if clipped == tuple(box):
            shutil.copyfile(mask_path, target)
        else:
            mask = cv2.imread(str(mask_path), cv2.IMREAD_UNCHANGED)
            x1, y1, x2, y2 = box
            cx1, cy1, cx2, cy2 = clipped
            if not cv2.imwrite(str(target), mask[cy1 - y1 : cy2 - y1, cx1 - x1 : cx2 - x1]):
                raise OSError(f"could not write {target}")
        crop_boxes.append(clipped)
    if not face_boxes_fit(material.boxes, crop_boxes):
        raise invalid(avatar_dir, "a MuseTalk face box reaches outside its crop box: LiveTalking cannot blend it")
    _pickle(dest / "coords.pkl", [list(box) for box in material.boxes])  # LiveTalking's v1.5 writes lists
    _pickle(dest / MASK_COORDS, [list(box) for box in crop_boxes])
    shutil.copyfile(avatar_dir / LATENTS, dest / LATENTS)
    info = read_json_object(avatar_dir, AVATAR_INFO)
    info["face_boxes"] = [list(box) for box in material.boxes]  # our importer reads them from here first
    (dest / AVATAR_INFO).write_text(json.dumps(info))


def clip_box(box: Box, width: int, height: int) -> Box:
    """A crop box (x1, y1, x2, y2) intersected with the frame."""
    x1, y1, x2, y2 = (int(v) for v in box)
    return max(0, x1), max(0, y1), min(width, x2), min(height, y2)


def _pickle(path: Path, boxes: list[list[int]]) -> None:
    plain = [[int(v) for v in box] for box in boxes]
    with atomic_file(path) as fh:
        pickle.dump(plain, fh, protocol=4)


def face_boxes_fit(boxes: list[Box], crop_boxes: list[Box]) -> bool:
    """Whether each face box lies inside its crop box (LiveTalking's blend needs it)."""
    faces, crops = np.asarray(boxes), np.asarray(crop_boxes)
    return bool(((faces[:, :2] >= crops[:, :2]) & (faces[:, 2:] <= crops[:, 2:])).all())
