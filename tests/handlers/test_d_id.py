"""`engine: d-id` through handlers.dispatch against a local fake of D-ID's talks API (tests/handlers/fake_did.py).

The store is moto's S3 server, so the portrait and the audio get real signed URLs that the fake downloads as
D-ID would; the result comes back through the fetch layer. No call reaches the real service.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterator
from pathlib import Path

import boto3
import httpx
import pytest
from pydantic import SecretStr

from engines.codecs.audio import write_wav
from engines.codecs.video_out import Mp4Writer
from handlers import dispatch
from handlers.hosted_video import rendezvous_key, webhook_token
from handlers.runtime import WorkerRuntime
from orchestrator.devtools.background_server import BackgroundServer
from tests.handlers.fake_did import FakeDid
from tests.media import astronaut_bgr, tone

KEY = "YWJjQGV4YW1wbGUuY29t:s3cr3tPa55w0rd"  # shaped like an issued key: base64(user):password
USER = "u1"


@pytest.fixture(scope="module")
def result_mp4(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    path = tmp_path_factory.mktemp("did") / "result.mp4"
    with Mp4Writer(path, 64, 48, audio=tone(0.4)) as writer:
        for _ in range(10):
            writer.write(astronaut_bgr(64)[:48])
    writer.close()
    return path.read_bytes()


@pytest.fixture
def fake(result_mp4: bytes) -> Iterator[FakeDid]:
    fake = FakeDid(key=KEY, result_mp4=result_mp4)
    with BackgroundServer(fake.app()) as server:
        fake.url = server.url
        yield fake


@pytest.fixture
def did_runtime(runtime: WorkerRuntime, s3_env: str, s3_bucket: str, fake: FakeDid) -> WorkerRuntime:
    """Inputs and outputs in moto's S3 (signed URLs), D-ID at the fake; private addresses allowed (127.0.0.1)."""
    storage_settings = runtime.settings.storage.model_copy(
        update={
            "allow_private_urls": True,
            "s3_endpoint_url": s3_env,
            "s3_region": "us-east-1",
            "s3_access_key_id": "testing",
            "s3_secret_access_key": "testing",
        }
    )
    settings = runtime.settings.model_copy(
        update={
            "avatar_store_uri": s3_bucket,
            "storage": storage_settings,
            "did_api_key": SecretStr(KEY),
            "did_base_url": fake.url,
            "did_poll_interval_s": 0.05,
            "did_poll_max_interval_s": 0.2,
            "did_timeout_s": 20.0,
        }
    )
    return runtime.with_settings(settings)


def s3_keys(bucket: str) -> list[str]:
    import os

    client = boto3.client("s3", endpoint_url=os.environ["S3_ENDPOINT_URL"], region_name="us-east-1")
    return sorted(o["Key"] for o in client.list_objects_v2(Bucket=bucket.removeprefix("s3://")).get("Contents", []))


@pytest.fixture
def inputs(did_runtime: WorkerRuntime, s3_bucket: str, tmp_path: Path) -> dict[str, str]:
    """A portrait and a speech file uploaded to the bucket (inputs from the store pass any prefix rule)."""
    import cv2

    from storage import open_store

    store = open_store(s3_bucket, did_runtime.settings.storage)
    cv2.imwrite(str(tmp_path / "face.png"), astronaut_bgr(256))
    write_wav(tmp_path / "speech.wav", tone(0.5), 16000)
    store.put(tmp_path / "face.png", "uploads/u1/face.png")
    store.put(tmp_path / "speech.wav", "uploads/u1/speech.wav")
    return {"image": f"{s3_bucket}/uploads/u1/face.png", "audio": f"{s3_bucket}/uploads/u1/speech.wav"}


def request(inputs: dict[str, str], **fields: object) -> dict[str, object]:
    return {"task": "generate_video", "user_id": USER, "engine": "d-id", **inputs, **fields}


def test_a_talk_is_created_polled_and_its_mp4_stored(
    did_runtime: WorkerRuntime, fake: FakeDid, inputs: dict[str, str], s3_bucket: str
) -> None:
    result = dispatch(request(inputs, video_id="v1"), did_runtime)
    assert "error" not in result, result
    assert result["engine"]["name"] == "d-id" and result["engine"]["talk_id"] == "tlk_000001"
    assert result["video"]["uri"] == f"{s3_bucket}/generated-videos/{USER}/v1.mp4"
    assert (result["width"], result["height"], result["fps"]) == (64, 48, 25.0) and result["num_frames"] == 10
    assert fake.auth_headers == [f"Basic {KEY}"]  # the key as issued, not re-encoded
    assert fake.fetched["source_url"][:2] == b"\xff\xd8" and fake.fetched["audio_url"][:4] == b"RIFF"
    assert fake.polls >= 2  # created -> started -> done, followed by polling
    assert s3_keys(s3_bucket) == sorted(  # the staged inputs are gone; the result is where every engine puts it
        ["generated-videos/u1/v1.mp4", "uploads/u1/face.png", "uploads/u1/speech.wav"]
    )


