"""The HTTP API's tenancy and limits (issue 11): per-tenant tokens on every job and output route,
ALLOWED_INPUT_PREFIXES at submit, request body limits, large `data:` inputs stored by URI, paged listing."""

from __future__ import annotations

import base64
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from handlers.settings import Settings
from orchestrator.api import create_app
from orchestrator.core.config import OrchestratorSettings
from orchestrator.core.service import JobService
from orchestrator.devtools.background_server import BackgroundServer
from storage.local import path_from_file_uri
from tests.orchestrator.test_api import PORTRAIT

OPERATOR = {"Authorization": "Bearer operator-token"}
ALICE = {"Authorization": "Bearer alice-token"}
BOB = {"Authorization": "Bearer bob-token"}
CDN = "https://cdn.example.com/"


@dataclass
class Api:
    url: str
    service: JobService
    store_root: Path

    def call(
        self, method: str, path: str, who: dict[str, str], headers: dict[str, str] | None = None, **kwargs: object
    ) -> httpx.Response:
        headers = {**who, **(headers or {})}
        return httpx.request(method, self.url + path, headers=headers, timeout=30, **kwargs)  # type: ignore[arg-type]


@pytest.fixture
def api(tmp_path: Path, local_settings: Settings) -> Iterator[Api]:
    settings = OrchestratorSettings(
        database_url=f"sqlite:///{tmp_path / 'jobs.db'}",
        api_token="operator-token",
        tenant_tokens={"alice-token": ["alice"], "bob-token": ["bob"]},
        allowed_input_prefixes=f"{CDN}, s3://tenant-bucket/",
        max_request_bytes=64 * 1024,
        max_inline_data_bytes=1024,
        queue_timeout_s=0,  # submitted jobs time out at once: these tests need no worker to run them
        emotion_timeout_s=0.01,
    )
    service = JobService(settings)
    with BackgroundServer(create_app(service)) as server:
        yield Api(server.url, service, path_from_file_uri(local_settings.avatar_store_uri))
    service.stop()


def bobs_render(api: Api) -> tuple[str, Path]:
    """A completed render job of bob's, and its file in the store."""
    job = api.service.store.create(
        task="render_emotion", user_id="bob", status="completed", backend="local", input={"task": "render_emotion"}
    )
    path = api.store_root / "emotions" / "bob" / f"{job.id}_happy.png"
    path.parent.mkdir(parents=True)
    path.write_bytes(PORTRAIT)
    return job.id, path


def test_tenants_cannot_see_cancel_or_read_other_users_jobs_and_outputs(api: Api) -> None:
    job_id, render = bobs_render(api)
    output = f"/output/{job_id}_happy.png"
    for method, path in [("GET", f"/v1/jobs/{job_id}"), ("DELETE", f"/v1/jobs/{job_id}")]:
        assert api.call(method, path, ALICE).json()["error_code"] == "job_not_found", path
    assert api.call("GET", f"/v1/jobs/{job_id}/events", ALICE).status_code == 404
    assert api.call("GET", output, ALICE).status_code == 404
    assert api.call("DELETE", output, ALICE).status_code == 404 and render.exists()
    assert api.call("GET", "/v1/jobs", ALICE).json() == []
    assert api.call("GET", "/v1/jobs", ALICE, params={"user_id": "bob"}).status_code == 403
    assert api.call("GET", output, BOB).content == PORTRAIT
    assert [j["id"] for j in api.call("GET", "/v1/jobs", BOB).json()] == [job_id]
    assert api.call("GET", f"/v1/jobs/{job_id}", OPERATOR).json()["status"] == "completed"
    assert api.call("GET", "/v1/jobs", {"Authorization": "Bearer guess"}).status_code == 401


def test_tenants_act_only_for_their_own_users(api: Api) -> None:
    body = {"user_id": "bob", "image": CDN + "face.png", "emotion": "happy"}
    refused = api.call("POST", "/v1/emotions", ALICE, json=body)
    assert refused.status_code == 403 and refused.json()["error_code"] == "forbidden"
    assert api.call("POST", "/v1/emotions", ALICE, json={**body, "user_id": "alice"}).status_code == 202
    assert api.call("POST", "/v1/jobs", ALICE, json={"task": "health"}).status_code == 403
    files = {"file": ("face.png", PORTRAIT, "image/png")}
    upload = api.call("POST", "/v1/uploads", ALICE, files=files, data={"user_id": "bob", "kind": "image"})
    assert upload.status_code == 403
    seed = {"source_image": ("face.png", PORTRAIT, "image/png")}
    assert api.call("POST", "/render", ALICE, files=seed, data={"user_id": "bob"}).status_code == 403
    generate = {"image_url": CDN + "a.png", "audio_url": CDN + "a.wav", "user_id": "bob"}
    assert api.call("POST", "/generate", ALICE, json=generate).status_code == 403
    assert list((api.store_root / "uploads").glob("bob/*")) == []


