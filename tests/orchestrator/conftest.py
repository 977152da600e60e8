"""Orchestrator fixtures: job databases (SQLite file; PostgreSQL when DATABASE_URL points at one) and the
RunPod emulator served by uvicorn on 127.0.0.1."""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text

from handlers.runtime import WorkerRuntime
from handlers.settings import Settings
from orchestrator.core.db import normalize_url
from orchestrator.devtools.emulator import BackgroundServer, RunpodEmulator, create_emulator_app

ENDPOINT_ID = "ep-test"


def postgres_url() -> str | None:
    url = os.environ.get("DATABASE_URL", "")
    return url if url.startswith(("postgresql", "postgres:")) else None


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A job database URL: a SQLite file, and PostgreSQL from DATABASE_URL when set (else skipped),
    in a schema of its own so tests never see each other's jobs."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'jobs.db'}"
        return
    url = postgres_url()
    if url is None:
        pytest.skip("DATABASE_URL does not point at PostgreSQL")
    schema = f"test_{uuid.uuid4().hex[:12]}"
    engine = create_engine(normalize_url(url))
    with engine.begin() as conn:
        conn.execute(text(f'CREATE SCHEMA "{schema}"'))
    yield f"{url}{'&' if '?' in url else '?'}options=-csearch_path%3D{schema}"
    with engine.begin() as conn:
        conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
    engine.dispose()


@dataclass
class RunningEmulator:
    url: str
    emulator: RunpodEmulator
    endpoint_id: str = ENDPOINT_ID

    @property
    def base_url(self) -> str:
        """What RUNPOD_BASE_URL is set to: the emulator's ``/v2``."""
        return f"{self.url}/v2"


@pytest.fixture
def emulator(local_settings: Settings, runtime: WorkerRuntime) -> Iterator[RunningEmulator]:
    """The RunPod emulator (2 workers, real handlers, file:// store) on a free port; faults off."""
    app = create_emulator_app([ENDPOINT_ID], workers=2, runtime=runtime, allow_private_webhooks=True)
    with BackgroundServer(app) as server:
        yield RunningEmulator(server.url, app.state.emulator)


def eventually(check: Callable[[], object], timeout_s: float = 10.0, interval_s: float = 0.02) -> object:
    """Poll ``check`` until it returns something truthy; fail after ``timeout_s``."""
    give_up = time.monotonic() + timeout_s
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > give_up:
            raise AssertionError(f"condition not met within {timeout_s} s")
        time.sleep(interval_s)
