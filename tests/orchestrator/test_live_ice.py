"""ICE servers for live sessions: ICE_SERVERS as RTCConfiguration's JSON, validated; TURN_SECRET's time-limited
credentials (coturn's use-auth-secret scheme) served to clients and put into each session's task, and accepted
by a real coturn on loopback (an allocation made with them), while wrong or expired ones are refused."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydantic import ValidationError
from pydantic_settings import SettingsError

from orchestrator.core.config import OrchestratorSettings
from orchestrator.core.live.ice import ice_servers_for, turn_credentials
from tests.orchestrator.conftest import eventually
from tests.orchestrator.live_fixtures import ALICE, live_settings, live_stack, session_body
from tests.turn import NO_TURNSERVER, TURNSERVER, TurnServer, turn_server

aioice_turn = pytest.importorskip("aioice.turn", reason="aioice comes with the `realtime` extra")


@pytest.fixture
def coturn(tmp_path: Path) -> Iterator[TurnServer]:
    if TURNSERVER is None:
        pytest.skip(NO_TURNSERVER)
    with turn_server(tmp_path) as server:
        yield server


def relay_address(server: TurnServer, entry: dict, transport: str = "udp") -> tuple[str, int]:
    """Allocate a relay on ``server`` with an RTCIceServer entry's credentials (aioice's TURN client)."""

    async def allocate() -> tuple[str, int]:
        endpoint, _ = await aioice_turn.create_turn_endpoint(
            asyncio.DatagramProtocol,
            ("127.0.0.1", server.port),
            entry["username"],
            entry["credential"],
            transport=transport,
        )
        try:
            return endpoint.get_extra_info("sockname")
        finally:
            endpoint.close()

    return asyncio.run(allocate())


def test_ice_servers_are_validated_as_rtc_configuration(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ICE_SERVERS", '[{"urls": ["stun:stun.example.org:3478"]}, {"urls": "turns:t.example.org"}]')
    assert [s.urls for s in OrchestratorSettings().ice_servers] == [
        ["stun:stun.example.org:3478"],
        "turns:t.example.org",
    ]
    for bad in ('[{"urls": "https://t.example.org"}]', '[{"url": "turn:x"}]', '{"urls": "turn:x"}', "turn:x"):
        monkeypatch.setenv("ICE_SERVERS", bad)
        with pytest.raises((ValidationError, SettingsError)):  # SettingsError: not JSON at all
            OrchestratorSettings()


def test_only_turn_entries_without_credentials_get_time_limited_ones() -> None:
    settings = OrchestratorSettings(
        ice_servers=[
            {"urls": "stun:127.0.0.1:3478"},
            {"urls": ["turn:127.0.0.1:3478?transport=udp"]},
            {"urls": "turn:static.example.org", "username": "u", "credential": "c"},
        ]
    )
    stun, turn, static = ice_servers_for(settings.ice_servers, "s3cret", "label", ttl_s=60)
    assert stun == {"urls": "stun:127.0.0.1:3478"}
    assert turn["username"].endswith(":label") and turn["credential"]
    assert static == {"urls": "turn:static.example.org", "username": "u", "credential": "c"}
    assert ice_servers_for(settings.ice_servers, None, "label", 60)[1] == {
        "urls": ["turn:127.0.0.1:3478?transport=udp"]
    }


def test_coturn_accepts_the_credentials_and_refuses_wrong_or_expired_ones(coturn: TurnServer) -> None:
    username, credential = turn_credentials(coturn.secret, "client", ttl_s=600)
    entry = {"username": username, "credential": credential}
    for transport in ("udp", "tcp"):
        host, port = relay_address(coturn, entry, transport)
        assert host == "127.0.0.1" and port > 0
    for wrong in (
        {"username": username, "credential": turn_credentials("other-secret", "client", 600)[1]},
        dict(zip(("username", "credential"), turn_credentials(coturn.secret, "client", ttl_s=-5), strict=True)),
    ):
        with pytest.raises(Exception, match="401"):
            relay_address(coturn, wrong)


def test_clients_and_each_sessions_worker_get_working_turn_credentials(
    coturn: TurnServer, db_url: str, local_settings
) -> None:
    settings = live_settings(db_url, ice_servers=coturn.ice_servers, turn_secret=coturn.secret)
    with live_stack(settings, local_settings) as stack, stack.client(ALICE) as alice:
        (client_entry,) = alice.get("/v1/sessions/ice-servers").json()["ice_servers"]
        assert client_entry["urls"] == coturn.ice_servers[0]["urls"] and client_entry["username"].endswith(":alice")
        assert relay_address(coturn, client_entry)[0] == "127.0.0.1"
        assert alice.get("/v1/sessions/ice-servers", headers={"Authorization": "Bearer nope"}).status_code == 401

        session_id = alice.post("/v1/sessions", json=session_body("alice")).json()["session_id"]
        job_id = alice.get(f"/v1/sessions/{session_id}").json()["job_id"]
        (worker_entry,) = stack.service.get(job_id).payload["ice_servers"]
        assert worker_entry["username"].endswith(f":{session_id}")
        assert relay_address(coturn, worker_entry, "tcp")[0] == "127.0.0.1"
        alice.delete(f"/v1/sessions/{session_id}")
        eventually(lambda: stack.service.get(job_id).finished)
