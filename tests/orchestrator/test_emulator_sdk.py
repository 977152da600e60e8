"""RunPod's own SDK clients (runpod.Endpoint and runpod.AsyncioEndpoint) against `avatarctl emulate-runpod`.

Every documented operation: run, runsync, status, stream, cancel, retry, purge-queue, health; the raw-key
and bearer auth headers; executionTimeout and ttl enforced while jobs run or wait; FAILED jobs shaped as
our worker's under the SDK; generator handlers streamed (with and without return_aggregate_stream).
"""

from __future__ import annotations

import asyncio
import base64
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import requests
import runpod

from handlers.runtime import WorkerRuntime
from handlers.settings import Settings
from orchestrator.devtools.emulator import BackgroundServer, create_emulator_app, worker_failure
from tests.orchestrator.conftest import ENDPOINT_ID, RunningEmulator, eventually

API_KEY = "rp-test-key"


@pytest.fixture
def sdk_emulator(
    local_settings: Settings, runtime: WorkerRuntime, monkeypatch: pytest.MonkeyPatch
) -> Iterator[RunningEmulator]:
    """The emulator with an API key, one worker, and the SDK pointed at it."""
    app = create_emulator_app([ENDPOINT_ID], workers=1, runtime=runtime, api_key=API_KEY)
    with BackgroundServer(app) as server:
        running = RunningEmulator(server.url, app.state.emulator)
        monkeypatch.setattr(runpod, "endpoint_url_base", running.base_url)
        yield running


def raw(emulator: RunningEmulator, method: str, path: str, auth: str = API_KEY, **kwargs: Any) -> httpx.Response:
    """A REST call as RunPod's docs write it: `authorization: <key>`."""
    url = f"{emulator.base_url}/{ENDPOINT_ID}/{path}"
    return httpx.request(method, url, headers={"authorization": auth}, timeout=30, **kwargs)


def wait_state(emulator: RunningEmulator, job_id: str, *states: str) -> dict[str, Any]:
    return eventually(lambda: (b := raw(emulator, "GET", f"status/{job_id}").json())["status"] in states and b, 60)


def test_sync_endpoint_run_status_output_stream_run_sync_and_health(sdk_emulator):
    endpoint = runpod.Endpoint(ENDPOINT_ID, api_key=API_KEY)
    job = endpoint.run({"task": "health"})
    output = job.output(timeout=60)
    assert output["status"] == "ok" and "render_emotion" in output["tasks"]
    assert job.status() == "COMPLETED"
    # a plain handler's output is the one item of its stream, handed out once
    assert list(job.stream()) == [output]
    assert raw(sdk_emulator, "GET", f"stream/{job.job_id}").json() == {
        "id": job.job_id,
        "status": "COMPLETED",
        "stream": [],
    }

    assert endpoint.run_sync({"task": "health"}, timeout=60)["status"] == "ok"
    health = endpoint.health()
    assert health["jobs"]["completed"] == 2 and health["jobs"]["inQueue"] == 0
    assert {"idle", "running"} <= health["workers"].keys()


def test_sync_endpoint_cancel_purge_queue_and_retry(sdk_emulator):
    endpoint = runpod.Endpoint(ENDPOINT_ID, api_key=API_KEY)
    sdk_emulator.emulator.faults.hold_queue = True
    queued = [endpoint.run({"task": "health"}) for _ in range(3)]
    assert queued[0].cancel() == {"id": queued[0].job_id, "status": "CANCELLED"}
    assert endpoint.purge_queue() == {"removed": 2, "status": "completed"}
    with pytest.raises(requests.HTTPError):  # purged jobs are gone, as RunPod answers 404 for them
        queued[1].status()
    assert queued[0].status() == "CANCELLED"
    sdk_emulator.emulator.faults.hold_queue = False

    sdk_emulator.emulator.faults.crash_jobs = 1
    job = endpoint.run({"task": "health"})
    assert wait_state(sdk_emulator, job.job_id, "FAILED")["status"] == "FAILED"
    retried = raw(sdk_emulator, "POST", f"retry/{job.job_id}")
    assert retried.status_code == 200 and retried.json() == {"id": job.job_id, "status": "IN_QUEUE"}
    done = wait_state(sdk_emulator, job.job_id, "COMPLETED")
    assert done["output"]["status"] == "ok" and "error" not in done
    assert raw(sdk_emulator, "POST", f"retry/{job.job_id}").status_code == 400  # only FAILED / TIMED_OUT
    assert endpoint.health()["jobs"]["retried"] == 1
    assert sdk_emulator.emulator.stats()["executed"] == 2  # the cancelled and purged jobs never ran


