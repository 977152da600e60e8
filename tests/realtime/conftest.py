"""Live-session fixtures: the HTTP API (with its live-session routes) under uvicorn, a portrait in its store."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import cv2
import httpx
import numpy as np
import pytest

from engines.face import FaceAnalyzer
from handlers.settings import Settings
from orchestrator.api import create_app
from orchestrator.config import OrchestratorSettings
from orchestrator.emulator import BackgroundServer
from orchestrator.service import JobService
from storage.local import path_from_file_uri
from tests.conftest import free_port
from tests.media import astronaut_bgr

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
    command = [sys.executable, "-c", "from orchestrator.cli import app; app()", *serve]
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