def test_text_is_spoken_by_our_tts_first(did_runtime: WorkerRuntime, fake: FakeDid, inputs: dict[str, str]) -> None:
    result = dispatch(request({"image": inputs["image"]}, text="Hello there."), did_runtime)
    assert "error" not in result, result
    assert fake.fetched["audio_url"][:4] == b"RIFF" and len(fake.fetched["audio_url"]) > 16000  # > 0.5 s of speech


def test_the_webhook_wakes_the_worker_through_the_store(
    did_runtime: WorkerRuntime, fake: FakeDid, inputs: dict[str, str], s3_bucket: str, tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    from orchestrator.api import create_app
    from orchestrator.core.config import OrchestratorSettings

    monkeypatch.setenv("AVATAR_STORE_URI", s3_bucket)
    settings = OrchestratorSettings(database_url=f"sqlite:///{tmp_path / 'jobs.db'}", webhook_secret="hook-secret")
    with BackgroundServer(create_app(settings=settings)) as orchestrator:
        worker = did_runtime.with_settings(
            did_runtime.settings.model_copy(
                update={
                    "public_base_url": orchestrator.url,
                    "webhook_secret": SecretStr("hook-secret"),
                    "did_poll_interval_s": 30.0,  # polling alone would take 30 s
                    "did_poll_max_interval_s": 30.0,
                }
            )
        )
        fake.mode = "webhook"
        started = time.monotonic()
        result = dispatch(request(inputs), worker)
        elapsed = time.monotonic() - started
        forged = httpx.post(f"{orchestrator.url}/v1/webhooks/d-id/{'0' * 32}?token=nope", json={"id": "x"})
    assert "error" not in result, result
    assert elapsed < 15 and fake.webhook_answers == [200] and fake.polls == 1  # woken, then one GET
    assert forged.status_code == 403 and forged.json()["error_code"] == "webhook_rejected"
    assert not [k for k in s3_keys(s3_bucket) if k.startswith(("webhooks/", "hosted/"))]  # the rendezvous is gone


def test_the_webhook_route_records_the_talk_for_the_worker(
    s3_bucket: str, s3_env: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from orchestrator.api import create_app
    from orchestrator.core.config import OrchestratorSettings

    monkeypatch.setenv("AVATAR_STORE_URI", s3_bucket)
    settings = OrchestratorSettings(database_url=f"sqlite:///{tmp_path / 'jobs.db'}", webhook_secret="k")
    nonce = "ab" * 16
    with BackgroundServer(create_app(settings=settings)) as orchestrator:
        url = f"{orchestrator.url}/v1/webhooks/d-id/{nonce}?token={webhook_token('k', nonce)}"
        answer = httpx.post(url, json={"id": "tlk_1", "status": "done", "result_url": "https://x/y.mp4"})
    assert answer.status_code == 200, answer.text
    client = boto3.client("s3", endpoint_url=s3_env, region_name="us-east-1")
    body = client.get_object(Bucket=s3_bucket.removeprefix("s3://"), Key=rendezvous_key(nonce))["Body"].read()
    assert json.loads(body) == {"id": "tlk_1", "status": "done"}


@pytest.mark.parametrize(
    ("mode", "code", "words"),
    [
        ("error", "did_failed", "FaceError: no face in the source image"),
        ("rejected", "did_rejected", "ModerationError"),
        ("http_401", "did_auth_failed", "DID_API_KEY"),
        ("http_402", "did_insufficient_credits", "credits"),
        ("http_429", "did_rate_limited", "after 3 attempts"),
        ("never", "did_timeout", "DID_TIMEOUT_S"),
    ],
)
def test_each_failure_has_its_code_and_never_shows_the_key(
    did_runtime: WorkerRuntime, fake: FakeDid, inputs: dict[str, str], s3_bucket: str,
    caplog: pytest.LogCaptureFixture, mode: str, code: str, words: str,
) -> None:  # fmt: skip
    fake.mode = mode
    runtime = did_runtime.with_settings(did_runtime.settings.model_copy(update={"did_timeout_s": 1.0}))
    with caplog.at_level(logging.DEBUG):
        result = dispatch(request(inputs), runtime)
    assert result["error_code"] == code and words in result["error"], result
    assert "s3cr3tPa55w0rd" not in result["error"] and "s3cr3tPa55w0rd" not in caplog.text
    assert not [k for k in s3_keys(s3_bucket) if not k.startswith("uploads/")]  # nothing staged or stored is left
    if mode == "http_429":
        assert fake.posts == 3


@pytest.mark.parametrize(
    ("storage_update", "words"),
    [
        ({"allowed_input_prefixes": "https://results.example.com/"}, "ALLOWED_INPUT_PREFIXES"),
        ({"allow_private_urls": False}, "loopback"),
    ],
)
def test_a_result_url_the_fetch_rules_forbid_is_refused(
    did_runtime: WorkerRuntime, fake: FakeDid, inputs: dict[str, str], storage_update: dict, words: str
) -> None:
    storage_settings = did_runtime.settings.storage.model_copy(update=storage_update)
    runtime = did_runtime.with_settings(did_runtime.settings.model_copy(update={"storage": storage_settings}))
    result = dispatch(request(inputs), runtime)
    assert result["error_code"] == "url_refused", result
    assert "D-ID's result_url" in result["error"] and words in result["error"]


def test_unconfigured_and_unusable_setups_are_refused(
    runtime: WorkerRuntime, did_runtime: WorkerRuntime, inputs: dict[str, str], tmp_path: Path
) -> None:
    no_key = did_runtime.with_settings(did_runtime.settings.model_copy(update={"did_api_key": None}))
    assert dispatch(request(inputs), no_key)["error_code"] == "did_not_configured"
    local = runtime.with_settings(runtime.settings.model_copy(update={"did_api_key": SecretStr(KEY)}))
    import cv2

    cv2.imwrite(str(tmp_path / "p.png"), astronaut_bgr(128))
    result = dispatch(request({"image": (tmp_path / "p.png").as_uri()}, text="Hi."), local)
    assert result["error_code"] == "did_needs_signed_urls" and "file://" in result["error"], result
    for fields in ({"avatar_id": "a1", "image": None}, {"stream": True}, {"face_index": 1}):
        payload = {k: v for k, v in request(inputs, **fields).items() if v is not None}
        refused = dispatch(payload, did_runtime)
        assert refused["error_code"] == "invalid_input" and "`engine: d-id` animates one portrait" in refused["error"]


def test_seed002_avatar_provider_d_id_renders_generate_with_d_id(
    fake: FakeDid, s3_env: str, s3_bucket: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Seed 002's orchestrator switch: AVATAR_PROVIDER=d-id sends POST /generate to D-ID (local worker processes
    read DID_* from the environment, like a deployed worker)."""
    import base64

    import cv2

    from orchestrator.api import create_app
    from orchestrator.core.config import OrchestratorSettings

    for name, value in {
        "AVATAR_STORE_URI": s3_bucket,
        "DID_API_KEY": KEY,
        "DID_BASE_URL": fake.url,
        "DID_POLL_INTERVAL_S": "0.05",
        "ALLOW_PRIVATE_URLS": "1",
        "AVATAR_PROVIDER": "d-id",
    }.items():
        monkeypatch.setenv(name, value)
    settings = OrchestratorSettings(database_url=f"sqlite:///{tmp_path / 'jobs.db'}")
    assert settings.avatar_provider == "d-id"
    image = base64.b64encode(cv2.imencode(".png", astronaut_bgr(128))[1].tobytes()).decode()
    write_wav(tmp_path / "s.wav", tone(0.3), 16000)
    audio = base64.b64encode((tmp_path / "s.wav").read_bytes()).decode()
    with BackgroundServer(create_app(settings=settings, sync_wait_s=120)) as server:
        answer = httpx.post(f"{server.url}/generate", json={"image_b64": image, "audio_b64": audio}, timeout=180)
        job = httpx.get(f"{server.url}/v1/jobs/{answer.json().get('job_id')}", timeout=10).json()
    assert answer.status_code == 200 and answer.json()["status"] == "completed", answer.text
    assert job["input"]["engine"] == "d-id" and job["output"]["engine"]["talk_id"] == "tlk_000001"
    assert answer.json()["video_url"].startswith(s3_env)  # a signed URL of the mp4 in the bucket


def test_health_says_whether_d_id_is_configured(runtime: WorkerRuntime, did_runtime: WorkerRuntime) -> None:
    configured = dispatch({"task": "health"}, did_runtime)["tasks"]["generate_video"]["hosted"]["d-id"]
    assert configured == {"configured": True, "base_url": did_runtime.settings.did_base_url, "webhook": False}
    assert KEY not in json.dumps(dispatch({"task": "health"}, did_runtime))
    assert dispatch({"task": "health"}, runtime)["tasks"]["generate_video"]["hosted"]["d-id"]["configured"] is False
