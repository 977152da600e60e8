"""JobService with the RunPod backend against the emulator, under injected faults: transient errors,
ambiguous submits, dying workers, timeouts, cancellation, webhook replays and orchestrator restarts."""

from __future__ import annotations

from datetime import timedelta

import httpx
import pytest
from fastapi import FastAPI

from orchestrator.core.config import OrchestratorSettings
from orchestrator.core.db import utcnow
from orchestrator.core.models import OrchestratorError, WebhookRejected
from orchestrator.core.service import JobService
from orchestrator.core.webhooks import webhook_token
from orchestrator.devtools.emulator import BackgroundServer
from tests.orchestrator.conftest import eventually

SECRET = "webhook-secret"


def make_settings(tmp_path, emulator, **overrides) -> OrchestratorSettings:
    values = {
        "database_url": f"sqlite:///{tmp_path / 'jobs.db'}",
        "backend_health": f"runpod:{emulator.endpoint_id}",
        "runpod_base_url": emulator.base_url,
        "poll_interval_s": 0.05,
        "poll_max_interval_s": 0.2,
        **overrides,
    }
    return OrchestratorSettings(**values)


@pytest.fixture
def make_service(tmp_path, emulator):
    services: list[JobService] = []

    def make(**overrides) -> JobService:
        services.append(JobService(make_settings(tmp_path, emulator, **overrides)))
        return services[-1]

    yield make
    for service in services:
        service.stop()


def remote_state(emulator, remote_id: str) -> str | None:
    job = emulator.emulator.get(emulator.endpoint_id, remote_id)
    return job.status if job else None


@pytest.mark.parametrize("status", [500, 429])
def test_transient_submit_errors_are_retried_into_exactly_one_job(emulator, make_service, status):
    emulator.emulator.faults.fail_requests, emulator.emulator.faults.fail_status = 2, status
    service = make_service()
    job = service.submit("health", {})
    assert job.remote_id is not None and job.attempts == 1
    assert service.wait(job.id, 30).status == "completed"
    stats = emulator.emulator.stats()
    assert stats["submitted"] == 1 and stats["executed"] == 1


def test_unreachable_endpoint_fails_the_job(tmp_path, emulator, make_service):
    service = make_service(runpod_base_url="http://127.0.0.1:9/v2", max_attempts=1)
    job = service.submit("health", {})
    assert job.status == "failed" and job.error_code == "runpod_unreachable"


def test_ambiguous_submit_is_not_resent(emulator, make_service):
    emulator.emulator.faults.accept_then_fail = 1  # queued remotely, but the answer is a 502
    service = make_service()
    job = service.submit("health", {})
    assert job.status == "failed" and job.error_code == "submit_uncertain" and "Not resent" in job.error
    eventually(lambda: emulator.emulator.stats().get("completed"))
    assert emulator.emulator.stats()["submitted"] == 1


def test_ambiguous_submit_is_reconciled_by_its_webhook(emulator, make_service):
    receiver = FastAPI()
    holder: dict[str, JobService] = {}

    @receiver.post("/v1/webhooks/runpod/{job_id}")
    def webhook(job_id: str, token: str, body: dict) -> dict:
        return holder["service"].handle_webhook(job_id, token, body).model_dump(mode="json")

    with BackgroundServer(receiver) as server:
        service = holder["service"] = make_service(public_base_url=server.url, webhook_secret=SECRET)
        emulator.emulator.faults.accept_then_fail = 1
        job = service.submit("health", {})
        assert job.status == "queued" and job.error_code == "submit_uncertain" and job.remote_id is None
        done = service.wait(job.id, 30)
    assert done.status == "completed" and done.error_code is None
    assert done.remote_id in emulator.emulator.jobs
    stats = emulator.emulator.stats()
    assert stats["submitted"] == 1 and stats["webhooks_delivered"] == 1


@pytest.mark.parametrize(
    ("fault", "code", "message"),
    [
        ("crash_jobs", "remote_failed", "Worker exited unexpectedly"),
        ("lose_jobs", "remote_job_lost", "no longer knows"),
    ],
)
def test_a_worker_dying_mid_job_fails_the_job(emulator, make_service, fault, code, message):
    setattr(emulator.emulator.faults, fault, 1)
    service = make_service()
    service.start()
    failed = service.wait(service.submit("health", {}).id, 30)
    assert failed.status == "failed" and failed.error_code == code and message in failed.error


def test_a_job_never_started_times_out_and_is_cancelled_remotely(emulator, make_service):
    emulator.emulator.faults.hold_queue = True
    service = make_service(health_timeout_s=0.3, queue_timeout_s=0.3)
    job = service.submit("health", {})
    timed_out = service.wait(job.id, 30)
    assert timed_out.status == "timed_out" and timed_out.error_code == "timeout"
    assert "did not finish within 0.6 s" in timed_out.error
    eventually(lambda: remote_state(emulator, job.remote_id) == "CANCELLED")


