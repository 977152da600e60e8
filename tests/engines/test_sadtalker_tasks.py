"""generate_video with ``engine: sadtalker`` through handlers.dispatch, the auto order, and health.

Random weights in the official layout (SADTALKER_DIR, or WEIGHTS_DIR/sadtalker for the manifest) check the
plumbing end to end; the networks render at SADTALKER_RENDER_SIZE=128 to keep the CPU cost low.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import av
import cv2
import numpy as np
import pytest

from engines import weights
from engines.codecs.audio import write_wav
from handlers import dispatch, engine_choice
from handlers.runtime import WorkerRuntime
from tests.media import astronaut_bgr, tone

USER = "u1"


@pytest.fixture
def st_runtime(runtime: WorkerRuntime, sadtalker_root: Path) -> WorkerRuntime:
    settings = runtime.settings.model_copy(update={"sadtalker_dir": sadtalker_root, "sadtalker_render_size": 128})
    return runtime.with_settings(settings)


@pytest.fixture
def portrait(tmp_path: Path) -> Path:
    path = tmp_path / "portrait.png"
    cv2.imwrite(str(path), astronaut_bgr(320))
    return path


def frames_of(uri: str) -> tuple[list[np.ndarray], int]:
    with av.open(uri.removeprefix("file://")) as container:
        return [f.to_ndarray(format="bgr24") for f in container.decode(video=0)], len(container.streams.audio)


def test_explicit_sadtalker_without_weights_names_the_files_and_the_fetch(
    runtime: WorkerRuntime, portrait: Path
) -> None:
    request = {
        "task": "generate_video",
        "user_id": USER,
        "image": portrait.as_uri(),
        "text": "Hi.",
        "engine": "sadtalker",
    }
    result = dispatch(request, runtime)
    assert result["error_code"] == "engine_unavailable", result
    assert "sadtalker/checkpoints/SadTalker_V0.0.2_256.safetensors" in result["error"]
    assert "fetch-weights sadtalker" in result["error"] and "SADTALKER_DIR" in result["error"]


def test_sadtalker_animates_images_not_stored_avatars(st_runtime: WorkerRuntime) -> None:
    request = {"task": "generate_video", "user_id": USER, "avatar_id": "a1", "text": "Hi.", "engine": "sadtalker"}
    result = dispatch(request, st_runtime)
    assert result["error_code"] == "engine_unavailable" and "`image`" in result["error"]


def test_generate_video_from_image_and_audio(st_runtime: WorkerRuntime, portrait: Path, tmp_path: Path) -> None:
    audio = write_wav(tmp_path / "speech.wav", tone(0.16).astype(np.float32), 16000)
    request = {"task": "generate_video", "user_id": USER, "image": portrait.as_uri(), "audio": audio.as_uri()}
    result = dispatch({**request, "engine": "sadtalker"}, st_runtime)
    assert "error" not in result, result
    assert result["engine"]["name"] == "sadtalker" and result["engine"]["reason"] == "requested"
    assert result["engine"]["licence"].startswith("User-supplied")  # SADTALKER_DIR: the owner's terms
    assert result["num_frames"] == 4 and (result["width"], result["height"]) == (320, 320)
    frames, audio_streams = frames_of(result["video"]["uri"])
    assert len(frames) == 4 and audio_streams == 1


def test_generate_video_from_image_and_text(st_runtime: WorkerRuntime, portrait: Path) -> None:
    request = {"task": "generate_video", "user_id": USER, "image": portrait.as_uri(), "text": "Oh."}
    result = dispatch({**request, "engine": "sadtalker"}, st_runtime)
    assert "error" not in result, result
    frames, _ = frames_of(result["video"]["uri"])
    assert len(frames) == result["num_frames"] > 0 and result["engine"]["name"] == "sadtalker"


def test_auto_needs_cuda_for_sadtalker_and_follows_liveportrait(
    st_runtime: WorkerRuntime, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(engine_choice, "cuda_available", lambda: False)
    name, reason = engine_choice.choose("auto", st_runtime, portrait=True)
    assert name == "viseme_warp" and "sadtalker weights found but no CUDA device" in reason
    assert engine_choice.choose("auto", st_runtime)[0] == "viseme_warp"  # stored avatars: never sadtalker

    monkeypatch.setattr(engine_choice, "cuda_available", lambda: True)
    name, reason = engine_choice.choose("auto", st_runtime, portrait=True)
    assert name == "sadtalker" and "no liveportrait weights" not in reason and "sadtalker weights found" in reason
    # LivePortrait first (seed 001); a LivePortrait that cannot load falls back to SadTalker
    broken = tmp_path / "lp"
    for file in ("appearance_feature_extractor", "motion_extractor", "warping_module", "spade_generator"):
        (broken / "base_models").mkdir(parents=True, exist_ok=True)
        (broken / "base_models" / f"{file}.pth").write_bytes(b"not a checkpoint")
    runtime = st_runtime.with_settings(st_runtime.settings.model_copy(update={"liveportrait_dir": broken}))
    assert engine_choice.choose("auto", runtime, portrait=True)[0] == "liveportrait"
    engine, info = engine_choice.lipsync_engine("auto", runtime, portrait=True)
    assert info["name"] == "sadtalker" and engine.info["size"] == 128
    assert engine_choice.choose("auto", runtime, portrait=True)[0] == "sadtalker"  # the failure is remembered


def test_health_lists_the_manifest_weights_with_their_licence(
    runtime: WorkerRuntime, sadtalker_root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(weights, "MOUNT_DIRS", ())
    target = runtime.settings.weights_dir / "sadtalker" / "checkpoints"
    target.mkdir(parents=True)
    for path in (sadtalker_root / "checkpoints").iterdir():
        (target / path.name).hardlink_to(path)
    health = dispatch({"task": "health"}, runtime)
    video = health["tasks"]["generate_video"]
    found = [w for w in video["weights"] if w["engine"] == "sadtalker"]
    assert len(found) == 1 and found[0]["origin"] == "sadtalker_256"
    assert "Apache-2.0" in found[0]["licence"] and found[0]["commercial_use"] is True
    if not engine_choice.cuda_available():
        assert "sadtalker weights found but no CUDA device" in video["image_engine"]["reason"]
    shutil.rmtree(target.parent)
    listing = weights.fetch_weights_cli(["--list"])
    assert listing == 0
    assert weights.fetch_groups()["sadtalker"] == (
        "sadtalker_256",
        "sadtalker_mapping_crop",
        "sadtalker_mapping_full",
        "sadtalker_512",
    )
    assert weights.BY_NAME["sadtalker_512"].url.endswith("/v0.0.2-rc/SadTalker_V0.0.2_512.safetensors")
