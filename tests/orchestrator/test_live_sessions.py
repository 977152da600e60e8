"""Live sessions through the API under uvicorn, served by a worker process that only dials out to the session's
control routes (the stand-in worker of ``session_workers``): create -> answer, say -> said, interrupt, GET,
DELETE -> the worker stops; tenancy; the control routes' token; the body and SDP bounds."""

from __future__ import annotations

import pytest

from orchestrator.core.config import OrchestratorSettings
from tests.orchestrator.conftest import eventually
from tests.orchestrator.live_fixtures import (
    ALICE,
    BOB,
    OFFER,
    OPERATOR,
    LiveStack,
    live_settings,
    live_stack,
    session_body,
)
from tests.orchestrator.session_workers import ANSWER_SDP, SECONDS_PER_CHAR


@pytest.fixture
def settings(db_url: str) -> OrchestratorSettings:
    return live_settings(db_url)


@pytest.fixture
def stack(settings: OrchestratorSettings, local_settings) -> LiveStack:
    with live_stack(settings, local_settings) as running:
        yield running


def test_a_session_runs_on_a_worker_that_dials_out_and_ends_on_delete(stack: LiveStack) -> None:
    with stack.client(ALICE) as client:
        created = client.post("/v1/sessions", json=session_body("alice", engine="viseme_warp"))
        assert created.status_code == 201, created.text
        session_id = created.json()["session_id"]
        assert created.json()["answer"] == {"sdp": ANSWER_SDP, "type": "answer"}

        live = client.get(f"/v1/sessions/{session_id}").json()
        assert live["status"] == "live" and live["engine"] == {"name": "fake"} and live["user_id"] == "alice"
        job = client.get(f"/v1/jobs/{live['job_id']}").json()
        assert job["task"] == "live_session" and job["status"] == "running"
        assert job["input"]["control"]["token"] == "***"  # the control token is never stored or shown
        assert job["input"]["engine"] == "viseme_warp" and job["input"]["offer"] == OFFER

        said = client.post(f"/v1/sessions/{session_id}/say", json={"text": "Hello there."})
        assert said.status_code == 200 and said.json()["duration_s"] == pytest.approx(12 * SECONDS_PER_CHAR)
        refused = client.post(f"/v1/sessions/{session_id}/say", json={"text": "refuse"})
        assert refused.status_code == 422 and refused.json()["error_code"] == "empty_text"  # the worker's own code
        assert client.post(f"/v1/sessions/{session_id}/interrupt").status_code == 202
        beat = eventually(
            lambda: ((s := client.get(f"/v1/sessions/{session_id}").json())["stats"] or {}).get("utterances") and s
        )
        assert beat["stats"]["engine"] == "fake" and beat["heartbeat_at"] > beat["answered_at"]

        assert client.delete(f"/v1/sessions/{session_id}").status_code == 204
        ended = client.get(f"/v1/sessions/{session_id}").json()
        assert ended["status"] == "ended" and ended["end_reason"] == "stopped"
        gone = client.post(f"/v1/sessions/{session_id}/say", json={"text": "Anyone?"})
        assert gone.status_code == 409 and gone.json()["error_code"] == "session_ended"
        # the worker hears the end at its next poll, reports it and its job completes
        done = eventually(lambda: (j := client.get(f"/v1/jobs/{live['job_id']}").json())["status"] == "completed" and j)
        assert done["output"]["reason"] == "stopped"
        assert client.delete(f"/v1/sessions/{session_id}").status_code == 204  # idempotent


def test_another_tenants_session_answers_404_everywhere(stack: LiveStack) -> None:
    with stack.client(ALICE) as alice, stack.client(BOB) as bob:
        session_id = alice.post("/v1/sessions", json=session_body("alice")).json()["session_id"]
        for method, path, body in (
            ("GET", f"/v1/sessions/{session_id}", None),
            ("POST", f"/v1/sessions/{session_id}/say", {"text": "hi"}),
            ("POST", f"/v1/sessions/{session_id}/interrupt", None),
            ("DELETE", f"/v1/sessions/{session_id}", None),
        ):
            answer = bob.request(method, path, json=body)
            assert answer.status_code == 404 and answer.json()["error_code"] == "session_not_found", (method, path)
        assert alice.get(f"/v1/sessions/{session_id}").json()["status"] == "live"  # bob's DELETE did nothing
        foreign = bob.post("/v1/sessions", json=session_body("alice"))
        assert foreign.status_code == 403 and foreign.json()["error_code"] == "forbidden"
        alice.delete(f"/v1/sessions/{session_id}")


