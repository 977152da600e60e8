"""Engine selection: auto's order, explicit engines without weights, fallback on a broken file, and
Wav2Lip end to end through handlers.dispatch with a generated checkpoint."""

from __future__ import annotations

import logging
from pathlib import Path

import av
import numpy as np
import pytest

from engines import weights
from engines.codecs.audio import write_wav
from engines.errors import EngineError
from engines.lipsync import pingpong_index
from handlers import dispatch, engine_choice
from handlers.errors import TaskError
from handlers.runtime import WorkerRuntime
from handlers.settings import Settings
from storage.avatar.archive import pack_avatar
from storage.avatar.layout import AvatarWriter
from tests.engines.wav2lip_fixtures import FACE_BOX_256, small_avatar, speech_like, write_checkpoint

USER, AVATAR = "user-w2l", "avatar-w2l"


@pytest.fixture(autouse=True)
def no_volume_mounts(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Only the test's weights dir is searched, even on a machine whose /weights holds real files."""
    monkeypatch.setattr(weights, "MOUNT_DIRS", (tmp_path / "no-mount",))


@pytest.fixture(scope="module")
def checkpoint96(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_checkpoint(tmp_path_factory.mktemp("ckpt") / "my_wav2lip.pth", "wav2lip96")


def with_env(monkeypatch: pytest.MonkeyPatch, **env: str) -> Settings:
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    return Settings()


def test_auto_without_weights_is_the_cpu_engine(local_settings: Settings, runtime: WorkerRuntime) -> None:
    name, reason = engine_choice.choose("auto", runtime)
    assert name == "viseme_warp"
    assert "no wav2lip256 weights" in reason and "no wav2lip96 weights" in reason
    engine, info = engine_choice.lipsync_engine("auto", runtime)
    assert engine.name == info["name"] == "viseme_warp"


def test_explicit_engine_without_weights_names_file_and_command(
    local_settings: Settings, runtime: WorkerRuntime
) -> None:
    with pytest.raises(TaskError) as err:
        engine_choice.lipsync_engine("wav2lip96", runtime)
    assert err.value.code == "engine_unavailable"
    message = err.value.message
    assert "`wav2lip_gan.pth` or `wav2lip.pth`" in message
    assert f"fetch-weights wav2lip96_gan --dest {local_settings.weights_dir}" in message
    assert "WAV2LIP96_CHECKPOINT" in message


def test_checkpoint_setting_pointing_nowhere(
    local_settings: Settings, monkeypatch: pytest.MonkeyPatch, runtime: WorkerRuntime
) -> None:
    settings = with_env(monkeypatch, WAV2LIP96_CHECKPOINT="/nowhere/w.pth")
    with pytest.raises(TaskError, match="WAV2LIP96_CHECKPOINT is set to `/nowhere/w.pth`") as err:
        engine_choice.choose("wav2lip96", runtime.with_settings(settings))
    assert err.value.code == "engine_unavailable"
    name, reason = engine_choice.choose("auto", runtime.with_settings(settings))
    assert name == "viseme_warp" and "WAV2LIP96_CHECKPOINT `/nowhere/w.pth` does not exist" in reason


def test_auto_prefers_wav2lip256_only_with_cuda(
    local_settings: Settings, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, runtime: WorkerRuntime
) -> None:
    (tmp_path / "w256.pth").write_bytes(b"not loaded by choose")
    (tmp_path / "w96.pth").write_bytes(b"not loaded by choose")
    settings = with_env(
        monkeypatch, WAV2LIP256_CHECKPOINT=str(tmp_path / "w256.pth"), WAV2LIP96_CHECKPOINT=str(tmp_path / "w96.pth")
    )
    monkeypatch.setattr(engine_choice, "cuda_available", lambda: True)
    assert engine_choice.choose("auto", runtime.with_settings(settings))[0] == "wav2lip256"
    monkeypatch.setattr(engine_choice, "cuda_available", lambda: False)
    assert engine_choice.choose("auto", runtime.with_settings(settings))[0] == "wav2lip96"


def test_broken_manifest_file_falls_back_in_auto_and_errors_when_explicit(
    local_settings: Settings, caplog: pytest.LogCaptureFixture, runtime: WorkerRuntime
) -> None:
    local_settings.weights_dir.mkdir(parents=True)
    (local_settings.weights_dir / "wav2lip_gan.pth").write_bytes(b"truncated download")
    assert engine_choice.choose("auto", runtime)[0] == "wav2lip96"  # present: auto will try it
    with caplog.at_level(logging.WARNING, logger="handlers.engine_choice"):
        engine, info = engine_choice.lipsync_engine("auto", runtime)
    assert engine.name == "viseme_warp"
    assert any("wav2lip96 failed to load (checksum_mismatch" in r.getMessage() for r in caplog.records)
    assert "wav2lip96 failed to load (checksum_mismatch)" in info["reason"]
    with pytest.raises(EngineError) as err:
        engine_choice.lipsync_engine("wav2lip96", runtime)
    assert err.value.code == "checksum_mismatch"
    described = engine_choice.describe(runtime)
    assert described["engine"] == "viseme_warp"
    assert described["weights"][0]["licence"].startswith("Non-commercial")
    assert described["weights"][0]["verified"] is False
    assert described["weights"][0]["load_error"] == "checksum_mismatch"
    assert "Non-commercial" in described["licence_notice"]


def test_corrupt_user_checkpoint(
    local_settings: Settings, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, runtime: WorkerRuntime
) -> None:
    (tmp_path / "bad.pth").write_bytes(b"not a checkpoint at all")
    settings = with_env(monkeypatch, WAV2LIP96_CHECKPOINT=str(tmp_path / "bad.pth"))
    with pytest.raises(EngineError) as err:
        engine_choice.lipsync_engine("wav2lip96", runtime.with_settings(settings))
    assert err.value.code == "invalid_checkpoint"
    assert engine_choice.lipsync_engine("auto", runtime.with_settings(settings))[0].name == "viseme_warp"


def test_user_checkpoint_is_loaded_once_and_described(
    local_settings: Settings, monkeypatch: pytest.MonkeyPatch, checkpoint96: Path, runtime: WorkerRuntime
) -> None:
    settings = with_env(monkeypatch, WAV2LIP96_CHECKPOINT=str(checkpoint96))
    engine, info = engine_choice.lipsync_engine("auto", runtime.with_settings(settings))
    again, _ = engine_choice.lipsync_engine("wav2lip96", runtime.with_settings(settings))
    assert engine is again and engine.name == "wav2lip96"
    assert info["weights"] == "my_wav2lip.pth" and info["reason"].startswith("auto: wav2lip96 weights found")
    described = engine_choice.describe(runtime.with_settings(settings))
    assert described["engine"] == "wav2lip96"
    [found] = described["weights"]
    assert found["origin"] == "WAV2LIP96_CHECKPOINT" and found["verified"] is None
    assert "licence_notice" not in described


# ---- end to end ---------------------------------------------------------------------------------


@pytest.fixture
def avatar_in_store(local_settings: Settings, tmp_path: Path) -> Path:
    """A small 256-px avatar (96-px face crops) as a TAR in the file:// store."""
    avatar = small_avatar(frames=8, crop_size=96)
    writer = AvatarWriter(tmp_path / "build" / AVATAR)
    for i, (frame, crop) in enumerate(zip(avatar.frames, avatar.face_crops, strict=True)):
        writer.write_frame(i, frame, crop)
    writer.write_tables(avatar.coords)
    store = Path(local_settings.avatar_store_uri.removeprefix("file://"))
    (store / "avatars" / USER).mkdir(parents=True)
    pack_avatar(writer.path, store / "avatars" / USER / f"{AVATAR}.tar")
    return store


def test_generate_video_with_wav2lip96_end_to_end(
    local_settings: Settings,
    monkeypatch: pytest.MonkeyPatch,
    checkpoint96: Path,
    avatar_in_store: Path,
    tmp_path: Path,
    runtime: WorkerRuntime,
) -> None:
    settings = with_env(monkeypatch, WAV2LIP96_CHECKPOINT=str(checkpoint96), VIDEO_CRF="10")
    wav = write_wav(tmp_path / "speech.wav", speech_like(0.8, silence_s=0.4), 16000)
    payload = {"task": "generate_video", "user_id": USER, "avatar_id": AVATAR, "audio": wav.as_uri()}
    result = dispatch({**payload, "engine": "wav2lip96"}, runtime.with_settings(settings))
    assert "error" not in result, result
    assert result["engine"]["name"] == "wav2lip96" and result["engine"]["weights"] == "my_wav2lip.pth"
    assert result["num_frames"] == 30 and (result["width"], result["height"]) == (256, 256)
    video = avatar_in_store / "generated-videos" / USER / f"{result['video_id']}.mp4"
    with av.open(str(video)) as container:
        frames = [f.to_ndarray(format="bgr24") for f in container.decode(video=0)]
    assert len(frames) == 30
    source = small_avatar(frames=8, crop_size=96).frames
    y1, y2, x1, x2 = FACE_BOX_256
    mouth = (slice(y1 + (y2 - y1) * 2 // 3, y2 - 4), slice(x1 + 10, x2 - 10))

    def mouth_change(i: int) -> float:
        return float(np.abs(frames[i][mouth].astype(int) - source[pingpong_index(i, 8)][mouth].astype(int)).mean())

    # Frame i's mel window covers [0.04 i, 0.04 i + 0.2) s: frames 0-5 lie in the 0.4 s of silence.
    assert max(mouth_change(i) for i in range(6)) < 4.0  # the original frames, up to the codec
    assert min(mouth_change(i) for i in range(6, 30)) > 10.0  # the model's mouth (random weights)


def test_dispatch_with_an_unavailable_engine_uploads_nothing(
    local_settings: Settings, avatar_in_store: Path, runtime: WorkerRuntime
) -> None:
    payload = {"task": "generate_video", "user_id": USER, "avatar_id": AVATAR, "text": "hi", "engine": "wav2lip256"}
    result = dispatch(payload, runtime)
    assert result["error_code"] == "engine_unavailable" and "`wav2lip256.pth`" in result["error"]
    assert not (avatar_in_store / "generated-videos").exists()


@pytest.mark.cuda
def test_auto_on_a_real_cuda_device_loads_wav2lip256_there_in_fp16(
    local_settings: Settings, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, runtime: WorkerRuntime
) -> None:
    w256 = write_checkpoint(tmp_path / "w256.pth", "wav2lip256")
    w96 = write_checkpoint(tmp_path / "w96.pth", "wav2lip96")
    settings = with_env(monkeypatch, WAV2LIP256_CHECKPOINT=str(w256), WAV2LIP96_CHECKPOINT=str(w96))
    cuda_runtime = runtime.with_settings(settings)
    engine, info = engine_choice.lipsync_engine("auto", cuda_runtime)
    assert info["name"] == "wav2lip256" and info["device"] == "cuda" and info["precision"] == "float16"
    health = dispatch({"task": "health"}, cuda_runtime)
    assert health["device"]["type"] == "cuda" and health["device"]["name"]
    assert health["tasks"]["generate_video"]["engine"] == "wav2lip256" and health["tasks"]["generate_video"]["cuda"]
