"""Leases: how replicas sharing one database split the background work, one job at a time.

A job's row says which replica works on it (``lease_owner``) and until when (``lease_expires_at``). Each
poll round a replica claims the active jobs that are unleased, already its own, or whose lease expired,
with ``SELECT ... FOR UPDATE SKIP LOCKED`` (PostgreSQL: replicas claiming at once never wait on nor take
each other's rows; SQLite has one replica and ignores the clause), and renews its leases every third of
the lease time. A replica that dies stops renewing: within the lease time another one claims its jobs (a
*takeover*, counted). Local runners also beat on their running jobs (``heartbeat_at``), so any replica can
tell a silent runner from a live one on another host.

Why our own ~100 lines and not a PostgreSQL task library (procrastinate, pgqueuer): jobs already live in
one table with a compare-and-set state machine (``JobStore.transition``); a lease is two columns on that
row and one query, where a task library would keep a second copy of every job's state in its own tables
and need both kept consistent, and none of them runs on SQLite, the single-process default.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import timedelta

from sqlalchemy import delete, insert, or_, select, text, update

from orchestrator.core.db import JobRow, JobStore, ReplicaRow, utcnow
from orchestrator.core.models import ACTIVE_STATUSES, JobView

log = logging.getLogger(__name__)

JOBS_CHANNEL = "avatarctl_jobs"  # NOTIFY'd with a job id when a job needs a replica now
MAX_LEASES = 1000  # active jobs one replica works on at a time
_SQLITE_CLAIMS = threading.Lock()


@dataclass(frozen=True)
class Claim:
    """The active jobs a replica holds after a claim; ``taken`` are those it just got from another replica
    (or from nobody): work that no one was doing."""

    jobs: list[JobView]
    taken: frozenset[str]
    takeovers: frozenset[str]  # of ``taken``, those whose lease had expired on another replica


class LeaseStore:
    """The lease queries of ``store``'s database."""

    def __init__(self, store: JobStore) -> None:
        self.store = store
        self.engine = store.engine

    def claim(self, owner: str, lease_s: float, limit: int = MAX_LEASES) -> Claim:
        if self.store.dialect != "sqlite":
            return self._claim(owner, lease_s, limit)
        # SQLite has no row locks and pysqlite's transactions let two threads' claims interleave; the file
        # has one replica (orchestrator.core.replica's lock), so claims taking turns in this process suffice.
        with _SQLITE_CLAIMS:
            return self._claim(owner, lease_s, limit)

    def _claim(self, owner: str, lease_s: float, limit: int) -> Claim:
        now = utcnow()
        free = or_(JobRow.lease_owner.is_(None), JobRow.lease_owner == owner, JobRow.lease_expires_at < now)
        candidates = (
            select(JobRow.id, JobRow.lease_owner)
            .where(JobRow.status.in_(sorted(ACTIVE_STATUSES)), free)
            .order_by(JobRow.created_at, JobRow.id)
            .limit(limit)
            .with_for_update(skip_locked=True)
        )
        with self.engine.begin() as conn:
            previous = dict(conn.execute(candidates).all())
            if not previous:
                return Claim([], frozenset(), frozenset())
            expires = now + timedelta(seconds=lease_s)
            # The free condition again: a row is only ever taken from no one, from itself or from the expired.
            conn.execute(
                update(JobRow)
                .where(JobRow.id.in_(sorted(previous)), free)
                .values(lease_owner=owner, lease_expires_at=expires)
            )
            mine = conn.execute(select(JobRow.id).where(JobRow.id.in_(sorted(previous)), JobRow.lease_owner == owner))
            ids = sorted(mine.scalars())
        jobs = self.store.list_by_ids(ids)
        taken = frozenset(job_id for job_id in ids if previous[job_id] != owner)
        takeovers = frozenset(job_id for job_id in taken if previous[job_id] is not None)
        return Claim(jobs, taken, takeovers)

    def renew(self, owner: str, lease_s: float) -> int:
        """Extend every lease ``owner`` still holds on an active job; returns how many."""
        query = (
            update(JobRow)
            .where(JobRow.lease_owner == owner, JobRow.status.in_(sorted(ACTIVE_STATUSES)))
            .values(lease_expires_at=utcnow() + timedelta(seconds=lease_s))
        )
        with self.engine.begin() as conn:
            return conn.execute(query).rowcount

    def release(self, owner: str | None = None) -> int:
        """Give up ``owner``'s leases (None: everyone's, for a replica alone on its database)."""
        query = update(JobRow).values(lease_owner=None, lease_expires_at=None)
        query = query.where(JobRow.lease_owner.is_not(None) if owner is None else JobRow.lease_owner == owner)
        with self.engine.begin() as conn:
            return conn.execute(query).rowcount

    def beat_runners(self, runners: Iterable[str]) -> int:
        """Record that these local runners are alive on the active jobs they run."""
        runners = sorted(runners)
        if not runners:
            return 0
        query = (
            update(JobRow)
            .where(JobRow.endpoint.in_(runners), JobRow.status.in_(sorted(ACTIVE_STATUSES)))
            .values(heartbeat_at=utcnow())
        )
        with self.engine.begin() as conn:
            return conn.execute(query).rowcount

    def announce(self, job_id: str) -> None:
        """Wake every replica listening (PostgreSQL NOTIFY); a no-op elsewhere."""
        if self.store.dialect != "postgresql":
            return
        with self.engine.begin() as conn:
            conn.execute(text("SELECT pg_notify(:channel, :job_id)"), {"channel": JOBS_CHANNEL, "job_id": job_id})

    # ---- replicas ---------------------------------------------------------------------------

    def register_replica(self, replica_id: str, host: str, pid: int, role: str) -> None:
        now = utcnow()
        row = {"id": replica_id, "host": host, "pid": pid, "role": role, "started_at": now, "heartbeat_at": now}
        with self.engine.begin() as conn:
            conn.execute(insert(ReplicaRow).values(**row))

    def beat_replica(self, replica_id: str) -> None:
        with self.engine.begin() as conn:
            conn.execute(update(ReplicaRow).where(ReplicaRow.id == replica_id).values(heartbeat_at=utcnow()))

    def remove_replica(self, replica_id: str) -> None:
        with self.engine.begin() as conn:
            conn.execute(delete(ReplicaRow).where(ReplicaRow.id == replica_id))

    def live_replicas(self, within_s: float) -> list[dict[str, object]]:
        """Replicas that beat within ``within_s``, oldest first (forgets the long dead on the way)."""
        now = utcnow()
        with self.engine.begin() as conn:
            conn.execute(delete(ReplicaRow).where(ReplicaRow.heartbeat_at < now - timedelta(days=1)))
            rows = conn.execute(
                select(ReplicaRow.id, ReplicaRow.host, ReplicaRow.pid, ReplicaRow.role)
                .where(ReplicaRow.heartbeat_at >= now - timedelta(seconds=within_s))
                .order_by(ReplicaRow.started_at)
            )
            return [dict(row._mapping) for row in rows]
