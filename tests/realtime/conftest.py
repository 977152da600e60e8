"""Live-session fixtures: the HTTP API (with its live-session routes) under uvicorn, a portrait in its store."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import pytest

from engines.face import FaceAnalyzer
from handlers.settings import Settings
from orchestrator.api import create_app
from orchestrator.config import OrchestratorSettings
from orchestrator.emulator import BackgroundServer
from orchestrator.service import JobService
from storage.local import path_from_file_uri
from tests.media import astronaut_bgr

TOKEN = "live-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@dataclass
class LiveApi:
    url: str
    portrait_uri: str
    app: object


@pytest.fixture
def live_api(tmp_path: Path, local_settings: Settings) -> Iterator[LiveApi]:
    store = path_from_file_uri(local_settings.avatar_store_uri)
    cv2.imwrite(str(store / "portrait.png"), astronaut_bgr(512)[0:256, 96:352])  # the face, 256 px
    settings = OrchestratorSettings(database_url=f"sqlite:///{tmp_path / 'jobs.db'}", api_token=TOKEN)
    service = JobService(settings)
    app = create_app(service)
    with BackgroundServer(app) as server:
        yield LiveApi(server.url, (store / "portrait.png").as_uri(), app)
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
