"""Shared fixtures: real S3 (moto's server) and GCS (gcp-storage-emulator) on 127.0.0.1, temp stores."""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from handlers.runtime import Engines, WorkerRuntime
from handlers.settings import Settings


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Tests marked ``cuda`` skip, saying so, on a machine without a CUDA device (torch imported only if any)."""
    marked = [item for item in items if item.get_closest_marker("cuda")]
    if not marked:
        return
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device (bench/gpu.sh runs `pytest -m cuda` on a lent GPU)")
    for item in marked:
        item.add_marker(skip)


@pytest.fixture(autouse=True, scope="session")
def avatarctl_home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Every test's state (AVATARCTL_HOME: store, job database, avatars, secrets) under a temp folder, never the
    user's own; child processes inherit it. Tests that need their own paths set them."""
    home = tmp_path_factory.mktemp("avatarctl-home")
    previous = os.environ.get("AVATARCTL_HOME")
    os.environ["AVATARCTL_HOME"] = str(home)
    yield home
    if previous is None:
        os.environ.pop("AVATARCTL_HOME", None)
    else:
        os.environ["AVATARCTL_HOME"] = previous


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def s3_endpoint() -> Iterator[str]:
    """moto's S3 server over real HTTP on 127.0.0.1."""
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    yield f"http://127.0.0.1:{port}"
    server.stop()


@pytest.fixture
def s3_env(s3_endpoint: str, monkeypatch: pytest.MonkeyPatch) -> str:
    """Environment that points every S3 client at the moto server."""
    monkeypatch.setenv("S3_ENDPOINT_URL", s3_endpoint)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    return s3_endpoint


@pytest.fixture
def s3_bucket(s3_env: str) -> str:
    """A fresh, empty bucket; returns its root URI ``s3://<bucket>``."""
    import boto3

    name = f"test-{uuid.uuid4().hex[:12]}"
    boto3.client("s3", endpoint_url=s3_env, region_name="us-east-1").create_bucket(Bucket=name)
    return f"s3://{name}"


@pytest.fixture(scope="session")
def gcs_emulator() -> Iterator[str]:
    """gcp-storage-emulator over real HTTP on 127.0.0.1; returns host:port."""
    from gcp_storage_emulator.server import create_server

    port = free_port()
    server = create_server("127.0.0.1", port, in_memory=True)
    server.start()
    yield f"127.0.0.1:{port}"
    server.stop()


@pytest.fixture
def gcs_bucket(gcs_emulator: str, monkeypatch: pytest.MonkeyPatch) -> str:
    """A fresh bucket on the emulator; returns ``gs://<bucket>``."""
    from google.auth.credentials import AnonymousCredentials
    from google.cloud import storage as gcs

    monkeypatch.setenv("STORAGE_EMULATOR_HOST", f"http://{gcs_emulator}")
    monkeypatch.setenv("GOOGLE_CLOUD_PROJECT", "test-project")
    name = f"test-{uuid.uuid4().hex[:12]}"
    gcs.Client(project="test-project", credentials=AnonymousCredentials()).create_bucket(name)
    return f"gs://{name}"


@pytest.fixture
def local_settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Settings:
    """Settings with a file:// store and an avatar cache under tmp_path."""
    store = tmp_path / "store"
    store.mkdir()
    monkeypatch.setenv("AVATAR_STORE_URI", store.as_uri())
    monkeypatch.setenv("AVATAR_LOCAL_PATH", str(tmp_path / "avatars"))
    monkeypatch.setenv("WEIGHTS_DIR", str(tmp_path / "weights"))
    return Settings()


@pytest.fixture
def task_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The folder tasks make their temp files in, so a test can check they leave nothing behind."""
    import tempfile

    folder = tmp_path / "task-tmp"
    folder.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(folder))
    return folder


@pytest.fixture(scope="session")
def test_engines() -> Engines:
    """One set of loaded engines for the whole test run, as a worker process keeps one."""
    return Engines(frame_cache_bytes=256 * 1024 * 1024)


@pytest.fixture
def runtime(local_settings: Settings, test_engines: Engines) -> WorkerRuntime:
    """The worker runtime of ``local_settings``; ``runtime.with_settings(...)`` for other settings."""
    return WorkerRuntime(local_settings, test_engines)
