"""JobService with the local backend on SQLite (and PostgreSQL with DATABASE_URL): submit, wait,
validation, idempotency, restarts, listing, health."""

from __future__ import annotations

import base64
import threading
import uuid
from datetime import timedelta

import cv2
import pytest

from handlers.errors import TaskError
from orchestrator.core.backends import Submission, worker_pool
from orchestrator.core.backends.local import LocalBackend, runner_is_gone
from orchestrator.core.config import OrchestratorSettings, parse_backend_spec
from orchestrator.core.db import JobStore, utcnow
from orchestrator.core.models import IdempotencyConflict, JobNotFound, OrchestratorError, redact
from orchestrator.core.service import JobService
from orchestrator.core.webhooks import webhook_token
from tests.media import astronaut_bgr
from tests.orchestrator.conftest import eventually
from tests.orchestrator.worker_tasks import BLOCK_USER, HANG_USER, dispatch_or_crash, dispatch_or_hang


@pytest.fixture
def settings(db_url: str, local_settings) -> OrchestratorSettings:
    return OrchestratorSettings(database_url=db_url, poll_interval_s=0.05, poll_max_interval_s=0.2, local_workers=2)


@pytest.fixture
def service(settings):
    service = JobService(settings)
    yield service
    service.stop()


def test_health_job_runs_locally_to_completion(service):
    job = service.submit("health", {})
    assert job.status in ("queued", "running", "completed") and job.attempts == 1 and job.backend == "local"
    seen = []
    done = service.wait(job.id, 60, on_progress=lambda j: seen.append(j.status))
    assert done.status == "completed" and done.output["status"] == "ok"
    assert done.error is None and done.finished_at >= done.created_at
    assert seen[-1] == "completed"
    assert service.get(job.id) == done


def test_bad_payload_is_refused_and_nothing_is_stored(service):
    with pytest.raises(TaskError) as refused:
        service.submit("render_emotion", {"user_id": "u1", "image": "ftp://x/y.png", "emotion": "happy"})
    assert refused.value.code == "invalid_input" and "unsupported URI" in refused.value.message
    with pytest.raises(TaskError) as unknown:
        service.submit("dance", {})
    assert unknown.value.code == "unknown_task"
    with pytest.raises(TaskError):
        service.submit("health", {"task": "render_emotion"})
    assert service.list(user_id="u1") == []


def test_same_idempotency_key_returns_the_same_job(service):
    key = f"k-{uuid.uuid4().hex}"
    first = service.submit("health", {}, idempotency_key=key)
    again = service.submit("health", {"task": "health"}, idempotency_key=key)
    assert again.id == first.id and again.attempts == 1
    with pytest.raises(IdempotencyConflict) as conflict:
        service.submit("health", {"store": "file:///elsewhere"}, idempotency_key=key)
    assert conflict.value.code == "idempotency_key_reused" and conflict.value.http_status == 409
    assert service.wait(first.id, 60).attempts == 1


def test_secret_looking_fields_are_masked_and_webhook_tokens_differ(service):
    job = service.store.create(
        task="render_emotion", status="cancelled", backend="local", input=redact({"api_key": "x", "a": [{"Token": 1}]})
    )
    assert job.input == {"api_key": "***", "a": [{"Token": "***"}]}
    assert len(webhook_token("secret", "job")) == 64 and webhook_token("secret", "job") != webhook_token("s", "job")


def test_unknown_job_and_bad_filters(service):
    with pytest.raises(JobNotFound):
        service.wait("nope", 1)
    with pytest.raises(JobNotFound):
        service.cancel("nope")
    with pytest.raises(OrchestratorError) as bad:
        service.list(status="done")
    assert bad.value.code == "invalid_filter"


def test_restart_reruns_a_local_job_whose_runner_is_gone(settings):
    first = JobService(settings)
    first._backend_by_spec("local").close()  # the runner dies before the job is recorded as done
    job = first.store.create(
        task="health",
        status="running",
        backend="local",
        endpoint=first._backend_by_spec("local").endpoint,
        remote_id=None,
        input={"task": "health"},
        attempts=1,
    )
    first.stop()
    assert runner_is_gone(job.endpoint)
    second = JobService(settings)
    try:
        second.start()
        done = second.wait(job.id, 60)
        assert done.status == "completed" and done.attempts == 2 and done.endpoint != job.endpoint
    finally:
        second.stop()


def test_restart_gives_up_after_max_attempts(settings):
    settings = settings.model_copy(update={"max_attempts": 1})
    store = JobStore(settings.database_url)
    dead = LocalBackend(workers=1)
    dead.close()
    job = store.create(
        task="health",
        status="running",
        backend="local",
        endpoint=dead.endpoint,
        remote_id="x",
        input={"task": "health"},
        attempts=1,
    )
    service = JobService(settings, store=store)
    try:
        failed = service.wait(job.id, 10)
    finally:
        service.stop()
    assert failed.status == "failed" and failed.error_code == "orchestrator_restarted"
    assert "orchestrator restarted while running locally" in failed.error