def test_inputs_outside_the_allowed_prefixes_are_refused(api: Api) -> None:
    def submit(image: str, who: dict[str, str] = ALICE) -> httpx.Response:
        return api.call("POST", "/v1/emotions", who, json={"user_id": "alice", "image": image, "emotion": "sad"})

    elsewhere = submit("s3://someone-elses-bucket/face.png")
    assert elsewhere.status_code == 422 and elsewhere.json()["error_code"] == "url_refused"
    assert "ALLOWED" not in elsewhere.json()["error"] and CDN in elsewhere.json()["error"]
    assert submit(CDN + "face.png").status_code == 202 and submit("s3://tenant-bucket/a/face.png").status_code == 202
    files = {"file": ("face.png", PORTRAIT, "image/png")}
    own = api.call("POST", "/v1/uploads", ALICE, files=files, data={"user_id": "alice", "kind": "image"})
    assert submit(own.json()["uri"]).status_code == 202  # a user's own uploads are always readable
    bobs = api.call("POST", "/v1/uploads", BOB, files=files, data={"user_id": "bob", "kind": "image"})
    assert submit(bobs.json()["uri"]).json()["error_code"] == "url_refused"


def test_request_bodies_over_the_limit_are_413(api: Api) -> None:
    big = {"user_id": "alice", "image": "data:image/png;base64," + "A" * 70_000, "emotion": "happy"}
    declared = api.call("POST", "/v1/emotions", ALICE, json=big)
    assert declared.status_code == 413 and declared.json()["error_code"] == "too_large"
    assert "65536 bytes" in declared.json()["error"]

    def chunks() -> Iterator[bytes]:  # no Content-Length: counted as it streams in
        yield b'{"user_id": "alice", "emotion": "happy", "image": "data:image/png;base64,'
        for _ in range(80):
            yield b"A" * 1000
        yield b'"}'

    streamed = api.call("POST", "/v1/emotions", ALICE, content=chunks(), headers={"content-type": "application/json"})
    assert streamed.status_code == 413 and streamed.json()["error_code"] == "too_large"
    assert api.call("GET", "/v1/jobs", OPERATOR).json() == []


def test_large_data_inputs_are_stored_and_referenced_by_uri(api: Api) -> None:
    image = "data:image/png;base64," + base64.b64encode(PORTRAIT[:3000]).decode()
    body = {"user_id": "alice", "image": image, "emotion": "happy"}
    first = api.call("POST", "/v1/emotions", ALICE, json=body, headers={"Idempotency-Key": "inline-1"})
    assert first.status_code == 202, first.text
    uri = first.json()["input"]["image"]
    assert uri.startswith(api.store_root.as_uri() + "/uploads/alice/") and uri.endswith(".png")
    assert path_from_file_uri(uri).read_bytes() == PORTRAIT[:3000]
    again = api.call("POST", "/v1/emotions", ALICE, json=body, headers={"Idempotency-Key": "inline-1"})
    assert again.json()["id"] == first.json()["id"]  # the same bytes name the same object
    small = {**body, "image": "data:image/png;base64," + base64.b64encode(PORTRAIT[:200]).decode()}
    assert api.call("POST", "/v1/emotions", ALICE, json=small).json()["input"]["image"] == small["image"]


def test_job_listing_is_paged_with_a_cursor_and_capped(api: Api) -> None:
    ids = [
        api.service.store.create(task="health", status="completed", backend="local", input={"task": "health"}).id
        for _ in range(5)
    ]
    seen, cursor = [], None
    while True:
        page = api.call("GET", "/v1/jobs", OPERATOR, params={"limit": 2, **({"cursor": cursor} if cursor else {})})
        assert page.status_code == 200 and len(page.json()) <= 2
        seen += [job["id"] for job in page.json()]
        cursor = page.headers.get("x-next-cursor")
        if cursor is None:
            break
    assert sorted(seen) == sorted(ids) and len(seen) == 5
    assert api.call("GET", "/v1/jobs", OPERATOR, params={"limit": 201}).status_code == 422
    assert api.call("GET", "/v1/jobs", OPERATOR, params={"cursor": "bm9wZQ"}).json()["error_code"] == "invalid_cursor"
