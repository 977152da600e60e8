"""The seeds' clients, replayed: each request as seed 004's LivePortraitClient.ts (and its README) or seed 002's
orchestrator sends it, checking the fields those clients read."""

from __future__ import annotations

import json

import cv2
import httpx
import numpy as np

from storage.local import path_from_file_uri
from tests.orchestrator import test_api
from tests.orchestrator.test_api import PORTRAIT, Api, wav_bytes

api = test_api.api  # the API under uvicorn (local backend, file:// store, SQLite)

# LivePortraitClient.ts reads these (camelCase) from a render; its server's README lists the snake_case ones.
CLIENT_RENDER_FIELDS = ("outputPath", "filename", "emotion", "intensity", "latencyMs", "gpuUsed", "modelVersion")
README_RENDER_FIELDS = ("output_path", "filename", "emotion", "intensity", "latency_ms", "gpu_used", "model_version")
# The client appends a Buffer as a Blob without a type, named image.png (here a JPEG's bytes).
PORTRAIT_JPEG = cv2.imencode(".jpg", cv2.imdecode(np.frombuffer(PORTRAIT, np.uint8), cv2.IMREAD_COLOR))[1].tobytes()
BUFFER_UPLOAD = {"source_image": ("image.png", PORTRAIT_JPEG, "application/octet-stream")}


def test_seed004_health_has_the_seed_fields_without_a_token(api: Api) -> None:
    health = httpx.get(api.url + "/health").json()  # the seed's service has no auth on /health
    assert health["status"] == "healthy"
    assert health["gpu_available"] is False and health["gpu_name"] is None and health["cuda_version"] is None
    assert health["model_loaded"] is True
    # waitForHealthy(): `status === "healthy" && modelLoaded`; the jest test checks gpuAvailable too
    assert health["modelLoaded"] is True and health["gpuAvailable"] is False
    assert "backends" not in health  # the deployment's details still need the token


def test_seed004_render_without_emotion_renders_neutral(api: Api) -> None:
    answer = api.client.post("/render", files=BUFFER_UPLOAD)  # client.render({sourceImage: buffer})
    assert answer.status_code == 200, answer.text
    render = answer.json()
    assert render["emotion"] == "neutral" and render["intensity"] == 0.7
    for snake, camel in zip(README_RENDER_FIELDS, CLIENT_RENDER_FIELDS, strict=True):
        assert render[snake] == render[camel], camel
    assert render["latencyMs"] > 0 and render["gpuUsed"] is False and render["modelVersion"]
    assert (render["width"], render["height"]) == (256, 256)

    happy = api.client.post("/render", files=BUFFER_UPLOAD, data={"emotion": "happy", "intensity": "0.8"}).json()
    assert (happy["emotion"], happy["intensity"]) == ("happy", 0.8)
    jpg = api.client.post("/render", files=BUFFER_UPLOAD, data={"output_format": "jpg"}).json()
    assert jpg["filename"].endswith(".jpg")

    # downloadOutput / deleteOutput / a download after the delete fails
    download = api.client.get(f"/output/{render['filename']}")
    assert download.status_code == 200 and download.content == path_from_file_uri(render["outputPath"]).read_bytes()
    assert api.client.delete(f"/output/{render['filename']}").status_code == 200
    assert api.client.get(f"/output/{render['filename']}").status_code == 404


def test_seed004_batch_is_an_array_in_the_requested_order(api: Api) -> None:
    repeated = {"emotions": ["neutral", "happy", "sad"], "intensity": "0.7"}  # renderBatch appends each emotion
    batch = api.client.post("/render/batch", files=BUFFER_UPLOAD, data=repeated)
    assert batch.status_code == 200, batch.text
    results = batch.json()
    assert isinstance(results, list) and [r["emotion"] for r in results] == ["neutral", "happy", "sad"]
    assert all(r["latencyMs"] > 0 and r["filename"].endswith(".png") for r in results)

    as_json = api.client.post("/render/batch", files=BUFFER_UPLOAD, data={"emotions": json.dumps(["angry", "fearful"])})
    assert as_json.status_code == 200, as_json.text
    assert [r["emotion"] for r in as_json.json()] == ["angry", "fearful"]
    broken = api.client.post("/render/batch", files=BUFFER_UPLOAD, data={"emotions": '["happy", 3]'})
    assert broken.status_code == 422 and "`emotions`" in broken.json()["error"]


def test_seed004_metrics_names(api: Api) -> None:
    api.client.post("/render", files=BUFFER_UPLOAD)
    api.client.get("/output/nope_happy.png")
    text = httpx.get(api.url + "/metrics").text  # getMetrics(): public, like the seed's
    assert 'liveportrait_requests_total{endpoint="/render",status="200"} 1.0' in text
    assert 'liveportrait_request_duration_seconds_count{endpoint="/render"} 1.0' in text
    assert 'liveportrait_errors_total{endpoint="/output/{filename}",error_code="output_not_found"} 1.0' in text
    assert 'liveportrait_requests_total{endpoint="/v1/jobs"' not in text  # only the seed's routes


def test_seed002_generate_with_urls_answers_video_url(api: Api) -> None:
    uploads = {}
    for kind, name, data in (("image", "face.png", PORTRAIT), ("audio", "speech.wav", wav_bytes())):
        answer = api.client.post("/v1/uploads", files={"file": (name, data)}, data={"user_id": "seed2", "kind": kind})
        uploads[kind] = answer.json()["uri"]
    body = {"image_url": uploads["image"], "audio_url": uploads["audio"]}  # no driver: auto
    resp = api.client.post("/generate", json=body).json()  # the seed's orchestrator reads resp.get("video_url")
    assert resp["status"] == "completed", resp
    video = httpx.get(resp["video_url"])  # a signed URL the seed's clients can download
    assert video.status_code == 200 and video.headers["content-type"] == "video/mp4" and len(video.content) > 1000

    both = api.client.post("/generate", json={**body, "audio_b64": "AAAA"})
    assert both.status_code == 422 and both.json()["status"] == "error"
    assert "`audio_url` or `audio_b64`" in both.json()["message"] and "`input`" not in both.json()["message"]
    assert httpx.get(api.url + "/healthz").json()["ok"] is True  # the seed's GET /healthz → {"ok": true}