def test_another_live_runner_is_left_alone(settings):
    other = LocalBackend(workers=1)
    service = JobService(settings)
    try:
        job = service.store.create(
            task="health",
            status="running",
            backend="local",
            endpoint=other.endpoint,
            remote_id="x",
            input={"task": "health"},
            attempts=1,
        )
        assert service.wait(job.id, 0.3).status == "running"
        other.close()
        assert service.wait(job.id, 60).status == "completed"
    finally:
        service.stop()
        other.close()


def test_list_filters_by_user_task_and_status(service):
    users = [f"u{uuid.uuid4().hex[:6]}" for _ in range(2)]
    bad = {"task": "generate_video", "user_id": users[0], "avatar_id": "a1", "text": "hi", "engine": "wav2lip256"}
    video = service.submit("generate_video", bad)
    assert video.input["video_id"] == video.id and video.user_id == users[0]
    assert service.wait(video.id, 60).status == "failed"
    assert [j.id for j in service.list(user_id=users[0])] == [video.id]
    assert service.list(user_id=users[0], status="completed") == []
    assert service.list(user_id=users[1]) == []
    assert [j.id for j in service.list(user_id=users[0], task="generate_video", status="failed")] == [video.id]


def test_health_reports_db_store_and_backends(service):
    report = service.health()
    assert report["db"]["ok"] and report["backends"]["local"]["ok"]
    assert set(report["backends"]["local"]["tasks"]) == {
        "preprocess_avatar",
        "generate_video",
        "render_emotion",
        "health",
    }
    assert report["store"]["ok"] and report["status"] == "ok" and report["warnings"] == []


def test_health_is_degraded_when_a_backend_is_down(settings):
    service = JobService(
        settings.model_copy(update={"backend_health": "runpod:ep", "runpod_base_url": "http://127.0.0.1:9"})
    )
    try:
        report = service.health()
    finally:
        service.stop()
    assert report["status"] == "degraded" and report["db"]["ok"]
    assert report["backends"]["runpod:ep"]["ok"] is False and report["backends"]["runpod:ep"]["tasks"] == ["health"]
    (warning,) = report["warnings"]  # remote workers with a file:// store: their outputs would stay on their disk
    assert warning.startswith("backend runpod:ep runs health on remote workers") and "AVATAR_STORE_URI" in warning


def test_backend_specs_are_validated(monkeypatch):
    assert str(parse_backend_spec("runpod:abc123")) == "runpod:abc123"
    assert str(parse_backend_spec("modal:app/Worker")) == "modal:app/Worker"
    for bad in ("runpod:", "modal:app", "lambda:x", "local:x"):
        with pytest.raises(ValueError, match="is not valid"):
            parse_backend_spec(bad)
    monkeypatch.setenv("BACKEND_RENDER_EMOTION", "runpod:ep1")
    monkeypatch.setenv("LIVETALKING_VIDEO_TIMEOUT", "42")
    settings = OrchestratorSettings()
    assert settings.backend_spec("render_emotion").target == "ep1" and settings.timeout_for("generate_video") == 42
    monkeypatch.setenv("BACKEND_HEALTH", "nowhere")
    with pytest.raises(ValueError):
        OrchestratorSettings()


def test_a_local_job_never_claimed_is_run_once_old_enough(service):
    fresh = service.store.create(task="health", status="queued", backend="local", input={"task": "health"})
    assert service.wait(fresh.id, 0.2).attempts == 0  # left to the submit() that created it
    old = service.store.create(
        task="health",
        status="queued",
        backend="local",
        input={"task": "health"},
        created_at=utcnow() - timedelta(seconds=30),
    )
    done = service.wait(old.id, 60)
    assert done.status == "completed" and done.attempts == 1


