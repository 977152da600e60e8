"""Avatars LiveTalking plays unchanged: the export read back the way LiveTalking's own loaders read it.

``livetalking_*`` below re-implement, step for step, lipku/LiveTalking's ``load_avatar`` of
``avatars/musetalk_avatar.py`` and ``avatars/wav2lip_avatar.py`` (glob of ``*.[jpJP][pnPN]*[gG]`` sorted by
the integer stem, ``cv2.imread``, ``pickle.load`` of the box files, ``torch.load`` of the latents) and their
``paste_back_frame`` (musetalk: ``myutil.get_image_blending``'s numpy slicing and ``cv2.blendLinear``;
wav2lip: ``frame[y1:y2, x1:x2] = resize(face)``). Pickle runs here only on files this test's code wrote.
"""

from __future__ import annotations

import glob
import os
import pickle
import tarfile
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from engines.lipsync.musetalk.avatar import MuseTalkMaterial
from storage.avatar.archive import extract_avatar, pack_avatar
from storage.avatar.layout import FACE_IMGS
from storage.avatar.livetalking import export_livetalking
from storage.avatar.reader import load_avatar, validate_avatar_dir, write_material
from storage.errors import StorageError
from tests.storage.avatar_factory import FRAME_H, FRAME_W, make_avatar_dir
from tests.storage.test_avatar_musetalk import livetalking_musetalk_dir

FACE = [10, 6, 38, 36]  # x1, y1, x2, y2: MuseTalk's face box, inside the 48x40 frame
CROPS = [[3, -1, 45, 41], [4, 0, 44, 40]]  # the first reaches outside the frame (as MuseTalk's often do)


def combined_avatar(root: Path) -> Path:
    """Our avatar prepared for wav2lip and musetalk: wav2lip's coords.pkl, MuseTalk's boxes in avator_info.json."""
    avatar = make_avatar_dir(root, frames=2)
    masks = [np.full((b[3] - b[1], b[2] - b[0]), 255, np.uint8) for b in CROPS]
    material = MuseTalkMaterial(np.array([FACE] * 2), np.array(CROPS), masks, torch.randn(2, 8, 32, 32))
    write_material(avatar, material, {"avatar_id": "av1"})
    return avatar


def _images(folder: str) -> list[np.ndarray]:
    paths = glob.glob(os.path.join(folder, "*.[jpJP][pnPN]*[gG]"))
    paths = sorted(paths, key=lambda x: int(os.path.splitext(os.path.basename(x))[0]))
    return [cv2.imread(p) for p in paths]


def livetalking_musetalk_load(path: Path) -> tuple:
    frames = _images(f"{path}/full_imgs")
    with open(f"{path}/coords.pkl", "rb") as f:
        coords = pickle.load(f)
    latents = torch.load(f"{path}/latents.pt")
    with open(f"{path}/mask_coords.pkl", "rb") as f:
        mask_coords = pickle.load(f)
    return frames, _images(f"{path}/mask"), coords, mask_coords, latents


def livetalking_musetalk_paste(loaded: tuple, pred: np.ndarray, idx: int) -> np.ndarray:
    frames, masks, coords, mask_coords, _ = loaded
    x1, y1, x2, y2 = coords[idx]
    face = cv2.resize(pred.astype(np.uint8), (x2 - x1, y2 - y1))
    body = frames[idx].copy()
    x_s, y_s, x_e, y_e = mask_coords[idx]
    face_large = body[y_s:y_e, x_s:x_e].copy()
    face_large[y1 - y_s : y2 - y_s, x1 - x_s : x2 - x_s] = face
    mask = (cv2.cvtColor(masks[idx], cv2.COLOR_BGR2GRAY) / 255).astype(np.float32)
    body[y_s:y_e, x_s:x_e] = cv2.blendLinear(face_large, body[y_s:y_e, x_s:x_e], mask, 1 - mask)
    return body


def livetalking_wav2lip_paste(path: Path, pred: np.ndarray, idx: int) -> np.ndarray:
    frames, faces = _images(f"{path}/full_imgs"), _images(f"{path}/face_imgs")
    with open(f"{path}/coords.pkl", "rb") as f:
        coords = pickle.load(f)
    assert len(faces) == len(frames) == len(coords)
    y1, y2, x1, x2 = coords[idx]
    frame = frames[idx].copy()
    frame[y1:y2, x1:x2] = cv2.resize(pred.astype(np.uint8), (x2 - x1, y2 - y1))
    return frame


