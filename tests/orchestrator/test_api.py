"""The HTTP API under uvicorn with the local backend, a file:// store and SQLite: auth, validation,
jobs, idempotency, uploads, the seeds' routes (render, output, generate), health and metrics."""

from __future__ import annotations

import base64
import io
import logging
import time
import wave
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import cv2
import httpx
import numpy as np
import pytest

from handlers.errors import TaskError
from handlers.settings import Settings
from orchestrator.api import create_app
from orchestrator.core.backends.local import LocalBackend
from orchestrator.core.config import OrchestratorSettings
from orchestrator.core.models import JobView
from orchestrator.core.service import JobService
from orchestrator.core.uploads import UploadKind, upload_stream
from orchestrator.core.webhooks import webhook_token
from orchestrator.devtools.emulator import BackgroundServer
from storage import open_store
from storage.local import path_from_file_uri
from tests.media import astronaut_bgr, coffee_bgr, tone
from tests.orchestrator.conftest import eventually
from tests.orchestrator.worker_tasks import CRASH_USER, dispatch_or_crash

TOKEN = "test-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@dataclass
class Api:
    url: str
    client: httpx.Client
    service: JobService
    store_root: Path

    def wait_finished(self, job_id: str, timeout_s: float = 60.0) -> dict:
        def finished() -> dict | None:
            job = self.client.get(f"/v1/jobs/{job_id}").json()
            return job if job["status"] not in ("queued", "running") else None

        return eventually(finished, timeout_s, 0.05)  # type: ignore[return-value]


@pytest.fixture
def api(tmp_path: Path, local_settings: Settings) -> Iterator[Api]:
    settings = OrchestratorSettings(
        database_url=f"sqlite:///{tmp_path / 'jobs.db'}", api_token=TOKEN, poll_interval_s=0.05, poll_max_interval_s=0.2
    )
    service = JobService(settings)
    server = BackgroundServer(create_app(service, sync_wait_s=60))
    with server, httpx.Client(base_url=server.url, headers=AUTH, timeout=60) as client:
        yield Api(server.url, client, service, path_from_file_uri(local_settings.avatar_store_uri))
    service.stop()


def png_bytes(image: np.ndarray) -> bytes:
    return cv2.imencode(".png", image)[1].tobytes()


def wav_bytes(seconds: float = 0.6) -> bytes:
    samples = (tone(seconds) * 32767).astype("<i2")
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(16000)
        out.writeframes(samples.tobytes())
    return buffer.getvalue()


PORTRAIT = png_bytes(astronaut_bgr(256))


def test_bearer_token_guards_everything_but_health_metrics_and_webhooks(api: Api) -> None:
    for method, path in [("GET", "/v1/jobs"), ("POST", "/v1/emotions"), ("POST", "/render"), ("GET", "/output/x")]:
        bare = httpx.request(method, api.url + path)
        assert bare.status_code == 401, path
        assert bare.json()["error_code"] == "unauthorized" and bare.headers["www-authenticate"] == "Bearer"
    wrong = httpx.get(api.url + "/v1/jobs", headers={"Authorization": "Bearer nope"})
    assert wrong.status_code == 401
    for path in ("/healthz", "/health", "/metrics", "/docs"):
        assert httpx.get(api.url + path).status_code == 200, path
    webhook = httpx.post(api.url + "/v1/webhooks/runpod/abc?token=x", json={"status": "COMPLETED"})
    assert webhook.status_code == 403 and webhook.json()["error_code"] == "webhooks_disabled"


