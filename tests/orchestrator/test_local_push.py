"""A local job's status is pushed through the job lifecycle (as a webhook's is), and a request is validated once
at its edge: the API's request model or ``JobService.submit``, then only the worker's own boundary check."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

import handlers
from handlers.settings import Settings
from orchestrator.api import create_app
from orchestrator.core.backends import RemoteState, RemoteStatus
from orchestrator.core.config import OrchestratorSettings
from orchestrator.core.service import JobService
from orchestrator.devtools.background_server import BackgroundServer
from tests.orchestrator.conftest import eventually

TOKEN = "push-token"


@pytest.fixture
def service(tmp_path: Path, local_settings: Settings) -> Iterator[JobService]:
    # a poll interval of an hour: were the poller asked, nothing would move during a test
    settings = OrchestratorSettings(
        database_url=f"sqlite:///{tmp_path / 'jobs.db'}",
        api_token=TOKEN,
        poll_interval_s=3600,
        poll_max_interval_s=3600,
    )
    service = JobService(settings)
    yield service
    service.stop()


def test_a_local_jobs_final_status_arrives_without_a_poll(service: JobService) -> None:
    """No poller runs and nobody waits or refreshes: the row still reaches its final status, from the push."""
    refreshes: list[str] = []
    refresh = service.lifecycle.refresh
    service.lifecycle.refresh = lambda job, **kw: refreshes.append(job.id) or refresh(job, **kw)  # type: ignore[method-assign]
    job = service.submit("health", {})
    assert not service.polling
    done = eventually(lambda: (row := service.store.get(job.id)) is not None and row.finished and row, 60)
    assert done.status == "completed" and done.output["status"] == "ok" and done.started_at is not None
    assert refreshes == []


def test_a_failed_local_job_carries_the_workers_code_without_a_poll(service: JobService) -> None:
    job = service.submit("render_emotion", {"user_id": "u1", "image": "file:///nowhere/face.png", "emotion": "sad"})
    done = eventually(lambda: (row := service.store.get(job.id)) is not None and row.finished and row, 60)
    assert done.status == "failed" and done.error_code and done.error_code != "remote_failed"


def test_a_push_about_a_finished_job_changes_nothing(service: JobService) -> None:
    job = service.submit("health", {})
    cancelled = service.cancel(job.id)
    late = RemoteStatus(RemoteState.completed, output={"status": "ok"})
    service.lifecycle.report(job.id, late)
    assert service.get(job.id).status == cancelled.status
    assert service.lifecycle.report("no-such-job", late) is None


def test_an_api_request_is_validated_once_on_its_way_in(service: JobService, monkeypatch) -> None:
    """The /v1 route's request model is the edge: the service does not parse the payload again (the worker, in its
    own process, still checks its input). A seed route builds its payload, so its edge parses it, once."""
    parsed: list[str] = []
    parse = handlers.parse
    monkeypatch.setattr(handlers, "parse", lambda payload: parsed.append(payload["task"]) or parse(payload))
    server = BackgroundServer(create_app(service, sync_wait_s=60))
    auth = {"Authorization": f"Bearer {TOKEN}"}
    with server, httpx.Client(base_url=server.url, headers=auth, timeout=60) as client:
        answer = client.post("/v1/jobs", json={"task": "health"})
        assert answer.status_code == 202, answer.text
        assert parsed == []
        refused = client.post("/v1/jobs", json={"task": "health", "colour": "blue"})
        assert refused.status_code == 422 and refused.json()["error_code"] == "invalid_input"
        done = eventually(lambda: (row := service.store.get(answer.json()["id"])) and row.finished and row, 60)
        assert done.status == "completed"
    service.submit("health", {})
    assert parsed == ["health"]  # the CLI's edge: JobService.submit
