"""An event-stream flood against a running API: many open `GET /v1/jobs/{id}/events` streams, and the latency
of the health and job routes meanwhile. Used by tests/orchestrator/test_event_streams.py and bench/hostile.py."""

from __future__ import annotations

import asyncio
import statistics
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx


@dataclass
class Flood:
    opened: int = 0  # streams that answered 200 and sent their first event
    refused: int = 0  # streams answered 429 too_many_streams
    errors: list[str] = field(default_factory=list)  # any other answer or failure


async def _hold(
    url: str,
    path: str,
    headers: dict[str, str],
    count: int,
    flood: Flood,
    ready: threading.Event,
    done: threading.Event,
) -> None:
    limits = httpx.Limits(max_connections=count + 10, max_keepalive_connections=0)
    async with httpx.AsyncClient(base_url=url, headers=headers, timeout=60, limits=limits) as client:

        async def one() -> None:
            try:
                async with client.stream("GET", path) as response:
                    if response.status_code != 200:
                        body = (await response.aread()).decode(errors="replace")
                        if response.status_code == 429 and "too_many_streams" in body:
                            flood.refused += 1
                        else:
                            flood.errors.append(f"HTTP {response.status_code}: {body[:200]}")
                        return
                    lines = response.aiter_lines()
                    async for line in lines:  # the first event, then keep reading so the stream stays open
                        if line.startswith("event: "):
                            flood.opened += 1
                            break
                    reader = asyncio.create_task(_drain(lines))
                    while not done.is_set():
                        await asyncio.sleep(0.05)
                    reader.cancel()
                    return
            except httpx.HTTPError as exc:
                flood.errors.append(f"{type(exc).__name__}: {exc}")

        tasks = [asyncio.create_task(one()) for _ in range(count)]
        while flood.opened + flood.refused + len(flood.errors) < count and not all(t.done() for t in tasks):
            await asyncio.sleep(0.05)
        ready.set()
        await asyncio.gather(*tasks)


async def _drain(lines) -> None:  # noqa: ANN001 - httpx's line iterator
    async for _ in lines:
        pass


@contextmanager
def open_streams(url: str, job_id: str, headers: dict[str, str], count: int) -> Iterator[Flood]:
    """``count`` event streams on ``job_id`` held open for the ``with`` block (each has sent its first event,
    or was refused, when the block starts); closed when it ends."""
    flood, ready, done = Flood(), threading.Event(), threading.Event()
    path = f"/v1/jobs/{job_id}/events"
    holder = threading.Thread(
        target=lambda: asyncio.run(_hold(url, path, headers, count, flood, ready, done)), daemon=True
    )
    holder.start()
    try:
        if not ready.wait(120):
            flood.errors.append("the streams did not open within 120 s")
        yield flood
    finally:
        done.set()
        holder.join(60)


def route_latencies(url: str, headers: dict[str, str], rounds: int = 40) -> dict[str, list[float]]:
    """Seconds per call of /healthz and GET /v1/jobs, alternating, ``rounds`` each."""
    samples: dict[str, list[float]] = {"/healthz": [], "/v1/jobs": []}
    with httpx.Client(base_url=url, headers=headers, timeout=30) as client:
        for _ in range(rounds):
            for path, times in samples.items():
                started = time.perf_counter()
                if client.get(path).status_code != 200:
                    times.append(float("inf"))
                    continue
                times.append(time.perf_counter() - started)
    return samples


def p95_ms(samples: list[float]) -> float:
    return statistics.quantiles(samples, n=20)[-1] * 1000


@dataclass
class FloodResult:
    attempted: int = 0
    as_expected: int = 0  # streams opened within the caps, and 429s past a tenant's cap
    errors: list[str] = field(default_factory=list)
    leaks: int = 0  # stream slots still held once every client left
    health_p95_ms: float = 0.0
    jobs_p95_ms: float = 0.0


def run_stream_flood(work: Path, streams: int = 100, tenant_cap: int = 8, over_cap: int = 10) -> FloodResult:
    """The API (uvicorn) with its jobs on an emulated RunPod endpoint that runs nothing (jobs stay queued):
    the operator holds ``streams`` open streams while /healthz and GET /v1/jobs are timed, and a tenant asks
    for ``tenant_cap + over_cap`` (the rest must be 429). Then every slot must be given back."""
    from orchestrator.api import create_app
    from orchestrator.core.config import OrchestratorSettings
    from orchestrator.core.service import JobService
    from orchestrator.devtools.background_server import BackgroundServer
    from orchestrator.devtools.emulator import create_emulator_app

    work.mkdir(parents=True, exist_ok=True)
    operator, tenant = {"Authorization": "Bearer flood-operator"}, {"Authorization": "Bearer flood-tenant"}
    result = FloodResult(attempted=streams + tenant_cap + over_cap)
    emulator = create_emulator_app(["flood"], workers=1, handler=lambda job: {"ok": True})
    emulator.state.emulator.faults.hold_queue = True
    with BackgroundServer(emulator) as remote:
        settings = OrchestratorSettings(
            database_url=f"sqlite:///{work / 'jobs.db'}",
            api_token="flood-operator",
            tenant_tokens={"flood-tenant": ["flood-user"]},
            runpod_base_url=f"{remote.url}/v2",
            backend_health="runpod:flood",
            backend_render_emotion="runpod:flood",
            event_streams_per_tenant=max(streams, tenant_cap),
            max_event_streams=streams + tenant_cap + 16,
        )
        service = JobService(settings)
        app = create_app(service)
        try:
            with BackgroundServer(app) as api:
                _flood(api.url, app, operator, tenant, streams, tenant_cap, over_cap, result)
                give_up = time.monotonic() + 15
                while app.state.context.streams.count() and time.monotonic() < give_up:
                    time.sleep(0.1)
                result.leaks = app.state.context.streams.count()
        finally:
            service.stop()
    return result


def _flood(
    url: str,
    app: object,
    operator: dict[str, str],
    tenant: dict[str, str],
    streams: int,
    tenant_cap: int,
    over_cap: int,
    result: FloodResult,
) -> None:
    health = httpx.post(f"{url}/v1/jobs", json={"task": "health"}, headers=operator, timeout=30).json()["id"]
    body = {"user_id": "flood-user", "image": "data:,x", "emotion": "happy"}
    mine = httpx.post(f"{url}/v1/emotions", json=body, headers=tenant, timeout=30).json()["id"]
    limits = app.state.context.streams  # type: ignore[attr-defined]
    limits.per_tenant = streams  # the operator's flood first
    with open_streams(url, health, operator, streams) as flood:
        latencies = route_latencies(url, operator)
        result.health_p95_ms = p95_ms(latencies["/healthz"])
        result.jobs_p95_ms = p95_ms(latencies["/v1/jobs"])
        result.as_expected += flood.opened
        result.errors += flood.errors
    limits.per_tenant = tenant_cap
    with open_streams(url, mine, tenant, tenant_cap + over_cap) as flood:
        result.as_expected += min(flood.opened, tenant_cap) + min(flood.refused, over_cap)
        result.errors += flood.errors
