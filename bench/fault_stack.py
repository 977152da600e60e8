"""The services of bench/faults.py: PostgreSQL schema, moto S3, the RunPod emulator, three replicas, a load balancer."""

from __future__ import annotations

import contextlib
import logging
import os
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from sqlalchemy import create_engine, text  # noqa: E402

from orchestrator.core.db import normalize_url  # noqa: E402
from orchestrator.devtools.emulator import BackgroundServer, create_emulator_app  # noqa: E402

AVATARCTL = str(Path(sys.executable).with_name("avatarctl"))
ENDPOINT = "faults"
TOKEN = "faults-token"
SECRET = "faults-secret"
BUCKET = "faults"
TASKS = ("health", "render_emotion", "generate_video")
REPLICAS = 3
START_TIMEOUT_S = 60.0
# Short limits, so a job whose submit a kill -9 interrupted (never resent: it may have been queued) reaches
# its deadline within the run when no webhook comes for it.
DEADLINES = {"QUEUE_TIMEOUT_S": "20", "HEALTH_TIMEOUT_S": "30", "EMOTION_TIMEOUT_S": "30", "VIDEO_TIMEOUT_S": "60"}


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


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

    from orchestrator.devtools.demo import astronaut_bgr

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
    emulator_app = create_emulator_app([ENDPOINT], workers=2, allow_private_webhooks=True)  # the API is local
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
