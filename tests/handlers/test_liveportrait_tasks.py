"""render_emotion and generate_video with ``engine: liveportrait`` through handlers.dispatch, and the choice.

Random weights in the official layout (written once per run by tests/handlers/conftest.py, pointed at by
LIVEPORTRAIT_DIR) check the plumbing end to end: stills and an mp4 come out, the reports name the engine. The
networks run at LIVEPORTRAIT_INPUT_SIZE=128 to keep the CPU cost low. Without CUDA, ``auto`` keeps the CPU engines.
"""

from __future__ import annotations

from pathlib import Path

import av
import cv2
import numpy as np
import pytest

from engines.codecs.audio import write_wav
from handlers import dispatch
from handlers.engine_choice import cuda_available
from handlers.runtime import WorkerRuntime
from storage import open_store
from tests.media import astronaut_bgr, tone

USER = "u1"


@pytest.fixture
def portrait(tmp_path: Path) -> Path:
    path = tmp_path / "portrait.png"
    cv2.imwrite(str(path), astronaut_bgr(384))
    return path


def stored(runtime: WorkerRuntime) -> list[str]:
    settings = runtime.settings
    return sorted(info.key for info in open_store(settings.avatar_store_uri, settings.storage).list())


def test_explicit_liveportrait_without_weights_names_the_files_and_the_fetch(
    runtime: WorkerRuntime, portrait: Path
) -> None:
    requests = [
        {"task": "render_emotion", "user_id": USER, "image": portrait.as_uri(), "emotion": "happy"},
        {"task": "generate_video", "user_id": USER, "image": portrait.as_uri(), "text": "Hello there."},
    ]
    for request in requests:
        result = dispatch({**request, "engine": "liveportrait"}, runtime)
        assert result["error_code"] == "engine_unavailable", result
        assert "liveportrait/base_models/appearance_feature_extractor.pth" in result["error"]
        assert "fetch-weights liveportrait" in result["error"] and "LIVEPORTRAIT_DIR" in result["error"]
    assert stored(runtime) == []


def test_liveportrait_animates_images_not_stored_avatars(lp_runtime: WorkerRuntime) -> None:
    request = {"task": "generate_video", "user_id": USER, "avatar_id": "a1", "text": "Hi.", "engine": "liveportrait"}
    result = dispatch(request, lp_runtime)
    assert result["error_code"] == "engine_unavailable" and "`image`" in result["error"]


@pytest.mark.skipif(cuda_available(), reason="auto picks liveportrait on CUDA")
def test_auto_keeps_the_cpu_engines_without_cuda_and_health_says_why(lp_runtime: WorkerRuntime) -> None:
    health = dispatch({"task": "health"}, lp_runtime)
    emotion = health["tasks"]["render_emotion"]
    assert emotion["engine"] == "landmark_warp" and "liveportrait weights found but no CUDA" in emotion["reason"]
    video = health["tasks"]["generate_video"]
    assert video["image_engine"]["engine"] == "viseme_warp"
    assert "liveportrait weights found but no CUDA" in video["image_engine"]["reason"]
    assert any(w["engine"] == "liveportrait" and w["origin"] == "LIVEPORTRAIT_DIR" for w in video["weights"])


@pytest.mark.cuda
def test_auto_picks_liveportrait_on_cuda_and_health_says_why(lp_runtime: WorkerRuntime) -> None:
    health = dispatch({"task": "health"}, lp_runtime)
    assert health["device"]["type"] == "cuda"
    emotion = health["tasks"]["render_emotion"]
    assert emotion["engine"] == "liveportrait" and "and CUDA" in emotion["reason"]
    image_engine = health["tasks"]["generate_video"]["image_engine"]
    assert image_engine["engine"] == "liveportrait" and "liveportrait weights found" in image_engine["reason"]


def test_render_emotion_with_liveportrait(lp_runtime: WorkerRuntime, portrait: Path) -> None:
    request = {
        "task": "render_emotion",
        "user_id": USER,
        "image": portrait.as_uri(),
        "emotions": ["neutral", "surprised"],
        "engine": "liveportrait",
        "render_id": "r1",
    }
    result = dispatch(request, lp_runtime)
    assert "error" not in result, result
    assert result["engine"]["name"] == "liveportrait" and result["gpu_used"] is cuda_available()
    images = [cv2.imread(r["uri"].removeprefix("file://")) for r in result["renders"]]
    assert [r["emotion"] for r in result["renders"]] == ["neutral", "surprised"]
    assert all(image.shape == (384, 384, 3) for image in images)
    assert np.abs(images[1].astype(int) - images[0].astype(int)).max() > 0  # the face was re-rendered
    assert stored(lp_runtime) == [f"emotions/{USER}/r1_neutral.png", f"emotions/{USER}/r1_surprised.png"]


def test_generate_video_from_one_image_with_liveportrait(
    lp_runtime: WorkerRuntime, portrait: Path, tmp_path: Path
) -> None:
    audio = write_wav(tmp_path / "speech.wav", tone(0.24).astype(np.float32), 16000)
    request = {
        "task": "generate_video",
        "user_id": USER,
        "image": portrait.as_uri(),
        "audio": audio.as_uri(),
        "engine": "liveportrait",
    }
    result = dispatch(request, lp_runtime)
    assert "error" not in result, result
    assert result["engine"]["name"] == "liveportrait" and result["engine"]["reason"] == "requested"
    assert result["num_frames"] == 6 and (result["width"], result["height"]) == (384, 384)
    with av.open(result["video"]["uri"].removeprefix("file://")) as container:
        frames = [f.to_ndarray(format="bgr24") for f in container.decode(video=0)]
        assert len(container.streams.audio) == 1
    assert len(frames) == 6 and frames[0].shape == (384, 384, 3)