def test_session_inputs_follow_the_job_input_policy(db_url: str, local_settings, tmp_path) -> None:
    store = local_settings.avatar_store_uri.rstrip("/")
    settings = live_settings(db_url, allowed_input_prefixes="s3://allowed/")
    with live_stack(settings, local_settings) as stack, stack.client(ALICE) as alice:
        for image in (
            f"{store}/uploads/bob/portrait.png",  # another tenant's upload
            "s3://elsewhere/face.png",  # outside ALLOWED_INPUT_PREFIXES
            "file:///etc/hosts",  # this host's disk outside the store
        ):
            refused = alice.post("/v1/sessions", json={"user_id": "alice", "image": image, "offer": OFFER})
            assert refused.status_code == 422 and refused.json()["error_code"] == "url_refused", image
        foreign_store = alice.post("/v1/sessions", json=session_body("alice", store=(tmp_path / "x").as_uri()))
        assert foreign_store.json()["error_code"] == "url_refused"
        own = alice.post("/v1/sessions", json=session_body("alice", image=f"{store}/uploads/alice/p.png") | {})
        assert own.status_code == 422  # both avatar_id and image: the contract's own refusal
        assert stack.sessions.store.counts().get("live", 0) == 0


@pytest.mark.parametrize(
    ("sdp", "why"),
    [
        ("hello", "v=0"),
        ("v=0\r\no=- 1 1 IN IP4 1.2.3.4\r\ns=-\r\nt=0 0\r\n", "0 media sections"),
        ("v=0\r\n" + "m=audio 9 RTP/AVP 0\r\n" * 9, "9 media sections"),
        ("v=0\r\nm=audio 9 RTP/AVP 0\r\n" + "a=candidate:1 1 udp 1 10.0.0.1 9 typ host\r\n" * 65, "65 ICE candidates"),
        ("v=0\r\nm=audio 9 RTP/AVP 0\r\nnot a line\r\n", "line 3"),
    ],
)
def test_a_malformed_offer_is_refused_before_any_work(stack: LiveStack, sdp: str, why: str) -> None:
    with stack.client() as client:
        refused = client.post("/v1/sessions", json=session_body("alice", offer={"sdp": sdp, "type": "offer"}))
    assert refused.status_code == 422 and refused.json()["error_code"] == "invalid_sdp"
    assert why in refused.json()["error"]
    assert stack.sessions.store.counts() == {} and stack.service.list(task="live_session") == []


def test_session_bodies_are_bounded_before_they_are_parsed(stack: LiveStack) -> None:
    with stack.client() as client:
        huge = client.post("/v1/sessions", json=session_body("alice", offer={"sdp": "v=0 " * 80_000, "type": "offer"}))
        assert huge.status_code == 413 and huge.json()["error_code"] == "too_large"
        too_long = client.post(
            "/v1/sessions", json=session_body("alice", offer={"sdp": "v" * 100_001, "type": "offer"})
        )
        assert too_long.status_code == 422


def test_the_control_routes_take_the_sessions_own_token_only(stack: LiveStack) -> None:
    with stack.client(ALICE) as alice, stack.client({}) as anonymous:
        session_id = alice.post("/v1/sessions", json=session_body("alice")).json()["session_id"]
        worker = f"/v1/sessions/{session_id}/worker"
        for headers in ({}, OPERATOR, ALICE, {"Authorization": "Bearer " + "x" * 43}):
            answer = anonymous.get(f"{worker}/commands", params={"wait": 0}, headers=headers)
            assert answer.status_code == 401 and answer.json()["error_code"] == "unauthorized"
        unknown = anonymous.get("/v1/sessions/" + "0" * 32 + "/worker/commands", headers=OPERATOR)
        assert unknown.status_code == 404
        assert anonymous.get("/v1/sessions/not-a-session/worker/commands").status_code == 404
        alice.delete(f"/v1/sessions/{session_id}")


def test_metrics_count_sessions(stack: LiveStack) -> None:
    with stack.client(ALICE) as alice:
        session_id = alice.post("/v1/sessions", json=session_body("alice")).json()["session_id"]
        text = alice.get("/metrics").text
        assert 'avatarctl_live_sessions{status="live"} 1.0' in text
        assert 'avatarctl_live_sessions_created_total{backend="local"} 1.0' in text
        alice.delete(f"/v1/sessions/{session_id}")
        text = alice.get("/metrics").text
        assert 'avatarctl_live_sessions_ended_total{error_code="",reason="stopped"} 1.0' in text
        assert "avatarctl_live_session_answer_seconds_count 1.0" in text
