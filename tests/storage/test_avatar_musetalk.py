"""MuseTalk material in avatars: LiveTalking's musetalk layout read safely, ours written next to wav2lip's."""

from __future__ import annotations

import json
import pickle
import tarfile
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from engines.lipsync.musetalk.avatar import MuseTalkMaterial
from storage.avatar.archive import extract_avatar, pack_avatar
from storage.avatar.layout import AVATAR_INFO, COORDS, FULL_IMGS, LATENTS, MASK_COORDS, MASK_DIR, frame_name
from storage.avatar.reader import load_avatar, validate_avatar_dir, write_material
from storage.errors import StorageError
from tests.storage.avatar_factory import FRAME_H, FRAME_W, make_avatar_dir

FACE_BOX = [10, 6, 38, 36]  # x1, y1, x2, y2
CROP_BOX = [3, -1, 45, 41]  # 1.5x around the face box: may leave the frame


def livetalking_musetalk_dir(root: Path, frames: int = 3, latents_dtype: torch.dtype = torch.float16) -> Path:
    """What LiveTalking's musetalk genavatar writes (v1.5): lists of boxes, fp16 latents, crop-sized masks."""
    avatar = root / "data" / "avatars" / "mt1"
    (avatar / FULL_IMGS).mkdir(parents=True)
    (avatar / MASK_DIR).mkdir()
    rng = np.random.default_rng(0)
    for i in range(frames):
        cv2.imwrite(str(avatar / FULL_IMGS / frame_name(i)), rng.integers(0, 255, (FRAME_H, FRAME_W, 3), np.uint8))
        mask = np.zeros((CROP_BOX[3] - CROP_BOX[1], CROP_BOX[2] - CROP_BOX[0]), np.uint8)
        mask[25:, 10:30] = 255
        cv2.imwrite(str(avatar / MASK_DIR / frame_name(i)), mask)
    (avatar / COORDS).write_bytes(pickle.dumps([list(FACE_BOX) for _ in range(frames)]))
    (avatar / MASK_COORDS).write_bytes(pickle.dumps([list(CROP_BOX) for _ in range(frames)]))
    torch.save([torch.randn(1, 8, 32, 32).to(latents_dtype) for _ in range(frames)], avatar / LATENTS)
    (avatar / AVATAR_INFO).write_text(json.dumps({"avatar_id": "mt1", "video_path": "x.mp4", "bbox_shift": 0}))
    return avatar


def test_a_livetalking_musetalk_avatar_loads(tmp_path: Path) -> None:
    """Made from LiveTalking's repo root (`tar cf x.tar data/avatars/mt1`): boxes converted, material read."""
    source = livetalking_musetalk_dir(tmp_path / "src")
    tar_path = tmp_path / "mt1.tar"
    with tarfile.open(tar_path, "w") as tar:
        tar.add(source, arcname="data/avatars/mt1")
    info = extract_avatar(tar_path, tmp_path / "out")
    assert info.num_frames == 3
    loaded = load_avatar(tmp_path / "out")
    assert loaded.coords[0] == (6, 36, 10, 38)  # (y1, y2, x1, x2) for the other engines
    assert loaded.face_crop_paths == []
    material = loaded.musetalk
    assert material.boxes[0] == tuple(FACE_BOX) and material.crop_boxes[0] == tuple(CROP_BOX)
    latents = material.latents()
    assert latents.shape == (3, 8, 32, 32) and latents.dtype == torch.float32
    assert [p.name for p in material.mask_paths] == [frame_name(i) for i in range(3)]


class _OpensAFile:
    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self) -> tuple[object, tuple[str, str]]:
        return open, (str(self.path), "w")


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda a, tmp: torch.save([_OpensAFile(tmp / "ran.txt")], a / LATENTS), "not a list of tensors"),
        (lambda a, tmp: torch.save([torch.zeros(1, 8, 32, 32)] * 2, a / LATENTS), "2 latents for 3 frames"),
        (lambda a, tmp: torch.save([torch.zeros(1, 4, 32, 32)] * 3, a / LATENTS), "expected (1, 8, 32, 32)"),
        (lambda a, tmp: torch.save([torch.full((1, 8, 32, 32), float("nan"))] * 3, a / LATENTS), "NaN"),
        (lambda a, tmp: torch.save({"x": 1}, a / LATENTS), "float tensors"),
        (lambda a, tmp: (a / MASK_DIR / frame_name(2)).unlink(), "counts differ"),
        (lambda a, tmp: (a / MASK_COORDS).write_bytes(pickle.dumps([[0, 0, 9, 9]] * 3)), "not the size"),
        (lambda a, tmp: (a / COORDS).write_bytes(pickle.dumps([[0, 0, 99, 30]] * 3)), "outside the"),
        (lambda a, tmp: (a / MASK_COORDS).write_bytes(b"cos\nsystem\n(S'true'\ntR."), "not a list of 4-integer"),
    ],
)
def test_broken_or_hostile_material_is_an_invalid_avatar(tmp_path: Path, damage, message: str) -> None:
    avatar = livetalking_musetalk_dir(tmp_path)
    damage(avatar, tmp_path)
    with pytest.raises(StorageError) as err:
        validate_avatar_dir(avatar)
    assert err.value.code == "invalid_avatar" and message in err.value.message
    assert not (tmp_path / "ran.txt").exists()  # weights_only: the pickled call never ran


def test_our_avatar_carries_musetalk_material_next_to_wav2lip_files(tmp_path: Path) -> None:
    """Packed and unpacked: wav2lip's coords unchanged, MuseTalk boxes from avator_info.json, fp16 latents."""
    avatar = make_avatar_dir(tmp_path / "src", frames=3)
    latents = torch.randn(3, 8, 32, 32)
    masks = [np.full((42, 42), 200, np.uint8)] * 3
    material = MuseTalkMaterial(np.array([FACE_BOX] * 3), np.array([CROP_BOX[:1] + [0, 45, 42]] * 3), masks, latents)
    write_material(avatar, material, {"avatar_id": "av1", "bbox_shift": 0, "extra_margin": 10})
    pack_avatar(avatar, tmp_path / "av1.tar")
    extract_avatar(tmp_path / "av1.tar", tmp_path / "out")
    loaded = load_avatar(tmp_path / "out")
    assert loaded.coords == load_avatar(avatar).coords and len(loaded.face_crop_paths) == 3
    assert loaded.musetalk.boxes == [tuple(FACE_BOX)] * 3
    torch.testing.assert_close(loaded.musetalk.latents(), latents.half().float())
    info = json.loads((tmp_path / "out" / AVATAR_INFO).read_text())
    assert info["version"] == "v15" and info["extra_margin"] == 10
    saved = torch.load(tmp_path / "out" / LATENTS, weights_only=True)  # LiveTalking's list of (1, 8, 32, 32)
    assert isinstance(saved, list) and saved[0].shape == (1, 8, 32, 32)
