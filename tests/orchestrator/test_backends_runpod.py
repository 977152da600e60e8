"""RunpodBackend against the RunPod emulator (uvicorn on 127.0.0.1) running our real handlers."""

from __future__ import annotations

import base64
from pathlib import Path

import cv2
import httpx
import pytest
from fastapi import FastAPI
from fastapi.responses import HTMLResponse

from orchestrator.core.backends import BackendUnavailable, RemoteState, Submission, SubmitRejected
from orchestrator.core.backends.modal import ModalBackend
from orchestrator.core.backends.runpod import RunpodBackend, parse_job
from orchestrator.devtools.emulator import BackgroundServer, create_emulator_app
from tests.media import astronaut_bgr
from tests.orchestrator.conftest import ENDPOINT_ID, eventually


def backend(emulator, **kwargs) -> RunpodBackend:
    return RunpodBackend(emulator.endpoint_id, base_url=emulator.base_url, retry_wait_s=0.01, **kwargs)


def final_status(rp: RunpodBackend, remote_id: str, timeout_s: float = 20.0):
    return eventually(
        lambda: (s := rp.status(remote_id)).state not in (RemoteState.queued, RemoteState.running) and s, timeout_s
    )


def test_health_task_completes_with_its_output(emulator):
    rp = backend(emulator)
    remote_id = rp.submit(Submission("health", {}, "j1", timeout_s=60, ttl_s=120))
    status = final_status(rp, remote_id)
    assert status.state is RemoteState.completed
    assert status.output["status"] == "ok" and "render_emotion" in status.output["tasks"]
    job = emulator.emulator.jobs[remote_id]
    assert job.input == {"task": "health"} and job.execution_timeout_s == 60 and job.ttl_s == 120
    assert rp.health()["ok"] and rp.health()["jobs"]["completed"] == 1


def test_contract_errors_arrive_with_their_code(emulator):
    rp = backend(emulator)
    remote_id = rp.submit(Submission("health", {"colour": "blue"}, "j2", timeout_s=60))
    status = final_status(rp, remote_id)
    assert status.state is RemoteState.failed
    assert status.error_code == "invalid_input" and "`colour`" in status.error


def test_unknown_job_is_lost_and_cancel_stops_a_queued_job(emulator):
    rp = backend(emulator)
    assert rp.status("no-such-job").state is RemoteState.lost
    emulator.emulator.faults.hold_queue = True
    remote_id = rp.submit(Submission("health", {}, "j3", timeout_s=60))
    assert rp.status(remote_id).state is RemoteState.queued
    rp.cancel(remote_id)
    assert rp.status(remote_id).state is RemoteState.cancelled
    emulator.emulator.faults.hold_queue = False
    rp.cancel("no-such-job")  # unknown ids are not an error
    assert emulator.emulator.stats().get("executed", 0) == 0


def test_bearer_key_is_checked(local_settings, runtime):
    app = create_emulator_app([ENDPOINT_ID], workers=1, runtime=runtime, api_key="s3cret")
    with BackgroundServer(app) as server:
        wrong = RunpodBackend(ENDPOINT_ID, base_url=f"{server.url}/v2", api_key="nope")
        with pytest.raises(SubmitRejected) as refused:
            wrong.submit(Submission("health", {}, "j", timeout_s=10))
        assert refused.value.code == "runpod_unauthorized"
        assert not wrong.health()["ok"]
        right = RunpodBackend(ENDPOINT_ID, base_url=f"{server.url}/v2", api_key="s3cret")
        assert final_status(right, right.submit(Submission("health", {}, "j", timeout_s=10))).state is (
            RemoteState.completed
        )
        missing = RunpodBackend("other-endpoint", base_url=f"{server.url}/v2", api_key="s3cret")
        with pytest.raises(SubmitRejected) as not_found:
            missing.submit(Submission("health", {}, "j", timeout_s=10))
        assert not_found.value.code == "runpod_endpoint_not_found"


def test_unreachable_endpoint_is_a_certain_refusal():
    with BackgroundServer(create_emulator_app([ENDPOINT_ID], workers=1)) as server:
        url = server.url
    rp = RunpodBackend(ENDPOINT_ID, base_url=f"{url}/v2", retry_wait_s=0.01, max_attempts=2)
    with pytest.raises(SubmitRejected) as refused:
        rp.submit(Submission("health", {}, "j", timeout_s=10))
    assert refused.value.code == "runpod_unreachable"


def test_a_base_url_without_scheme_is_a_certain_refusal():
    rp = RunpodBackend(ENDPOINT_ID, base_url="127.0.0.1:9/v2", retry_wait_s=0.01)
    with pytest.raises(SubmitRejected) as refused:
        rp.submit(Submission("health", {}, "j", timeout_s=10))
    assert refused.value.code == "runpod_unreachable"


def test_a_status_answer_that_is_not_job_json_is_unavailable_not_a_crash():
    proxy = FastAPI()

    @proxy.get("/v2/{endpoint_id}/status/html")
    def html() -> HTMLResponse:
        return HTMLResponse("<html>gateway login</html>")

    @proxy.get("/v2/{endpoint_id}/status/list")
    def listed() -> list:
        return ["not", "a", "job"]

    with BackgroundServer(proxy) as server:
        rp = RunpodBackend(ENDPOINT_ID, base_url=f"{server.url}/v2", retry_wait_s=0.01)
        for remote_id in ("html", "list"):
            with pytest.raises(BackendUnavailable) as unavailable:
                rp.status(remote_id)
            assert unavailable.value.code == "runpod_unavailable" and "no job JSON" in unavailable.value.message


