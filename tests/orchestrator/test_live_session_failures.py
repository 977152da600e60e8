"""Live sessions when things go wrong: the caps under racing creates, teardown of every failed create (nothing
left holding a slot), a worker that crashes, hangs, runs out of memory or never answers."""

from __future__ import annotations

import asyncio

import httpx
import pytest

from tests.orchestrator.conftest import eventually
from tests.orchestrator.live_fixtures import ALICE, BOB, OPERATOR, LiveStack, live_settings, live_stack, session_body
from tests.orchestrator.session_workers import (
    BAD_ANSWER,
    CRASH,
    MEMORY_HOG,
    NEVER_ANSWERS,
    REFUSES,
    SILENT,
    SLOW,
)

TENANTS = {"alice-token": ["alice"], "bob-token": ["bob"], "carol-token": ["carol"], "slow-token": [SLOW]}


async def _creates(url: str, token: str, user: str, count: int) -> list[httpx.Response]:
    headers = {"Authorization": f"Bearer {token}"}
    async with httpx.AsyncClient(base_url=url, headers=headers, timeout=30) as client:
        return list(await asyncio.gather(*(client.post("/v1/sessions", json=session_body(user)) for _ in range(count))))


def test_racing_creates_never_pass_the_caps(db_url: str, local_settings) -> None:
    """8 concurrent creates of one user (the race of issue 20): its cap holds, other users keep their share, and
    the total cap holds beyond them."""
    settings = live_settings(
        db_url,
        realtime_max_sessions=4,
        realtime_max_sessions_per_user=2,
        tenant_tokens=TENANTS,
        realtime_answer_timeout_s=60,  # fresh session processes start slowly on a loaded machine
    )
    with live_stack(settings, local_settings) as stack:
        answers = asyncio.run(_creates(stack.url, "slow-token", SLOW, 8))
        codes = sorted(a.status_code for a in answers)
        assert codes == [201] * 2 + [429] * 6, [a.text[-200:] for a in answers]
        assert {a.json()["error_code"] for a in answers if a.status_code == 429} == {"user_session_limit"}
        assert all(a.headers["retry-after"] == "5" for a in answers if a.status_code == 429)
        bob = asyncio.run(_creates(stack.url, "bob-token", "bob", 3))
        assert sorted(a.status_code for a in bob) == [201, 201, 503]  # bob's third: the total cap comes first
        full = asyncio.run(_creates(stack.url, "carol-token", "carol", 1))[0]
        assert full.status_code == 503 and full.json()["error_code"] == "too_many_sessions"
        assert stack.sessions.store.counts() == {"live": 4}
        with stack.client(ALICE) as alice:
            one = next(a for a in bob if a.status_code == 201).json()["session_id"]
            alice.headers["Authorization"] = "Bearer bob-token"
            assert alice.delete(f"/v1/sessions/{one}").status_code == 204
        assert asyncio.run(_creates(stack.url, "carol-token", "carol", 1))[0].status_code == 201  # a slot again


@pytest.mark.parametrize(
    ("user", "status", "code"),
    [
        (NEVER_ANSWERS, 503, "no_worker_answer"),
        (REFUSES, 404, "avatar_not_found"),
        (BAD_ANSWER, 502, "invalid_answer"),
        (CRASH + "-early", 422, None),
    ],
)
def test_a_failed_create_ends_its_session_cancels_its_job_and_frees_its_slot(
    db_url: str, local_settings, user: str, status: int, code: str | None
) -> None:
    tenants = {"t": [user, "alice"]}
    settings = live_settings(
        db_url, realtime_answer_timeout_s=5, realtime_max_sessions=1, tenant_tokens=tenants, api_token=None
    )
    with live_stack(settings, local_settings) as stack, stack.client({"Authorization": "Bearer t"}) as client:
        body = session_body(user, avatar_id="a1" if not user.endswith("-early") else "bad id")
        refused = client.post("/v1/sessions", json=body)
        assert refused.status_code == status, refused.text
        if code is None:
            assert stack.sessions.store.counts() == {}  # refused by the contract: nothing was made
            return
        assert refused.json()["error_code"] == code
        (session,) = [s for s in stack.sessions.store.not_ended()] or [None]
        assert session is None  # ended at once
        (job,) = stack.service.list(task="live_session")
        job = eventually(lambda: (j := stack.service.get(job.id)).finished and j)
        assert job.status in ("cancelled", "failed")
        again = client.post("/v1/sessions", json=session_body("alice"))
        assert again.status_code == 201, again.text  # the only slot is free again
        client.delete(f"/v1/sessions/{again.json()['session_id']}")


@pytest.fixture
def stack(db_url: str, local_settings) -> LiveStack:
    tenants = {"t": [CRASH, SILENT, MEMORY_HOG, "alice"], "bob-token": ["bob"]}
    settings = live_settings(db_url, realtime_heartbeat_timeout_s=3.0, tenant_tokens=tenants)
    with live_stack(settings, local_settings) as running:
        yield running


@pytest.mark.parametrize(
    ("user", "code"), [(CRASH, "worker_crashed"), (SILENT, "worker_lost"), (MEMORY_HOG, "internal_error")]
)
def test_a_worker_that_dies_ends_its_session_with_a_reason_the_client_sees(stack: LiveStack, user: str, code: str):
    with stack.client({"Authorization": "Bearer t"}) as client:
        other = client.post("/v1/sessions", json=session_body("alice")).json()["session_id"]
        created = client.post("/v1/sessions", json=session_body(user))
        assert created.status_code == 201, created.text
        session_id = created.json()["session_id"]
        ended = eventually(lambda: (s := client.get(f"/v1/sessions/{session_id}").json())["status"] == "ended" and s)
        assert ended["end_reason"] == "error" and ended["error_code"] == code, ended
        said = client.post(f"/v1/sessions/{session_id}/say", json={"text": "Still there?"})
        assert said.status_code == 409 and said.json()["error_code"] == "session_ended"
        job = eventually(lambda: (j := client.get(f"/v1/jobs/{ended['job_id']}").json())["status"] != "running" and j)
        assert job["status"] in ("failed", "cancelled")
        # the other session, on another worker process, carries on
        fine = client.post(f"/v1/sessions/{other}/say", json={"text": "Fine here."})
        assert fine.status_code == 200, (fine.text, client.get(f"/v1/sessions/{other}").json())
        assert client.get("/healthz", headers=OPERATOR).status_code == 200
        client.delete(f"/v1/sessions/{other}")


def test_cancelling_the_sessions_job_ends_the_session(stack: LiveStack) -> None:
    with stack.client({"Authorization": "Bearer t"}) as client:
        session_id = client.post("/v1/sessions", json=session_body("alice")).json()["session_id"]
        job_id = client.get(f"/v1/sessions/{session_id}").json()["job_id"]
        assert client.delete(f"/v1/jobs/{job_id}").json()["status"] == "cancelled"
        ended = eventually(lambda: (s := client.get(f"/v1/sessions/{session_id}").json())["status"] == "ended" and s)
        assert (ended["end_reason"], ended["error_code"]) == ("stopped", "cancelled")
    with stack.client(BOB) as bob:
        assert bob.get(f"/v1/jobs/{job_id}").status_code == 404
