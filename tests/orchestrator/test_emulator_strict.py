"""The RunPod emulator is as strict as the API it stands in for (issue 20): malformed bodies and policies are
400 with a message, every route (stats included) needs the key, bodies are limited, and webhooks go only to
public addresses unless the emulator is told otherwise. Also what `/status` answers after `/stream`."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from orchestrator.devtools.emulator import BackgroundServer, create_emulator_app
from orchestrator.devtools.emulator_requests import MAX_RUN_BODY_BYTES
from tests.orchestrator.conftest import ENDPOINT_ID, eventually

KEY = "strict-key"


def serve(**options: Any) -> BackgroundServer:
    def echo(job: dict[str, Any]) -> dict[str, Any]:
        return {"echo": job["input"]}

    return BackgroundServer(create_emulator_app([ENDPOINT_ID], workers=1, api_key=KEY, handler=echo, **options))


@pytest.fixture
def strict() -> Iterator[str]:
    with serve() as server:
        yield f"{server.url}/v2/{ENDPOINT_ID}"


def run(base: str, body: Any, auth: str = KEY, **kwargs: Any) -> httpx.Response:
    return httpx.post(f"{base}/run", json=body, headers={"authorization": auth}, timeout=30, **kwargs)


@pytest.mark.parametrize(
    ("policy", "named"),
    [
        ("fast", "policy"),
        ([1, 2], "policy"),
        ({"executionTimeout": "soon"}, "policy.executionTimeout"),
        ({"executionTimeout": -5}, "policy.executionTimeout"),
        ({"executionTimeout": 1.5}, "policy.executionTimeout"),
        ({"ttl": 10**15}, "policy.ttl"),
        ({"ttl": None}, "policy.ttl"),
        ({"priority": 1}, "policy.priority"),
    ],
)
def test_a_malformed_policy_is_a_400_naming_it(strict: str, policy: Any, named: str) -> None:
    """Class: malformed request bodies (policy of the wrong type, range or keys): 400 with a message, never 500."""
    answer = run(strict, {"input": {"x": 1}, "policy": policy})
    assert answer.status_code == 400, answer.text
    assert f"`{named}`" in answer.json()["detail"]


@pytest.mark.parametrize("body", [{"input": "text"}, {"input": {"x": 1}, "extra": 1}, [1, 2], {"webhook": "x"}])
def test_a_malformed_body_is_a_400(strict: str, body: Any) -> None:
    """Class: malformed request bodies: what RunPod refuses is refused here too."""
    assert run(strict, body).status_code == 400


def test_every_route_needs_the_key(strict: str) -> None:
    """Class: unauthenticated routes: the stats route needs the key like the job routes."""
    root = strict.rsplit("/v2/", 1)[0]
    assert httpx.get(f"{root}/emulator/stats").status_code == 401
    assert httpx.get(f"{root}/emulator/stats", headers={"authorization": "wrong"}).status_code == 401
    assert httpx.get(f"{root}/emulator/stats", headers={"authorization": f"Bearer {KEY}"}).status_code == 200
    assert run(strict, {"input": {}}, auth="wrong").status_code == 401


def test_bodies_over_the_limit_are_413(strict: str) -> None:
    """Class: no body limit: a body over RunPod's 10 MB is refused before it is parsed."""
    big = {"input": {"blob": "x" * (MAX_RUN_BODY_BYTES + 1)}}
    assert run(strict, big).status_code == 413
    assert run(strict, {"input": {"blob": "x" * 1000}}).status_code == 200


@pytest.mark.parametrize(
    "webhook",
    [
        "http://127.0.0.1:9/hook",
        "http://localhost/hook",
        "http://169.254.169.254/latest/meta-data",
        "http://10.0.0.8/hook",
        "http://[::1]/hook",
        "http://0x7f000001/hook",
        "file:///etc/passwd",
        "ftp://example.com/hook",
        "http://example.com/a/../hook",
    ],
)
def test_webhooks_to_private_or_odd_urls_are_refused(strict: str, webhook: str) -> None:
    """Class: webhooks to any URL: private, loopback, link-local and non-http targets are refused at submit."""
    answer = run(strict, {"input": {"x": 1}, "webhook": webhook})
    assert answer.status_code == 400 and "webhook" in answer.json()["detail"], answer.text


def test_private_webhooks_are_delivered_when_allowed() -> None:
    """Class: webhooks: --allow-private-webhooks or --webhook-prefix let a local API receive them."""
    received: list[dict[str, Any]] = []

    from fastapi import FastAPI

    receiver = FastAPI()

    @receiver.post("/hook")
    def hook(body: dict[str, Any]) -> dict[str, str]:
        received.append(body)
        return {"ok": "yes"}

    with BackgroundServer(receiver) as target:
        for options in ({"allow_private_webhooks": True}, {"webhook_prefixes": (f"{target.url}/",)}):
            with serve(**options) as server:
                base = f"{server.url}/v2/{ENDPOINT_ID}"
                assert run(base, {"input": {"n": 1}, "webhook": f"{target.url}/hook"}).status_code == 200
                eventually(lambda: received, 10)
                received.clear()
        with serve(webhook_prefixes=(f"{target.url}/other/",)) as server:
            refused = run(f"{server.url}/v2/{ENDPOINT_ID}", {"input": {"n": 1}, "webhook": f"{target.url}/hook"})
            assert refused.status_code == 400


def test_status_after_stream_answers_the_job(strict: str) -> None:
    """Issue 26: on RunPod and this emulator a job's /status still answers after /stream handed its items out."""
    job = run(strict, {"input": {"n": 2}}).json()
    headers = {"authorization": KEY}
    done = eventually(lambda: (s := httpx.get(f"{strict}/status/{job['id']}", headers=headers).json())["status"]
                      == "COMPLETED" and s, 10)  # fmt: skip
    streamed = httpx.get(f"{strict}/stream/{job['id']}", headers=headers).json()
    assert [item["output"] for item in streamed["stream"]] == [{"echo": {"n": 2}}]
    after = httpx.get(f"{strict}/status/{job['id']}", headers=headers).json()
    assert after["status"] == "COMPLETED" and after["output"] == done["output"] == {"echo": {"n": 2}}
