"""Live-session fixtures: the HTTP API (with its live-session routes) under uvicorn, a portrait in its store."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import httpx
import numpy as np
import pytest

import handlers
from engines.face import FaceAnalyzer
from handlers.runtime import WorkerRuntime
from handlers.settings import Settings
from orchestrator.api import create_app
from orchestrator.core.config import OrchestratorSettings
from orchestrator.core.service import JobService
from orchestrator.devtools.emulator import BackgroundServer
from realtime.client import LiveClient
from realtime.limits import RealtimeSettings
from realtime.manager import SessionHost
from storage.local import path_from_file_uri
from tests.conftest import free_port
from tests.media import astronaut_bgr
from tests.realtime.control_peer import ControlPeer

TOKEN = "live-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@dataclass
class LiveApi:
    url: str
    portrait_uri: str
    app: object


def write_portrait(store: Path) -> str:
    cv2.imwrite(str(store / "portrait.png"), astronaut_bgr(512)[0:256, 96:352])  # the face, 256 px
    return (store / "portrait.png").as_uri()


@pytest.fixture
def live_server(tmp_path: Path, local_settings: Settings) -> Iterator[LiveApi]:
    """`avatarctl serve` in a process of its own: the peer under test does not share its interpreter (GIL)."""
    port = free_port()
    env = {**os.environ, "DATABASE_URL": f"sqlite:///{tmp_path / 'jobs.db'}", "API_TOKEN": TOKEN}
    portrait = write_portrait(path_from_file_uri(local_settings.avatar_store_uri))
    serve = ["serve", "--port", str(port), "--log-level", "warning"]
    command = [sys.executable, "-c", "from orchestrator.cli.main import app; app()", *serve]
    with (tmp_path / "serve.log").open("w") as log:
        server = subprocess.Popen(command, env=env, stdout=log, stderr=log)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and server.poll() is None:
            try:
                httpx.get(f"{url}/healthz", timeout=2)
                break
            except httpx.TransportError:
                time.sleep(0.2)
        assert server.poll() is None, (tmp_path / "serve.log").read_text()[-2000:]
        yield LiveApi(url, portrait, None)
    finally:
        server.terminate()
        server.wait(timeout=20)


@pytest.fixture
def live_api(tmp_path: Path, local_settings: Settings) -> Iterator[LiveApi]:
    portrait = write_portrait(path_from_file_uri(local_settings.avatar_store_uri))
    settings = OrchestratorSettings(database_url=f"sqlite:///{tmp_path / 'jobs.db'}", api_token=TOKEN)
    service = JobService(settings)
    app = create_app(service)
    with BackgroundServer(app) as server:
        yield LiveApi(server.url, portrait, app)
    service.stop()


def mouth_openings(frames: list[np.ndarray], analyzer: FaceAnalyzer) -> np.ndarray:
    """Inner-lip gap over face width per frame (NaN where no face is found)."""
    out = []
    for frame in frames:
        boxes = analyzer.detect(frame)
        if not boxes:
            out.append(np.nan)
            continue
        lm = analyzer.landmarks(frame, boxes[0])
        gap = sum(np.linalg.norm(lm[a] - lm[b]) for a, b in ((61, 67), (62, 66), (63, 65))) / 3.0
        out.append(gap / np.linalg.norm(lm[16] - lm[0]))
    return np.asarray(out)


# ---- the worker side: a live_session task against a control peer ------------------------------

WORKER_LIMITS = {  # short bounds so the tests see heartbeats, polls and a lost control URL quickly
    "allow_private_candidates": True,  # every candidate is on loopback here
    "heartbeat_s": 0.5,
    "poll_wait_s": 2.0,
    "control_timeout_s": 2.0,
    "control_lost_s": 3.0,
}


@pytest.fixture
def control() -> Iterator[ControlPeer]:
    with ControlPeer() as peer:
        yield peer


@dataclass
class RunningTask:
    session_id: str
    thread: threading.Thread
    results: list[dict]

    def result(self, timeout_s: float = 60.0) -> dict:
        self.thread.join(timeout_s)
        assert not self.thread.is_alive(), "the live_session task did not end"
        return self.results[0]


@dataclass
class LiveWorker:
    """Runs live_session tasks through ``handlers.dispatch`` on threads of this process, as an entry point does."""

    runtime: WorkerRuntime
    host: SessionHost
    control: ControlPeer
    portrait_uri: str

    def payload(self, offer: dict, **fields: object) -> dict:
        session_id = uuid.uuid4().hex
        source = {} if "avatar_id" in fields or "image" in fields else {"image": self.portrait_uri}
        control = self.control.open(session_id)
        base = {"task": "live_session", "session_id": session_id, "user_id": "live-user", "offer": offer}
        return {**base, **source, "control": control, **fields}

    def start(self, payload: dict) -> RunningTask:
        results: list[dict] = []
        thread = threading.Thread(target=lambda: results.append(handlers.dispatch(payload, self.runtime)))
        thread.start()
        return RunningTask(payload["session_id"], thread, results)

    def run(self, payload: dict) -> dict:
        return self.start(payload).result()


@pytest.fixture
def live_limits() -> RealtimeSettings:
    return RealtimeSettings(**WORKER_LIMITS)


@pytest.fixture
def live_worker(
    runtime: WorkerRuntime, control: ControlPeer, live_limits: RealtimeSettings, monkeypatch: pytest.MonkeyPatch
) -> Iterator[LiveWorker]:
    """This process serving live_session under ``live_limits`` (a host of its own, the test's control peer)."""
    import realtime
    from realtime import manager

    host = SessionHost(live_limits)
    monkeypatch.setattr(manager, "_host", [host])
    monkeypatch.setattr(handlers, "TASKS", dict(handlers.TASKS))  # live_session registered for this test only
    assert realtime.serve_live_sessions(live_limits)
    settings = runtime.settings.model_copy(update={"worker_tasks": "live_session"})
    portrait = write_portrait(path_from_file_uri(settings.avatar_store_uri))
    yield LiveWorker(runtime.with_settings(settings), host, control, portrait)
    assert host.count == 0, "a session still holds its slot"
    host.close()


async def client_offer(**options: Any) -> tuple[LiveClient, dict]:
    peer = LiveClient(**{"keep_frames": False, **options})
    return peer, await peer.offer()


@dataclass
class TurnServer:
    url: str
    username: str
    credential: str

    @property
    def ice_servers(self) -> list[dict[str, str]]:
        return [{"urls": self.url, "username": self.username, "credential": self.credential}]


@pytest.fixture
def turn_server(tmp_path: Path) -> Iterator[TurnServer]:
    """coturn (Debian's `turnserver`) on loopback, relaying between loopback peers; skipped when not installed."""
    binary = shutil.which("turnserver")
    if binary is None:
        pytest.skip("coturn is not installed (apt-get install coturn)")
    port = free_port()
    args = [
        binary,
        "-n",
        "--no-cli",
        "--no-tls",
        "--no-dtls",
        "--listening-ip=127.0.0.1",
        f"--listening-port={port}",
        "--relay-ip=127.0.0.1",
        "--min-port=49152",
        "--max-port=65535",
        "--lt-cred-mech",
        "--realm=livecore",
        "--user=live:turn-secret",
        "--allow-loopback-peers",
        f"--pidfile={tmp_path / 'turn.pid'}",
        "--log-file=stdout",
        "--simple-log",
    ]
    with (tmp_path / "turn.log").open("w") as log:
        server = subprocess.Popen(args, stdout=log, stderr=log)
    try:
        deadline = time.monotonic() + 10
        while "Total General servers" not in (tmp_path / "turn.log").read_text() and time.monotonic() < deadline:
            assert server.poll() is None, (tmp_path / "turn.log").read_text()[-2000:]
            time.sleep(0.1)
        yield TurnServer(f"turn:127.0.0.1:{port}?transport=udp", "live", "turn-secret")
    finally:
        server.terminate()
        server.wait(timeout=10)


def ports_checked(sockets: list[Any], seconds: float) -> set[int]:
    """Which of these non-blocking UDP sockets received anything (an ICE connectivity check) within ``seconds``."""
    hit: set[int] = set()
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        for k, sock in enumerate(sockets):
            try:
                while sock.recv(2048):
                    hit.add(k)
            except BlockingIOError:
                pass
        time.sleep(0.05)
    return hit
