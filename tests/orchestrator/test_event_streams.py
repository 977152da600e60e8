"""GET /v1/jobs/{id}/events under load and abuse (issue 20) and its ordering (issue 26), against uvicorn:
streams wait without holding threads (health and job routes stay responsive with 100 open), are capped per
tenant, end after their lifetime, and a streamed video's `completed` comes after every segment."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from engines.codecs.segments import hls_playlist
from handlers.settings import Settings
from orchestrator.api import create_app
from orchestrator.core.config import OrchestratorSettings
from orchestrator.core.service import JobService
from orchestrator.devtools.background_server import BackgroundServer
from storage.keys import stream_key
from storage.local import path_from_file_uri
from tests.orchestrator.conftest import ENDPOINT_ID, RunningEmulator, eventually
from tests.orchestrator.stream_flood import open_streams, p95_ms, route_latencies

OPERATOR = {"Authorization": "Bearer operator-token"}
ALICE = {"Authorization": "Bearer alice-token"}
BOB = {"Authorization": "Bearer bob-token"}


@dataclass
class StreamApi:
    url: str
    service: JobService
    app: object

    @property
    def streams(self):  # noqa: ANN201 - EventStreams
        return self.app.state.context.streams  # type: ignore[attr-defined]


@contextmanager
def serve(tmp_path: Path, emulator: RunningEmulator | None = None, **overrides: object) -> Iterator[StreamApi]:
    remote = {}
    if emulator is not None:  # health and emotion jobs on the emulator (whose queue the tests hold)
        remote = {"runpod_base_url": emulator.base_url, "backend_health": f"runpod:{ENDPOINT_ID}"}
        remote["backend_render_emotion"] = f"runpod:{ENDPOINT_ID}"
    settings = OrchestratorSettings(
        database_url=f"sqlite:///{tmp_path / 'jobs.db'}",
        api_token="operator-token",
        tenant_tokens={"alice-token": ["alice"], "bob-token": ["bob"]},
        poll_interval_s=0.2,
        **remote,
        **overrides,  # type: ignore[arg-type]
    )
    service = JobService(settings)
    app = create_app(service)
    with BackgroundServer(app) as server:
        yield StreamApi(server.url, service, app)
    service.stop()


@pytest.fixture
def held_job_api(tmp_path: Path, emulator: RunningEmulator) -> Iterator[StreamApi]:
    """The API with health jobs on the RunPod emulator, whose workers take nothing: jobs stay queued."""
    emulator.emulator.faults.hold_queue = True
    with serve(tmp_path, emulator, event_streams_per_tenant=128, max_event_streams=128) as api:
        yield api


def queued_job(api: StreamApi, who: dict[str, str] = OPERATOR, user_id: str | None = None) -> str:
    body = {"task": "render_emotion", "user_id": user_id, "image": "data:,x", "emotion": "happy"}
    if user_id is None:
        body = {"task": "health"}
    answer = httpx.post(f"{api.url}/v1/jobs", json=body, headers=who, timeout=30)
    assert answer.status_code == 202, answer.text
    return answer.json()["id"]


def test_health_and_job_routes_stay_responsive_with_100_open_streams(held_job_api: StreamApi) -> None:
    """Class: event streams exhausting the server's threads: 100 open streams on a queued job hold no worker
    thread, and /healthz and GET /v1/jobs keep answering quickly (a behaviour bound, not a benchmark)."""
    api = held_job_api
    job_id = queued_job(api)
    with open_streams(api.url, job_id, OPERATOR, 100) as flood:
        assert flood.opened == 100 and not flood.errors, flood
        assert api.streams.count() == 100
        latencies = route_latencies(api.url, OPERATOR)
        health, jobs = p95_ms(latencies["/healthz"]), p95_ms(latencies["/v1/jobs"])
        print(f"\nwith 100 open streams: /healthz p95 {health:.0f} ms, GET /v1/jobs p95 {jobs:.0f} ms")
        assert health < 1000 and jobs < 1000
    eventually(lambda: api.streams.count() == 0, 10)  # every slot given back once the clients left


def test_event_streams_are_capped_per_tenant(tmp_path: Path, emulator: RunningEmulator) -> None:
    """Class: subscribers per tenant capped (EVENT_STREAMS_PER_TENANT): the next one is 429 too_many_streams,
    other tenants are unaffected, and a closed stream frees its slot."""
    emulator.emulator.faults.hold_queue = True
    with serve(tmp_path, emulator, event_streams_per_tenant=3) as api:
        alices = queued_job(api, ALICE, "alice")
        bobs = queued_job(api, BOB, "bob")
        with httpx.Client(base_url=api.url, timeout=30) as client:
            held = [client.stream("GET", f"/v1/jobs/{alices}/events", headers=ALICE) for _ in range(3)]
            responses = [stream.__enter__() for stream in held]
            assert all(r.status_code == 200 for r in responses)
            refused = client.get(f"/v1/jobs/{alices}/events", headers=ALICE)
            assert refused.status_code == 429 and refused.json()["error_code"] == "too_many_streams"
            assert "Retry-After" in refused.headers
            with client.stream("GET", f"/v1/jobs/{bobs}/events", headers=BOB) as other:
                assert other.status_code == 200
            held[0].__exit__(None, None, None)
            eventually(lambda: api.streams.count("tenant:alice") == 2, 10)
            with client.stream("GET", f"/v1/jobs/{alices}/events", headers=ALICE) as again:
                assert again.status_code == 200
            for stream in held[1:]:
                stream.__exit__(None, None, None)


def test_a_stream_ends_after_its_maximum_lifetime(tmp_path: Path, emulator: RunningEmulator) -> None:
    """Class: streams without an end (EVENT_STREAM_MAX_S): a stream on a job that never finishes ends with an
    `expired` event and gives its slot back."""
    emulator.emulator.faults.hold_queue = True
    with serve(tmp_path, emulator, event_stream_max_s=1.0) as api:
        job_id = queued_job(api)
        started = time.monotonic()
        names = []
        with httpx.stream("GET", f"{api.url}/v1/jobs/{job_id}/events", headers=OPERATOR, timeout=30) as response:
            names = [line[7:] for line in response.iter_lines() if line.startswith("event: ")]
        assert names[0] == "progress" and names[-1] == "expired"
        assert time.monotonic() - started < 10
        eventually(lambda: api.streams.count() == 0, 10)


def test_completed_comes_after_every_segment_even_when_the_playlist_lags(
    tmp_path: Path, local_settings: Settings
) -> None:
    """Issue 26, event ordering: a job whose row says completed before its store shows the playlist's last
    segments (a webhook faster than the store) still relays every segment before `completed`."""
    with serve(tmp_path) as api:
        job = api.service.store.create(
            task="generate_video",
            user_id="u1",
            status="completed",
            backend="local",
            input={"task": "generate_video", "user_id": "u1", "video_id": "v1", "stream": True},
            output={"video_id": "v1"},
        )
        root = path_from_file_uri(local_settings.avatar_store_uri)
        playlist = root / stream_key("u1", "v1", "index.m3u8")
        playlist.parent.mkdir(parents=True)

        def write(count: int, ended: bool, playlist: Path = playlist) -> None:
            segments = [(f"segment_{i:05d}.m4s", 1.0) for i in range(count)]
            staged = playlist.with_suffix(".tmp")
            staged.write_text(hls_playlist(segments, "init.mp4", 1, ended))
            staged.replace(playlist)

        write(2, ended=False)
        threading.Timer(1.0, write, (5, True)).start()
        events = []
        with httpx.stream("GET", f"{api.url}/v1/jobs/{job.id}/events", headers=OPERATOR, timeout=30) as response:
            name = None
            for line in response.iter_lines():
                if line.startswith("event: "):
                    name = line[7:]
                elif line.startswith("data: "):
                    events.append((name, json.loads(line[6:])))
        names = [name for name, _ in events]
        assert names[-1] == "completed" and names.count("completed") == 1
        assert [data["index"] for name, data in events if name == "segment"] == [0, 1, 2, 3, 4]
