"""coturn (Debian's ``coturn`` package; ``.ci/run`` installs it) on loopback for the tests: ``turnserver`` with the
TURN REST API's shared secret (``use-auth-secret``), listening and relaying on 127.0.0.1 on free ports, peers on
loopback allowed. Tests that need it skip, saying why, where ``turnserver`` is not installed."""

from __future__ import annotations

import random
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

TURNSERVER = shutil.which("turnserver")
NO_TURNSERVER = "no turnserver: the TURN tests did not run (.ci/run installs Debian's coturn)"
REALM = "avatarctl.test"
RELAY_PORTS = 200


@dataclass(frozen=True)
class TurnServer:
    port: int
    secret: str
    log: Path

    @property
    def url(self) -> str:
        return f"turn:127.0.0.1:{self.port}"

    @property
    def ice_servers(self) -> list[dict[str, str]]:
        """ICE_SERVERS naming this server for UDP and TCP, credentials left to TURN_SECRET."""
        return [{"urls": [f"{self.url}?transport=udp", f"{self.url}?transport=tcp"]}]


def _free_udp_and_tcp_port() -> int:
    while True:
        with socket.socket() as tcp, socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
            tcp.bind(("127.0.0.1", 0))
            port = tcp.getsockname()[1]
            try:
                udp.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port


def _listening(port: int) -> bool:
    with socket.socket() as probe:
        return probe.connect_ex(("127.0.0.1", port)) == 0


@contextmanager
def turn_server(folder: Path, secret: str = "turn-test-secret") -> Iterator[TurnServer]:
    """A running turnserver; stopped (and its folder's files kept for a failing test's log) on exit."""
    assert TURNSERVER is not None, NO_TURNSERVER
    port = _free_udp_and_tcp_port()
    low = random.randrange(20000, 60000 - RELAY_PORTS)
    log = folder / "turnserver.log"
    command = [
        TURNSERVER,
        "-n",  # no configuration file: everything is on this line
        "--listening-ip=127.0.0.1",
        "--relay-ip=127.0.0.1",
        f"--listening-port={port}",
        f"--min-port={low}",
        f"--max-port={low + RELAY_PORTS}",
        "--use-auth-secret",
        f"--static-auth-secret={secret}",
        f"--realm={REALM}",
        "--allow-loopback-peers",
        "--no-tls",
        "--no-dtls",
        "--no-cli",
        "--fingerprint",
        f"--userdb={folder / 'turndb'}",
        f"--pidfile={folder / 'turnserver.pid'}",
        "--log-file=stdout",
        "--simple-log",
    ]
    with log.open("w") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 10
        while not _listening(port):
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"turnserver did not start: {log.read_text()[-2000:]}")
            time.sleep(0.05)
        yield TurnServer(port, secret, log)
    finally:
        process.terminate()
        try:
            process.wait(5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5)
