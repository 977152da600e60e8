"""JobStore on a SQLite file (WAL) and, with DATABASE_URL, on PostgreSQL: rows, idempotency keys,
compare-and-set transitions."""

from __future__ import annotations

import threading
import uuid
from datetime import timedelta, timezone

import pytest
from sqlalchemy import text

from orchestrator.core.db import DuplicateIdempotencyKey, JobStore, normalize_url, utcnow
from orchestrator.core.models import (
    FINISHED_STATUSES,
    TRANSITIONS,
    InvalidTransition,
    JobEvent,
    JobStatus,
    next_status,
)

ENDING_EVENTS = {"completed": JobEvent.complete, "failed": JobEvent.fail, "cancelled": JobEvent.cancel}
ENDING_EVENTS["timed_out"] = JobEvent.time_out


@pytest.fixture
def store(db_url: str) -> JobStore:
    store = JobStore(db_url)
    yield store
    store.close()


def new_job(store: JobStore, **values) -> object:
    fields = {
        "task": "health",
        "user_id": f"u-{uuid.uuid4().hex[:8]}",
        "status": "queued",
        "backend": "local",
        "endpoint": "test",
        "input": {"task": "health", "nested": {"list": [1, 2.5, None]}},
        **values,
    }
    return store.create(**fields)


def test_round_trip_keeps_json_and_aware_utc_datetimes(store):
    deadline = utcnow() + timedelta(minutes=5)
    job = new_job(store, deadline_at=deadline, progress={"stage": "x", "fraction": 0.5})
    got = store.get(job.id)
    assert got == job
    assert got.input == {"task": "health", "nested": {"list": [1, 2.5, None]}}
    assert got.progress == {"stage": "x", "fraction": 0.5}
    assert got.output is None and got.attempts == 0 and got.status == "queued"
    assert got.created_at.tzinfo is not None and got.created_at.utcoffset() == timedelta(0)
    assert abs(got.deadline_at - deadline) < timedelta(milliseconds=1)
    assert store.get("missing") is None
    assert got.model_dump(mode="json")["created_at"].endswith(("Z", "+00:00"))


def test_idempotency_key_is_unique_but_many_jobs_have_none(store):
    key = f"key-{uuid.uuid4().hex}"
    first = new_job(store, idempotency_key=key)
    with pytest.raises(DuplicateIdempotencyKey):
        new_job(store, idempotency_key=key)
    assert store.get_by_idempotency_key(key).id == first.id
    new_job(store, user_id=first.user_id)
    new_job(store, user_id=first.user_id)
    assert len(store.list(user_id=first.user_id)) == 3


def test_finished_job_never_changes(store):
    job = new_job(store)
    assert store.transition(job.id, JobEvent.start, {"started_at": utcnow()})
    assert store.transition(job.id, JobEvent.complete, {"output": {"ok": 1}, "finished_at": utcnow()})
    done = store.get(job.id)
    assert done.status == "completed"
    for event, values in (
        (JobEvent.fail, {"error": "late"}),
        (JobEvent.progress, {"progress": 0.3}),
        (JobEvent.claim, {}),
    ):
        assert not store.transition(job.id, event, values)
    assert store.get(job.id) == done


def _job_in(store: JobStore, status: JobStatus) -> object:
    """A job brought to ``status`` through the table's own events."""
    job = new_job(store)
    if status is JobStatus.running:
        assert store.transition(job.id, JobEvent.start)
    elif status.value in FINISHED_STATUSES:
        assert store.transition(job.id, ENDING_EVENTS[status.value])
    assert store.get(job.id).status == status.value
    return job