def test_asyncio_endpoint_covers_the_same_calls(sdk_emulator):
    from runpod.http_client import ClientSession

    async def scenario() -> dict[str, Any]:
        async with ClientSession() as session:
            endpoint = runpod.AsyncioEndpoint(ENDPOINT_ID, session, api_key=API_KEY)
            job = await endpoint.run({"task": "health"})
            output = await job.output(timeout=60)
            streamed = [item async for item in job.stream()]
            status = await job.status()
            sdk_emulator.emulator.faults.hold_queue = True
            held = [await endpoint.run({"task": "health"}) for _ in range(2)]
            cancelled = await held[0].cancel()
            purged = await endpoint.purge_queue()
            sdk_emulator.emulator.faults.hold_queue = False
            health = await endpoint.health()
            return {"output": output, "stream": streamed, "status": status, "cancelled": cancelled,
                    "held": held[0].job_id, "purged": purged, "health": health}  # fmt: skip

    seen = asyncio.run(scenario())
    assert seen["output"]["status"] == "ok" and seen["status"] == "COMPLETED"
    assert seen["stream"] == [seen["output"]]
    assert seen["cancelled"] == {"id": seen["held"], "status": "CANCELLED"}
    assert seen["purged"] == {"removed": 1, "status": "completed"}
    assert seen["health"]["jobs"]["completed"] == 1


def test_a_failed_job_is_shaped_as_our_worker_under_the_sdk(sdk_emulator):
    endpoint = runpod.Endpoint(ENDPOINT_ID, api_key=API_KEY)
    job = endpoint.run({"task": "health", "colour": "blue"})
    assert job.output(timeout=60) is None
    body = raw(sdk_emulator, "GET", f"status/{job.job_id}").json()
    assert body["status"] == "FAILED" and "output" not in body
    error = json.loads(body["error"])
    assert error["error_code"] == "invalid_input" and "`colour`" in error["error"]
    import runpod_handler

    assert body["error"] == runpod_handler.failure(error["error_code"], error["error"])["error"]
    assert worker_failure("x", "y") == runpod_handler.failure("x", "y")


def test_the_raw_key_and_the_bearer_key_are_accepted_and_others_refused(sdk_emulator):
    assert raw(sdk_emulator, "GET", "health").status_code == 200
    assert raw(sdk_emulator, "GET", "health", auth=f"Bearer {API_KEY}").status_code == 200
    assert raw(sdk_emulator, "GET", "health", auth="wrong").status_code == 401
    assert raw(sdk_emulator, "GET", "health", auth="Bearer wrong").status_code == 401
    with pytest.raises(RuntimeError, match="401"):
        runpod.Endpoint(ENDPOINT_ID, api_key="wrong").health()


def test_the_execution_timeout_stops_the_task_in_the_worker_and_nothing_is_written(sdk_emulator, local_settings):
    from tests.entrypoints.conftest import face_jpeg

    image = "data:image/jpeg;base64," + base64.b64encode(face_jpeg()).decode()
    text = "Hello there. This sentence is long enough to take the worker a few seconds to render. " * 3
    payload = {"task": "generate_video", "user_id": "u1", "image": image, "text": text, "video_id": "v1"}
    job_id = raw(sdk_emulator, "POST", "run", json={"input": payload, "policy": {"executionTimeout": 300}}).json()["id"]
    # no status reads meanwhile: the timeout must act on its own. The one worker is free again only once
    # the stopped task returned; then nothing may have been written.
    after = raw(sdk_emulator, "POST", "runsync", json={"input": {"task": "health"}}).json()
    assert after["status"] == "COMPLETED"
    timed_out = raw(sdk_emulator, "GET", f"status/{job_id}").json()
    assert timed_out["status"] == "TIMED_OUT" and "output" not in timed_out
    assert 300 <= timed_out["executionTime"] < 1000
    store = Path(local_settings.avatar_store_uri.removeprefix("file://"))
    assert not [p for p in store.rglob("*") if p.is_file()]


def test_a_queued_job_past_its_ttl_is_gone_and_never_runs(sdk_emulator):
    sdk_emulator.emulator.faults.hold_queue = True
    job_id = raw(sdk_emulator, "POST", "run", json={"input": {"task": "health"}, "policy": {"ttl": 200}}).json()["id"]
    time.sleep(0.3)
    sdk_emulator.emulator.faults.hold_queue = False
    assert raw(sdk_emulator, "GET", f"status/{job_id}").status_code == 404
    assert raw(sdk_emulator, "POST", "runsync", json={"input": {"task": "health"}}).json()["status"] == "COMPLETED"
    assert sdk_emulator.emulator.stats()["executed"] == 1


