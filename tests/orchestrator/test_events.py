"""GET /v1/jobs/{id}/events under uvicorn: progress, a streamed video's segments while it renders, the end;
and `avatarctl generate --follow`."""

# ruff: noqa: F811  (the API and CLI fixtures are imported from their own test modules and named as parameters)

from __future__ import annotations

import json
import time
from datetime import datetime
from pathlib import Path

import httpx
import pytest

import runpod_handler
from handlers.settings import Settings
from orchestrator.core.config import OrchestratorSettings
from orchestrator.core.events import job_events
from orchestrator.core.service import JobService
from orchestrator.devtools.emulator import BackgroundServer, create_emulator_app
from storage.local import path_from_file_uri
from tests.media import coffee_bgr
from tests.orchestrator.conftest import ENDPOINT_ID
from tests.orchestrator.test_api import PORTRAIT, Api, api, png_bytes  # noqa: F401  (api is a fixture)
from tests.orchestrator.test_cli import cli_env, invoke  # noqa: F401  (cli_env is a fixture)

TEXT = "Each segment is relayed as soon as the worker has stored it, long before the video is finished."


def upload_portrait(api: Api, image: bytes = PORTRAIT) -> str:
    files = {"file": ("portrait.png", image, "image/png")}
    answer = api.client.post("/v1/uploads", files=files, data={"user_id": "sse-user", "kind": "image"})
    assert answer.status_code == 201, answer.text
    return answer.json()["uri"]


def follow(api: Api, job_id: str) -> list[tuple[str, dict, float]]:
    """(event, data, arrival time) of every event until the server ends the stream."""
    events, name = [], None
    with api.client.stream("GET", f"/v1/jobs/{job_id}/events", timeout=120) as response:
        assert response.status_code == 200 and response.headers["content-type"].startswith("text/event-stream")
        for line in response.iter_lines():
            if line.startswith("event: "):
                name = line[len("event: ") :]
            elif line.startswith("data: "):
                events.append((name, json.loads(line[len("data: ") :]), time.time()))
    return events


def test_a_streamed_video_relays_its_segments_then_completes(api: Api) -> None:
    body = {"user_id": "sse-user", "image": upload_portrait(api), "text": TEXT, "stream": True}
    job = api.client.post("/v1/videos", json=body).json()
    events = follow(api, job["id"])

    names = [name for name, _, _ in events]
    assert names[0] == "progress" and names[-1] == "completed" and names.count("completed") == 1
    segments = [data for name, data, _ in events if name == "segment"]
    assert [s["index"] for s in segments] == list(range(len(segments))) and len(segments) >= 4
    output = events[-1][1]["output"]
    assert sum(s["duration_s"] for s in segments) == pytest.approx(output["duration_s"], abs=1e-3)
    assert all(s["playlist_uri"] == output["playlist"]["uri"] for s in segments)
    assert all((api.store_root / s["uri"].split("/store/", 1)[1]).is_file() for s in segments)
    fractions = [data["fraction"] for name, data, _ in events if name == "progress" and data["fraction"] is not None]
    assert fractions == sorted(fractions)

    finished_at = datetime.fromisoformat(api.client.get(f"/v1/jobs/{job['id']}").json()["finished_at"]).timestamp()
    first_segment_at = next(at for name, _, at in events if name == "segment")
    assert first_segment_at < finished_at  # relayed while the video was still rendering


def test_plain_and_failed_jobs_end_with_their_status(api: Api) -> None:
    plain = api.client.post("/v1/videos", json={"user_id": "sse-user", "image": upload_portrait(api), "text": "Hi."})
    events = follow(api, plain.json()["id"])
    assert "segment" not in [name for name, _, _ in events]
    assert events[-1][0] == "completed" and "playlist" not in events[-1][1]["output"]

    no_face = upload_portrait(api, png_bytes(coffee_bgr()))
    body = {"user_id": "sse-user", "image": no_face, "text": "Hi.", "stream": True}
    failed = api.client.post("/v1/videos", json=body)
    name, data, _ = follow(api, failed.json()["id"])[-1]
    assert name == "failed" and data["error_code"] == "no_face"


def test_unknown_job_is_not_found(api: Api) -> None:
    answer = api.client.get("/v1/jobs/nope/events")
    assert answer.status_code == 404 and answer.json()["error_code"] == "job_not_found"
    assert httpx.get(f"{api.url}/v1/jobs/nope/events").status_code == 401  # behind the token like every job route


def test_avatarctl_generate_follow_prints_segments_as_they_are_stored(cli_env: Settings, tmp_path: Path) -> None:
    portrait = tmp_path / "portrait.png"
    portrait.write_bytes(PORTRAIT)
    args = ["generate", "--image", str(portrait), "--text", TEXT, "--user-id", "cli-user", "--follow"]
    result = invoke(*args)
    assert result.exit_code == 0, result.output
    lines = [line.split() for line in result.stdout.splitlines() if line.startswith("segment ")]
    assert [int(parts[1]) for parts in lines] == list(range(len(lines))) and len(lines) >= 4
    assert all(Path(parts[-1]).is_file() and parts[-1].endswith(".m4s") for parts in lines)
    assert "completed" in result.stdout and "video:" in result.stdout
    as_json = invoke(*args, "--json")
    segments = [json.loads(line) for line in as_json.stdout.splitlines() if line.startswith('{"index"')]
    assert len(segments) == len(lines) and segments[0]["playlist_uri"].endswith("/stream/index.m3u8")


def test_a_runpod_generator_worker_is_relayed_the_same_way(local_settings: Settings, tmp_path: Path) -> None:
    """The RunPod emulator runs our worker's generator handler (WORKER_STREAM=1): /status answers the aggregate."""
    app = create_emulator_app(
        [ENDPOINT_ID],
        workers=1,
        handler=runpod_handler.stream_handler,
        return_aggregate_stream=True,
    )
    portrait = path_from_file_uri(local_settings.avatar_store_uri) / "portrait.png"
    portrait.write_bytes(PORTRAIT)
    with BackgroundServer(app) as server:
        settings = OrchestratorSettings(
            database_url=f"sqlite:///{tmp_path / 'jobs.db'}",
            backend_generate_video=f"runpod:{ENDPOINT_ID}",
            runpod_base_url=f"{server.url}/v2",
            poll_interval_s=0.05,
            poll_max_interval_s=0.2,
        )
        service = JobService(settings)
        try:
            body = {"user_id": "rp-user", "image": portrait.as_uri(), "text": TEXT, "stream": True}
            job = service.submit("generate_video", body)
            events = [event for event in job_events(service, job.id, poll_s=0.05) if event is not None]
        finally:
            service.stop()
    segments = [event.data for event in events if event.name == "segment"]
    assert events[-1].name == "completed" and len(segments) >= 4
    output = events[-1].data["output"]  # the result, not RunPod's list of every item
    assert output["video_id"] == job.id and output["playlist"]["uri"] == segments[0]["playlist_uri"]
    assert sum(s["duration_s"] for s in segments) == pytest.approx(output["duration_s"], abs=1e-3)