def test_invalid_payloads_are_422_with_the_contract_message_and_store_nothing(api: Api) -> None:
    cases = [
        ("/v1/videos", {"user_id": "u1", "avatar_id": "a1"}, "give exactly one of `text` or `audio`"),
        ("/v1/emotions", {"user_id": "u1", "image": "s3://b/k.png", "emotion": "joy"}, "`emotion`: Input should be"),
        ("/v1/avatars", {"user_id": "u1", "avatar_id": "a1", "video": "ftp://x"}, "unsupported URI"),
        ("/v1/avatars", {"user_id": "u1", "avatar_id": "a/1", "video": "s3://b/v.mp4"}, "`avatar_id`"),
        ("/v1/emotions", {"user_id": "u1", "image": "s3://b/k", "emotion": "sad", "colour": 1}, "`colour`: unknown"),
        ("/v1/emotions", {"task": "health", "user_id": "u1"}, "`task`"),
        ("/v1/jobs", {"task": "dance"}, "`task`: Input tag 'dance'"),
        ("/v1/jobs", {"user_id": "u1"}, "`task`"),
    ]
    for path, body, expected in cases:
        answer = api.client.post(path, json=body)
        assert answer.status_code == 422, body
        assert answer.json()["error_code"] == "invalid_input" and expected in answer.json()["error"], answer.json()
    assert "fearful" in api.client.post("/v1/emotions", json=cases[1][1]).json()["error"]
    not_json = api.client.post("/v1/jobs", content=b"{nope", headers={"content-type": "application/json"})
    assert not_json.status_code == 422 and "not valid JSON" in not_json.json()["error"]
    assert api.client.get("/v1/jobs").json() == []


def test_emotion_job_completes_and_jobs_are_listed_filtered_and_idempotent(api: Api) -> None:
    image = "data:image/png;base64," + base64.b64encode(PORTRAIT).decode()
    body = {"user_id": "api-u1", "image": image, "emotions": ["happy", "sad"], "output_format": "jpg"}
    submitted = api.client.post("/v1/emotions", json=body, headers={"Idempotency-Key": "key-1"})
    assert submitted.status_code == 202
    job = JobView.model_validate(submitted.json())
    assert job.task == "render_emotion" and job.backend == "local" and job.input["render_id"] == job.id
    again = api.client.post("/v1/emotions", json=body, headers={"Idempotency-Key": "key-1"})
    assert again.status_code == 202 and again.json()["id"] == job.id
    conflict = api.client.post("/v1/emotions", json={**body, "intensity": 0.2}, headers={"Idempotency-Key": "key-1"})
    assert conflict.status_code == 409 and conflict.json()["error_code"] == "idempotency_key_reused"
    health = api.client.post("/v1/jobs", json={"task": "health"})
    assert health.status_code == 202 and health.json()["task"] == "health"

    done = api.wait_finished(job.id)
    assert done["status"] == "completed", done
    renders = done["output"]["renders"]
    assert [r["emotion"] for r in renders] == ["happy", "sad"]
    for render in renders:
        assert render["uri"].endswith(f"/emotions/api-u1/{job.id}_{render['emotion']}.jpg")
        assert cv2.imread(str(path_from_file_uri(render["uri"]))).shape == (256, 256, 3)
    api.wait_finished(health.json()["id"])

    def ids(**query: str) -> list[str]:
        answer = api.client.get("/v1/jobs", params=query)
        assert answer.status_code == 200
        return [j["id"] for j in answer.json()]

    assert ids(user_id="api-u1") == [job.id]
    assert ids(user_id="api-u1", status="completed", task="render_emotion") == [job.id]
    assert ids(user_id="api-u1", status="failed") == [] and ids(task="generate_video") == []
    assert set(ids()) == {job.id, health.json()["id"]} and len(ids(limit="1")) == 1
    bad = api.client.get("/v1/jobs", params={"status": "done"})
    assert bad.status_code == 422 and "`status`" in bad.json()["error"]
    assert api.client.get("/v1/jobs/nope").json()["error_code"] == "job_not_found"
    assert api.client.delete("/v1/jobs/nope").status_code == 404
    finished = api.client.delete(f"/v1/jobs/{job.id}")
    assert finished.status_code == 200 and finished.json()["status"] == "completed"