def test_concurrent_submits_with_one_key_make_one_job(service):
    key = f"k-{uuid.uuid4().hex}"
    barrier = threading.Barrier(6)
    ids: list[str] = []

    def submit() -> None:
        barrier.wait()
        ids.append(service.submit("health", {}, idempotency_key=key).id)

    threads = [threading.Thread(target=submit) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(set(ids)) == 1 and len(ids) == 6
    assert service.wait(ids[0], 60).attempts == 1
    with pytest.raises(OrchestratorError) as too_long:
        service.submit("health", {}, idempotency_key="k" * 300)
    assert too_long.value.code == "invalid_idempotency_key"


def test_render_emotion_locally_reports_progress_and_pins_the_render_id(service, local_settings):
    ok, jpeg = cv2.imencode(".jpg", cv2.resize(astronaut_bgr(), (256, 256)))
    image = "data:image/jpeg;base64," + base64.b64encode(jpeg.tobytes()).decode()
    seen: list[object] = []
    job = service.submit("render_emotion", {"user_id": "u1", "image": image, "emotion": "sad"})
    done = service.wait(job.id, 120, on_progress=lambda j: seen.append(j.progress))
    assert done.status == "completed", done.error
    assert done.input["render_id"] == job.id and job.id in done.output["renders"][0]["uri"]
    assert done.progress == {"stage": "done", "fraction": 1.0} and len(seen) >= 2


def test_local_runs_cancelled_before_they_start_are_evicted_like_finished_ones(local_settings, monkeypatch, tmp_path):
    import orchestrator.core.backends.local as local_module

    monkeypatch.setattr(local_module, "MAX_FINISHED_RUNS", 0)
    backend = LocalBackend(workers=1, settings=local_settings, run_task=dispatch_or_crash)
    release = tmp_path / "release"
    try:  # the only worker is busy: the next run stays queued
        backend.submit(Submission("render_emotion", {"user_id": BLOCK_USER, "image": release.as_uri()}, "busy"))
        eventually(lambda: backend.status("busy").state.value == "running")
        backend.submit(Submission("health", {}, "never-started"))
        backend.cancel("never-started")
        assert backend.status("never-started").state.value == "cancelled"
        release.touch()
        eventually(lambda: backend.status("busy").state.value == "failed")
        backend.submit(Submission("health", {}, "next"))
        assert "never-started" not in backend._runs
    finally:
        release.touch()
        backend.close()


def test_a_resumed_job_is_submitted_with_its_original_payload_not_the_masked_copy(settings, emulator):
    settings = settings.model_copy(update={"backend_health": f"runpod:{emulator.endpoint_id}"})
    settings = settings.model_copy(update={"runpod_base_url": emulator.base_url})
    store = JobStore(settings.database_url)
    payload = {"task": "health", "api_key": "s3cr3t"}  # a secret-looking field: masked for callers
    job = store.create(  # left unclaimed by a process that died before submitting it
        task="health",
        status="queued",
        backend="runpod",
        endpoint=emulator.endpoint_id,
        input=payload,
        created_at=utcnow() - timedelta(seconds=30),
    )
    assert job.input == {"task": "health", "api_key": "***"} and job.payload == payload
    service = JobService(settings, store=store)
    try:
        resumed = service.wait(job.id, 30)
    finally:
        service.stop()
    assert resumed.attempts == 1 and resumed.remote_id in emulator.emulator.jobs
    assert emulator.emulator.jobs[resumed.remote_id].input == payload
    assert resumed.input["api_key"] == "***"


def test_cancel_reaches_a_local_job_in_its_worker_process_and_the_worker_serves_on(local_settings, tmp_path):
    settings = OrchestratorSettings(database_url=f"sqlite:///{tmp_path / 'jobs.db'}", poll_interval_s=0.05)
    local = LocalBackend(workers=1, settings=local_settings, run_task=dispatch_or_crash)
    service = JobService(settings, backends={"render_emotion": local, "health": local})
    try:
        body = {"user_id": BLOCK_USER, "image": (tmp_path / "never").as_uri(), "emotion": "happy"}
        job = service.submit("render_emotion", body)
        eventually(lambda: service.refresh(job.id).progress == {"stage": "blocked", "fraction": 0.0})
        pids = local.pool.pids()
        assert service.cancel(job.id).status == "cancelled"
        eventually(lambda: local.status(job.id).state.value == "cancelled")  # its worker stopped at its next stage
        assert service.wait(service.submit("health", {}).id, 60).status == "completed"
        assert local.pool.pids() == pids  # the same worker, not a replacement
    finally:
        service.stop()


def test_a_local_job_stuck_in_native_code_is_killed_with_its_worker_on_cancel(local_settings, tmp_path, monkeypatch):
    monkeypatch.setattr(worker_pool, "CANCEL_GRACE_S", 0.5)
    settings = OrchestratorSettings(database_url=f"sqlite:///{tmp_path / 'jobs.db'}", poll_interval_s=0.05)
    local = LocalBackend(workers=1, settings=local_settings, run_task=dispatch_or_hang)
    service = JobService(settings, backends={"render_emotion": local, "health": local})
    try:
        job = service.submit("render_emotion", {"user_id": HANG_USER, "image": "s3://b/face.png", "emotion": "sad"})
        eventually(lambda: service.refresh(job.id).status == "running")
        pids = local.pool.pids()
        assert service.cancel(job.id).status == "cancelled"
        eventually(lambda: local.pool.pids() != pids, timeout_s=10)  # killed after the grace
        assert service.wait(service.submit("health", {}).id, 60).status == "completed"
    finally:
        service.stop()
