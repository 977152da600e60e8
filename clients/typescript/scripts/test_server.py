"""The server the client's tests run against: ``avatarctl serve`` on a free port with its own temporary state
(AVATARCTL_HOME: SQLite, a file:// store, the avatar cache), a random bearer token, one local worker, and the
media the tests upload (generated here: portrait.png, coffee.png, speech.wav, train.mp4).

Prints one JSON line ``{"url", "token", "fixtures"}`` once the server answers, then serves until its standard
input closes (the test runner ending), and removes everything it made. ``npm test`` starts it
(test/server.ts); run it by hand to try the client: ``python clients/typescript/scripts/test_server.py``.
"""

from __future__ import annotations

import io
import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
import wave
from pathlib import Path

import cv2
import numpy as np

REPO_ROOT = Path(__file__).resolve().parents[3]
STATE_VARIABLES = ("DATABASE_URL", "AVATAR_STORE_URI", "AVATAR_LOCAL_PATH", "WEIGHTS_DIR", "API_TOKEN", "TENANT_TOKENS")
START_TIMEOUT_S = 90.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def tone_wav(seconds: float = 0.6, rate: int = 16000) -> bytes:
    t = np.arange(int(seconds * rate)) / rate
    samples = (0.3 * np.sin(2 * np.pi * 220.0 * t) * 32767).astype("<i2")
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(rate)
        out.writeframes(samples.tobytes())
    return buffer.getvalue()


def write_fixtures(folder: Path) -> Path:
    from skimage import data

    sys.path.insert(0, str(REPO_ROOT))  # the checkout's orchestrator, installed or not

    from orchestrator.devtools.demo import astronaut_bgr, make_training_video

    folder.mkdir(parents=True)
    cv2.imwrite(str(folder / "portrait.png"), astronaut_bgr(256))
    cv2.imwrite(str(folder / "coffee.png"), cv2.cvtColor(data.coffee(), cv2.COLOR_RGB2BGR))
    (folder / "speech.wav").write_bytes(tone_wav())
    make_training_video(folder / "train.mp4", seconds=2.0)
    return folder


def wait_until_up(url: str, server: subprocess.Popen) -> None:
    give_up = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < give_up:
        if server.poll() is not None:
            raise SystemExit(f"avatarctl serve exited with {server.returncode}")
        try:
            with urllib.request.urlopen(f"{url}/healthz", timeout=2) as answer:
                if answer.status == 200:
                    return
        except OSError:
            time.sleep(0.2)
    raise SystemExit(f"avatarctl serve did not answer within {START_TIMEOUT_S:g} s")


def main() -> None:
    home = Path(tempfile.mkdtemp(prefix="ts-client-server-"))
    token = secrets.token_urlsafe(24)
    port = free_port()
    env = {name: value for name, value in os.environ.items() if name not in STATE_VARIABLES}
    pythonpath = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    env.update(AVATARCTL_HOME=str(home), API_TOKEN=token, LOCAL_WORKERS="1", POLL_INTERVAL_S="0.05")
    env["PYTHONPATH"] = pythonpath
    command = [
        sys.executable,
        "-c",
        "from orchestrator.cli.main import app; app()",
        "serve",
        "--port",
        str(port),
        "--log-level",
        "warning",
    ]
    server = subprocess.Popen(command, cwd=home, env=env, stdout=sys.stderr, stderr=sys.stderr)
    try:
        fixtures = write_fixtures(home / "fixtures")
        url = f"http://127.0.0.1:{port}"
        wait_until_up(url, server)
        print(json.dumps({"url": url, "token": token, "fixtures": str(fixtures)}), flush=True)
        sys.stdin.read()  # until the test runner closes it (or ends)
    finally:
        server.terminate()
        try:
            server.wait(20)
        except subprocess.TimeoutExpired:
            server.kill()
        shutil.rmtree(home, ignore_errors=True)


if __name__ == "__main__":
    main()
