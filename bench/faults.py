"""Fault run: three orchestrator replicas on one PostgreSQL lose no job while things break under them.

The stack: PostgreSQL (``DATABASE_URL``, else started as ``.ci/run`` does with ``.ci/postgres.sh``; each run
in a schema of its own), moto's S3 server (the store), the RunPod emulator with two workers (real
handlers, in this process so its faults can be set), and three ``avatarctl serve`` replicas (subprocesses on
127.0.0.1, LEASE_S 3 s; replicas 0 and 1 give RunPod webhook URLs through a load balancer that skips dead
replicas, replica 2 does not). Jobs (health,
render_emotion, generate_video in turn) are POSTed round-robin to the replicas with idempotency keys; a
refused or failed POST is sent to the next replica with the same key.

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
import logging
import os
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from sqlalchemy import create_engine, text  # noqa: E402

from orchestrator.db import JobStore, normalize_url  # noqa: E402
from orchestrator.emulator import BackgroundServer, create_emulator_app  # noqa: E402
from orchestrator.webhooks import webhook_token  # noqa: E402

AVATARCTL = str(Path(sys.executable).with_name("avatarctl"))
ENDPOINT = "faults"
TOKEN = "faults-token"
SECRET = "faults-secret"
BUCKET = "faults"
TASKS = ("health", "render_emotion", "generate_video")
REPLICAS = 3
START_TIMEOUT_S = 60.0
OUTAGE_S = 5.0
FINISH_TIMEOUT_S = 240.0
SUBMIT_GIVE_UP_S = 60.0
# Short limits, so a job whose submit a kill -9 interrupted (never resent: it may have been queued) reaches
# its deadline within the run when no webhook comes for it.
DEADLINES = {"QUEUE_TIMEOUT_S": "20", "HEALTH_TIMEOUT_S": "30", "EMOTION_TIMEOUT_S": "30", "VIDEO_TIMEOUT_S": "60"}


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))] if ordered else float("nan")


# ---- the stack ------------------------------------------------------------------------------


class S3Server:
    """moto's S3 server on a fixed port, stoppable and restartable (its buckets live in this process)."""

    def __init__(self) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._server: Any = None

    def start(self) -> None:
        from moto.server import ThreadedMotoServer

        logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one access line per S3 request otherwise
        self._server = ThreadedMotoServer(ip_address="127.0.0.1", port=self.port, verbose=False)
        self._server.start()

    def stop(self) -> None:
        self._server.stop()


@dataclass
class Replica:
    index: int
    env: dict[str, str]
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen | None = None
    log_path: Path | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, log_dir: Path) -> None:
        self.log_path = log_dir / f"replica-{self.index}.log"
        log = open(self.log_path, "ab")  # noqa: SIM115 (lives as long as the process)
        command = [AVATARCTL, "serve", "--port", str(self.port), "--log-level", "warning"]
        self.proc = subprocess.Popen(command, env={**os.environ, **self.env}, stdout=log, stderr=log)
        log.close()

    def wait_ready(self) -> None:
        give_up = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < give_up:
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(self.url + "/healthz", timeout=2).status_code == 200:
                    return
            if self.proc is None or self.proc.poll() is not None:
                break
            time.sleep(0.1)
        tail = self.log_path.read_text(errors="replace")[-2000:] if self.log_path else ""
        raise RuntimeError(f"replica {self.index} did not start on {self.url}:\n{tail}")

    def kill9(self) -> None:
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@dataclass
class Stack:
    database_url: str
    s3: S3Server
    emulator: Any
    replicas: list[Replica]
    log_dir: Path
    portrait: str


def postgres_url() -> str:
    url = os.environ.get("DATABASE_URL", "")
    if url.startswith(("postgresql", "postgres:")):
        return url
    if subprocess.run(["bash", str(REPO_ROOT / ".ci" / "postgres.sh")]).returncode != 0:
        raise NoPostgres("no PostgreSQL: set DATABASE_URL or let .ci/postgres.sh install one")
    return "postgresql+psycopg://postgres@127.0.0.1:55432/avatarctl"


class NoPostgres(RuntimeError):
    """Neither DATABASE_URL nor .ci/postgres.sh gives a PostgreSQL server."""


@contextmanager
def fresh_schema(url: str) -> Iterator[str]:
    """A schema of its own for this run; yields the URL (without application_name) that selects it."""
    schema = f"faults_{uuid.uuid4().hex[:10]}"
    engine = create_engine(normalize_url(url))
    with engine.begin() as conn:
        conn.execute(text(f'CREATE SCHEMA "{schema}"'))
    try:
        yield f"{url}{'&' if '?' in url else '?'}options=-csearch_path%3D{schema}"
    finally:
        with engine.begin() as conn:
            conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
        engine.dispose()


