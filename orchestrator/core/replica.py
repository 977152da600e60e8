"""This process as one replica of the orchestrator: its leases (``orchestrator.core.leases``), heartbeats,
wakeups, and on SQLite the lock that keeps it the only replica.

- ``start`` (``avatarctl serve`` / ``work``): on SQLite take an exclusive lock on ``<database>.replica.lock``
  (a second replica is refused with ``single_replica_database``) and drop the leases a dead predecessor
  left; register in ``replicas``; beat every third of LEASE_S; on PostgreSQL LISTEN for new jobs.
- ``claim``: the poller's source of jobs: the active jobs this replica now holds.
- A process that only runs local jobs (the CLI waiting on one) beats for its runners too (``ensure_beating``).
"""

from __future__ import annotations

import fcntl
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable
from datetime import timedelta
from typing import IO, Any

from orchestrator.core.config import OrchestratorSettings
from orchestrator.core.db import JobStore, utcnow
from orchestrator.core.leases import JOBS_CHANNEL, LeaseStore
from orchestrator.core.models import JobView, OrchestratorError

log = logging.getLogger(__name__)

LISTEN_RETRY_S = 1.0


class SingleReplicaDatabase(OrchestratorError):
    """A second replica on a SQLite database."""

    http_status = 409

    def __init__(self, message: str) -> None:
        super().__init__("single_replica_database", message)


