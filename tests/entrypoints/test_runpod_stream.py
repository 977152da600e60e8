"""The RunPod worker as a generator handler (WORKER_STREAM=1), through the SDK's local API server and job runner."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path

import cv2
import pytest

import runpod_handler
from handlers.settings import Settings
from tests.entrypoints.conftest import child_env
from tests.entrypoints.test_runpod_handler import post, serving_worker
from tests.media import astronaut_bgr

SEGMENT_KEYS = {"index", "uri", "url", "duration_s", "playlist_uri", "timings_ms"}


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("store")


@pytest.fixture(scope="module")
def portrait_uri(tmp_path_factory: pytest.TempPathFactory) -> str:
    path = tmp_path_factory.mktemp("media") / "portrait.png"
    cv2.imwrite(str(path), astronaut_bgr(256))
    return path.as_uri()


@pytest.fixture(scope="module")
def stream_server(store: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """`WORKER_STREAM=1 python runpod_handler.py --rp_serve_api` on a free port, storing into a file:// store."""
    env = child_env(
        WORKER_STREAM="1",
        AVATAR_STORE_URI=store.as_uri(),
        AVATAR_LOCAL_PATH=str(tmp_path_factory.mktemp("avatars")),
        WORKER_TASKS="generate_video",
    )
    with serving_worker(env, tmp_path_factory.mktemp("logs")) as base:
        yield base


def video_job(portrait_uri: str, video_id: str) -> dict:
    return {
        "task": "generate_video",
        "user_id": "rp-user",
        "image": portrait_uri,
        "text": "Segments arrive one by one.",
        "video_id": video_id,
        "stream": True,
    }


def test_stream_delivers_one_item_per_segment_then_the_result(
    stream_server: str, store: Path, portrait_uri: str
) -> None:
    queued = post(stream_server, "/run", {"input": video_job(portrait_uri, "rp-stream")})
    answer = post(stream_server, f"/stream/{queued['id']}")  # the SDK's local server runs the job here
    assert answer["status"] == "COMPLETED", answer
    *segments, result = [chunk["output"] for chunk in answer["stream"]]
    assert segments and all(set(s) == SEGMENT_KEYS for s in segments)
    assert [s["index"] for s in segments] == list(range(len(segments)))
    assert len(json.dumps(segments[0])) < 600  # small items; the media stays in the store
    prefix = "generated-videos/rp-user/rp-stream"
    assert result["video"]["uri"] == f"{store.as_uri()}/{prefix}.mp4"
    assert result["playlist"]["uri"] == segments[0]["playlist_uri"] == f"{store.as_uri()}/{prefix}/stream/index.m3u8"
    assert sum(s["duration_s"] for s in segments) == pytest.approx(result["duration_s"], abs=1e-3)
    for segment in segments:
        assert (store / prefix / "stream" / Path(segment["uri"]).name).stat().st_size > 0
    assert (store / prefix / "stream" / "index.m3u8").read_text().endswith("#EXT-X-ENDLIST\n")


def test_status_aggregates_the_stream_and_plain_jobs_yield_their_result(stream_server: str, portrait_uri: str) -> None:
    queued = post(stream_server, "/run", {"input": video_job(portrait_uri, "rp-status")})
    done = post(stream_server, f"/status/{queued['id']}")
    assert done["status"] == "COMPLETED"
    assert "index" in done["output"][0] and done["output"][-1]["video_id"] == "rp-status"
    plain = {key: value for key, value in video_job(portrait_uri, "rp-plain").items() if key != "stream"}
    answer = post(stream_server, "/runsync", {"input": plain})
    assert [item["video_id"] for item in answer["output"]] == ["rp-plain"]


def test_status_after_stream_in_the_sdk_server_no_longer_knows_the_job(stream_server: str, portrait_uri: str) -> None:
    """Issue 26: the SDK's local server (--rp_serve_api) runs a job once, on the first of /stream or /status,
    then forgets it: /status after /stream answers FAILED "Job ID not found" (RunPod and the emulator keep it)."""
    queued = post(stream_server, "/run", {"input": video_job(portrait_uri, "rp-twice")})
    assert post(stream_server, f"/stream/{queued['id']}")["status"] == "COMPLETED"
    after = post(stream_server, f"/status/{queued['id']}")
    assert after["status"] == "FAILED" and after["error"] == "Job ID not found"


def test_a_refused_stream_job_fails_with_its_code(local_settings: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    from runpod.serverless.modules.rp_job import run_job_generator

    monkeypatch.setattr(runpod_handler, "_state", None)  # a worker that loads with these settings
    monkeypatch.setenv("WORKER_TASKS", "render_emotion")  # load little; the request is refused before any engine

    async def outputs() -> list[dict]:
        job = {"id": "s1", "input": {"task": "generate_video", "user_id": "u", "text": "hi", "stream": True}}
        return [chunk async for chunk in run_job_generator(runpod_handler.stream_handler, job)]

    (only,) = asyncio.run(outputs())
    # the SDK's job runner turns an output carrying `error` into a FAILED job with that message
    assert json.loads(only["output"]["error"])["error_code"] == "invalid_input"


def test_the_generator_handler_is_served_only_when_asked(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("WORKER_STREAM", raising=False)
    assert runpod_handler.sdk_config() == {"handler": runpod_handler.handler}
    monkeypatch.setenv("WORKER_STREAM", "1")
    assert runpod_handler.sdk_config() == {"handler": runpod_handler.stream_handler, "return_aggregate_stream": True}