def test_runsync_returns_the_finished_job(emulator):
    body = {"input": {"task": "health"}}
    answer = httpx.post(f"{emulator.base_url}/{ENDPOINT_ID}/runsync", json=body, timeout=30).json()
    assert answer["status"] == "COMPLETED" and answer["output"]["status"] == "ok"
    assert answer["executionTime"] >= 0 and answer["delayTime"] >= 0


def test_render_emotion_runs_remotely_and_writes_the_still(emulator, local_settings):
    ok, jpeg = cv2.imencode(".jpg", cv2.resize(astronaut_bgr(), (256, 256)))
    image = "data:image/jpeg;base64," + base64.b64encode(jpeg.tobytes()).decode()
    rp = backend(emulator)
    payload = {"user_id": "u1", "image": image, "emotion": "happy", "render_id": "r1"}
    remote_id = rp.submit(Submission("render_emotion", payload, "j4", timeout_s=120))
    status = final_status(rp, remote_id, timeout_s=120)
    assert status.state is RemoteState.completed, status
    render = status.output["renders"][0]
    assert render["emotion"] == "happy" and render["uri"].startswith("file://")
    stored = local_settings.avatar_store_uri.removeprefix("file://")
    assert any(p.name.startswith("r1_happy") for p in Path(stored).rglob("*"))


def test_parse_job_maps_runpod_answers():
    progress = parse_job({"status": "IN_PROGRESS", "output": {"stage": "render", "fraction": 0.4}})
    assert progress.state is RemoteState.running and progress.progress == {"stage": "render", "fraction": 0.4}
    crashed = parse_job(
        {"status": "FAILED", "error": '{"error_type": "<class \'ValueError\'>", "error_message": "boom"}'}
    )
    assert crashed.state is RemoteState.failed and crashed.error == "Worker exception ValueError: boom"
    assert crashed.error_code == "remote_failed"
    in_output = parse_job({"status": "COMPLETED", "output": {"error": "no face", "error_code": "no_face"}})
    assert (in_output.state, in_output.error_code) == (RemoteState.failed, "no_face")
    assert parse_job({"status": "TIMED_OUT"}).state is RemoteState.timed_out
    assert parse_job({"status": "CANCELLED"}).state is RemoteState.cancelled


def test_modal_backend_without_a_token_refuses_clearly(monkeypatch):
    monkeypatch.delenv("MODAL_TOKEN_ID", raising=False)
    monkeypatch.delenv("MODAL_TOKEN_SECRET", raising=False)
    modal_backend = ModalBackend("talking-head", "Worker")
    assert modal_backend.spec == "modal:talking-head/Worker"
    with pytest.raises(SubmitRejected) as refused:
        modal_backend.submit(Submission("health", {"task": "health"}, "j", timeout_s=10))
    assert refused.value.code == "modal_rejected" and "Token" in refused.value.message
    assert modal_backend.health()["ok"] is False


@pytest.mark.parametrize(
    ("raised", "expected"),
    [
        (ConnectionResetError("reset by peer"), "unavailable"),
        ("ServiceError", "unavailable"),
        ("ResourceExhaustedError", "unavailable"),
        (TimeoutError(), RemoteState.running),
        (RuntimeError("the worker blew up"), RemoteState.failed),
    ],
)
def test_modal_status_retries_client_errors_instead_of_failing_the_job(monkeypatch, raised, expected):
    """A network or control-plane blip while polling must not fail a call that still runs on Modal."""
    import modal

    if isinstance(raised, str):
        raised = getattr(modal.exception, raised)("Modal is having a moment")

    class Call:
        def get(self, timeout: float) -> None:
            raise raised

    monkeypatch.setattr(modal.FunctionCall, "from_id", staticmethod(lambda remote_id: Call()))
    modal_backend = ModalBackend("talking-head", "Worker")
    if expected == "unavailable":
        with pytest.raises(BackendUnavailable) as unavailable:
            modal_backend.status("fc-1")
        assert unavailable.value.code == "modal_unavailable"
    else:
        assert modal_backend.status("fc-1").state is expected


def test_failed_job_from_our_worker_keeps_its_error_code(local_settings, monkeypatch):
    """RunPod passes only a FAILED job's `error` string on: our worker's code must survive that trip."""
    import runpod_handler

    monkeypatch.setenv("WORKER_TASKS", "render_emotion")
    monkeypatch.setattr(runpod_handler, "_state", None)  # a fresh worker for this test, restored after
    bad = {"task": "render_emotion", "user_id": "u", "emotion": "happy"}  # neither `image` nor `avatar_id`
    result = runpod_handler.handler({"id": "j-bad", "input": bad})
    failed = parse_job({"id": "j-bad", "status": "FAILED", "error": result["error"]})
    assert failed.state is RemoteState.failed
    assert failed.error_code == "invalid_input" and "`image`" in failed.error
