"""Orchestrator throughput: small jobs through the HTTP API → JobService → RunPod backend → the RunPod emulator.

Each run starts, as a deployment would, two processes: ``avatarctl emulate-runpod`` (real handlers,
``--workers`` worker threads) and ``avatarctl serve`` (the API and its poller, SQLite in a temp dir);
``--clients`` threads of this process POST ``--jobs`` health jobs to ``/v1/jobs``, and the run ends
when the database holds every job finished.

- jobs/s: jobs / (first submit → last job finished);
- submit p50/p95: latency of ``POST /v1/jobs`` (validation, the row, the RunPod ``/run`` call, the answer);
- lost: jobs not completed; duplicated: emulator submissions or executions beyond one per job, or two jobs
  sharing a remote id. Both must be 0.

Modes: ``polling`` (the poller finds each job's end, POLL_INTERVAL_S 0.1 s backing off to 0.5 s) and
``webhooks`` (the emulator posts each finished job to the API; polling slowed to every 30 s). Baseline,
measured alongside: the same jobs POSTed straight to the emulator's ``/run`` and followed by the client
polling ``/status`` (no orchestrator). Each figure is the median of ``--runs`` runs; lost/duplicated
are totals over all runs.

    python bench/orchestrator.py [--jobs 200] [--runs 3] [--clients 8] [--workers 4]
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from orchestrator.core.db import JobStore  # noqa: E402
from orchestrator.core.models import FINISHED_STATUSES  # noqa: E402

AVATARCTL = str(Path(sys.executable).with_name("avatarctl"))
START_TIMEOUT_S = 60.0
WEBHOOK_MODE_POLL_S = 30.0
WARM_UP_COUNTS = ("submitted", "executed", "completed")

ENDPOINT = "bench"
TOKEN = "bench-token"
FINISH_TIMEOUT_S = 300.0
DB_CHECK_S = 0.02


@dataclass
class RunFigures:
    jobs_per_s: float
    submit_p50_ms: float
    submit_p95_ms: float
    lost: int
    duplicated: int


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def submit_all(count: int, clients: int, post: Callable[[httpx.Client], str], base_url: str) -> tuple[list, list]:
    """POST ``count`` jobs from ``clients`` threads; returns (latencies in s, ids)."""
    latencies: list[float] = []
    ids: list[str] = []

    def worker(n: int) -> None:
        with httpx.Client(base_url=base_url, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=60) as client:
            for _ in range(n):
                started = time.perf_counter()
                ids.append(post(client))
                latencies.append(time.perf_counter() - started)

    shares = [count // clients + (1 if i < count % clients else 0) for i in range(clients)]
    with ThreadPoolExecutor(clients) as pool:
        list(pool.map(worker, shares))
    return latencies, ids


def post_job(client: httpx.Client) -> str:
    answer = client.post("/v1/jobs", json={"task": "health"})
    answer.raise_for_status()
    return answer.json()["id"]


@contextmanager
def serving(args: list[str], env: dict[str, str], ready_path: str, port: int) -> Iterator[str]:
    """Run ``avatarctl <args>`` in its own process until ``ready_path`` answers; yields its base URL."""
    log_file = tempfile.TemporaryFile()  # noqa: SIM115 (closed in the finally below, after the process ends)
    proc = subprocess.Popen([AVATARCTL, *args], env={**os.environ, **env}, stdout=log_file, stderr=log_file)
    url = f"http://127.0.0.1:{port}"
    try:
        give_up = time.monotonic() + START_TIMEOUT_S
        while True:
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(url + ready_path, timeout=2).status_code == 200:
                    break
            if proc.poll() is not None or time.monotonic() > give_up:
                log_file.seek(0)
                raise RuntimeError(f"avatarctl {args[0]} did not start on {url}:\n{log_file.read().decode()[-2000:]}")
            time.sleep(0.1)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log_file.close()


@contextmanager
def emulator(args: argparse.Namespace) -> Iterator[str]:
    port = free_port()
    command = ["emulate-runpod", "--endpoint-id", ENDPOINT, "--port", str(port), "--workers", str(args.workers)]
    command.append("--allow-private-webhooks")  # the API it calls back is on this machine
    with serving([*command, "--log-level", "warning"], {}, f"/v2/{ENDPOINT}/health", port) as url:
        # warm-up: the first job imports the task modules; that is the worker's cold start, not measured here
        httpx.post(f"{url}/v2/{ENDPOINT}/runsync", json={"input": {"task": "health"}}, timeout=60).raise_for_status()
        yield url


def emulator_stats(url: str) -> dict[str, int]:
    """The emulator's counts, less the warm-up job."""
    stats = httpx.get(f"{url}/emulator/stats").json()
    return {name: count - 1 if name in WARM_UP_COUNTS else count for name, count in stats.items()}


def finished_jobs(store: JobStore) -> int:
    return sum(n for (_, status), n in store.counts().items() if status in FINISHED_STATUSES)


