"""Tiny avatar directories and TARs for storage tests (a few frames of small generated PNGs)."""

from __future__ import annotations

import io
import pickle
import tarfile
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np

from storage.avatar.layout import COORDS, FACE_IMGS, FULL_IMGS, AvatarWriter, frame_name

FRAME_W, FRAME_H, FACE_SIZE = 48, 40, 16


def make_avatar_dir(root: Path, avatar_id: str = "av1", frames: int = 3, landmarks: bool = True) -> Path:
    """An avatar directory with ``frames`` distinct frames, coords, and optionally landmarks and meta."""
    avatar = AvatarWriter(root / avatar_id)
    rng = np.random.default_rng(frames)
    for i in range(frames):
        full = rng.integers(0, 255, (FRAME_H, FRAME_W, 3), dtype=np.uint8)
        avatar.write_frame(i, full, cv2.resize(full[4:36, 8:40], (FACE_SIZE, FACE_SIZE)))
    coords = [(4 + i, 36, 8, 40 - i) for i in range(frames)]
    if landmarks:
        avatar.write_tables(coords, rng.uniform(0, 40, (frames, 68, 2)), {"fps": 25, "source": "test"})
    else:
        avatar.write_tables(coords)
    return avatar.path


def add_bytes(tar: tarfile.TarFile, name: str, data: bytes, **attrs: object) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    for key, value in attrs.items():
        setattr(info, key, value)
    tar.addfile(info, io.BytesIO(data))


def write_tar(path: Path, build: Callable[[tarfile.TarFile], None]) -> Path:
    with tarfile.open(path, "w", format=tarfile.GNU_FORMAT) as tar:
        build(tar)
    return path


def livetalking_tar(path: Path, frames: int = 2, prefix: str = "./") -> Path:
    """A TAR as upstream tooling makes it: numpy int64 coords, entries under ``prefix`` (``./`` or a folder)."""
    full = cv2.imencode(".png", np.full((FRAME_H, FRAME_W, 3), 90, np.uint8))[1].tobytes()
    face = cv2.imencode(".png", np.full((FACE_SIZE, FACE_SIZE, 3), 30, np.uint8))[1].tobytes()
    coords = [tuple(np.int64(v) for v in (2, 30, 3, 33)) for _ in range(frames)]

    def build(tar: tarfile.TarFile) -> None:
        if prefix.startswith("./"):  # `tar -C dir .` starts with the root folder itself
            add_bytes(tar, "./", b"", type=tarfile.DIRTYPE)
        add_bytes(tar, f"{prefix}{COORDS}", pickle.dumps(coords, protocol=2))
        for i in range(frames):
            add_bytes(tar, f"{prefix}{FULL_IMGS}/{frame_name(i)}", full)
            add_bytes(tar, f"{prefix}{FACE_IMGS}/{frame_name(i)}", face)

    return write_tar(path, build)
