"""preprocess_avatar end to end through handlers.dispatch: generated videos, real file:// and S3 stores."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest

import handlers
from handlers.runtime import WorkerRuntime
from handlers.settings import Settings
from storage.avatar.archive import unpack_avatar
from storage.avatar.cache import open_cache
from storage.avatar.layout import image_size
from storage.avatar.reader import load_avatar, validate_avatar_dir
from tests.media import coffee_bgr, head_motion, write_video

FPS = 25


@pytest.fixture(scope="module")
def talking_head(tmp_path_factory) -> tuple[Path, list[np.ndarray], list[tuple[float, float]]]:
    """3 s of the astronaut with small head motion, 512x512 at 25 fps."""
    frames, centres = head_motion(75, FPS, 512)
    return write_video(tmp_path_factory.mktemp("video") / "talk.mp4", frames, FPS), frames, centres


@pytest.fixture(scope="module")
def cutaway(tmp_path_factory) -> tuple[Path, list[tuple[float, float]]]:
    """40 frames: the face for 20, a faceless shot for 5 (frames 20-24), the face again for 15."""
    frames, centres = head_motion(40, FPS, 512)
    coffee = cv2.resize(coffee_bgr(), (512, 512), interpolation=cv2.INTER_AREA)
    frames[20:25] = [coffee] * 5
    return write_video(tmp_path_factory.mktemp("video") / "cutaway.mp4", frames, FPS), centres


def payload(video: Path | str, **extra) -> dict:
    uri = video.as_uri() if isinstance(video, Path) else video
    return {"task": "preprocess_avatar", "user_id": "u1", "avatar_id": "a1", "video": uri, **extra}


def store_files(settings: Settings) -> list[Path]:
    root = Path(settings.avatar_store_uri.removeprefix("file://"))
    return [p for p in root.rglob("*") if p.is_file()]


def cached_avatar(settings: Settings, owner: str) -> Path:
    path = open_cache(settings.avatar_local_path).current_path(owner)
    assert path is not None, f"{owner} is not in the local cache"
    return path


def assert_nothing_written(settings: Settings, task_tmp: Path) -> None:
    assert store_files(settings) == []
    assert not (settings.avatar_local_path / "a1").exists()
    assert not list(settings.avatar_local_path.rglob("coords.pkl"))
    assert list(task_tmp.iterdir()) == []


def test_training_video_becomes_a_livetalking_avatar(
    talking_head, local_settings, task_tmp, tmp_path, runtime: WorkerRuntime
):
    video, source_frames, centres = talking_head
    events: list[tuple[str, float]] = []

    result = handlers.dispatch(payload(video), runtime, lambda stage, f: events.append((stage, f)))

    assert "error" not in result, result
    assert (result["num_frames"], result["fps"], result["img_size"]) == (75, 25.0, 256)
    assert result["engine"]["face"] == "dlib_hog" and result["engine"]["tracking"]["acquisitions"] >= 1
    for stage in ("fetch", "decode", "track", "detect", "landmarks", "crop_write", "tar", "upload", "total"):
        assert result["timings_ms"][stage] >= 0
    stages = [s for s, _ in events]
    assert stages[0] == "fetch" and stages[-1] == "done" and stages.count("frames") >= 8
    assert [f for _, f in events] == sorted(f for _, f in events) and events[-1][1] == 1.0

    tar = store_files(local_settings)
    assert [p.relative_to(tar[0].parents[2]).as_posix() for p in tar] == ["avatars/u1/a1.tar"]
    assert result["avatar"]["uri"].endswith("/avatars/u1/a1.tar") and result["avatar"]["bytes"] == tar[0].stat().st_size

    avatar = load_avatar(unpack_avatar(tar[0], tmp_path / "unpacked", "a1"))
    assert len(avatar.coords) == len(avatar.full_frame_paths) == len(avatar.face_crop_paths) == 75
    assert avatar.landmarks.shape == (75, 68, 2) and avatar.landmarks.dtype == np.float32
    for (y1, y2, x1, x2), (cx, cy) in zip(avatar.coords, centres, strict=True):
        assert y1 < cy < y2 and x1 < cx < x2
        assert type(y1) is int and 60 < x2 - x1 < 140 and 60 < y2 - y1 < 150
    assert all(image_size(p) == (256, 256) for p in avatar.face_crop_paths)
    for i in (0, 40, 74):  # each full frame is the source frame of the same index
        full = cv2.imread(str(avatar.full_frame_paths[i]))
        assert cv2.PSNR(full, source_frames[i]) > 30
    y1, y2, x1, x2 = avatar.coords[40]
    crop = cv2.resize(cv2.imread(str(avatar.full_frame_paths[40]))[y1:y2, x1:x2], (256, 256))
    assert np.array_equal(crop, cv2.imread(str(avatar.face_crop_paths[40])))

    meta = avatar.meta
    assert (meta["fps"], meta["num_frames"], meta["img_size"], meta["pads"]) == (25, 75, 256, [0, 10, 0, 0])
    assert meta["detector"] == "dlib_hog" and meta["generator"]["package"] == "serverless-talking-head"
    assert meta["source_video"]["codec"] == "h264" and meta["nosmooth"] is False
    cached = validate_avatar_dir(cached_avatar(local_settings, result["avatar"]["uri"]))
    assert cached.num_frames == 75 and cached.img_size == 256
    assert list(task_tmp.iterdir()) == []


def test_no_face_is_refused_and_nothing_is_written(tmp_path, local_settings, task_tmp, runtime: WorkerRuntime):
    coffee = cv2.resize(coffee_bgr(), (320, 216))
    video = write_video(tmp_path / "coffee.mp4", [coffee] * 25, FPS)

    result = handlers.dispatch(payload(video), runtime)

    assert result == {"error": "No face detected in video", "error_code": "no_face"}
    assert_nothing_written(local_settings, task_tmp)


def test_short_face_gap_is_filled(cutaway, monkeypatch, local_settings, task_tmp, tmp_path, runtime: WorkerRuntime):
    video, centres = cutaway
    monkeypatch.setenv("MAX_FACE_GAP_FRAMES", "8")

    result = handlers.dispatch(payload(video, img_size=96, nosmooth=True), runtime.with_settings(Settings()))

    assert "error" not in result, result
    assert result["num_frames"] == 40 and result["engine"]["tracking"]["filled_frames"] == 5
    avatar = load_avatar(cached_avatar(local_settings, result["avatar"]["uri"]))
    assert image_size(avatar.face_crop_paths[0]) == (96, 96)
    before, after = np.array(centres[19]), np.array(centres[25])
    for i in range(19, 26):  # the gap's boxes are interpolated between its neighbours
        y1, y2, x1, x2 = avatar.coords[i]
        cx, cy = before + (after - before) * (i - 19) / 6
        assert y1 < cy < y2 and x1 < cx < x2


def test_cache_install_failure_keeps_the_uploaded_avatar(
    cutaway, monkeypatch, local_settings, task_tmp, tmp_path, caplog, runtime: WorkerRuntime
):
    video, _ = cutaway
    monkeypatch.setenv("MAX_FACE_GAP_FRAMES", "8")
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("the avatar cache path is a file")
    monkeypatch.setenv("AVATAR_LOCAL_PATH", str(blocker))

    result = handlers.dispatch(payload(video), runtime.with_settings(Settings()))

    assert "error" not in result, result  # the TAR in the store is the result; the cache is a cache
    assert "is in the store (avatars/u1/a1.tar) but not in the local cache" in caplog.text
    assert [p.name for p in store_files(local_settings)] == ["a1.tar"] and list(task_tmp.iterdir()) == []


def test_long_face_gap_names_the_frames(cutaway, monkeypatch, local_settings, task_tmp, runtime: WorkerRuntime):
    video, _ = cutaway
    monkeypatch.setenv("MAX_FACE_GAP_FRAMES", "4")

    result = handlers.dispatch(payload(video), runtime.with_settings(Settings()))

    assert result["error_code"] == "face_lost"
    assert "No face in frames 20-24" in result["error"] and "MAX_FACE_GAP_FRAMES" in result["error"]
    assert_nothing_written(local_settings, task_tmp)


def test_limits_refuse_before_decoding(tmp_path, monkeypatch, local_settings, task_tmp, runtime: WorkerRuntime):
    frames, _ = head_motion(50, FPS, 64)
    video = write_video(tmp_path / "small.mp4", frames, FPS)  # 2 s, 64x64

    monkeypatch.setenv("MAX_VIDEO_SECONDS", "1.5")
    too_long = handlers.dispatch(payload(video), runtime.with_settings(Settings()))
    assert too_long["error_code"] == "video_too_long" and "2.0 s" in too_long["error"]

    monkeypatch.setenv("MAX_VIDEO_SECONDS", "60")
    monkeypatch.setenv("MAX_VIDEO_SIDE", "32")
    too_big = handlers.dispatch(payload(video), runtime.with_settings(Settings()))
    assert too_big["error_code"] == "video_too_large" and "64x64" in too_big["error"]

    monkeypatch.setenv("MAX_VIDEO_BYTES", "1000")
    too_heavy = handlers.dispatch(payload(video), runtime.with_settings(Settings()))
    assert too_heavy["error_code"] == "video_too_large" and "MAX_VIDEO_BYTES" in too_heavy["error"]
    assert_nothing_written(local_settings, task_tmp)


def test_undecodable_video_and_bad_pads(talking_head, tmp_path, local_settings, task_tmp, runtime: WorkerRuntime):
    bogus = tmp_path / "bogus.mp4"
    bogus.write_bytes(b"\x00\x00\x00\x18ftypmp42" + b"\x00" * 200)
    assert handlers.dispatch(payload(bogus), runtime)["error_code"] == "invalid_video"

    video, _, _ = talking_head
    squeezed = handlers.dispatch(payload(video, pads=[-200, -200, 0, 0]), runtime)
    assert squeezed["error_code"] == "invalid_pads" and "frame 0" in squeezed["error"]
    assert_nothing_written(local_settings, task_tmp)


def test_30fps_video_from_s3(s3_bucket, tmp_path, local_settings, task_tmp, runtime: WorkerRuntime):
    import boto3

    from storage import open_store

    frames, _ = head_motion(60, 30.0, 512)
    video = write_video(tmp_path / "talk30.mp4", frames, 30)
    store = open_store(s3_bucket, local_settings.storage)
    store.put(video, "training-videos/u1/talk30.mp4")

    request = payload(f"{s3_bucket}/training-videos/u1/talk30.mp4", store=s3_bucket)
    result = handlers.dispatch(request, runtime)

    assert "error" not in result, result
    assert result["num_frames"] == 50  # 2 s at 25 fps
    assert result["avatar"]["uri"] == f"{s3_bucket}/avatars/u1/a1.tar"
    head = boto3.client("s3", endpoint_url=local_settings.storage.s3_endpoint_url).head_object(
        Bucket=s3_bucket.removeprefix("s3://"), Key="avatars/u1/a1.tar"
    )
    assert head["ContentLength"] == result["avatar"]["bytes"]
    meta = json.loads((cached_avatar(local_settings, result["avatar"]["uri"]) / "meta.json").read_text())
    assert meta["num_frames"] == 50 and meta["source_video"]["fps"] == 30.0
