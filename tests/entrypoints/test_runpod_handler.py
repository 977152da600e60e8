"""The RunPod worker through the RunPod SDK itself: its one-job runner, its local API server, its job runner."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import subprocess
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlparse

import cv2
import httpx
import numpy as np
import pytest

import handlers
import runpod_handler
from handlers.runtime import WorkerRuntime
from handlers.schemas import LIVE_SESSION_TASK
from handlers.settings import Settings
from tests.conftest import free_port
from tests.entrypoints.conftest import (
    FACE_CROP,
    PYTHON,
    REPO_ROOT,
    child_env,
    media_summary,
    s3_client,
    s3_download,
    s3_object_size,
)
from tests.media import astronaut_bgr

SERVER_START_TIMEOUT_S = 90.0
JOB_TIMEOUT_S = 180.0


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [PYTHON, "runpod_handler.py", *args],
        cwd=REPO_ROOT,
        env=env or child_env(),
        capture_output=True,
        text=True,
        timeout=JOB_TIMEOUT_S,
    )


IMPORT_PROBE = """
import json, sys, time
started = time.perf_counter()
import runpod_handler
seconds = time.perf_counter() - started
heavy = sorted(m for m in ("torch", "dlib", "cv2", "av", "runpod") if m in sys.modules)
print(json.dumps({"seconds": seconds, "heavy": heavy, "loaded": runpod_handler._state is not None}))
"""


def test_import_loads_no_engine_and_not_the_sdk() -> None:
    probe = subprocess.run([PYTHON, "-c", IMPORT_PROBE], cwd=REPO_ROOT, env=child_env(), capture_output=True, text=True)
    facts = json.loads(probe.stdout)
    assert facts["heavy"] == [] and not facts["loaded"]
    assert facts["seconds"] < 1.5


SDK_PROBE = """
import json, cpuinfo, runpod_handler
original = cpuinfo.get_cpu_info
runpod_handler.import_sdk()
from runpod.serverless.utils import rp_debugger
print(json.dumps({"processor": rp_debugger.PROCESSOR, "restored": cpuinfo.get_cpu_info is original}))
"""


def test_sdk_import_labels_the_cpu_without_py_cpuinfo_subprocess() -> None:
    probe = subprocess.run([PYTHON, "-c", SDK_PROBE], cwd=REPO_ROOT, env=child_env(), capture_output=True, text=True)
    facts = json.loads(probe.stdout.strip().splitlines()[-1])
    assert facts == {"processor": runpod_handler._cpu_label()["brand_raw"], "restored": True}


# ---- the SDK's one-job runner (--test_input, ./test_input.json) ----------------------------------


def test_cli_health_succeeds_and_bad_task_fails_with_its_code(tmp_path: Path) -> None:
    env = child_env(AVATAR_STORE_URI=tmp_path.as_uri(), WORKER_TASKS="render_emotion")
    ok = run_cli("--test_input", json.dumps({"input": {"task": "health"}}), env=env)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "'status': 'ok'" in ok.stdout and "completed successfully" in ok.stdout

    bad = run_cli("--test_input", json.dumps({"input": {"task": "dance"}}), env=env)
    assert bad.returncode == 1
    failed_line = next(line for line in bad.stdout.splitlines() if "failed with error" in line)
    error = json.loads(failed_line.split("failed with error: ", 1)[1])
    assert error["error_code"] == "unknown_task"
    assert "'dance'" in error["error"]
    assert "Traceback" not in bad.stdout + bad.stderr


def test_committed_test_input_renders_a_real_still(tmp_path: Path) -> None:
    payload = json.loads((REPO_ROOT / "test_input.json").read_text())["input"]
    assert handlers.parse(payload).task == "render_emotion"
    assert (REPO_ROOT / "test_input.json").stat().st_size < 100_000
    # The committed JPEG is the generated astronaut crop (FACE_CROP), nothing else.
    jpeg = base64.b64decode(payload["image"].removeprefix("data:image/jpeg;base64,"))
    committed = cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR).astype(np.float32)
    assert np.abs(committed - astronaut_bgr(512)[FACE_CROP].astype(np.float32)).mean() < 3.0

    store = tmp_path / "store"
    result = run_cli(env=child_env(AVATAR_STORE_URI=store.as_uri(), WORKER_TASKS="render_emotion"))
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    stills = list(store.rglob("*_happy.png"))
    assert len(stills) == 1 and stills[0].stat().st_size > 1000


def test_hub_config_names_real_settings_and_its_tests_are_valid_payloads() -> None:
    hub = json.loads((REPO_ROOT / ".runpod" / "hub.json").read_text())
    assert hub["type"] == "serverless" and hub["config"]["runsOn"] == "GPU"
    known = {"WORKER_TASKS", "LOG_LEVEL"}
    for model in (Settings, type(Settings().storage)):
        for field in model.model_fields.values():
            known.update(getattr(field.validation_alias, "choices", []))
    env_keys = {entry["key"] for entry in hub["config"]["env"]}
    assert env_keys <= known, env_keys - known
    for preset in hub["config"]["presets"]:
        for task in preset["defaults"]["WORKER_TASKS"].split(","):
            assert task in (*handlers.WORK_TASKS, LIVE_SESSION_TASK)


# ---- the handler in-process, run by the SDK's own job runner -------------------------------------


@pytest.fixture
def fresh_worker(monkeypatch: pytest.MonkeyPatch) -> None:
    """A worker process state that loads again (the module keeps one per process)."""
    monkeypatch.setattr(runpod_handler, "_state", None)


def test_progress_is_forwarded_on_stage_changes_and_throttled() -> None:
    sent: list[dict] = []
    progress = runpod_handler.JobProgress({"id": "j1"}, lambda job, update: sent.append(update))
    steps = [("fetch", 0.0), ("fetch", 0.01), ("render", 0.1), ("render", 0.12), ("render", 0.2), ("render", 0.98)]
    for stage, fraction in [*steps, ("render", 1.0), ("render", 1.0), ("upload", 1.0)]:
        progress(stage, fraction)
    assert sent == [
        {"stage": "fetch", "fraction": 0.0},
        {"stage": "render", "fraction": 0.1},
        {"stage": "render", "fraction": 0.2},
        {"stage": "render", "fraction": 0.98},
        {"stage": "render", "fraction": 1.0},
        {"stage": "upload", "fraction": 1.0},
    ]


def test_worker_whose_engines_failed_refuses_jobs_and_asks_to_be_replaced(
    fresh_worker: None, local_settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    from runpod.serverless.modules.rp_job import run_job

    module = handlers.task_module("preprocess_avatar")

    def broken_load(runtime: WorkerRuntime) -> None:
        raise OSError("predictor file unreadable")

    monkeypatch.setattr(module, "load", broken_load)
    monkeypatch.setenv("WORKER_TASKS", "preprocess_avatar")
    result = asyncio.run(run_job(runpod_handler.handler, {"id": "j2", "input": {"task": "health"}}))
    assert result["stopPod"] is True  # the SDK's reading of refresh_worker
    error = json.loads(result["error"])
    assert error["error_code"] == "worker_unhealthy"
    assert "preprocess_avatar: OSError: predictor file unreadable" in error["error"]


def test_hub_tests_pass_through_the_sdk_runner(fresh_worker: None, local_settings: Settings) -> None:
    from runpod.serverless.modules.rp_job import run_job

    cases = json.loads((REPO_ROOT / ".runpod" / "tests.json").read_text())["tests"]
    assert {handlers.parse(case["input"]).task for case in cases} == {"health", "render_emotion", "generate_video"}
    for case in cases:
        result = asyncio.run(run_job(runpod_handler.handler, {"id": case["name"], "input": case["input"]}))
        assert "error" not in result, (case["name"], result)
        assert case["timeout"] > 0


def test_a_worker_without_a_bucket_says_so_in_health_and_results(
    fresh_worker: None, local_settings: Settings, face_data_uri: str, caplog: pytest.LogCaptureFixture
) -> None:
    from runpod.serverless.modules.rp_job import run_job

    health = asyncio.run(run_job(runpod_handler.handler, {"id": "h", "input": {"task": "health"}}))["output"]
    assert "NO BUCKET CONFIGURED" in caplog.text
    job = {"task": "render_emotion", "user_id": "u", "image": face_data_uri, "emotion": "happy"}
    render = asyncio.run(run_job(runpod_handler.handler, {"id": "r", "input": job}))["output"]
    for result in (health, render):
        (warning,) = result["warnings"]
        assert local_settings.avatar_store_uri in warning and "AVATAR_STORE_URI" in warning
    assert render["renders"][0]["uri"].startswith(local_settings.avatar_store_uri)


def test_refused_input_through_the_sdk_runner_keeps_its_code(
    fresh_worker: None, local_settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    from runpod.serverless.modules.rp_job import run_job

    monkeypatch.setenv("WORKER_TASKS", "render_emotion")

    job = {
        "id": "j3",
        "input": {"task": "render_emotion", "user_id": "u", "image": "ftp://x/y.png", "emotion": "happy"},
    }
    result = asyncio.run(run_job(runpod_handler.handler, job))
    assert json.loads(result["error"])["error_code"] == "invalid_input"
    assert result["output"] == {"error_code": "invalid_input"}


# ---- the SDK's local API server, with a real S3 (moto) ------------------------------------------


class ProgressSink(BaseHTTPRequestHandler):
    """Stands in for RunPod's job-output URL: records the progress updates the worker posts."""

    received: list[dict] = []

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        job_id = unquote(urlparse(self.path).query.split("id=", 1)[1].split("&", 1)[0])
        ProgressSink.received.append({"id": job_id, **json.loads(body)})
        self.send_response(200)
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def progress_sink() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", free_port()), ProgressSink)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_port}/job-done?id=$ID"
    server.shutdown()