def test_a_job_running_past_its_limit_times_out(emulator, make_service):
    emulator.emulator.faults.job_delay_s = 5
    service = make_service(health_timeout_s=0.5)
    service.start()
    job = service.submit("health", {})
    timed_out = service.wait(job.id, 30)
    assert timed_out.status == "timed_out" and timed_out.started_at is not None
    eventually(lambda: remote_state(emulator, job.remote_id) in ("TIMED_OUT", "CANCELLED"))


def test_cancel_stops_the_remote_job_and_nothing_changes_after(emulator, make_service):
    emulator.emulator.faults.job_delay_s = 0.5
    service = make_service()
    job = service.submit("health", {})
    eventually(lambda: service.refresh(job.id).status == "running")
    cancelled = service.cancel(job.id)
    assert cancelled.status == "cancelled" and cancelled.error_code == "cancelled"
    eventually(lambda: remote_state(emulator, job.remote_id) == "CANCELLED")
    assert service.cancel(job.id) == cancelled
    assert service.wait(job.id, 1) == cancelled
    assert "completed" not in emulator.emulator.stats()


def test_webhook_replays_are_harmless(emulator, make_service):
    service = make_service(webhook_secret=SECRET)
    job = service.submit("health", {})
    status_url = f"{emulator.base_url}/{emulator.endpoint_id}/status/{job.remote_id}"
    body = eventually(lambda: (b := httpx.get(status_url).json())["status"] == "COMPLETED" and b)
    token = webhook_token(SECRET, job.id)
    with pytest.raises(WebhookRejected):
        service.handle_webhook(job.id, "forged", body)
    done = service.handle_webhook(job.id, token, body)
    assert done.status == "completed" and done.output["status"] == "ok"
    assert service.handle_webhook(job.id, token, body) == done
    assert service.handle_webhook(job.id, token, {**body, "status": "FAILED", "error": "late"}) == done
    assert service.get(job.id) == done


def test_webhook_for_another_remote_job_is_ignored(emulator, make_service):
    emulator.emulator.faults.hold_queue = True
    service = make_service(webhook_secret=SECRET)
    job = service.submit("health", {})
    stray = {"id": "someone-else", "status": "COMPLETED", "output": {"status": "ok"}}
    assert service.handle_webhook(job.id, webhook_token(SECRET, job.id), stray).status == "queued"


def test_orchestrator_restarted_mid_job_still_completes_it(emulator, make_service):
    emulator.emulator.faults.job_delay_s = 1.0
    first = make_service()
    first.start()
    job = first.submit("health", {})
    eventually(lambda: first.get(job.id).status == "running")
    first.stop()
    second = make_service()
    second.start()
    done = second.wait(job.id, 30)
    assert done.status == "completed" and done.attempts == 1 and done.remote_id == job.remote_id
    stats = emulator.emulator.stats()
    assert stats["submitted"] == 1 and stats["executed"] == 1


def test_a_job_stored_but_never_submitted_is_submitted_on_start(emulator, make_service):
    service = make_service()
    old = utcnow() - timedelta(seconds=30)
    job = service.store.create(
        task="health",
        status="queued",
        backend="runpod",
        endpoint=emulator.endpoint_id,
        input={"task": "health"},
        created_at=old,
        deadline_at=utcnow() + timedelta(minutes=5),
    )
    service.start()
    done = service.wait(job.id, 30)
    assert done.status == "completed" and done.attempts == 1
    assert emulator.emulator.stats()["submitted"] == 1


def test_many_jobs_with_the_poller_running_are_each_submitted_once(emulator, make_service):
    service = make_service()
    service.start()
    jobs = [service.submit("health", {}) for _ in range(20)]
    assert all(service.wait(job.id, 60).status == "completed" for job in jobs)
    stats = emulator.emulator.stats()
    assert stats["submitted"] == stats["executed"] == stats["completed"] == 20


def test_webhook_must_name_the_remote_job_and_adopts_only_one_the_backend_knows(emulator, make_service):
    """Webhooks: a webhook completes only the remote job it names (its `id` is the job's remote id)."""
    emulator.emulator.faults.hold_queue = True
    service = make_service(webhook_secret=SECRET)
    job = service.submit("health", {})
    token = webhook_token(SECRET, job.id)
    with pytest.raises(OrchestratorError) as nameless:
        service.handle_webhook(job.id, token, {"status": "COMPLETED", "output": {"status": "ok"}})
    assert nameless.value.code == "invalid_webhook" and service.get(job.id).status == "queued"
    lost_answer = service.store.create(  # its submit's answer was lost: no remote id yet
        task="health",
        status="queued",
        backend="runpod",
        endpoint=emulator.endpoint_id,
        input={"task": "health"},
        attempts=1,
        error_code="submit_uncertain",
    )
    forged = {"id": "made-up", "status": "COMPLETED", "output": {"status": "forged"}}
    ignored = service.handle_webhook(lost_answer.id, webhook_token(SECRET, lost_answer.id), forged)
    assert ignored.status == "queued" and ignored.remote_id is None and ignored.output is None