def changed(a: np.ndarray, b: np.ndarray) -> tuple[int, int, int, int]:
    ys, xs = np.nonzero(np.abs(a.astype(int) - b.astype(int)).max(axis=2))
    return int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1


def test_our_combined_avatar_breaks_livetalkings_musetalk_loader(tmp_path: Path) -> None:
    """What the export fixes: wav2lip's (y1, y2, x1, x2) read as (x1, y1, x2, y2) puts faces in the wrong place."""
    loaded = livetalking_musetalk_load(combined_avatar(tmp_path))
    with pytest.raises((ValueError, cv2.error)):  # LiveTalking logs "paste_back_frame error" and drops the frame
        livetalking_musetalk_paste(loaded, np.zeros((256, 256, 3)), 0)


def test_the_musetalk_export_pastes_every_frame_at_musetalks_face_box(tmp_path: Path) -> None:
    out = tmp_path / "mt" / "av1"
    info = export_livetalking(combined_avatar(tmp_path), out, "musetalk")
    assert info.num_frames == 2 and not (out / FACE_IMGS).exists()
    loaded = livetalking_musetalk_load(out)
    assert loaded[2] == [FACE, FACE] and loaded[3] == [[3, 0, 45, 40], [4, 0, 44, 40]]  # clipped to the frame
    assert isinstance(loaded[4], list) and loaded[4][0].shape == (1, 8, 32, 32)
    for idx in range(2):
        pasted = livetalking_musetalk_paste(loaded, np.full((256, 256, 3), 7), idx)
        assert changed(pasted, loaded[0][idx]) == tuple(FACE)  # the face, exactly where MuseTalk's box says
    again = load_avatar(out)  # and we read it back as LiveTalking's musetalk layout
    assert again.musetalk.boxes == [tuple(FACE)] * 2 and again.coords[0] == (6, 36, 10, 38)


def test_the_wav2lip_export_is_read_by_livetalkings_wav2lip_loader(tmp_path: Path) -> None:
    avatar = combined_avatar(tmp_path)
    out = tmp_path / "w2l" / "av1"
    export_livetalking(avatar, out, "wav2lip")
    assert sorted(p.name for p in out.iterdir()) == [
        "coords.pkl",
        "face_imgs",
        "full_imgs",
        "landmarks.npy",
        "meta.json",
    ]
    y1, y2, x1, x2 = load_avatar(avatar).coords[1]
    pasted = livetalking_wav2lip_paste(out, np.full((16, 16, 3), 7), 1)
    assert changed(pasted, cv2.imread(str(out / "full_imgs" / "00000001.png"))) == (x1, y1, x2, y2)


def test_exports_need_the_models_material(tmp_path: Path) -> None:
    with pytest.raises(StorageError, match="no MuseTalk material"):
        export_livetalking(make_avatar_dir(tmp_path / "plain"), tmp_path / "x" / "av1", "musetalk")
    livetalking_made = livetalking_musetalk_dir(tmp_path / "lt")
    with pytest.raises(StorageError, match="no face_imgs"):
        export_livetalking(livetalking_made, tmp_path / "y" / "mt1", "wav2lip")
    export_livetalking(livetalking_made, tmp_path / "z" / "mt1", "musetalk")  # theirs round-trips


def test_a_livetalking_folder_with_an_empty_vid_output_is_accepted(tmp_path: Path) -> None:
    """MuseTalk's realtime_inference (and LiveTalking avatars copied from it) leave an empty vid_output/."""
    avatar = livetalking_musetalk_dir(tmp_path / "src")
    (avatar / "vid_output").mkdir()
    assert validate_avatar_dir(avatar).num_frames == 3  # a hand-placed folder
    tar_path = tmp_path / "mt1.tar"
    with tarfile.open(tar_path, "w") as tar:
        tar.add(avatar, arcname="data/avatars/mt1")
    info = extract_avatar(tar_path, tmp_path / "out")
    assert info.num_frames == 3 and not (tmp_path / "out" / "vid_output").exists()
    (avatar / "vid_output" / "old.mp4").write_bytes(b"x" * 100)  # left-over outputs are skipped too
    with tarfile.open(tmp_path / "with-output.tar", "w") as tar:
        tar.add(avatar, arcname="mt1")
    assert extract_avatar(tmp_path / "with-output.tar", tmp_path / "out2").num_frames == 3
    with tarfile.open(tmp_path / "link.tar", "w") as tar:  # still no links, wherever they are
        link = tarfile.TarInfo("mt1/vid_output/x")
        link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
        tar.addfile(link)
    with pytest.raises(StorageError, match="symlink"):
        extract_avatar(tmp_path / "link.tar", tmp_path / "out3")