def test_the_transition_table_is_what_the_store_applies(store):
    """Every (status, event) pair: allowed ones land on the table's status, refused ones change nothing."""
    for status in JobStatus:
        for event in JobEvent:
            job = _job_in(store, status)
            before = store.get(job.id)
            if (status, event) in TRANSITIONS:
                assert next_status(status, event) is TRANSITIONS[(status, event)]
                assert store.transition(job.id, event), (status, event)
                assert store.get(job.id).status == TRANSITIONS[(status, event)].value, (status, event)
            else:
                with pytest.raises(InvalidTransition):
                    next_status(status, event)
                assert not store.transition(job.id, event, {"error": "refused"}), (status, event)
                assert store.get(job.id) == before, (status, event)
    assert not any(status.value in FINISHED_STATUSES for status, _ in TRANSITIONS)  # finished is final
    with pytest.raises(ValueError, match="transition table"):
        store.transition(new_job(store).id, JobEvent.progress, {"status": "completed"})


def test_where_columns_guard_claims(store):
    job = new_job(store)
    assert store.transition(job.id, JobEvent.claim, {"attempts": 1}, where={"attempts": 0, "remote_id": None})
    assert not store.transition(job.id, JobEvent.claim, {"attempts": 1}, where={"attempts": 0})
    assert store.transition(job.id, JobEvent.submitted, {"remote_id": "r-1"}, where={"remote_id": None})
    assert not store.transition(job.id, JobEvent.submitted, {"remote_id": "r-2"}, where={"remote_id": None})
    assert store.get(job.id).remote_id == "r-1"


def test_racing_finishers_exactly_one_wins(store):
    job = new_job(store)
    statuses = sorted(FINISHED_STATUSES) * 2
    barrier = threading.Barrier(len(statuses))
    wins: list[str] = []

    def finish(status: str) -> None:
        barrier.wait()
        if store.transition(job.id, ENDING_EVENTS[status], {"finished_at": utcnow()}):
            wins.append(status)

    threads = [threading.Thread(target=finish, args=(s,)) for s in statuses]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(wins) == 1
    assert store.get(job.id).status == wins[0]


def test_list_filters_order_and_active(store):
    user = f"u-{uuid.uuid4().hex[:8]}"
    jobs = [new_job(store, user_id=user, task=task) for task in ("health", "render_emotion", "health")]
    store.transition(jobs[0].id, JobEvent.fail, {"finished_at": utcnow()})
    assert [j.id for j in store.list(user_id=user)] == [j.id for j in reversed(jobs)]
    assert [j.id for j in store.list(user_id=user, task="health", status="queued")] == [jobs[2].id]
    assert len(store.list(user_id=user, limit=1)) == 1
    active_ids = {j.id for j in store.active()}
    assert jobs[1].id in active_ids and jobs[0].id not in active_ids
    assert store.counts()[("render_emotion", "queued")] >= 1


def test_sqlite_uses_wal_and_a_busy_timeout(tmp_path):
    store = JobStore(f"sqlite:///{tmp_path / 'sub' / 'jobs.db'}")
    with store.engine.connect() as conn:
        assert conn.execute(text("PRAGMA journal_mode")).scalar() == "wal"
        assert conn.execute(text("PRAGMA busy_timeout")).scalar() >= 1000
    assert store.ping() and (tmp_path / "sub" / "jobs.db").exists()


def test_naive_datetimes_are_refused(tmp_path):
    store = JobStore(f"sqlite:///{tmp_path / 'jobs.db'}")
    job = new_job(store)
    with pytest.raises(Exception, match="naive datetime"):
        store.transition(job.id, JobEvent.progress, {"deadline_at": utcnow().replace(tzinfo=None)})
    assert store.transition(
        job.id, JobEvent.progress, {"deadline_at": utcnow().astimezone(timezone(timedelta(hours=9)))}
    )


def test_postgres_urls_use_psycopg3():
    assert normalize_url("postgresql://u:p@h/db").drivername == "postgresql+psycopg"
    assert normalize_url("postgres://u@h/db").drivername == "postgresql+psycopg"
    assert normalize_url("postgresql+psycopg://u@h/db").drivername == "postgresql+psycopg"
