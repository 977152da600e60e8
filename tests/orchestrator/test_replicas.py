"""Replicas on one database: leases claimed with SKIP LOCKED, takeovers after a lease expires, silent local
runners, LISTEN/NOTIFY wakeups, SQLite's single replica, and the lease state in /healthz and /metrics."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from datetime import timedelta
from pathlib import Path

import httpx
import pytest

from orchestrator.api import create_app
from orchestrator.core.config import OrchestratorSettings
from orchestrator.core.db import JobStore, utcnow
from orchestrator.core.leases import LeaseStore
from orchestrator.core.replica import SingleReplicaDatabase
from orchestrator.core.service import JobService
from orchestrator.devtools.emulator import BackgroundServer
from tests.orchestrator.conftest import eventually

REPO_ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def store(db_url: str):
    store = JobStore(db_url)
    yield store
    store.close()


@pytest.fixture
def make_service(db_url: str, local_settings):
    services: list[JobService] = []

    def make(**overrides) -> JobService:
        values = {"database_url": db_url, "poll_interval_s": 0.05, "poll_max_interval_s": 0.2, **overrides}
        services.append(JobService(OrchestratorSettings(**values)))
        return services[-1]

    yield make
    for service in services:
        service.stop()


def add_jobs(store: JobStore, count: int, **values) -> list[str]:
    fields = {"task": "health", "status": "queued", "backend": "local", "input": {"task": "health"}, **values}
    return [store.create(**fields).id for _ in range(count)]


def test_replicas_claiming_at_once_never_share_a_job(store):
    ids = add_jobs(store, 24, attempts=1)
    leases = LeaseStore(store)
    claimed: dict[str, list[str]] = {}
    barrier = threading.Barrier(4)

    def claim(owner: str) -> None:
        barrier.wait()
        claimed[owner] = [job.id for job in leases.claim(owner, lease_s=30, limit=6).jobs]

    threads = [threading.Thread(target=claim, args=(f"r{n}",)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    every = [job_id for jobs in claimed.values() for job_id in jobs]
    assert len(every) == len(set(every)) == 24 and set(every) == set(ids)
    assert leases.claim("r4", lease_s=30).jobs == []  # all held, none expired


def test_an_expired_lease_is_taken_over_and_counted(make_service, store):
    ids = add_jobs(store, 3, attempts=1, lease_owner="dead-replica", lease_expires_at=utcnow() + timedelta(seconds=1))
    service = make_service()
    assert service.replica.claim() == []  # still the dead replica's
    time.sleep(1.1)
    assert sorted(job.id for job in service.replica.claim()) == sorted(ids)
    assert service.replica.takeovers_total == 3 and service.replica.acquired_total == 3
    assert service.replica.claim() and service.replica.takeovers_total == 3  # renewing is not taking over


def test_a_stopped_replica_hands_its_jobs_over_at_once(make_service, store):
    ids = add_jobs(store, 2, attempts=1)
    first = make_service(lease_s=60)
    assert len(first.replica.claim()) == 2
    first.stop()
    second = make_service(lease_s=60)
    assert sorted(job.id for job in second.replica.claim()) == sorted(ids)
    assert second.replica.takeovers_total == 0  # released, not expired


def test_a_local_job_whose_runner_stopped_beating_is_run_again(make_service, store):
    long_ago = utcnow() - timedelta(seconds=60)
    (job_id,) = add_jobs(
        store,
        1,
        status="running",
        endpoint="another-host:4242:cafe0000",  # a runner on another host: only its heartbeats tell
        remote_id="x",
        attempts=1,
        started_at=long_ago,
        heartbeat_at=long_ago,
        lease_owner="dead-replica",
        lease_expires_at=utcnow() - timedelta(seconds=1),
    )
    service = make_service(lease_s=2)
    service.start()
    done = service.wait(job_id, 60)
    assert done.status == "completed" and done.attempts == 2 and done.endpoint != "another-host:4242:cafe0000"
    # (on SQLite the replica, alone by its lock, releases a dead predecessor's leases at start)
    assert service.replica.takeovers_total == (0 if store.dialect == "sqlite" else 1)


def test_a_local_job_whose_runner_beats_is_left_to_it(make_service, store):
    (job_id,) = add_jobs(store, 1, status="running", endpoint="another-host:4242:cafe0000", remote_id="x", attempts=1)
    LeaseStore(store).beat_runners(["another-host:4242:cafe0000"])
    service = make_service(lease_s=5)
    service.start()
    eventually(lambda: service.replica.held == 1)
    time.sleep(0.5)
    job = store.get(job_id)
    assert job.status == "running" and job.attempts == 1 and job.endpoint == "another-host:4242:cafe0000"


@pytest.mark.postgres
def test_a_new_job_wakes_a_replica_without_waiting_for_a_poll(db_url, make_service):
    if not db_url.startswith("postgresql"):
        pytest.skip("LISTEN/NOTIFY is PostgreSQL's")
    replica = make_service(poll_interval_s=30, poll_max_interval_s=30)
    replica.start()
    time.sleep(0.3)  # its first round is over: the next one is 30 s away unless woken
    client = make_service()  # a process that is not a replica (the CLI)
    job = client.submit("health", {}, start=False)
    assert job.attempts == 0
    started = time.monotonic()
    done = replica.wait(job.id, 20)
    assert done.status == "completed" and done.attempts == 1
    assert time.monotonic() - started < 10  # not the 30 s poll interval
    assert done.endpoint == replica._backend_by_spec("local").endpoint


def test_healthz_and_metrics_report_the_replica_and_its_leases(make_service, store):
    add_jobs(store, 2, attempts=1, backend="runpod", endpoint="ep", remote_id=None, error_code="submit_uncertain")
    service = make_service(backend_health="runpod:ep", runpod_base_url="http://127.0.0.1:9/v2")
    with BackgroundServer(create_app(service, sync_wait_s=5)) as api:
        eventually(lambda: service.replica.held == 2)
        health = httpx.get(api.url + "/healthz", timeout=10).json()
        metrics = httpx.get(api.url + "/metrics", timeout=10).text
    leases = health["leases"]
    assert leases["ok"] and leases["started"] and leases["replica"] == service.replica.id and leases["held"] == 2
    assert [r["id"] for r in leases["replicas"]] == [service.replica.id]
    assert f'avatarctl_leases_held{{replica="{service.replica.id}"}} 2.0' in metrics
    assert f'avatarctl_lease_takeovers_total{{replica="{service.replica.id}"}} 0.0' in metrics


def avatarctl(*args: str, env: dict[str, str], **options) -> subprocess.Popen:
    command = [sys.executable, "-c", "from orchestrator.cli.main import app; app()", *args]
    return subprocess.Popen(command, cwd=REPO_ROOT, env=env, stderr=subprocess.PIPE, text=True, **options)


def test_a_second_replica_on_sqlite_is_refused(tmp_path, local_settings):
    database = tmp_path / "jobs.db"
    env = {**os.environ, "DATABASE_URL": f"sqlite:///{database}", "PYTHONPATH": str(REPO_ROOT)}
    first = avatarctl("work", env=env)
    try:
        assert "working on" in first.stderr.readline()
        second = avatarctl("work", env=env)
        _, errors = second.communicate(timeout=60)
        assert second.returncode == 2
        assert "single_replica_database" in errors and "SQLite takes one replica" in errors
        assert f"pid {first.pid}" in errors
        with pytest.raises(SingleReplicaDatabase):
            JobService(OrchestratorSettings(database_url=f"sqlite:///{database}")).start()
    finally:
        first.terminate()
        first.communicate(timeout=30)
    assert first.returncode == 0
    after = JobService(OrchestratorSettings(database_url=f"sqlite:///{database}"))
    after.start()  # the lock went with the first replica
    after.stop()


def test_a_submit_interrupted_on_a_dead_replica_is_settled_without_the_grace(make_service, store, emulator):
    (job_id,) = add_jobs(
        store,
        1,
        backend="runpod",
        endpoint=emulator.endpoint_id,
        attempts=1,  # claimed, then its replica died before it recorded a remote id
        lease_owner="dead-replica",
        lease_expires_at=utcnow() - timedelta(seconds=1),
        deadline_at=utcnow() + timedelta(minutes=10),
    )
    service = make_service(backend_health=f"runpod:{emulator.endpoint_id}", runpod_base_url=emulator.base_url)
    service.start()
    done = service.wait(job_id, 10)  # not SUBMIT_GRACE_S (300 s): the submitter is known to be dead
    assert done.status == "failed" and done.error_code == "submit_uncertain" and done.attempts == 1
    assert emulator.emulator.stats().get("submitted", 0) == 0  # never resent
