"""The TypeScript client (clients/typescript): its committed OpenAPI document and generated types are current,
and its node tests pass against a live `avatarctl serve` started here. Node-dependent tests are skipped,
saying so, where node or the client's npm packages are missing (`.ci/run` installs them)."""

from __future__ import annotations

import os
import runpy
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import cv2
import httpx
import pytest

from tests.entrypoints.conftest import FACE_CROP, REPO_ROOT, child_env
from tests.media import coffee_bgr, head_motion, write_video
from tests.orchestrator.test_api import PORTRAIT, png_bytes, wav_bytes

CLIENT_DIR = REPO_ROOT / "clients" / "typescript"
EXPORT_SCRIPT = CLIENT_DIR / "scripts" / "export_openapi.py"
TOKEN = "ts-client-token"


def node_ready() -> None:
    """Skip, naming what is missing, unless node and the client's npm packages are installed."""
    if shutil.which("node") is None or shutil.which("npm") is None:
        pytest.skip("node/npm not installed: the TypeScript client's tests did not run (.ci/run installs them)")
    if not (CLIENT_DIR / "node_modules" / ".package-lock.json").exists():
        pytest.skip("clients/typescript/node_modules missing: run `make setup` (npm ci) to run the client's tests")


def test_the_committed_openapi_document_is_the_apps() -> None:
    committed = (CLIENT_DIR / "openapi.json").read_text()
    assert runpy.run_path(str(EXPORT_SCRIPT))["openapi_json"]() == committed, "stale: run `make client`"


def test_the_committed_types_are_generated_from_the_document() -> None:
    node_ready()
    checked = subprocess.run(
        ["npm", "run", "--silent", "check-types"], cwd=CLIENT_DIR, capture_output=True, text=True, timeout=120
    )
    assert checked.returncode == 0, f"stale src/schema.d.ts: run `make client`\n{checked.stdout}{checked.stderr}"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def write_fixtures(folder: Path) -> Path:
    folder.mkdir()
    (folder / "portrait.png").write_bytes(PORTRAIT)
    (folder / "coffee.png").write_bytes(png_bytes(coffee_bgr()))
    (folder / "speech.wav").write_bytes(wav_bytes())
    frames, _ = head_motion(50, 25.0, size=512)
    write_video(folder / "train.mp4", [f[FACE_CROP] for f in frames], 25.0)
    assert cv2.imread(str(folder / "portrait.png")) is not None
    return folder


@pytest.fixture
def live_serve(tmp_path: Path) -> Iterator[str]:
    """`avatarctl serve` in a child process: SQLite, a file:// store, one local worker, a bearer token."""
    port = free_port()
    env = child_env(
        DATABASE_URL=f"sqlite:///{tmp_path / 'jobs.db'}",
        AVATAR_STORE_URI=(tmp_path / "store").as_uri(),
        AVATAR_LOCAL_PATH=str(tmp_path / "avatars"),
        WEIGHTS_DIR=str(tmp_path / "weights"),
        API_TOKEN=TOKEN,
        LOCAL_WORKERS="1",
        POLL_INTERVAL_S="0.05",
        PYTHONPATH=os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")])),
    )
    (tmp_path / "store").mkdir()
    command = [sys.executable, "-c", "from orchestrator.cli import app; app()", "serve", "--port", str(port)]
    server = subprocess.Popen(command, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        give_up = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"{url}/healthz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert server.poll() is None and time.monotonic() < give_up, server.stdout.read().decode()[-3000:]
            time.sleep(0.2)
        yield url
    finally:
        server.terminate()
        server.wait(20)


def test_the_client_against_a_live_avatarctl_serve(live_serve: str, tmp_path: Path) -> None:
    node_ready()
    env = child_env(
        AVATARCTL_URL=live_serve,
        AVATARCTL_TOKEN=TOKEN,
        AVATARCTL_FIXTURES=str(write_fixtures(tmp_path / "fixtures")),
    )
    ran = subprocess.run(["npm", "test"], cwd=CLIENT_DIR, env=env, capture_output=True, text=True, timeout=540)
    output = ran.stdout + ran.stderr
    assert ran.returncode == 0, output[-6000:]
    assert "# fail 0" in output and "# pass 13" in output, output[-3000:]
