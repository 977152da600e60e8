"""LiveTalking's web API on the live sessions, under uvicorn with the stand-in worker of ``session_workers``: the
answers' shapes, what each route asks the worker, tenancy, the token cookie of LIVETALKING_WEB_DIR's pages,
``chat`` without an LLM, and refusals in LiveTalking's ``{"code": -1, "msg"}`` shape.
(``tests/realtime/test_livetalking_client.py``: a real worker, a client following LiveTalking's client.js.)"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from engines.codecs.audio import encode_wav
from orchestrator.core.config import OrchestratorSettings
from tests.media import tone
from tests.orchestrator.conftest import eventually
from tests.orchestrator.live_fixtures import ALICE, BOB, OFFER, OPERATOR, LiveStack, live_settings, live_stack
from tests.orchestrator.session_workers import ANSWER_SDP, PLAY_S, SECONDS_PER_CHAR

PAGE = "<!doctype html><title>LiveTalking page</title><script src='client.js'></script>"


@pytest.fixture
def web_dir(tmp_path: Path) -> Path:
    folder = tmp_path / "web"
    folder.mkdir()
    (folder / "webrtcapi.html").write_text(PAGE)
    (folder / "client.js").write_text("var pc = null;")
    (tmp_path / "secret.txt").write_text("not for the web")
    return folder


@pytest.fixture
def settings(db_url: str, web_dir: Path) -> OrchestratorSettings:
    return live_settings(db_url, livetalking_avatar_id="a1", livetalking_web_dir=web_dir)


@pytest.fixture
def stack(settings: OrchestratorSettings, local_settings) -> LiveStack:
    with live_stack(settings, local_settings) as running:
        yield running


def test_offer_human_is_speaking_interrupt_and_humanaudio_drive_the_session(stack: LiveStack) -> None:
    with stack.client(ALICE) as client:
        offered = client.post("/offer", json=OFFER)
        assert offered.status_code == 200, offered.text
        answer = offered.json()
        assert answer == {"sdp": ANSWER_SDP, "type": "answer", "sessionid": answer["sessionid"]}
        session_id = answer["sessionid"]
        session = client.get(f"/v1/sessions/{session_id}").json()  # the same session on /v1
        assert (session["status"], session["user_id"]) == ("live", "alice")  # the token's only user
        job = client.get(f"/v1/jobs/{session['job_id']}").json()
        assert job["input"]["avatar_id"] == "a1"  # LIVETALKING_AVATAR_ID

        assert client.post("/is_speaking", json={"sessionid": session_id}).json() == {
            "code": 0,
            "msg": "ok",
            "data": False,
        }
        text = "Hello from a LiveTalking page."
        spoken = client.post("/human", json={"text": text, "type": "echo", "interrupt": True, "sessionid": session_id})
        assert spoken.json() == {
            "code": 0,
            "msg": "ok",
            "data": {"duration_s": pytest.approx(len(text) * SECONDS_PER_CHAR)},
        }
        assert client.post("/is_speaking", json={"sessionid": session_id}).json()["data"] is True
        eventually(lambda: client.post("/is_speaking", json={"sessionid": session_id}).json()["data"] is False, 5)
        commands = stack.sessions.store.commands_after(session_id, 0)
        assert [(c.kind, c.queued) for c in commands] == [("interrupt", False), ("say", False)]  # stops, then says

        # without `interrupt`, as in LiveTalking, each text is queued after the speech playing
        started = time.monotonic()
        for _ in range(2):
            queued = client.post("/human", json={"text": text, "type": "echo", "sessionid": session_id}).json()
            assert queued["code"] == 0
        seconds = len(text) * SECONDS_PER_CHAR
        time.sleep(max(0.0, started + seconds + 0.4 - time.monotonic()))
        assert client.post("/is_speaking", json={"sessionid": session_id}).json()["data"] is True  # the second plays
        assert [c.queued for c in stack.sessions.store.commands_after(session_id, 2)] == [True, True]
        assert client.post("/interrupt_talk", json={"sessionid": session_id}).json() == {"code": 0, "msg": "ok"}
        assert client.post("/is_speaking", json={"sessionid": session_id}).json()["data"] is False

        played = client.post(
            "/humanaudio", data={"sessionid": session_id}, files={"file": ("hi.wav", encode_wav(tone(1.0), 16000))}
        )
        assert played.json() == {"code": 0, "msg": "ok", "data": {"duration_s": PLAY_S}}
        assert client.post("/is_speaking", json={"sessionid": session_id}).json()["data"] is True
        play = stack.sessions.store.commands_after(session_id, 0)[-1]
        assert play.kind == "play" and "/uploads/alice/" in play.audio and play.queued  # under the session's user
        assert client.delete(f"/v1/sessions/{session_id}").status_code == 204
        ended = client.post("/human", json={"text": "Anyone?", "type": "echo", "sessionid": session_id}).json()
        assert ended["code"] == -1 and ended["error_code"] == "session_ended"
        assert client.post("/is_speaking", json={"sessionid": session_id}).json()["data"] is False


def test_refusals_answer_in_livetalkings_shape(stack: LiveStack) -> None:
    with stack.client(ALICE) as alice, stack.client(BOB) as bob:
        session_id = alice.post("/offer", json={**OFFER, "refaudio": "", "custom_config": "{}"}).json()["sessionid"]
        chat = alice.post("/human", json={"text": "What is the weather?", "type": "chat", "sessionid": session_id})
        assert chat.status_code == 200 and chat.json()["code"] == -1
        assert chat.json()["error_code"] == "llm_not_configured" and "LLM_BASE_URL" in chat.json()["msg"]
        for path, body in (
            ("/human", {"text": "hi", "type": "echo", "sessionid": session_id}),
            ("/interrupt_talk", {"sessionid": session_id}),
            ("/is_speaking", {"sessionid": session_id}),
        ):  # another tenant's session does not exist for bob
            answer = bob.post(path, json=body).json()
            assert (answer["code"], answer["error_code"]) == (-1, "session_not_found"), path
        assert bob.post("/humanaudio", data={"sessionid": session_id}, files={"file": b"x"}).json()["code"] == -1
        not_audio = alice.post("/humanaudio", data={"sessionid": session_id}, files={"file": ("a.wav", PAGE.encode())})
        assert not_audio.json()["code"] == -1 and not_audio.json()["error_code"] == "unsupported_audio"
        no_file = alice.post("/humanaudio", data={"sessionid": session_id}).json()
        assert no_file["error_code"] == "invalid_input" and "`file`" in no_file["msg"]
        assert alice.post("/human", json={"sessionid": session_id, "text": ""}).json()["error_code"] == "invalid_input"
        assert alice.post("/human", content=b"not json").json()["error_code"] == "invalid_input"
        too_large = alice.post("/human", json={"sessionid": session_id, "text": "x" * 30_000})
        assert too_large.status_code == 413  # bounded before it is read (a text and a few fields)
        assert alice.post("/offer", json={"sdp": "hello", "type": "offer"}).json()["error_code"] == "invalid_sdp"
        assert alice.post("/is_speaking", json={"sessionid": 42}).json()["error_code"] == "session_not_found"
        unauthorized = alice.post("/is_speaking", json={"sessionid": session_id}, headers={"Authorization": "Bearer x"})
        assert unauthorized.status_code == 401 and unauthorized.json()["code"] == -1
        assert [c.kind for c in stack.sessions.store.commands_after(session_id, 0)] == []  # nothing reached the worker
        alice.delete(f"/v1/sessions/{session_id}")


def test_a_web_dir_page_opened_with_a_token_lets_its_fetches_in(stack: LiveStack) -> None:
    with stack.client(headers={}) as browser:
        assert browser.post("/offer", json=OFFER).status_code == 401  # no header, no cookie
        assert browser.get("/livetalking/webrtcapi.html?token=wrong").status_code == 401
        page = browser.get("/livetalking/webrtcapi.html?token=alice-token")
        assert page.status_code == 200 and page.text == PAGE
        cookie = page.headers["set-cookie"].lower()
        assert "avatarctl_token=alice-token" in cookie and "httponly" in cookie and "samesite=strict" in cookie
        assert browser.get("/livetalking/client.js").text == "var pc = null;"  # the page's script, no token needed
        for outside in ("/livetalking/../secret.txt", "/livetalking/%2e%2e/secret.txt", "/livetalking/nope.js"):
            assert browser.get(outside).status_code == 404, outside
        offered = browser.post("/offer", json=OFFER)  # the cookie authenticates, as alice
        session_id = offered.json()["sessionid"]
        assert stack.sessions.get(session_id).user_id == "alice"
        stack.sessions.end(session_id)


def test_the_session_user_and_avatar_settings_and_the_prefix(db_url: str, local_settings) -> None:
    settings = live_settings(db_url, livetalking_prefix="/lt", livetalking_user_id="bob")
    with live_stack(settings, local_settings) as stack, stack.client(OPERATOR) as client:
        assert client.post("/offer", json=OFFER).status_code == 404  # only under the prefix
        no_avatar = client.post("/lt/offer", json=OFFER).json()
        assert no_avatar["error_code"] == "avatar_required" and "LIVETALKING_AVATAR_ID" in no_avatar["msg"]
        session_id = client.post("/lt/offer", json={**OFFER, "avatar": "a2"}).json()["sessionid"]
        session = stack.sessions.get(session_id)
        assert session.user_id == "bob" and stack.service.get(session.job_id).payload["avatar_id"] == "a2"
        with stack.client(ALICE) as alice:  # alice's token may not start bob's sessions
            forbidden = alice.post("/lt/offer", json={**OFFER, "avatar": "a2"})
            assert forbidden.status_code == 403 and forbidden.json()["error_code"] == "forbidden"
        stack.sessions.end(session_id)
    off = live_settings(db_url, livetalking_routes=False, livetalking_avatar_id="a1")
    with live_stack(off, local_settings) as stack, stack.client(OPERATOR) as client:
        assert client.post("/offer", json=OFFER).status_code == 404


def test_cors_for_pages_elsewhere_covers_the_livetalking_routes_only(db_url: str, local_settings) -> None:
    page = "http://pages.example"
    settings = live_settings(db_url, livetalking_avatar_id="a1", livetalking_cors_origins=page)
    with live_stack(settings, local_settings) as stack, stack.client(ALICE) as client:
        preflight = {"Origin": page, "Access-Control-Request-Method": "POST"}
        asked = client.options("/offer", headers={**preflight, "Access-Control-Request-Headers": "authorization"})
        assert asked.status_code == 200 and asked.headers["access-control-allow-origin"] == page
        assert "authorization" in asked.headers["access-control-allow-headers"].lower()
        assert "access-control-allow-credentials" not in asked.headers  # the header's token, never the cookie
        offered = client.post("/offer", json=OFFER, headers={"Origin": page})
        assert offered.json()["sessionid"] and offered.headers["access-control-allow-origin"] == page
        stack.sessions.end(offered.json()["sessionid"])
        assert (
            "access-control-allow-origin"
            not in client.post("/offer", headers={"Origin": "http://evil.example"}).headers
        )
        assert "access-control-allow-origin" not in client.get("/v1/jobs", headers={"Origin": page}).headers
        assert client.options("/v1/jobs", headers=preflight).status_code == 405  # /v1 stays without CORS
