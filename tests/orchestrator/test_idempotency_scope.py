"""Idempotency keys are scoped per user (issue 20): two tenants reusing one key get their own jobs, and a
conflict never names another user's job."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from handlers.settings import Settings
from orchestrator.api import create_app
from orchestrator.core.config import OrchestratorSettings
from orchestrator.core.service import JobService
from orchestrator.devtools.background_server import BackgroundServer

ALICE = {"Authorization": "Bearer alice-token"}
BOB = {"Authorization": "Bearer bob-token"}
CDN = "https://cdn.example.com/"


@pytest.fixture
def api_url(tmp_path: Path, local_settings: Settings) -> Iterator[str]:
    settings = OrchestratorSettings(
        database_url=f"sqlite:///{tmp_path / 'jobs.db'}",
        tenant_tokens={"alice-token": ["alice"], "bob-token": ["bob"]},
        queue_timeout_s=0,  # no worker needed: the jobs only have to exist
    )
    service = JobService(settings)
    with BackgroundServer(create_app(service)) as server:
        yield server.url
    service.stop()


def submit(url: str, who: dict[str, str], user_id: str, key: str, emotion: str = "happy") -> httpx.Response:
    body = {"user_id": user_id, "image": CDN + "face.png", "emotion": emotion}
    return httpx.post(f"{url}/v1/emotions", json=body, headers={**who, "Idempotency-Key": key}, timeout=30)


@pytest.mark.parametrize("key", ["order-1", "k" * 255, "with/slash"])
def test_two_tenants_reusing_a_key_get_their_own_jobs(api_url: str, key: str) -> None:
    """Class: global idempotency keys: another tenant's reuse of a key neither returns nor names the first job."""
    alices = submit(api_url, ALICE, "alice", key)
    bobs = submit(api_url, BOB, "bob", key, emotion="sad")  # a different body under the same key
    assert alices.status_code == bobs.status_code == 202, bobs.text
    assert alices.json()["id"] != bobs.json()["id"]
    assert bobs.json()["idempotency_key"] == alices.json()["idempotency_key"] == key
    assert submit(api_url, ALICE, "alice", key).json()["id"] == alices.json()["id"]  # a retry: the same job
    assert submit(api_url, BOB, "bob", key, emotion="sad").json()["id"] == bobs.json()["id"]
    conflict = submit(api_url, BOB, "bob", key, emotion="angry")
    assert conflict.status_code == 409 and conflict.json()["error_code"] == "idempotency_key_reused"
    assert alices.json()["id"] not in conflict.text and bobs.json()["id"] in conflict.text
