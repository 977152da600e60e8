"""The Modal app offline: no token, tasks run in-process through `Worker().<task>.local(...)`."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import cv2
import pytest

import handlers
import modal_app
from handlers.runtime import WorkerRuntime
from handlers.settings import Settings
from tests.entrypoints.conftest import PYTHON, REPO_ROOT, child_env, media_summary, s3_download
from tests.media import astronaut_bgr

pytestmark = pytest.mark.filterwarnings("ignore:The Worker.*executing locally:UserWarning")

IMPORT_PROBE = """
import json, sys, time
started = time.perf_counter()
import modal_app
seconds = time.perf_counter() - started
heavy = sorted(m for m in ("torch", "dlib", "cv2", "av") if m in sys.modules)
tasks = modal_app.handlers.WORK_TASKS
task_modules = sorted(m for m in sys.modules if m.startswith("handlers.") and m.split(".")[1] in tasks)
print(json.dumps({"seconds": seconds, "heavy": heavy, "task_modules": task_modules, "app": modal_app.app.name}))
"""


def test_import_defines_the_app_without_loading_engines() -> None:
    env = child_env(MODAL_TOKEN_ID="", MODAL_TOKEN_SECRET="")
    probe = subprocess.run([PYTHON, "-c", IMPORT_PROBE], cwd=REPO_ROOT, env=env, capture_output=True, text=True)
    facts = json.loads(probe.stdout)
    assert facts["heavy"] == [] and facts["task_modules"] == []
    assert facts["app"] == "talking-head"
    assert facts["seconds"] < 3.0


def modal_help(target: str) -> str:
    modal_cli = Path(PYTHON).with_name("modal")
    done = subprocess.run([str(modal_cli), "run", target, "--help"], cwd=REPO_ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


def test_modal_cli_sees_the_entrypoint_and_fill_weights_options() -> None:
    help_text = modal_help("modal_app.py")
    options = ("--task", "--avatar-id", "--text", "--video", "--image", "--audio", "--emotion", "--user-id", "--stream")
    for option in options:
        assert option in help_text
    assert "--names" in modal_help("modal_app.py::fill_weights")


def test_config_from_env_reaches_the_container_unchanged(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MODAL_WORKER_GPU", "")
    monkeypatch.setenv("MODAL_WORKER_TIMEOUT_S", "900")
    config = modal_app.ModalConfig()
    assert config.gpu == "" and config.torch_index == modal_app.CPU_TORCH_INDEX
    for name, value in config.as_env().items():
        monkeypatch.setenv(name, value)
    assert modal_app.ModalConfig() == config and config.timeout_s == 900
    assert modal_app.ModalConfig(gpu="L4").torch_index.endswith("/cu128")


def test_health(local_settings: Settings) -> None:
    result = modal_app.Worker().health.local()
    assert result["status"] == "ok"
    assert set(result["tasks"]) == {*handlers.WORK_TASKS, "live_session"}


def test_refused_input_returns_the_contract_error(local_settings: Settings) -> None:
    result = modal_app.Worker().generate_video.local(user_id="u", avatar_id="a", text="   ")
    assert result["error_code"] == "invalid_input" and "`text`" in result["error"]


def test_render_emotion(local_settings: Settings, face_data_uri: str, tmp_path: Path) -> None:
    store = tmp_path / "own-store"
    result = modal_app.Worker().render_emotion.local(
        user_id="m-user", image=face_data_uri, emotion="surprised", store=store.as_uri(), render_id="r1"
    )
    assert "error" not in result, result
    [render] = result["renders"]
    assert render["uri"] == f"{store.as_uri()}/emotions/m-user/r1_surprised.png"
    assert (store / "emotions" / "m-user" / "r1_surprised.png").stat().st_size > 1000


def test_avatar_then_video(local_settings: Settings, training_video: Path, tmp_path: Path) -> None:
    worker = modal_app.Worker()
    made = worker.preprocess_avatar.local(user_id="m-user", avatar_id="m-avatar", video=training_video.as_uri())
    assert "error" not in made, made
    assert made["avatar"]["uri"].endswith("/avatars/m-user/m-avatar.tar")

    result = worker.generate_video.local(user_id="m-user", avatar_id="m-avatar", text="Hi.", video_id="m-video")
    assert "error" not in result, result
    path = Path(local_settings.avatar_store_uri.removeprefix("file://")) / "generated-videos/m-user/m-video.mp4"
    facts = media_summary(path)
    assert facts["frames"] == result["num_frames"] and facts["audio"]


def test_worker_whose_engines_failed_refuses_calls(local_settings: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    module = handlers.task_module("preprocess_avatar")

    def broken_load(runtime: WorkerRuntime) -> None:
        raise OSError("predictor file unreadable")

    monkeypatch.setattr(module, "load", broken_load)
    monkeypatch.setenv("WORKER_TASKS", "preprocess_avatar")
    result = modal_app.Worker().health.local()
    assert result["error_code"] == "worker_unhealthy"
    assert "preprocess_avatar: OSError: predictor file unreadable" in result["error"]


# ---- the local command line's input staging ---------------------------------------------------


def test_local_files_are_uploaded_and_uris_kept(
    s3_env: str, s3_bucket: str, training_video: Path, tmp_path: Path
) -> None:
    fields = modal_app.task_fields(
        "preprocess_avatar", "m-user", avatar_id="a1", video=str(training_video), image="", text=""
    )
    assert fields == {"avatar_id": "a1", "video": str(training_video), "user_id": "m-user"}
    staged = modal_app.stage_local_files(fields, s3_bucket, "m-user")
    assert staged["video"].startswith(f"{s3_bucket}/training-videos/m-user/") and staged["video"].endswith(".mp4")
    copy = s3_download(s3_env, staged["video"], tmp_path / "copy.mp4")
    assert copy.read_bytes() == training_video.read_bytes()

    uri_fields = {"image": "https://example.com/p.png", "user_id": "m-user"}
    assert modal_app.stage_local_files(uri_fields, "", "m-user") == uri_fields
    assert modal_app.task_fields("health", "m-user", avatar_id="") == {}


def test_local_file_inputs_that_cannot_work_are_refused(training_video: Path) -> None:
    with pytest.raises(modal_app.InputError, match="neither a URI"):
        modal_app.stage_local_files({"image": "missing.png"}, "s3://bucket", "u")
    with pytest.raises(modal_app.InputError, match="--store"):
        modal_app.stage_local_files({"video": str(training_video)}, "file:///tmp/store", "u")


def test_entrypoint_refuses_bad_input_before_calling_modal() -> None:
    run_main = modal_app.main.info.raw_f
    with pytest.raises(SystemExit, match=r"error \(unknown_task\): Unknown task .dance."):
        run_main(task="dance")
    with pytest.raises(SystemExit, match="`text`"):
        run_main(task="generate_video", avatar_id="a1", text=" ")


def test_generate_video_stream_yields_segments_then_the_result(local_settings: Settings, tmp_path: Path) -> None:
    portrait = tmp_path / "portrait.png"
    cv2.imwrite(str(portrait), astronaut_bgr(256))
    method = modal_app.Worker().generate_video_stream
    fields = {"user_id": "m-user", "image": portrait.as_uri(), "text": "One segment at a time.", "stream": True}
    *segments, result = list(method.local(video_id="m-stream", **fields))
    assert segments and [s["index"] for s in segments] == list(range(len(segments)))
    assert result["video_id"] == "m-stream" and result["playlist"]["uri"] == segments[-1]["playlist_uri"]
    assert sum(s["duration_s"] for s in segments) == pytest.approx(result["duration_s"], abs=1e-3)
    refused = list(modal_app.Worker().generate_video_stream.local(user_id="u", image="ftp://x", text="hi"))
    assert len(refused) == 1 and refused[0]["error_code"] == "invalid_input"


# ---- memory snapshots: what loads before the snapshot, what after the restore ----------------------

SNAPSHOT_PROBE = """
import json, sys
sys.path.insert(0, ".")
import modal_app
from modal._partial_function import _PartialFunctionFlags as Flags, _find_partial_methods_for_user_cls as hooks