@pytest.fixture(scope="module")
def default_bucket(s3_endpoint: str) -> str:
    s3_client(s3_endpoint).create_bucket(Bucket="rp-default")
    return "s3://rp-default"


@pytest.fixture(scope="module")
def api_server(
    s3_endpoint: str, default_bucket: str, progress_sink: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    """`python runpod_handler.py --rp_serve_api` on a free port, storing into moto's S3."""
    env = child_env(
        AVATAR_STORE_URI=default_bucket,
        AVATAR_LOCAL_PATH=str(tmp_path_factory.mktemp("avatars")),
        S3_ENDPOINT_URL=s3_endpoint,
        AWS_ACCESS_KEY_ID="testing",
        AWS_SECRET_ACCESS_KEY="testing",
        AWS_DEFAULT_REGION="us-east-1",
        RUNPOD_WEBHOOK_POST_OUTPUT=progress_sink,
    )
    with serving_worker(env, tmp_path_factory.mktemp("logs")) as base:
        yield base


@contextlib.contextmanager
def serving_worker(env: dict[str, str], log_dir: Path) -> Iterator[str]:
    """`python runpod_handler.py --rp_serve_api` on a free port; yields its base URL, stops it after."""
    port = free_port()
    args = ["--rp_serve_api", "--rp_api_host", "127.0.0.1", "--rp_api_port", str(port)]
    log = log_dir / "server.log"
    with log.open("w") as out:
        proc = subprocess.Popen([PYTHON, "runpod_handler.py", *args], cwd=REPO_ROOT, env=env, stdout=out, stderr=out)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_until_serving(base, proc, log)
        yield base
    finally:
        proc.terminate()
        proc.wait(timeout=20)


def wait_until_serving(base: str, proc: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + SERVER_START_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"the worker's API server exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        try:
            httpx.get(base, timeout=2)  # any HTTP answer: uvicorn is serving the SDK's app
            return
        except httpx.TransportError:
            pass
        time.sleep(0.3)
    pytest.fail(f"the worker's API server did not answer within {SERVER_START_TIMEOUT_S} s:\n{log.read_text()[-3000:]}")


def progress_of(job_id: str, timeout_s: float = 10.0) -> list[dict]:
    """The progress posts of one job; they are sent from background threads, so wait for them to settle."""
    deadline = time.monotonic() + timeout_s
    seen = -1
    while time.monotonic() < deadline:
        updates = [u for u in ProgressSink.received if u["id"] == job_id]
        if updates and len(updates) == seen:
            return updates
        seen = len(updates)
        time.sleep(0.5)
    return [u for u in ProgressSink.received if u["id"] == job_id]


def post(base: str, path: str, body: dict | None = None) -> dict:
    response = httpx.post(f"{base}{path}", json=body, timeout=JOB_TIMEOUT_S)
    response.raise_for_status()
    return response.json()


def test_runsync_render_emotion_writes_the_still_to_s3(api_server: str, s3_endpoint: str, face_data_uri: str) -> None:
    job = {"task": "render_emotion", "user_id": "rp-user", "image": face_data_uri, "emotions": ["happy", "sad"]}
    answer = post(api_server, "/runsync", {"input": job})
    assert answer["status"] == "COMPLETED", answer
    renders = answer["output"]["renders"]
    assert [r["emotion"] for r in renders] == ["happy", "sad"]
    for render in renders:
        assert render["uri"].startswith("s3://rp-default/emotions/rp-user/")
        assert s3_object_size(s3_endpoint, render["uri"]) > 1000
    assert "base64" not in json.dumps(answer["output"])  # results point at the store, never carry media
    assert "warnings" not in answer["output"]  # a bucket: nothing to warn about


def test_runsync_refused_input_fails_with_its_code(api_server: str) -> None:
    answer = post(api_server, "/runsync", {"input": {"task": "generate_video", "user_id": "u", "text": "hi"}})
    assert answer["status"] == "FAILED"
    error = json.loads(answer["error"])
    assert error["error_code"] == "invalid_input" and "`avatar_id` or `image`" in error["error"]


def test_avatar_then_video_through_run_and_status(
    api_server: str, s3_endpoint: str, s3_bucket: str, training_video: Path, tmp_path: Path
) -> None:
    avatar = {"task": "preprocess_avatar", "user_id": "rp-user", "avatar_id": "rp-avatar"}
    avatar.update(video=training_video.as_uri(), store=s3_bucket)
    made = post(api_server, "/runsync", {"input": avatar})
    assert made["status"] == "COMPLETED", made
    assert made["output"]["avatar"]["uri"] == f"{s3_bucket}/avatars/rp-user/rp-avatar.tar"
    assert s3_object_size(s3_endpoint, made["output"]["avatar"]["uri"]) == made["output"]["avatar"]["bytes"]

    job = {"task": "generate_video", "user_id": "rp-user", "avatar_id": "rp-avatar", "text": "Hello there."}
    queued = post(api_server, "/run", {"input": {**job, "store": s3_bucket, "video_id": "rp-video"}})
    assert queued["status"] == "IN_PROGRESS"
    done = post(api_server, f"/status/{queued['id']}")  # the SDK's local server runs the job here
    assert done["status"] == "COMPLETED", done
    video = done["output"]["video"]
    assert video["uri"] == f"{s3_bucket}/generated-videos/rp-user/rp-video.mp4"

    facts = media_summary(s3_download(s3_endpoint, video["uri"], tmp_path / "out.mp4"))
    assert facts["frames"] == done["output"]["num_frames"] and facts["audio"]
    assert (facts["width"], facts["height"]) == (256, 256)

    updates = progress_of(queued["id"])
    assert all(u["status"] == "IN_PROGRESS" for u in updates)
    stages = [u["output"]["stage"] for u in updates]
    assert len(set(stages)) >= 2, stages
    fractions = [u["output"]["fraction"] for u in updates]
    assert all(0.0 <= f <= 1.0 for f in fractions)
