"""MuseTalk end to end through handlers.dispatch, on tiny random weights in the weights folder's musetalk/.

An avatar prepared with ``models: ["musetalk"]``, a LiveTalking-made musetalk avatar TAR, an avatar
without MuseTalk material; auto's choice (CUDA only) and the licence note in health.
"""

from __future__ import annotations

import json
import logging
import tarfile
from pathlib import Path

import av
import numpy as np
import pytest

pytest.importorskip("diffusers")

from engines import weights  # noqa: E402
from engines.codecs.audio import write_wav  # noqa: E402
from handlers import dispatch, engine_choice  # noqa: E402
from handlers.runtime import WorkerRuntime  # noqa: E402
from handlers.settings import Settings  # noqa: E402
from storage.avatar.layout import AVATAR_INFO, COORDS, FACE_IMGS, LATENTS, MASK_COORDS, MASK_DIR  # noqa: E402
from tests.engines.musetalk_fixtures import write_models  # noqa: E402
from tests.engines.wav2lip_fixtures import speech_like  # noqa: E402
from tests.media import head_motion, write_video  # noqa: E402
from tests.storage.test_avatar_musetalk import livetalking_musetalk_dir  # noqa: E402

USER = "user-mt"


@pytest.fixture(autouse=True)
def no_volume_mounts(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(weights, "MOUNT_DIRS", (tmp_path / "no-mount",))


@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_models(tmp_path_factory.mktemp("weights") / "musetalk", seed=7)


@pytest.fixture
def musetalk_weights(local_settings: Settings, tiny_models: Path) -> Path:
    local_settings.weights_dir.mkdir(parents=True, exist_ok=True)
    (local_settings.weights_dir / "musetalk").symlink_to(tiny_models, target_is_directory=True)
    return local_settings.weights_dir


@pytest.fixture(scope="module")
def face_video(tmp_path_factory: pytest.TempPathFactory) -> Path:
    frames, _ = head_motion(8, 25, 512)
    return write_video(tmp_path_factory.mktemp("video") / "face.mp4", frames, 25)


def decode(path: Path) -> list[np.ndarray]:
    with av.open(str(path)) as container:
        return [f.to_ndarray(format="bgr24") for f in container.decode(video=0)]


def generate(runtime: WorkerRuntime, tmp_path: Path, avatar_id: str, seconds: float = 0.4) -> dict:
    wav = write_wav(tmp_path / "speech.wav", speech_like(seconds), 16000)
    payload = {"task": "generate_video", "user_id": USER, "avatar_id": avatar_id, "audio": wav.as_uri()}
    return dispatch({**payload, "engine": "musetalk"}, runtime)


def store_of(settings: Settings) -> Path:
    return Path(settings.avatar_store_uri.removeprefix("file://"))


def test_preprocess_with_model_musetalk_then_generate(
    local_settings: Settings, musetalk_weights: Path, face_video: Path, tmp_path: Path, runtime: WorkerRuntime
) -> None:
    payload = {"task": "preprocess_avatar", "user_id": USER, "avatar_id": "prepared", "video": face_video.as_uri()}
    result = dispatch({**payload, "model": "musetalk", "bbox_shift": 3, "extra_margin": 12}, runtime)
    assert "error" not in result, result
    assert result["models"] == ["wav2lip", "musetalk"]
    with tarfile.open(store_of(local_settings) / "avatars" / USER / "prepared.tar") as tar:
        names = {m.name.split("/", 1)[1] for m in tar.getmembers() if "/" in m.name.strip("/")}
    assert {COORDS, LATENTS, MASK_COORDS, AVATAR_INFO, f"{MASK_DIR}/00000007.png", f"{FACE_IMGS}/00000007.png"} <= names
    rendered = generate(runtime, tmp_path, "prepared")
    assert "error" not in rendered, rendered
    assert rendered["engine"]["name"] == "musetalk" and rendered["num_frames"] == 10
    assert len(decode(store_of(local_settings) / "generated-videos" / USER / f"{rendered['video_id']}.mp4")) == 10


def test_a_livetalking_musetalk_avatar_renders(
    local_settings: Settings, musetalk_weights: Path, tmp_path: Path, runtime: WorkerRuntime
) -> None:
    source = livetalking_musetalk_dir(tmp_path / "lt", frames=3)
    folder = store_of(local_settings) / "avatars" / USER
    folder.mkdir(parents=True)
    with tarfile.open(folder / "lt1.tar", "w") as tar:
        tar.add(source, arcname="data/avatars/lt1")
    result = generate(runtime, tmp_path, "lt1", seconds=0.2)
    assert "error" not in result, result
    assert result["num_frames"] == 5 and (result["width"], result["height"]) == (48, 40)


def test_an_avatar_without_material_is_prepared_at_load_with_a_note(
    local_settings: Settings,
    musetalk_weights: Path,
    face_video: Path,
    tmp_path: Path,
    runtime: WorkerRuntime,
    caplog: pytest.LogCaptureFixture,
) -> None:
    payload = {"task": "preprocess_avatar", "user_id": USER, "avatar_id": "plain", "video": face_video.as_uri()}
    assert "error" not in dispatch(payload, runtime)
    with caplog.at_level(logging.INFO, logger="engines.lipsync.musetalk.engine"):
        result = generate(runtime, tmp_path, "plain")
    assert "error" not in result, result
    assert any("has no MuseTalk material" in r.getMessage() for r in caplog.records)
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="engines.lipsync.musetalk.engine"):
        assert "error" not in generate(runtime, tmp_path, "plain")
    assert not any("has no MuseTalk material" in r.getMessage() for r in caplog.records)  # kept for the version


def test_auto_prefers_musetalk_with_cuda_and_health_notes_licences(
    local_settings: Settings, musetalk_weights: Path, monkeypatch: pytest.MonkeyPatch, runtime: WorkerRuntime
) -> None:
    monkeypatch.setattr(engine_choice, "cuda_available", lambda: False)
    name, reason = engine_choice.choose("auto", runtime)
    assert name == "viseme_warp" and "musetalk weights found but no CUDA device" in reason
    (musetalk_weights / "wav2lip_gan.pth").write_bytes(b"not loaded by choose")
    assert engine_choice.choose("auto", runtime)[0] == "wav2lip96"
    monkeypatch.setattr(engine_choice, "cuda_available", lambda: True)
    assert engine_choice.choose("auto", runtime)[0] == "musetalk"  # preferred over wav2lip when both can run
    described = engine_choice.describe(runtime)
    assert described["commercial_use"] == {"musetalk": True, "wav2lip96": False}
    json.dumps(described)


def test_explicit_musetalk_without_weights_names_the_fetch_command(
    local_settings: Settings, runtime: WorkerRuntime
) -> None:
    payload = {"task": "generate_video", "user_id": USER, "avatar_id": "x", "text": "hi", "engine": "musetalk"}
    result = dispatch(payload, runtime)
    assert result["error_code"] == "engine_unavailable" and "fetch-weights musetalk" in result["error"]
    refused = dispatch(
        {"task": "preprocess_avatar", "user_id": USER, "avatar_id": "y", "video": "file:///x.mp4", "model": "musetalk"},
        runtime,
    )
    assert refused["error_code"] == "engine_unavailable"  # refused before the video is fetched
