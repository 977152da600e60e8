"""Live sessions on remote backends. RunPod (the emulator, its workers running the stand-in session handler): the
session is an ordinary job whose executionTimeout covers the session's length, several sessions share one
worker where the handler declares concurrency, a session nobody can take fails its create and leaves nothing
queued, and a worker that goes silent ends its session and is cancelled on RunPod. Modal (its client played by
threads running the same stand-in): the session is a call of the deployed class's `live_session` method."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from types import SimpleNamespace

import httpx
import pytest

from orchestrator.devtools.emulator import BackgroundServer, create_emulator_app
from tests.orchestrator.conftest import eventually
from tests.orchestrator.live_fixtures import ALICE, LiveStack, live_settings, live_stack, session_body
from tests.orchestrator.session_workers import SILENT, runpod_session_handler, serve_session

ENDPOINT = "ep-live"


@pytest.fixture
def emulated(db_url: str, local_settings) -> Iterator[tuple[LiveStack, object]]:
    app = create_emulator_app([ENDPOINT], workers=1, handler=runpod_session_handler, concurrency=3)
    with BackgroundServer(app) as emulator:
        settings = live_settings(
            db_url,
            backend_live_session=f"runpod:{ENDPOINT}",
            runpod_base_url=f"{emulator.url}/v2",
            realtime_answer_timeout_s=2.0,
            realtime_heartbeat_timeout_s=3.0,
            realtime_max_sessions_per_user=4,
            tenant_tokens={"alice-token": ["alice", SILENT]},
        )
        with live_stack(settings, local_settings) as stack:
            yield stack, app.state.emulator


async def _create(url: str, count: int) -> list[httpx.Response]:
    async with httpx.AsyncClient(base_url=url, headers=ALICE, timeout=30) as client:
        return list(
            await asyncio.gather(*(client.post("/v1/sessions", json=session_body("alice")) for _ in range(count)))
        )


def test_sessions_run_as_long_runpod_jobs_several_on_one_worker(emulated) -> None:
    stack, emulator = emulated
    created = asyncio.run(_create(stack.url, 3))
    assert [c.status_code for c in created] == [201] * 3, [c.text for c in created]
    health = emulator.health(ENDPOINT)
    assert health["jobs"]["inProgress"] == 3 and health["workers"]["running"] == 1  # three sessions, one worker
    jobs = list(emulator.jobs.values())
    assert {j.execution_timeout_s for j in jobs} == {stack.service.settings.live_session_timeout_s}
    assert stack.service.settings.live_session_timeout_s > stack.service.settings.realtime_max_duration_s

    with stack.client(ALICE) as alice:
        full = alice.post("/v1/sessions", json=session_body("alice"))  # the worker's three slots are taken
        assert full.status_code == 503 and full.json()["error_code"] == "no_worker_answer"
        eventually(lambda: emulator.health(ENDPOINT)["jobs"]["inQueue"] == 0)  # cancelled on RunPod, not left queued
        for answer in created:
            session_id = answer.json()["session_id"]
            assert alice.post(f"/v1/sessions/{session_id}/say", json={"text": "Hello."}).status_code == 200
            assert alice.delete(f"/v1/sessions/{session_id}").status_code == 204
    eventually(lambda: sorted(j.status for j in emulator.jobs.values()) == ["CANCELLED"] + ["COMPLETED"] * 3)


def test_a_silent_runpod_worker_ends_its_session_and_is_cancelled(emulated) -> None:
    stack, emulator = emulated
    with stack.client(ALICE) as alice:
        session_id = alice.post("/v1/sessions", json=session_body(SILENT)).json()["session_id"]
        ended = eventually(lambda: (s := alice.get(f"/v1/sessions/{session_id}").json())["status"] == "ended" and s)
        assert (ended["end_reason"], ended["error_code"]) == ("error", "worker_lost")
    (job,) = emulator.jobs.values()
    eventually(lambda: job.status == "CANCELLED")


class FakeModal:
    """Modal's client as the backend uses it, with calls running the stand-in worker on threads (containers)."""

    def __init__(self) -> None:
        self.calls: dict[str, Future] = {}
        self.spawned: list[tuple[str, str, dict]] = []
        self._pool = ThreadPoolExecutor(max_workers=4)

    def from_name(self, app_name: str, class_name: str):
        fake = self

        class Method:
            def __init__(self, name: str) -> None:
                self.name = name

            def spawn(self, **fields):
                fake.spawned.append((f"{app_name}/{class_name}", self.name, fields))
                call_id = f"fc-{len(fake.calls)}"
                fake.calls[call_id] = fake._pool.submit(serve_session, fields)
                return SimpleNamespace(object_id=call_id)

        class Instance:
            def __getattr__(self, name: str) -> Method:
                return Method(name)

        return lambda: Instance()

    def call(self, call_id: str):
        future = self.calls[call_id]

        def get(timeout: float):
            try:
                return future.result(timeout=timeout or 0.001)
            except FutureTimeout:
                raise TimeoutError from None

        return SimpleNamespace(get=get, cancel=lambda: None)


def test_sessions_on_modal_spawn_the_live_worker_class(db_url: str, local_settings, monkeypatch) -> None:
    import modal

    fake = FakeModal()
    monkeypatch.setattr(modal.Cls, "from_name", staticmethod(fake.from_name))
    monkeypatch.setattr(modal.FunctionCall, "from_id", staticmethod(fake.call))
    settings = live_settings(db_url, backend_live_session="modal:talking-head/LiveWorker")
    with live_stack(settings, local_settings) as stack, stack.client(ALICE) as alice:
        created = alice.post("/v1/sessions", json=session_body("alice"))
        assert created.status_code == 201, created.text
        session_id = created.json()["session_id"]
        ((target, method, fields),) = fake.spawned
        assert (target, method) == ("talking-head/LiveWorker", "live_session")
        assert fields["session_id"] == session_id and fields["control"]["url"].startswith(stack.url)
        assert alice.post(f"/v1/sessions/{session_id}/say", json={"text": "Hi."}).status_code == 200
        assert alice.delete(f"/v1/sessions/{session_id}").status_code == 204
        job_id = alice.get(f"/v1/sessions/{session_id}").json()["job_id"]
        done = eventually(lambda: (j := alice.get(f"/v1/jobs/{job_id}").json())["status"] == "completed" and j, 15)
        assert done["backend"] == "modal" and done["output"]["reason"] == "stopped"
