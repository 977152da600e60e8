"""Fault run: three orchestrator replicas on one PostgreSQL lose no job while things break under them.

The stack: PostgreSQL (``DATABASE_URL``, else started as ``.ci/run`` does with ``.ci/postgres.sh``; each run
in a schema of its own), moto's S3 server (the store), the RunPod emulator with two workers (real
handlers, in this process so its faults can be set), and three ``avatarctl serve`` replicas (subprocesses on
127.0.0.1, LEASE_S 3 s; replicas 0 and 1 give RunPod webhook URLs through a load balancer that skips dead
replicas, replica 2 does not). Jobs (health, render_emotion, generate_video in turn) are POSTed round-robin to
the replicas with idempotency keys; a refused or failed POST is sent to the next replica with the same key.

Faults injected while jobs run (``--no-faults`` runs the same jobs without them, the latency baseline):
kill -9 of replica 0 (restarted 5 s later), an emulator worker dying mid-job (FAILED, as RunPod reports a
dead worker), the S3 server stopped for 5 s, replica 1's database connections cut (pg_terminate_backend),
and duplicated and out-of-order webhooks (a COMPLETED job's final JSON again, then IN_PROGRESS and FAILED
for it) sent to every replica.

Report: jobs lost (a key with no job, or a job gone), submitted remotely twice (re-claims, /run calls
beyond claims, shared remote ids), not terminal at the end, changed by a stale webhook (all must be 0);
final statuses and error codes; p50/p95 completion latency (created -> finished) with and without faults;
takeover time (kill -9 -> none of the dead replica's active jobs still leased to it).

    python bench/faults.py [--jobs 300] [--lease-s 3]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import threading
import time
import uuid
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from sqlalchemy import text  # noqa: E402

from orchestrator.core.db import JobStore  # noqa: E402
from orchestrator.core.webhooks import webhook_token  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from fault_stack import (  # noqa: E402
    SECRET,
    TASKS,
    TOKEN,
    NoPostgres,
    Replica,
    S3Server,
    Stack,
    job_payloads,
    stack,
)

OUTAGE_S = 5.0
FINISH_TIMEOUT_S = 240.0
SUBMIT_GIVE_UP_S = 60.0


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))] if ordered else float("nan")


# ---- the stack ------------------------------------------------------------------------------


@dataclass
class RunReport:
    jobs: int
    lost: int
    not_terminal: int
    submitted_twice: int
    changed_by_webhooks: int
    statuses: dict[str, int]
    error_codes: dict[str, int]
    p50_s: float
    p95_s: float
    takeover_s: float | None = None


def submit_all(st: Stack, count: int, spread_s: float) -> dict[str, str]:
    """POST ``count`` jobs round-robin over ``spread_s``; returns idempotency key -> job id."""
    payloads = job_payloads(st.portrait)
    ids: dict[str, str] = {}

    def submit(n: int) -> None:
        time.sleep(spread_s * n / count)
        key = f"faults-{n}-{uuid.uuid4().hex[:8]}"
        body = payloads[TASKS[(n + n // len(TASKS)) % len(TASKS)]]  # each replica gets every task
        give_up, attempt = time.monotonic() + SUBMIT_GIVE_UP_S, n
        while time.monotonic() < give_up:
            replica = st.replicas[attempt % len(st.replicas)]
            attempt += 1
            with contextlib.suppress(httpx.HTTPError):
                headers = {"Authorization": f"Bearer {TOKEN}", "Idempotency-Key": key}
                answer = httpx.post(replica.url + "/v1/jobs", json=body, headers=headers, timeout=30)
                if answer.status_code == 202:
                    ids[key] = answer.json()["id"]
                    return
            time.sleep(0.1)
        ids[key] = ""

    with ThreadPoolExecutor(16) as pool:
        list(pool.map(submit, range(count)))
    return ids


def replay_webhooks(st: Stack, store: JobStore) -> dict[str, tuple[str, Any]]:
    """Send every completed job with a remote id its final JSON again, then stale IN_PROGRESS and FAILED
    ones, to every replica; returns what each job was before."""
    before = {}
    for job in store.list(status="completed", limit=1000):
        if not job.remote_id:
            continue
        before[job.id] = (job.status, job.output)
        bodies = (
            {"id": job.remote_id, "status": "COMPLETED", "output": job.output},
            {"id": job.remote_id, "status": "IN_PROGRESS"},
            {"id": job.remote_id, "status": "FAILED", "error": "a stale failure"},
        )
        for replica in st.replicas:
            for body in bodies:
                url = f"{replica.url}/v1/webhooks/runpod/{job.id}?token={webhook_token(SECRET, job.id)}"
                with contextlib.suppress(httpx.HTTPError):
                    httpx.post(url, json=body, timeout=10)
    return before


def replica_id(store: JobStore, pid: int) -> str | None:
    with store.engine.connect() as conn:
        return conn.execute(text("SELECT id FROM replicas WHERE pid = :pid"), {"pid": pid}).scalar()


def leased_to(store: JobStore, owner: str) -> set[str]:
    query = "SELECT id FROM jobs WHERE lease_owner = :owner AND status IN ('queued', 'running')"
    with store.engine.connect() as conn:
        return set(conn.execute(text(query), {"owner": owner}).scalars())


def inject_faults(st: Stack, store: JobStore, takeover: dict[str, float]) -> None:
    """The fault schedule, from the first submit on."""
    victim = st.replicas[0]
    time.sleep(1.0)
    dead_id = replica_id(store, victim.proc.pid) if victim.proc else None
    killed_at = time.monotonic()
    victim.kill9()
    held = leased_to(store, dead_id) if dead_id else set()
    restarts = [threading.Thread(target=restart_later, args=(victim, st.log_dir), daemon=True)]
    restarts[0].start()
    st.emulator.faults.crash_jobs = 1  # the next job a worker takes dies with its worker, mid-job
    time.sleep(0.5)
    st.s3.stop()
    restarts.append(threading.Thread(target=restart_s3_later, args=(st.s3,), daemon=True))
    restarts[-1].start()
    time.sleep(0.5)
    with store.engine.begin() as conn:
        conn.execute(
            text("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = 'replica-1'")
        )
    while held and dead_id and time.monotonic() - killed_at < FINISH_TIMEOUT_S:
        if not held & leased_to(store, dead_id):
            break
        time.sleep(0.05)
    takeover["s"] = time.monotonic() - killed_at if held else float("nan")
    takeover["held"] = len(held)
    for thread in restarts:
        thread.join()


def restart_later(replica: Replica, log_dir: Path) -> None:
    time.sleep(OUTAGE_S)
    replica.start(log_dir)


def restart_s3_later(s3: S3Server) -> None:
    time.sleep(OUTAGE_S)
    s3.start()


def run(st: Stack, count: int, faults: bool) -> RunReport:
    store = JobStore(st.database_url)
    submitted_before = st.emulator.stats().get("submitted", 0)
    takeover: dict[str, float] = {}
    injector = threading.Thread(target=inject_faults, args=(st, store, takeover), daemon=True)
    if faults:
        injector.start()
    ids = submit_all(st, count, spread_s=max(3.0, count / 40))
    give_up = time.monotonic() + FINISH_TIMEOUT_S
    while time.monotonic() < give_up and any(store.get(i) is None or not store.get(i).finished for i in ids.values()):
        time.sleep(0.2)
    if faults:
        injector.join(FINISH_TIMEOUT_S)
        st.replicas[0].wait_ready()
    before = replay_webhooks(st, store) if faults else {}
    jobs = [store.get(job_id) if job_id else None for job_id in ids.values()]
    present = [job for job in jobs if job is not None]
    remote_ids = [job.remote_id for job in present if job.remote_id]
    claims = sum(job.attempts for job in present)
    submitted = st.emulator.stats().get("submitted", 0) - submitted_before
    changed = sum(1 for job_id, was in before.items() if (store.get(job_id).status, store.get(job_id).output) != was)
    latencies = [(job.finished_at - job.created_at).total_seconds() for job in present if job.finished_at]
    store.close()
    return RunReport(
        jobs=count,
        lost=len(jobs) - len(present),
        not_terminal=sum(1 for job in present if not job.finished),
        submitted_twice=sum(max(0, job.attempts - 1) for job in present)
        + max(0, submitted - claims)
        + (len(remote_ids) - len(set(remote_ids))),
        changed_by_webhooks=changed,
        statuses=dict(Counter(job.status for job in present)),
        error_codes=dict(Counter(job.error_code for job in present if job.error_code)),
        p50_s=percentile(latencies, 0.5),
        p95_s=percentile(latencies, 0.95),
        takeover_s=takeover.get("s") if faults else None,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=300)
    parser.add_argument("--lease-s", type=float, default=3.0)
    parser.add_argument("--no-faults", action="store_true", help="only the run without faults")
    args = parser.parse_args()
    try:
        with stack(args.lease_s) as st:
            baseline = run(st, args.jobs, faults=False)
            faulty = None if args.no_faults else run(st, args.jobs, faults=True)
    except NoPostgres as exc:
        print(f"fault run skipped: {exc}")
        return
    print(f"fault run: {args.jobs} jobs per run ({', '.join(TASKS)} in turn), 3 replicas, LEASE_S {args.lease_s:g} s")
    for name, report in (("no faults", baseline), ("faults", faulty)):
        if report is None:
            continue
        print(f"\n[{name}]")
        print(f"  lost {report.lost}, submitted remotely twice {report.submitted_twice}, ", end="")
        print(f"not terminal {report.not_terminal}")
        print(f"  changed by duplicated/out-of-order webhooks {report.changed_by_webhooks}")
        print(f"  completion latency p50 {report.p50_s:.2f} s, p95 {report.p95_s:.2f} s")
        print(f"  statuses {json.dumps(report.statuses)}; error codes {json.dumps(report.error_codes)}")
        if report.takeover_s is not None:
            print(f"  takeover after kill -9 of a replica: {report.takeover_s:.2f} s")
    zero = all(
        r is None or (r.lost, r.submitted_twice, r.not_terminal, r.changed_by_webhooks) == (0, 0, 0, 0)
        for r in (baseline, faulty)
    )
    sys.exit(0 if zero else 1)


if __name__ == "__main__":
    main()
