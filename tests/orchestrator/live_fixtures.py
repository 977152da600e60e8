"""Fixtures of the live-session tests: the API under uvicorn with its live sessions on a backend whose workers
are the stand-in of ``session_workers`` (local session processes, or the RunPod emulator)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import httpx

from handlers.settings import Settings
from orchestrator.api import create_app
from orchestrator.core.backends.local import LocalBackend
from orchestrator.core.config import OrchestratorSettings
from orchestrator.core.service import JobService
from orchestrator.devtools.emulator import BackgroundServer
from tests.orchestrator.session_workers import serve_session

TOKEN = "operator-token"
TENANTS = {"alice-token": ["alice"], "bob-token": ["bob"]}
OPERATOR = {"Authorization": f"Bearer {TOKEN}"}
ALICE = {"Authorization": "Bearer alice-token"}
BOB = {"Authorization": "Bearer bob-token"}
OFFER_SDP = (
    "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\n"
    "m=video 9 UDP/TLS/RTP/SAVPF 96\r\na=recvonly\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=recvonly\r\n"
)
OFFER = {"sdp": OFFER_SDP, "type": "offer"}


def session_body(user_id: str, **fields: Any) -> dict[str, Any]:
    return {"user_id": user_id, "avatar_id": "a1", "offer": OFFER, **fields}


@dataclass
class LiveStack:
    url: str
    app: Any
    service: JobService

    def client(self, headers: dict[str, str] = OPERATOR, **options: Any) -> httpx.Client:
        return httpx.Client(base_url=self.url, headers=headers, timeout=options.pop("timeout", 30), **options)

    @property
    def sessions(self) -> Any:
        return self.app.state.sessions


def live_settings(db_url: str, **values: Any) -> OrchestratorSettings:
    defaults: dict[str, Any] = {
        "database_url": db_url,
        "api_token": TOKEN,
        "tenant_tokens": TENANTS,
        "realtime_answer_timeout_s": 10.0,
        "realtime_heartbeat_timeout_s": 5.0,
        "realtime_say_timeout_s": 5.0,
        "poll_interval_s": 0.1,
    }
    return OrchestratorSettings(**{**defaults, **values})


@contextmanager
def live_stack(
    settings: OrchestratorSettings, handler_settings: Settings, backend: Any | None = None
) -> Iterator[LiveStack]:
    """The API (its watchdog checking every 0.2 s) with live sessions on ``backend`` (default: BACKEND_LIVE_SESSION
    when it is remote, with PUBLIC_BASE_URL this server's address; else local session
    processes running the stand-in worker, each capped at 1 GiB; one process more than the cap: a stand-in that
    ignores its cancel holds its process for CANCEL_GRACE_S after its session ended)."""
    if backend is None and settings.backend_live_session == "local":
        backend = LocalBackend(
            workers=1,
            settings=handler_settings,
            silent_after_s=settings.lease_s,
            session_workers=settings.realtime_max_sessions + 1,
            session_memory_bytes=2**30,
            run_session=serve_session,
        )
    service = JobService(settings, backends={"live_session": backend} if backend is not None else None)
    app = create_app(service)
    app.state.session_watchdog.interval_s = 0.2
    server = BackgroundServer(app)
    if settings.backend_live_session != "local" and settings.public_base_url is None:
        settings.public_base_url = server.url  # where remote workers dial out to
    try:
        with server:
            yield LiveStack(server.url, app, service)
    finally:
        service.stop()