def test_exported_tars_unpack_into_livetalkings_data_avatars(tmp_path: Path) -> None:
    out = tmp_path / "mt" / "av1"
    export_livetalking(combined_avatar(tmp_path), out, "musetalk")
    pack_avatar(out, tmp_path / "av1.tar")
    with tarfile.open(tmp_path / "av1.tar") as tar:
        names = tar.getnames()
    assert "av1/coords.pkl" in names and "av1/latents.pt" in names and all(n.startswith("av1") for n in names)
    assert cv2.imread(str(out / "full_imgs" / "00000000.png")).shape[1::-1] == (FRAME_W, FRAME_H)


# ---- the task option and the command -----------------------------------------------------------


def test_preprocess_avatar_also_stores_livetalking_tars(tmp_path: Path, runtime) -> None:  # type: ignore[no-untyped-def]
    from handlers import dispatch
    from tests.media import head_motion, write_video

    frames, _ = head_motion(8, 25.0, 384)
    video = write_video(tmp_path / "talk.mp4", frames, 25.0)
    payload = {"task": "preprocess_avatar", "avatar_id": "a1", "user_id": "u1", "video": video.as_uri()}
    refused = dispatch({**payload, "export_livetalking": ["musetalk"]}, runtime)
    assert refused["error_code"] == "invalid_input" and "`export_livetalking`" in refused["error"]
    result = dispatch({**payload, "export_livetalking": ["wav2lip"], "img_size": 96}, runtime)
    assert "error" not in result, result
    export = result["livetalking"]["wav2lip"]
    assert export["uri"].endswith("/livetalking/u1/wav2lip/a1.tar") and export["bytes"] > 0
    with tarfile.open(export["uri"].removeprefix("file://")) as tar:
        tar.extractall(tmp_path / "data" / "avatars", filter="data")  # what a LiveTalking user does
    pasted = livetalking_wav2lip_paste(tmp_path / "data" / "avatars" / "a1", np.full((96, 96, 3), 7), 3)
    assert pasted.shape == (384, 384, 3)
    plain = dispatch(payload, runtime)
    assert "livetalking" not in plain  # absent unless asked for


def test_avatarctl_export_livetalking_from_the_store(tmp_path: Path, local_settings, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    from typer.testing import CliRunner

    from orchestrator.cli.main import app

    store = Path(local_settings.avatar_store_uri.removeprefix("file://"))
    (store / "avatars" / "u1").mkdir(parents=True)
    pack_avatar(combined_avatar(tmp_path / "made"), store / "avatars" / "u1" / "av1.tar")
    runner = CliRunner()
    folder = runner.invoke(
        app, ["export-livetalking", "av1", "--model", "musetalk", "--user-id", "u1", "--output", str(tmp_path / "lt")]
    )
    assert folder.exit_code == 0, folder.output
    loaded = livetalking_musetalk_load(tmp_path / "lt" / "av1")
    assert changed(livetalking_musetalk_paste(loaded, np.full((256, 256, 3), 7), 0), loaded[0][0]) == tuple(FACE)
    stored = runner.invoke(app, ["export-livetalking", "av1", "--model", "wav2lip", "--user-id", "u1", "--json"])
    assert stored.exit_code == 0, stored.output
    assert (store / "livetalking" / "u1" / "wav2lip" / "av1.tar").is_file()
    missing = runner.invoke(app, ["export-livetalking", "nope", "--model", "wav2lip", "--user-id", "u1"])
    assert missing.exit_code != 0 and "not_found" in missing.output