def test_seed_render_output_download_delete_and_traversal(api: Api) -> None:
    files = {"source_image": ("portrait.png", PORTRAIT, "image/png")}
    answer = api.client.post("/render", files=files, data={"emotion": "happy", "intensity": "0.8"})
    assert answer.status_code == 200, answer.text
    render = answer.json()
    assert render["emotion"] == "happy" and render["intensity"] == 0.8 and render["gpu_used"] is False
    assert (render["width"], render["height"]) == (256, 256) and render["latency_ms"] > 0
    assert render["filename"] == f"{render['job_id']}_happy.png" and render["output_path"].endswith(render["filename"])
    uploaded = list((api.store_root / "uploads" / "default").iterdir())
    assert len(uploaded) == 1 and uploaded[0].read_bytes() == PORTRAIT and uploaded[0].suffix == ".png"

    download = api.client.get(f"/output/{render['filename']}")
    assert download.status_code == 200 and download.headers["content-type"] == "image/png"
    image = cv2.imdecode(np.frombuffer(download.content, np.uint8), cv2.IMREAD_COLOR)
    assert image.shape == (256, 256, 3)
    assert download.content == path_from_file_uri(render["output_path"]).read_bytes()

    deleted = api.client.delete(f"/output/{render['filename']}")
    assert deleted.status_code == 200 and not path_from_file_uri(render["output_path"]).exists()
    gone = api.client.get(f"/output/{render['filename']}")
    assert gone.status_code == 404 and gone.json()["error_code"] == "output_not_found"
    assert api.client.get(f"/output/{'0' * 32}_happy.png").status_code == 404
    for name in ("..%2F..%2Fjobs.db", "%2E%2E", "..%5Cjobs.db", "x_happy.png%00.txt", "abc_happy.gif"):
        refused = api.client.get(f"/output/{name}")
        assert refused.status_code in (400, 404), name
        assert refused.json()["error_code"] in ("invalid_filename", "not_found"), name
    assert api.client.get("/output/%2E%2E").json()["error_code"] == "invalid_filename"


def test_seed_render_batch_and_errors(api: Api) -> None:
    files = {"source_image": ("portrait.png", PORTRAIT, "image/png")}
    batch = api.client.post("/render/batch", files=files, data={"emotions": ["angry,fearful", "neutral"]})
    assert batch.status_code == 200, batch.text
    assert [r["emotion"] for r in batch.json()] == ["angry", "fearful", "neutral"]  # seed 004: a JSON array
    unknown = api.client.post("/render/batch", files=files, data={"emotions": "happy,joy"})
    assert unknown.status_code == 422 and "surprised" in unknown.json()["error"]
    no_face = {"source_image": ("coffee.png", png_bytes(coffee_bgr()), "image/png")}
    refused = api.client.post("/render", files=no_face, data={"emotion": "sad"})
    assert refused.status_code == 422 and refused.json()["error_code"] == "no_face"
    out_of_range = api.client.post("/render", files=files, data={"intensity": "2"})
    assert out_of_range.status_code == 422 and "`intensity`" in out_of_range.json()["error"]


def test_seed_generate_from_base64_image_and_audio(api: Api) -> None:
    body = {
        "image_b64": base64.b64encode(PORTRAIT).decode(),
        "audio_b64": base64.b64encode(wav_bytes()).decode(),
        "user_id": "seed-u",
    }
    answer = api.client.post("/generate", json=body)
    assert answer.status_code == 200, answer.text
    assert answer.json()["status"] == "completed"
    job = api.client.get(f"/v1/jobs/{answer.json()['job_id']}").json()
    video = path_from_file_uri(job["output"]["video"]["uri"])
    assert video.is_file() and video.stat().st_size > 1000
    assert answer.json()["video_url"].startswith(f"{api.url}/files/")  # the file:// store's signed URL
    assert httpx.get(answer.json()["video_url"]).content == video.read_bytes()
    assert job["input"]["engine"] == "auto" and job["input"]["audio"].endswith(".wav")
    bad = api.client.post("/generate", json={**body, "audio_b64": "not base64!"})
    assert bad.status_code == 422 and bad.json()["status"] == "error" and "`audio_b64`" in bad.json()["message"]
    both = api.client.post("/generate", json={**body, "image_url": "https://example.com/a.png"})
    assert both.status_code == 422 and "exactly one of `image_url` or `image_b64`" in both.json()["message"]
    # the refused requests left no uploads behind: only the completed request's image and audio
    assert len(list((api.store_root / "uploads" / "seed-u").iterdir())) == 2