def run_orchestrator(args: argparse.Namespace, webhooks: bool, tmp: Path) -> RunFigures:
    db_url = f"sqlite:///{tmp / f'jobs-{time.monotonic_ns()}.db'}"
    port = free_port()
    env = {
        "DATABASE_URL": db_url,
        "BACKEND_HEALTH": f"runpod:{ENDPOINT}",
        "API_TOKEN": TOKEN,
        "POLL_INTERVAL_S": "0.1",
        "POLL_MAX_INTERVAL_S": "0.5",
    }
    if webhooks:  # polling stays on as the safety net for a lost webhook, at a slow pace
        env.update(WEBHOOK_SECRET="bench-secret", PUBLIC_BASE_URL=f"http://127.0.0.1:{port}")
        env.update(POLL_INTERVAL_S=str(WEBHOOK_MODE_POLL_S), POLL_MAX_INTERVAL_S=str(WEBHOOK_MODE_POLL_S))
    with emulator(args) as emulator_url:
        env["RUNPOD_BASE_URL"] = f"{emulator_url}/v2"
        with serving(["serve", "--port", str(port), "--log-level", "warning"], env, "/healthz", port) as api_url:
            store = JobStore(db_url)
            started = time.perf_counter()
            latencies, _ = submit_all(args.jobs, args.clients, post_job, api_url)
            give_up = time.monotonic() + FINISH_TIMEOUT_S
            while finished_jobs(store) < args.jobs and time.monotonic() < give_up:
                time.sleep(DB_CHECK_S)
            elapsed = time.perf_counter() - started
            jobs = store.list(limit=args.jobs + 10)
            store.close()
        stats = emulator_stats(emulator_url)
    completed = sum(1 for job in jobs if job.status == "completed")
    remote_ids = [job.remote_id for job in jobs if job.remote_id]
    duplicated = (
        max(0, stats.get("submitted", 0) - args.jobs)
        + max(0, stats.get("executed", 0) - args.jobs)
        + (len(remote_ids) - len(set(remote_ids)))
    )
    return RunFigures(
        args.jobs / elapsed,
        percentile(latencies, 0.5) * 1000,
        percentile(latencies, 0.95) * 1000,
        args.jobs - completed,
        duplicated,
    )


def run_direct(args: argparse.Namespace) -> RunFigures:
    """Baseline: the emulator alone, the client submitting and polling."""

    def post(client: httpx.Client) -> str:
        answer = client.post(f"/v2/{ENDPOINT}/run", json={"input": {"task": "health"}})
        answer.raise_for_status()
        return answer.json()["id"]

    with emulator(args) as emulator_url:
        started = time.perf_counter()
        latencies, ids = submit_all(args.jobs, args.clients, post, emulator_url)
        pending, give_up = set(ids), time.monotonic() + FINISH_TIMEOUT_S
        with httpx.Client(base_url=emulator_url, timeout=60) as client:
            while pending and time.monotonic() < give_up:
                for job_id in list(pending):
                    if client.get(f"/v2/{ENDPOINT}/status/{job_id}").json()["status"] == "COMPLETED":
                        pending.discard(job_id)
                time.sleep(DB_CHECK_S)
        elapsed = time.perf_counter() - started
        stats = emulator_stats(emulator_url)
    duplicated = max(0, stats.get("executed", 0) - args.jobs) + (len(ids) - len(set(ids)))
    return RunFigures(
        args.jobs / elapsed,
        percentile(latencies, 0.5) * 1000,
        percentile(latencies, 0.95) * 1000,
        len(pending),
        duplicated,
    )


def summarize(name: str, runs: list[RunFigures]) -> str:
    jobs_per_s = statistics.median(r.jobs_per_s for r in runs)
    p50 = statistics.median(r.submit_p50_ms for r in runs)
    p95 = statistics.median(r.submit_p95_ms for r in runs)
    lost, duplicated = sum(r.lost for r in runs), sum(r.duplicated for r in runs)
    return f"{name:<28}{jobs_per_s:>9.1f}{p50:>16.1f}{p95:>16.1f}{lost:>7}{duplicated:>12}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=200)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--workers", type=int, default=4, help="emulated RunPod workers")
    args = parser.parse_args()
    logging.basicConfig(level=logging.ERROR)

    with tempfile.TemporaryDirectory(prefix="bench-orchestrator-") as tmp_dir:
        tmp = Path(tmp_dir)
        results = {
            "direct emulator (baseline)": [run_direct(args) for _ in range(args.runs)],
            "API + polling": [run_orchestrator(args, False, tmp) for _ in range(args.runs)],
            "API + webhooks": [run_orchestrator(args, True, tmp) for _ in range(args.runs)],
        }
    print(
        f"orchestrator: {args.jobs} health jobs, {args.clients} client threads, {args.workers} emulated workers, "
        f"median of {args.runs} runs (lost/duplicated: totals)"
    )
    print(f"{'mode':<28}{'jobs/s':>9}{'submit p50 ms':>16}{'submit p95 ms':>16}{'lost':>7}{'duplicated':>12}")
    for name, runs in results.items():
        print(summarize(name, runs))
    broken = sum(r.lost + r.duplicated for runs in results.values() for r in runs)
    return 1 if broken else 0


if __name__ == "__main__":
    sys.exit(main())