def loaded(worker):
    return sorted(key[1] if key[0] == "lipsync" else key[0] for key in worker.runtime.engines._loaded
                  if key[0] in ("lipsync", "wav2lip96"))

user_cls = modal_app.Worker._get_user_cls()
pre, post = hooks(user_cls, Flags.ENTER_PRE_SNAPSHOT), hooks(user_cls, Flags.ENTER_POST_SNAPSHOT)
worker = user_cls()
facts = {"pre": sorted(pre), "post": sorted(post), "gpu_snapshot": modal_app.snapshot_options}
for name, hook in pre.items():
    hook.raw_f(worker)
facts["before_snapshot"] = loaded(worker)
for name, hook in post.items():
    hook.raw_f(worker)
facts["after_restore"] = loaded(worker)
facts["load_errors"] = worker.load_errors
print(json.dumps(facts))
"""


@pytest.mark.parametrize("gpu_snapshot", ["0", "1"])
def test_memory_snapshot_holds_the_cpu_part_and_the_neural_engines_load_after(
    local_settings: Settings, tmp_path: Path, gpu_snapshot: str
) -> None:
    from tests.engines.wav2lip_fixtures import write_checkpoint

    checkpoint = write_checkpoint(tmp_path / "w96.pth", "wav2lip96")
    env = child_env(
        MODAL_WORKER_MEMORY_SNAPSHOT="1",
        MODAL_WORKER_GPU_SNAPSHOT=gpu_snapshot,
        WORKER_TASKS="generate_video",
        WAV2LIP96_CHECKPOINT=str(checkpoint),
        WEIGHTS_DIR=str(tmp_path / "weights"),
    )
    done = subprocess.run([PYTHON, "-c", SNAPSHOT_PROBE], cwd=REPO_ROOT, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    facts = json.loads(done.stdout.strip().splitlines()[-1])
    assert facts["pre"] == ["prepare"] and facts["post"] == ["load"] and facts["load_errors"] == {}
    if gpu_snapshot == "1":  # everything before the snapshot, on the GPU the snapshot then holds
        assert facts["gpu_snapshot"] == {"enable_gpu_snapshot": True}
        assert facts["before_snapshot"] == facts["after_restore"] == ["wav2lip96"]  # auto's engine, loaded
    else:  # the CPU part only: the neural engine loads after the restore, on the device the container has
        assert facts["gpu_snapshot"] == {}
        assert facts["before_snapshot"] == ["viseme_warp"]
        assert facts["after_restore"] == ["viseme_warp", "wav2lip96"]