def test_seed_generate_drivers_name_our_engines(api: Api) -> None:
    """Seed 002's `driver` picks the engine: `sadtalker` runs ours (no weights here: a clear failure naming them)."""
    body = {"image_b64": base64.b64encode(PORTRAIT).decode(), "audio_b64": base64.b64encode(wav_bytes()).decode()}
    for driver in ("sadtalker", "liveportrait"):
        answer = api.client.post("/generate", json={**body, "driver": driver, "user_id": f"drv-{driver}"})
        assert answer.status_code == 502 and answer.json()["status"] == "error", answer.text
        assert answer.json()["error_code"] == "engine_unavailable"
        assert f"fetch-weights {driver}" in answer.json()["message"]
        jobs = api.client.get("/v1/jobs", params={"user_id": f"drv-{driver}"}).json()
        assert [job["input"]["engine"] for job in jobs] == [driver]


def test_uploads_route_and_upload_limits(api: Api, tmp_path: Path) -> None:
    clip = b"\x00\x00\x00\x18ftypmp42" + b"\x00" * 64
    files = {"file": ("clip.bin", clip, "video/mp4")}
    answer = api.client.post("/v1/uploads", files=files, data={"user_id": "u7", "kind": "training_video"})
    assert answer.status_code == 201, answer.text
    assert answer.json()["key"].startswith("training-videos/u7/") and answer.json()["key"].endswith(".mp4")
    assert (api.store_root / answer.json()["key"]).read_bytes() == clip and answer.json()["bytes"] == len(clip)
    bad_user = api.client.post("/v1/uploads", files=files, data={"user_id": "../x", "kind": "image"})
    assert bad_user.status_code == 422

    store = open_store((tmp_path / "limits").as_uri())
    with pytest.raises(TaskError) as too_big:
        upload_stream(
            store, io.BytesIO(b"x" * 2000), kind=UploadKind.image, user_id="u", settings=Settings(max_image_bytes=1000)
        )
    assert too_big.value.code == "too_large"  # the API answers it 413 (test_api_tenancy.py)
    assert list(store.list()) == []


def test_health_metrics_and_openapi(api: Api) -> None:
    health = api.client.get("/healthz").json()
    assert health["ok"] is True and health["db"]["ok"] and health["store"]["ok"] and "local" in health["backends"]
    public = httpx.get(api.url + "/healthz").json()  # no token: the verdict, not the deployment's details
    assert public == {"status": "ok", "ok": True, "db": {"ok": True}}
    assert httpx.get(api.url + "/health").json()["status"] == "healthy"
    job = api.client.post("/v1/jobs", json={"task": "health"}).json()
    api.wait_finished(job["id"])
    api.client.get(f"/v1/jobs/{job['id']}")
    httpx.get(api.url + "/v1/jobs")  # 401

    text = httpx.get(api.url + "/metrics").text
    assert 'avatarctl_http_requests_total{method="GET",route="/v1/jobs/{job_id}",status="200"}' in text
    assert 'avatarctl_http_errors_total{error_code="unauthorized",route="/v1/jobs"} 1.0' in text
    assert 'avatarctl_http_request_duration_seconds_bucket{le="0.005",method="POST",route="/v1/jobs"}' in text
    assert 'avatarctl_jobs{status="completed",task="health"} 1.0' in text
    assert 'avatarctl_submissions_total{backend="local",task="health"} 1.0' in text
    other = create_app(api.service).state.context.metrics  # every app has its own registry
    assert "avatarctl_http_requests_total{" not in other.render()[0].decode()

    spec = httpx.get(api.url + "/openapi.json").json()
    schema = spec["components"]["schemas"]["RenderEmotionSubmission"]
    assert "task" not in schema["properties"] and "emotion" in schema["properties"]
    assert spec["paths"]["/v1/emotions"]["post"]["responses"]["202"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/JobView"
    }