class Replica:
    """``wake()`` is called when a job may need this replica now; ``runners()`` names this process's live
    local runners (their running jobs get heartbeats)."""

    def __init__(
        self,
        store: JobStore,
        settings: OrchestratorSettings,
        wake: Callable[[], None],
        runners: Callable[[], list[str]],
        role: str = "serve",
    ) -> None:
        self.id = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.store = store
        self.leases = LeaseStore(store)
        self.lease_s = settings.lease_s
        self.role = role
        self.wake = wake
        self.runners = runners
        # Further PostgreSQL channels to LISTEN on (the live sessions'): channel -> called with each payload.
        self.listeners: dict[str, Callable[[str], None]] = {}
        self.started = False
        self.held = 0
        self.acquired_total = 0
        self.takeovers_total = 0
        self.beat_failures_total = 0
        self._taken: set[str] = set()
        self._last_beat: float | None = None
        self._lock_file: IO[bytes] | None = None
        self._stop = threading.Event()
        self._threads: dict[str, threading.Thread] = {}
        self._threads_lock = threading.Lock()

    # ---- life -------------------------------------------------------------------------------

    def start(self) -> None:
        if self.started:
            return
        self._stop.clear()
        if self.store.dialect == "sqlite":
            self._lock_file = _lock_sqlite(self.store)
            if (released := self.leases.release(None)) > 0:
                log.info("released %d lease(s) left by the previous replica", released)
        self.leases.register_replica(self.id, socket.gethostname(), os.getpid(), self.role)
        self.started = True
        self._beat_once()
        self.ensure_beating()
        if self.store.dialect == "postgresql":
            self._spawn("job-listener", self._listen)
        log.info("replica %s (%s) started; lease %g s", self.id, self.role, self.lease_s)

    def ensure_beating(self) -> None:
        """Start the heartbeat thread unless it runs (idempotent, cheap)."""
        self._spawn("replica-heartbeat", self._beat_loop)

    def stop(self, timeout_s: float = 5.0) -> None:
        """Stop beating and listening; give this replica's leases back so another replica goes on at once."""
        self._stop.set()
        with self._threads_lock:
            threads, self._threads = list(self._threads.values()), {}
        for thread in threads:
            thread.join(timeout_s)
        try:
            self.leases.release(self.id)
            if self.started:
                self.leases.remove_replica(self.id)
        except Exception as exc:  # the database is gone: the leases expire by themselves
            log.warning("replica %s: could not release its leases: %s", self.id, exc)
        self.started = False
        if self._lock_file is not None:
            self._lock_file.close()
            self._lock_file = None

    def _spawn(self, name: str, target: Callable[[], None]) -> None:
        with self._threads_lock:
            if self._stop.is_set() or ((thread := self._threads.get(name)) is not None and thread.is_alive()):
                return  # stopped (until the next start), or running
            self._threads[name] = threading.Thread(target=target, name=name, daemon=True)
            self._threads[name].start()

    # ---- leases -----------------------------------------------------------------------------

    def claim(self) -> list[JobView]:
        """The active jobs this replica holds now (claiming the free and the expired ones)."""
        claim = self.leases.claim(self.id, self.lease_s)
        self.held = len(claim.jobs)
        self.acquired_total += len(claim.taken)
        self.takeovers_total += len(claim.takeovers)
        for job_id in sorted(claim.takeovers):
            log.warning("replica %s took over job %s (its replica's lease expired)", self.id, job_id)
        self._taken = (self._taken | claim.taken) & {job.id for job in claim.jobs}
        return claim.jobs

    def adopted(self, job: JobView) -> bool:
        """Whether this replica got ``job`` from another replica or from nobody (not one it created)."""
        return job.id in self._taken

    def lease_values(self) -> dict[str, Any]:
        """Columns that make a new job this replica's from its creation (it submits the job itself)."""
        return {"lease_owner": self.id, "lease_expires_at": utcnow() + timedelta(seconds=self.lease_s)}

    def announce(self, job_id: str) -> None:
        self.leases.announce(job_id)

    # ---- heartbeats and wakeups -----------------------------------------------------------

    def _beat_loop(self) -> None:
        while not self._stop.wait(self.lease_s / 3):
            self._beat_once()

    def _beat_once(self) -> None:
        try:
            self.leases.beat_runners(self.runners())
            self.leases.renew(self.id, self.lease_s)  # a CLI process keeps the jobs it created and runs
            if self.started:
                self.leases.beat_replica(self.id)
            self._last_beat = time.monotonic()
        except Exception as exc:  # a cut connection: the pool reconnects at the next beat
            self.beat_failures_total += 1
            log.warning("replica %s: heartbeat failed: %s", self.id, exc)

    def _listen(self) -> None:
        import psycopg

        conninfo = self.store.url.set(drivername="postgresql").render_as_string(hide_password=False)
        while not self._stop.is_set():
            try:
                with psycopg.connect(conninfo, autocommit=True) as conn:
                    for channel in (JOBS_CHANNEL, *self.listeners):
                        conn.execute(f"LISTEN {channel}")
                    while not self._stop.is_set():
                        for notice in conn.notifies(timeout=1.0):
                            self._heard(notice.channel, notice.payload)
            except psycopg.Error as exc:
                log.warning("replica %s: LISTEN connection lost (%s); reconnecting", self.id, exc)
                self._stop.wait(LISTEN_RETRY_S)

    def _heard(self, channel: str, payload: str) -> None:
        listener = self.listeners.get(channel)
        if listener is None:
            self.wake()
            return
        try:
            listener(payload)
        except Exception:
            log.exception("replica %s: listener of %s failed", self.id, channel)

    # ---- health -----------------------------------------------------------------------------

    def stats(self) -> dict[str, Any]:
        """Lease state for /healthz and /metrics; ``ok`` unless a started replica's heartbeats lapsed."""
        age = None if self._last_beat is None else round(time.monotonic() - self._last_beat, 3)
        ok = not self.started or (age is not None and age < self.lease_s)
        return {
            "ok": ok,
            "replica": self.id,
            "role": self.role,
            "started": self.started,
            "lease_s": self.lease_s,
            "held": self.held,
            "acquired_total": self.acquired_total,
            "takeovers_total": self.takeovers_total,
            "beat_failures_total": self.beat_failures_total,
            "last_beat_age_s": age,
        }


def _lock_sqlite(store: JobStore) -> IO[bytes] | None:
    """An exclusive lock held while this replica runs; SingleReplicaDatabase when another replica holds it."""
    path = store.url.database
    if not path or path == ":memory:":
        return None
    handle = open(f"{path}.replica.lock", "a+b")  # noqa: SIM115 (held open for the replica's life)
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        holder = handle.read().decode(errors="replace").strip() or "unknown"
        handle.close()
        raise SingleReplicaDatabase(
            f"Another orchestrator replica ({holder}) already works on the SQLite database {path}. SQLite takes"
            " one replica: stop that one, or point DATABASE_URL at PostgreSQL to run several."
        ) from None
    handle.seek(0)
    handle.truncate()
    handle.write(f"pid {os.getpid()} on {socket.gethostname()}".encode())
    handle.flush()
    return handle