def counting_handler(job: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """A generator handler, as the worker SDK runs them: one item per step."""
    for n in range(job["input"]["steps"]):
        time.sleep(0.05)
        yield {"step": n}
    if job["input"].get("fail"):
        yield {"error": "step failed"}


@pytest.mark.parametrize("aggregate", [True, False], ids=["aggregate", "no-aggregate"])
def test_generator_handlers_stream_their_items(local_settings, monkeypatch, aggregate):
    app = create_emulator_app([ENDPOINT_ID], workers=1, handler=counting_handler, return_aggregate_stream=aggregate)
    with BackgroundServer(app) as server:
        monkeypatch.setattr(runpod, "endpoint_url_base", f"{server.url}/v2")
        endpoint = runpod.Endpoint(ENDPOINT_ID, api_key="any")
        job = endpoint.run({"steps": 3})
        assert list(job.stream()) == [{"step": 0}, {"step": 1}, {"step": 2}]
        assert job.output(timeout=30) == ([{"step": 0}, {"step": 1}, {"step": 2}] if aggregate else [])
        assert endpoint.run_sync({"steps": 2}, timeout=30) == ([{"step": 0}, {"step": 1}] if aggregate else [])

        failing = endpoint.run({"steps": 1, "fail": True})
        assert failing.output(timeout=30) is None and failing.status() == "FAILED"
        body = httpx.get(f"{server.url}/v2/{ENDPOINT_ID}/status/{failing.job_id}").json()
        assert body["error"] == "step failed" and "output" not in body


def test_the_real_worker_handler_runs_under_the_emulator_with_the_same_answers(
    sdk_emulator, local_settings, monkeypatch
):
    import runpod_handler

    monkeypatch.setattr(runpod_handler, "_state", None)  # a fresh worker for this test, restored after
    app = create_emulator_app([ENDPOINT_ID], workers=1, handler="runpod_handler:handler")
    with BackgroundServer(app) as server:
        for payload in ({"task": "health"}, {"task": "health", "colour": "blue"}):
            real = httpx.post(f"{server.url}/v2/{ENDPOINT_ID}/runsync", json={"input": payload}, timeout=60).json()
            ours = raw(sdk_emulator, "POST", "runsync", json={"input": payload}).json()
            assert real["status"] == ours["status"] and real.keys() == ours.keys()
            assert real.get("error") == ours.get("error")
            # the real worker also warns that its file:// store is its own container's disk (no bucket)
            real_keys = (real.get("output") or {}).keys() - {"warnings"}
            assert real_keys == (ours.get("output") or {}).keys()


def test_the_streaming_worker_streams_segments_through_the_sdk(local_settings, monkeypatch):
    """The WORKER_STREAM=1 worker: `--handler runpod_handler:stream_handler --return-aggregate-stream`."""
    import runpod_handler
    from tests.entrypoints.conftest import face_jpeg

    monkeypatch.setattr(runpod_handler, "_state", None)
    app = create_emulator_app(
        [ENDPOINT_ID],
        workers=1,
        handler="runpod_handler:stream_handler",
        return_aggregate_stream=True,
    )
    image = "data:image/jpeg;base64," + base64.b64encode(face_jpeg()).decode()
    payload = {
        "task": "generate_video",
        "user_id": "u1",
        "image": image,
        "text": "Hello there, friend.",
        "stream": True,
    }
    with BackgroundServer(app) as server:
        monkeypatch.setattr(runpod, "endpoint_url_base", f"{server.url}/v2")
        job = runpod.Endpoint(ENDPOINT_ID, api_key="any").run({"input": payload})
        items = list(job.stream())
        segments, result = items[:-1], items[-1]
        assert len(segments) >= 2 and [s["index"] for s in segments] == list(range(len(segments)))
        assert all("/generated-videos/u1/" in s["uri"] and "/stream/" in s["uri"] for s in segments), segments[0]
        assert all(s["playlist_uri"].endswith(".m3u8") and s["duration_s"] > 0 for s in segments)
        assert result["video"]["uri"].endswith(".mp4") and result["playlist"]["uri"].endswith(".m3u8")
        assert job.output(timeout=60) == items  # return_aggregate_stream: the output is every item


def test_results_are_kept_30_min_after_run_and_1_min_after_runsync(sdk_emulator):
    synced = raw(sdk_emulator, "POST", "runsync", json={"input": {"task": "health"}}).json()
    ran = raw(sdk_emulator, "POST", "run", json={"input": {"task": "health"}}).json()
    wait_state(sdk_emulator, ran["id"], "COMPLETED")
    jobs = sdk_emulator.emulator.jobs
    jobs[synced["id"]].finished -= 61
    jobs[ran["id"]].finished -= 61
    assert raw(sdk_emulator, "GET", f"status/{synced['id']}").status_code == 404
    assert raw(sdk_emulator, "GET", f"status/{ran['id']}").json()["status"] == "COMPLETED"
    jobs[ran["id"]].finished -= 1800
    assert raw(sdk_emulator, "GET", f"status/{ran['id']}").status_code == 404