def test_clients_cannot_point_workers_at_this_hosts_files(api: Api, tmp_path: Path) -> None:
    secret = tmp_path / "secret.png"
    secret.write_bytes(PORTRAIT)
    elsewhere = tmp_path / "elsewhere"
    cases = [
        {"user_id": "u1", "image": secret.as_uri(), "emotion": "happy"},
        {"user_id": "u1", "image": (api.store_root / ".." / "secret.png").as_uri(), "emotion": "happy"},
        {"user_id": "u1", "image": "s3://b/k.png", "emotion": "happy", "store": elsewhere.as_uri()},
    ]
    for body in cases:
        answer = api.client.post("/v1/emotions", json=body)
        assert answer.status_code == 422 and answer.json()["error_code"] == "url_refused", answer.json()
    assert api.client.get("/v1/jobs").json() == [] and not elsewhere.exists()
    inside = api.store_root / "uploads" / "u1" / "face.png"
    inside.parent.mkdir(parents=True)
    inside.write_bytes(PORTRAIT)
    job = api.client.post("/v1/emotions", json={"user_id": "u1", "image": inside.as_uri(), "emotion": "happy"})
    assert job.status_code == 202 and api.wait_finished(job.json()["id"])["status"] == "completed"


def test_a_task_that_crashes_its_worker_process_fails_that_job_only(tmp_path: Path, local_settings: Settings) -> None:
    """Crash containment: a native crash (SIGSEGV) in a task kills one worker process, not the API."""
    settings = OrchestratorSettings(database_url=f"sqlite:///{tmp_path / 'jobs.db'}", poll_interval_s=0.05)
    local = LocalBackend(workers=1, settings=local_settings, run_task=dispatch_or_crash)
    service = JobService(settings, backends={task: local for task in ("render_emotion", "health")})
    server = BackgroundServer(create_app(service, sync_wait_s=60))
    with server, httpx.Client(base_url=server.url, timeout=60) as client:
        warm = client.post("/v1/jobs", json={"task": "health"}).json()
        assert service.wait(warm["id"], 60).status == "completed"
        pid_before = local.pool.pids()
        body = {"user_id": CRASH_USER, "image": "https://example.com/face.png", "emotion": "happy"}
        crashed = service.wait(client.post("/v1/emotions", json=body).json()["id"], 60)
        assert crashed.status == "failed" and crashed.error_code == "worker_crashed", crashed
        assert "SIGSEGV" in crashed.error and crashed.attempts == 1
        assert client.get("/healthz").status_code == 200  # the API process is alive
        after = service.wait(client.post("/v1/jobs", json={"task": "health"}).json()["id"], 60)
        assert after.status == "completed" and local.pool.pids() != pid_before  # a new worker took over
        time.sleep(0.3)
        assert service.get(crashed.id).attempts == 1  # not retried
    service.stop()


def test_webhook_token_never_reaches_the_access_log(tmp_path: Path, local_settings: Settings) -> None:
    """Webhooks: uvicorn's access log shows the webhook's path, with its token masked."""
    secret = "access-log-secret"
    settings = OrchestratorSettings(database_url=f"sqlite:///{tmp_path / 'jobs.db'}", webhook_secret=secret)
    service = JobService(settings)
    access = logging.getLogger("uvicorn.access")
    lines: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda record: lines.append(record.getMessage())  # type: ignore[method-assign]
    with BackgroundServer(create_app(service)) as server:
        level = access.level
        access.setLevel(logging.INFO)
        access.addHandler(handler)
        try:
            job = service.store.create(task="health", status="queued", backend="local", input={"task": "health"})
            token = webhook_token(secret, job.id)
            url = f"{server.url}/v1/webhooks/runpod/{job.id}?token={token}"
            answer = httpx.post(url, json={"id": job.id, "status": "COMPLETED"})
        finally:
            access.removeHandler(handler)
            access.setLevel(level)
    service.stop()
    assert answer.status_code == 200, answer.text
    assert any(f"/v1/webhooks/runpod/{job.id}?token=***" in line for line in lines), lines
    assert not any(token in line for line in lines)
