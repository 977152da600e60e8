"""Live sessions across replicas on PostgreSQL: two `avatarctl serve` processes, RunPod (the emulator) running the
sessions' stand-in worker, which dials out through a load balancer (PUBLIC_BASE_URL) like a worker reaching a
deployment. Any replica answers a session's `/say`, GET and DELETE and its worker's control routes; a replica
killed with SIGKILL ends nothing: the worker goes on through the other replica, which takes the job's lease."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI, Request, Response
from sqlalchemy import create_engine, text

from orchestrator.core.db import normalize_url
from orchestrator.devtools.emulator import BackgroundServer, create_emulator_app
from tests.conftest import free_port
from tests.orchestrator.conftest import eventually
from tests.orchestrator.live_fixtures import OPERATOR, TOKEN, session_body
from tests.orchestrator.session_workers import runpod_session_handler

pytestmark = pytest.mark.postgres
ENDPOINT = "ep-live"
FORWARDED_HEADERS = ("authorization", "content-type")


def balancer(targets: list[str]) -> FastAPI:
    """Forwards each request to the first of ``targets`` that takes it (a dead replica is skipped)."""
    app = FastAPI()
    client = httpx.AsyncClient(timeout=60)

    @app.api_route("/{path:path}", methods=["GET", "POST", "DELETE"])
    async def forward(path: str, request: Request) -> Response:
        body = await request.body()
        headers = {k: v for k, v in request.headers.items() if k.lower() in FORWARDED_HEADERS}
        for target in list(targets):
            try:
                answer = await client.request(
                    request.method, f"{target}/{path}", params=request.query_params, content=body, headers=headers
                )
            except httpx.TransportError:
                continue
            return Response(answer.content, answer.status_code, media_type=answer.headers.get("content-type"))
        return Response(status_code=502)

    return app


@dataclass
class Replica:
    url: str
    process: subprocess.Popen

    def kill9(self) -> None:
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(10)


def start_replica(env: dict[str, str], log: Path) -> Replica:
    port = free_port()
    command = [sys.executable, "-c", "from orchestrator.cli.main import app; app()", "serve", "--port", str(port)]
    with log.open("w") as out:
        process = subprocess.Popen([*command, "--log-level", "warning"], env=env, stdout=out, stderr=out)
    replica = Replica(f"http://127.0.0.1:{port}", process)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and process.poll() is None:
        try:
            httpx.get(f"{replica.url}/healthz", timeout=2)
            return replica
        except httpx.TransportError:
            time.sleep(0.2)
    raise AssertionError(log.read_text()[-3000:])


@pytest.fixture
def replicas(db_url: str, local_settings, tmp_path: Path) -> Iterator[tuple[Replica, Replica]]:
    if not db_url.startswith("postgresql"):
        pytest.skip("replicas share a PostgreSQL database")
    targets: list[str] = []
    emulator_app = create_emulator_app([ENDPOINT], workers=1, handler=runpod_session_handler, concurrency=2)
    with BackgroundServer(emulator_app) as emulator, BackgroundServer(balancer(targets)) as front:
        env = {
            **os.environ,
            "DATABASE_URL": db_url,
            "API_TOKEN": TOKEN,
            "BACKEND_LIVE_SESSION": f"runpod:{ENDPOINT}",
            "RUNPOD_BASE_URL": f"{emulator.url}/v2",
            "PUBLIC_BASE_URL": front.url,
            "LEASE_S": "2",
            "POLL_INTERVAL_S": "0.2",
            "REALTIME_HEARTBEAT_TIMEOUT_S": "3",
        }
        started: list[Replica] = []
        try:
            for name in ("a", "b"):
                started.append(start_replica(env, tmp_path / f"replica-{name}.log"))
            targets.extend(replica.url for replica in started)
            yield started[0], started[1]
        finally:
            for replica in started:
                if replica.process.poll() is None:
                    replica.process.terminate()
                    replica.process.wait(20)


def lease_owner(db_url: str, job_id: str) -> str | None:
    engine = create_engine(normalize_url(db_url))
    try:
        with engine.connect() as conn:
            return conn.execute(text("SELECT lease_owner FROM jobs WHERE id = :id"), {"id": job_id}).scalar()
    finally:
        engine.dispose()


def test_any_replica_serves_a_session_and_a_dead_one_ends_nothing(replicas, db_url: str) -> None:
    a, b = replicas
    with (
        httpx.Client(base_url=a.url, headers=OPERATOR, timeout=30) as on_a,
        httpx.Client(base_url=b.url, headers=OPERATOR, timeout=30) as on_b,
    ):
        created = on_a.post("/v1/sessions", json=session_body("alice"))
        assert created.status_code == 201, created.text
        session_id = created.json()["session_id"]
        job_id = on_b.get(f"/v1/sessions/{session_id}").json()["job_id"]
        owner_a = lease_owner(db_url, job_id)
        assert owner_a is not None

        said = on_b.post(f"/v1/sessions/{session_id}/say", json={"text": "Said through B."})  # worker polls A
        assert said.status_code == 200, said.text

        a.kill9()
        time.sleep(4)  # past the heartbeat timeout (3 s): the worker's beats reach B now
        assert on_b.get(f"/v1/sessions/{session_id}").json()["status"] == "live"
        again = on_b.post(f"/v1/sessions/{session_id}/say", json={"text": "And again."})
        assert again.status_code == 200, again.text
        eventually(lambda: lease_owner(db_url, job_id) not in (None, owner_a), timeout_s=15)  # B took the job over

        assert on_b.delete(f"/v1/sessions/{session_id}").status_code == 204
        done = eventually(lambda: (j := on_b.get(f"/v1/jobs/{job_id}").json())["status"] == "completed" and j, 20)
        assert done["output"]["reason"] == "stopped"
        session = on_b.get(f"/v1/sessions/{session_id}").json()
        assert (session["status"], session["end_reason"], session["stats"]["utterances"]) == ("ended", "stopped", 2)