@contextmanager
def stack(lease_s: float) -> Iterator[Stack]:
    import boto3
    import cv2

    from orchestrator.demo import astronaut_bgr

    s3 = S3Server()
    s3.start()
    s3_env = {
        "S3_ENDPOINT_URL": s3.url,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AVATAR_STORE_URI": f"s3://{BUCKET}",
    }
    os.environ.update(s3_env)  # the emulator's workers (this process) write to the same bucket
    client = boto3.client("s3", endpoint_url=s3.url, region_name="us-east-1")
    client.create_bucket(Bucket=BUCKET)
    client.put_object(
        Bucket=BUCKET, Key="uploads/faults/portrait.png", Body=cv2.imencode(".png", astronaut_bgr(256))[1].tobytes()
    )
    emulator_app = create_emulator_app([ENDPOINT], workers=2)
    replicas = [Replica(i, {}) for i in range(REPLICAS)]
    with (
        fresh_schema(postgres_url()) as database_url,
        BackgroundServer(emulator_app) as emulator_server,
        BackgroundServer(load_balancer(replicas)) as balancer,
        tempfile.TemporaryDirectory() as logs,
    ):
        portrait = f"s3://{BUCKET}/uploads/faults/portrait.png"
        warm_up(emulator_server.url, portrait)
        for replica in replicas:
            urls = {"emulator": emulator_server.url, "balancer": balancer.url}
            replica.env = replica_env(replica, database_url, urls, s3_env, lease_s)
            replica.start(Path(logs))
        try:
            for replica in replicas:
                replica.wait_ready()
            yield Stack(database_url, s3, emulator_app.state.emulator, replicas, Path(logs), portrait)
        finally:
            for replica in replicas:
                replica.stop()
            s3.stop()


def replica_env(replica: Replica, database_url: str, urls: dict[str, str], s3_env: dict, lease_s: float) -> dict:
    env = {
        **s3_env,
        **DEADLINES,
        "DATABASE_URL": f"{database_url}&application_name=replica-{replica.index}",
        "RUNPOD_BASE_URL": f"{urls['emulator']}/v2",
        "API_TOKEN": TOKEN,
        "WEBHOOK_SECRET": SECRET,
        "POLL_INTERVAL_S": "0.2",
        "POLL_MAX_INTERVAL_S": "1",
        "LEASE_S": str(lease_s),
        **{f"BACKEND_{task.upper()}": f"runpod:{ENDPOINT}" for task in TASKS},
    }
    if replica.index < 2:  # some jobs get webhooks, through the load balancer as in a deployment
        env["PUBLIC_BASE_URL"] = urls["balancer"]
    return env


def load_balancer(replicas: list[Replica]) -> Any:
    """What a deployment puts in front of its replicas: each request to the next live one."""
    from fastapi import FastAPI, Request, Response

    app = FastAPI()
    turn = iter(range(10**9))

    @app.api_route("/{path:path}", methods=["GET", "POST", "DELETE"])
    async def forward(path: str, request: Request) -> Response:
        body, start = await request.body(), next(turn)
        async with httpx.AsyncClient(timeout=30) as client:
            for n in range(len(replicas)):
                replica = replicas[(start + n) % len(replicas)]
                try:
                    answer = await client.request(
                        request.method,
                        f"{replica.url}/{path}",
                        params=request.query_params,
                        content=body,
                        headers={"content-type": request.headers.get("content-type", "application/json")},
                    )
                except httpx.TransportError:
                    continue
                return Response(answer.content, answer.status_code, media_type=answer.headers.get("content-type"))
        return Response(status_code=502)

    return app


def warm_up(emulator_url: str, portrait: str) -> None:
    """Each emulated worker loads its engines once; that cold start is not what is measured here."""
    for payload in job_payloads(portrait).values():
        for _ in range(2):
            httpx.post(f"{emulator_url}/v2/{ENDPOINT}/runsync", json={"input": payload}, timeout=120)


def job_payloads(portrait: str) -> dict[str, dict[str, Any]]:
    return {
        "health": {"task": "health"},
        "render_emotion": {"task": "render_emotion", "user_id": "faults", "image": portrait, "emotion": "happy"},
        "generate_video": {"task": "generate_video", "user_id": "faults", "image": portrait, "text": "Hi there."},
    }


# ---- one run --------------------------------------------------------------------------------


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
