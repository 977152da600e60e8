"""One emotion still from the shell: `avatarctl emotion --image p.png --emotion happy`, wall time per call.

Baseline: no replica running, so each call starts the worker's engines in its own process (a cold start every
time). Then with `avatarctl serve` running on the same state (AVATARCTL_HOME in a temporary folder): the CLI
hands its job to the replica, whose worker processes stay warm between calls (a few calls first warm them).
Median of ``--runs`` calls each, in fresh CLI processes; the ratio is baseline / with the replica.

    python bench/cli_still.py [--runs 5]
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

CLI = [sys.executable, "-c", "from orchestrator.cli.main import app; app()"]
WARM_UP_CALLS = 3  # LOCAL_WORKERS (2) worker processes, and one more
STATE_VARIABLES = ("DATABASE_URL", "AVATAR_STORE_URI", "AVATAR_LOCAL_PATH", "API_TOKEN", "TENANT_TOKENS")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def one_still(env: dict[str, str], portrait: Path) -> float:
    started = time.perf_counter()
    subprocess.run(
        [*CLI, "emotion", "--image", str(portrait), "--emotion", "happy", "--json"],
        env=env,
        check=True,
        capture_output=True,
        timeout=300,
    )
    return time.perf_counter() - started


def timed(env: dict[str, str], portrait: Path, runs: int) -> float:
    return statistics.median(one_still(env, portrait) for _ in range(runs))


def serve(env: dict[str, str], home: Path) -> subprocess.Popen:
    port = free_port()
    server = subprocess.Popen(
        [*CLI, "serve", "--port", str(port), "--log-level", "warning"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=(home / "serve.log").open("w"),
    )
    give_up = time.monotonic() + 90
    while time.monotonic() < give_up:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2):
                return server
        except OSError:
            time.sleep(0.2)
    server.kill()
    raise SystemExit("avatarctl serve did not start: " + (home / "serve.log").read_text()[-2000:])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()

    import cv2

    from orchestrator.devtools.demo import astronaut_bgr

    with tempfile.TemporaryDirectory(prefix="bench-cli-") as tmp:
        home = Path(tmp)
        portrait = home / "portrait.png"
        cv2.imwrite(str(portrait), astronaut_bgr(256))
        env = {name: value for name, value in os.environ.items() if name not in STATE_VARIABLES}
        env.update(AVATARCTL_HOME=str(home / "state"), PYTHONPATH=str(REPO_ROOT))
        cold = timed(env, portrait, args.runs)
        server = serve(env, home)
        try:
            for _ in range(WARM_UP_CALLS):  # each of the replica's worker processes loads its engines on its first job
                one_still(env, portrait)
            warm = timed(env, portrait, args.runs)
        finally:
            server.terminate()
            server.wait(20)
    print(f"avatarctl emotion, one still (median of {args.runs} calls, {os.getloadavg()[0]:.1f} load):")
    print(f"  no replica running (cold start each call): {cold:.2f} s")
    print(f"  with `avatarctl serve` running (warm workers): {warm:.2f} s  ({cold / warm:.1f}x)")


if __name__ == "__main__":
    main()
