"""End to end: the HTTP API (uvicorn) → JobService → RunPod backend → the RunPod emulator (uvicorn) running
our real handlers, with moto's S3 server as the store and SQLite (PostgreSQL too when DATABASE_URL is set)."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import boto3
import cv2
import httpx
import pytest

from handlers.runtime import Engines, WorkerRuntime
from handlers.settings import Settings
from orchestrator.api import create_app
from orchestrator.core.config import OrchestratorSettings
from orchestrator.core.service import JobService
from orchestrator.devtools.emulator import BackgroundServer, RunpodEmulator, create_emulator_app
from storage import split_bucket_uri
from tests.conftest import free_port
from tests.media import astronaut_bgr
from tests.orchestrator.conftest import eventually

ENDPOINT = "ep-e2e"
TOKEN = "e2e-token"
PORTRAIT = cv2.imencode(".png", astronaut_bgr(256))[1].tobytes()


@dataclass
class Stack:
    client: httpx.Client
    url: str
    emulator: RunpodEmulator
    service: JobService
    s3: Any
    user_id: str

    def upload_portrait(self) -> str:
        files = {"file": ("portrait.png", PORTRAIT, "image/png")}
        answer = self.client.post("/v1/uploads", files=files, data={"user_id": self.user_id, "kind": "image"})
        assert answer.status_code == 201, answer.text
        return answer.json()["uri"]

    def finished(self, job_id: str, timeout_s: float = 60.0) -> dict:
        def done() -> dict | None:
            job = self.client.get(f"/v1/jobs/{job_id}").json()
            return job if job["status"] not in ("queued", "running") else None

        return eventually(done, timeout_s, 0.05)  # type: ignore[return-value]

    def object_exists(self, uri: str) -> bool:
        bucket, key = split_bucket_uri(uri)
        try:
            self.s3.head_object(Bucket=bucket, Key=key)
        except self.s3.exceptions.ClientError:
            return False
        return True


StackFactory = Callable[..., Stack]


@pytest.fixture
def make_stack(
    db_url: str, s3_bucket: str, s3_env: str, test_engines: Engines, tmp_path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[StackFactory]:
    """Build the whole chain; ``webhooks=True`` sets PUBLIC_BASE_URL/WEBHOOK_SECRET and slows polling to 60 s."""
    monkeypatch.setenv("AVATAR_STORE_URI", s3_bucket)
    monkeypatch.setenv("AVATAR_LOCAL_PATH", str(tmp_path / "avatars"))
    servers: list[BackgroundServer] = []
    services: list[JobService] = []

    def build(webhooks: bool = False) -> Stack:
        runtime = WorkerRuntime(Settings(), test_engines)
        emulator_app = create_emulator_app([ENDPOINT], workers=2, runtime=runtime, allow_private_webhooks=True)
        servers.append(BackgroundServer(emulator_app).start())
        port = free_port()
        remote = f"runpod:{ENDPOINT}"
        settings = OrchestratorSettings(
            database_url=db_url,
            backend_render_emotion=remote,
            backend_generate_video=remote,
            backend_health=remote,
            runpod_base_url=f"{servers[-1].url}/v2",
            api_token=TOKEN,
            poll_interval_s=60.0 if webhooks else 0.05,
            poll_max_interval_s=60.0 if webhooks else 0.2,
            webhook_secret="shh" if webhooks else None,
            public_base_url=f"http://127.0.0.1:{port}" if webhooks else None,
        )
        service = JobService(settings)
        services.append(service)
        api = BackgroundServer(create_app(service, sync_wait_s=60), port=port).start()
        servers.append(api)
        client = httpx.Client(base_url=api.url, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=60)
        s3 = boto3.client("s3", endpoint_url=s3_env, region_name="us-east-1")
        return Stack(client, api.url, emulator_app.state.emulator, service, s3, f"u-{uuid.uuid4().hex[:10]}")

    yield build
    for server in reversed(servers):
        server.stop()
    for service in services:
        service.stop()


def test_emotion_and_video_jobs_run_on_the_emulator_and_write_to_s3(make_stack: StackFactory) -> None:
    stack = make_stack()
    assert httpx.get(stack.url + "/v1/jobs").status_code == 401
    image = stack.upload_portrait()
    assert image.startswith("s3://") and stack.object_exists(image)
    emotion = stack.client.post(
        "/v1/emotions", json={"user_id": stack.user_id, "image": image, "emotions": ["happy", "surprised"]}
    )
    video = stack.client.post("/v1/videos", json={"user_id": stack.user_id, "image": image, "text": "Hi there."})
    assert emotion.status_code == video.status_code == 202
    assert emotion.json()["backend"] == "runpod" and emotion.json()["endpoint"] == ENDPOINT

    done = stack.finished(emotion.json()["id"])
    assert done["status"] == "completed", done
    assert done["remote_id"] in stack.emulator.jobs
    for render in done["output"]["renders"]:
        assert render["uri"].startswith("s3://") and stack.object_exists(render["uri"])
    clip = stack.finished(video.json()["id"], 120)
    assert clip["status"] == "completed", clip
    assert clip["output"]["video"]["uri"].endswith(f"/generated-videos/{stack.user_id}/{clip['id']}.mp4")
    assert stack.object_exists(clip["output"]["video"]["uri"])

    listed = stack.client.get("/v1/jobs", params={"user_id": stack.user_id, "task": "render_emotion"}).json()
    assert [job["id"] for job in listed] == [done["id"]]
    completed = stack.client.get("/v1/jobs", params={"user_id": stack.user_id, "status": "completed"}).json()
    assert {job["id"] for job in completed} == {done["id"], clip["id"]}
    stats = stack.emulator.stats()
    assert stats["submitted"] == stats["executed"] == 2 and stats["completed"] == 2


def test_seed_render_route_through_the_emulator(make_stack: StackFactory) -> None:
    stack = make_stack()
    files = {"source_image": ("portrait.png", PORTRAIT, "image/png")}
    answer = stack.client.post("/render", files=files, data={"emotion": "sad", "user_id": stack.user_id})
    assert answer.status_code == 200, answer.text
    assert answer.json()["output_path"].startswith("s3://") and stack.object_exists(answer.json()["output_path"])
    download = stack.client.get(f"/output/{answer.json()['filename']}")
    assert download.status_code == 200 and download.content[:4] == b"\x89PNG"
    assert stack.client.delete(f"/output/{answer.json()['filename']}").status_code == 200
    assert not stack.object_exists(answer.json()["output_path"])


def test_webhook_completes_the_job_while_polling_is_slow(make_stack: StackFactory) -> None:
    stack = make_stack(webhooks=True)
    image = stack.upload_portrait()
    job = stack.client.post("/v1/emotions", json={"user_id": stack.user_id, "image": image, "emotion": "angry"}).json()
    assert job["remote_id"]
    done = stack.finished(job["id"], 30)  # the poller would not look before 60 s
    assert done["status"] == "completed" and done["output"]["renders"][0]["emotion"] == "angry"
    # the emulator counts a delivery once our 200 reaches it, a moment after the job was updated
    eventually(lambda: stack.emulator.stats().get("webhooks_delivered", 0) == 1, 10)
    replay = stack.client.post(f"/v1/webhooks/runpod/{job['id']}?token=wrong", json={"status": "FAILED"})
    assert replay.status_code == 403 and replay.json()["error_code"] == "webhook_rejected"
    assert stack.client.get(f"/v1/jobs/{job['id']}").json()["status"] == "completed"


def test_cancel_a_queued_job_cancels_it_on_runpod(make_stack: StackFactory) -> None:
    stack = make_stack()
    stack.emulator.faults.hold_queue = True
    job = stack.client.post("/v1/jobs", json={"task": "health"}).json()
    assert job["remote_id"] and job["status"] == "queued"
    cancelled = stack.client.delete(f"/v1/jobs/{job['id']}")
    assert cancelled.status_code == 200 and cancelled.json()["status"] == "cancelled"
    assert stack.emulator.jobs[job["remote_id"]].status == "CANCELLED"
    stack.emulator.faults.hold_queue = False
    assert stack.client.get(f"/v1/jobs/{job['id']}").json()["status"] == "cancelled"
