"""Issue 20's live-session classes on the worker side, each named for its class: what a client or a task can
send a worker's session, refused early with a code, and nothing left behind when a session fails to start."""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import threading
import time

import pytest

pytest.importorskip("aiortc", reason="live sessions need the `realtime` extra (aiortc)")

import handlers  # noqa: E402
import realtime  # noqa: E402
from engines.tts import espeak  # noqa: E402
from handlers.settings import Settings  # noqa: E402
from realtime import sdp as session_sdp  # noqa: E402
from realtime.limits import RealtimeSettings  # noqa: E402
from storage import open_store  # noqa: E402
from tests.realtime.conftest import LiveWorker, client_offer, ports_checked  # noqa: E402
from tests.storage.test_avatar_cache import upload_avatar  # noqa: E402


def session_threads() -> list[str]:
    return sorted(t.name for t in threading.enumerate() if t.name.startswith("live-") and t.name != "live-sessions")


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def fds_settle_to(baseline: int, timeout_s: float = 5.0) -> int:
    """Open descriptors once the control peer's server has closed its side of the worker's connections."""
    deadline = time.monotonic() + timeout_s
    while open_fds() > baseline and time.monotonic() < deadline:
        time.sleep(0.1)
    return open_fds()


def without(offer: dict, *prefixes: str) -> dict:
    lines = [line for line in offer["sdp"].splitlines() if not line.startswith(prefixes)]
    return {"sdp": "\r\n".join(lines) + "\r\n", "type": "offer"}


def replaced(offer: dict, old: str, new: str) -> dict:
    return {"sdp": offer["sdp"].replace(old, new, 1), "type": "offer"}


def no_common_codec(offer: dict) -> dict:
    """The video section offers one codec nobody has."""
    lines = []
    for line in offer["sdp"].splitlines():
        if line.startswith("m=video"):
            line = "m=video 9 UDP/TLS/RTP/SAVPF 96\r\na=rtpmap:96 NOSUCH/90000"
        if not line.startswith(("a=rtpmap", "a=fmtp", "a=rtcp-fb", "a=ssrc")) or "NOSUCH" in line:
            lines.append(line)
    return {"sdp": "\r\n".join(lines) + "\r\n", "type": "offer"}


# ---- signalling ----------------------------------------------------------------------------------


def test_class_offer_bounds_refuse_many_media_sections_before_any_work(live_worker: LiveWorker) -> None:
    """Too many m-lines: offer_too_large, before the avatar is fetched (its missing image would say otherwise)."""
    _, offer = asyncio.run(client_offer())
    video = offer["sdp"].split("m=video", 1)[1].split("m=application", 1)[0]
    many = {"sdp": offer["sdp"] + ("m=video" + video) * 4, "type": "offer"}
    missing = live_worker.portrait_uri.replace("portrait.png", "no-such.png")
    result = live_worker.run(live_worker.payload(many, image=missing))
    assert result["error_code"] == "offer_too_large" and "media sections" in result["error"]
    oversized = live_worker.run(live_worker.payload({"sdp": "v=0\r\n" + "a=x\r\n" * 30_000, "type": "offer"}))
    assert oversized["error_code"] == "invalid_input" and "`offer.sdp`" in oversized["error"]


@pytest.mark.parametrize(
    "broken",
    [
        pytest.param(lambda offer: {"sdp": "hello there", "type": "offer"}, id="not-sdp"),
        pytest.param(lambda offer: {"sdp": "v=0\r\ns=-\r\n", "type": "offer"}, id="no-media"),
        pytest.param(
            lambda offer: replaced(offer, "a=candidate:", "a=candidate:garbage\r\na=candidate:"), id="candidate"
        ),
        pytest.param(lambda offer: replaced(offer, " typ host", " typ"), id="cut-candidate"),
        pytest.param(
            lambda offer: replaced(
                offer, "a=candidate:", "a=candidate:f 1 udp 1 8.8.8.8 99999 typ host\r\na=candidate:"
            ),
            id="candidate-port",
        ),
        pytest.param(lambda offer: without(offer, "a=ice-ufrag", "a=ice-pwd"), id="no-ice-credentials"),
        pytest.param(lambda offer: replaced(offer, "m=video ", "m=video x"), id="media-port"),
        pytest.param(no_common_codec, id="no-common-codec"),
    ],
)
def test_class_malformed_sdp_within_the_limit_is_invalid_sdp(live_worker: LiveWorker, broken) -> None:
    _, offer = asyncio.run(client_offer())
    task = live_worker.start(live_worker.payload(broken(offer)))
    result = task.result()
    assert result["error_code"] == "invalid_sdp", result
    assert "Traceback" not in result["error"]
    end = live_worker.control.end(task.session_id, 5.0)
    assert end is not None and end["reason"] == "error" and end["error_code"] == "invalid_sdp"
    assert live_worker.control.sessions[task.session_id].answer is None


def test_class_answer_checked_before_the_session_is_committed(
    live_worker: LiveWorker, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(session_sdp, "MAX_ANSWER_CHARS", 500)  # any real answer is larger
    _, offer = asyncio.run(client_offer())
    task = live_worker.start(live_worker.payload(offer))
    assert task.result()["error_code"] == "answer_too_large"
    assert live_worker.control.sessions[task.session_id].answer is None  # never posted
    assert live_worker.control.end(task.session_id, 5.0)["error_code"] == "answer_too_large"
    assert session_threads() == []


# ---- a failed set-up leaves nothing behind -------------------------------------------------------


@pytest.mark.parametrize("failure", ["answer_refused", "avatar_missing", "refused_after_avatar", "answer_too_large"])
def test_class_failed_setup_leaves_nothing_behind(
    failure: str, live_worker: LiveWorker, local_settings: Settings, tmp_path, monkeypatch: pytest.MonkeyPatch
) -> None:
    upload_avatar(open_store(local_settings.avatar_store_uri), tmp_path, "live-user", "stored", frames=4)
    live_worker.host.loop()  # the process's session loop (its selector and pipe) exists before counting
    _, offer = asyncio.run(client_offer())
    warm = live_worker.start(live_worker.payload(without(offer, "a=ice-ufrag", "a=ice-pwd"), avatar_id="stored"))
    assert warm.result()["error_code"] == "invalid_sdp"  # engines, caches and pools of the process warmed
    fds, threads = open_fds(), session_threads()

    fields: dict = {"avatar_id": "stored"}
    if failure == "avatar_missing":
        fields = {"avatar_id": "nobody-has-this"}
    elif failure == "refused_after_avatar":
        offer = without(offer, "a=ice-ufrag", "a=ice-pwd")
    elif failure == "answer_too_large":
        monkeypatch.setattr(session_sdp, "MAX_ANSWER_CHARS", 500)
    payload = live_worker.payload(offer, **fields)
    if failure == "answer_refused":
        live_worker.control.sessions[payload["session_id"]].refuse.add("answer")
    result = live_worker.run(payload)

    expected = {"answer_refused": "control_refused", "refused_after_avatar": "invalid_sdp"}
    assert result["error_code"] == expected.get(failure, result["error_code"])
    assert "error" in result and live_worker.host.count == 0
    end = live_worker.control.end(payload["session_id"], 5.0)
    assert end is not None and end["reason"] == "error" and end["error_code"] == result["error_code"]
    assert session_threads() == threads == []
    assert fds_settle_to(fds) <= fds, "a socket, a file or the avatar's hold is still open"


# ---- remote ICE candidates -----------------------------------------------------------------------


def probed_ports(live_worker: LiveWorker, candidates: int, listen_s: float = 4.0) -> tuple[int, dict]:
    """Offer ``candidates`` loopback candidates, each a UDP port listening here; how many got a check."""
    sockets = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(candidates)]
    for sock in sockets:
        sock.bind(("127.0.0.1", 0))
        sock.setblocking(False)
    _, offer = asyncio.run(client_offer())
    real = without(offer, "a=candidate", "a=end-of-candidates")["sdp"]
    fake = "".join(
        f"a=candidate:{k} 1 udp {2130706431 - k} 127.0.0.1 {s.getsockname()[1]} typ host\r\n"
        for k, s in enumerate(sockets)
    )
    marker = "a=ice-ufrag"
    sdp = real.replace(marker, fake + marker)  # the candidates of every media section, before its credentials
    task = live_worker.start(live_worker.payload({"sdp": sdp, "type": "offer"}))
    answer = live_worker.control.answer(task.session_id, 60.0)
    hit = ports_checked(sockets, listen_s)
    live_worker.control.command(task.session_id, "stop")
    task.result()
    for sock in sockets:
        sock.close()
    return len(hit), answer or {}


def test_class_remote_candidates_private_addresses_are_not_checked(live_worker: LiveWorker) -> None:
    live_worker.host.limits.allow_private_candidates = False
    hit, answer = probed_ports(live_worker, 6)
    assert answer and hit == 0


def test_class_remote_candidates_are_capped_per_session(live_worker: LiveWorker) -> None:
    live_worker.host.limits.max_remote_candidates = 3
    hit, answer = probed_ports(live_worker, 40)
    assert answer and 0 < hit <= 3


@pytest.mark.parametrize(
    ("candidate", "refused"),
    [
        ("1 1 udp 1 8.8.8.8 3478 typ srflx raddr 0.0.0.0 rport 0", False),
        ("1 1 udp 1 10.1.2.3 50000 typ host", True),
        ("1 1 udp 1 127.0.0.1 50000 typ host", True),
        ("1 1 udp 1 169.254.1.1 50000 typ host", True),
        ("1 1 udp 1 100.64.0.1 50000 typ host", True),
        ("1 1 udp 1 ::ffff:192.168.1.1 50000 typ host", True),
        ("1 1 udp 1 fd00::1 50000 typ host", True),
        ("1 1 udp 1 224.0.0.1 50000 typ host", True),
        ("1 1 udp 1 1b2c3d4e-aaaa-bbbb-cccc-123456789abc.local 50000 typ host", True),
        ("1 1 udp 1 8.8.8.8 22 typ host", True),
        ("1 1 udp 1 relay.example.com 50000 typ relay", True),
    ],
)
def test_class_remote_candidate_policy(candidate: str, refused: bool) -> None:
    assert (session_sdp.candidate_refusal(candidate, RealtimeSettings()) is not None) is refused


# ---- data-channel messages, speech -----------------------------------------------------------------


def test_class_data_channel_messages_are_validated_like_say(live_worker: LiveWorker) -> None:
    async def scenario() -> dict[str, dict]:
        peer, offer = await client_offer(channel=True)
        task = live_worker.start(live_worker.payload(offer))
        answer = await asyncio.to_thread(live_worker.control.answer, task.session_id)
        await peer.accept(answer["answer"])
        replies = {
            "spoken": await peer.send("Hello on the channel."),
            "json": await peer.send('{"text": "Hello as JSON.", "voice": {"rate": 200}}'),
            "object_as_text": await peer.send('{"text": {"say": "this"}}'),
            "unknown_field": await peer.send('{"text": "hi", "colour": "blue"}'),
            "too_long": await peer.send("a" * 5001),
            "too_large": await peer.send("é" * 20_000),
            "binary": await peer.send(b"\x00\x01"),
            "blank": await peer.send("   "),
        }
        flood = [await peer.send("Hi.") for _ in range(12)]
        replies["flood"] = next((r for r in flood if "error_code" in r), {})
        await asyncio.sleep(2.5)  # the rate refills
        replies["after"] = await peer.send("Still here.")
        live_worker.control.command(task.session_id, "stop")
        replies["result"] = await asyncio.to_thread(task.result)
        await peer.close()
        return replies

    replies = asyncio.run(scenario())
    assert replies["spoken"]["said_s"] > 0.5 and replies["json"]["said_s"] > 0.5
    expected = {
        "object_as_text": "invalid_input",
        "unknown_field": "invalid_input",
        "too_long": "invalid_input",
        "too_large": "message_too_large",
        "binary": "invalid_message",
        "blank": "invalid_input",
        "flood": "rate_limited",
    }
    for name, code in expected.items():
        assert replies[name].get("error_code") == code, (name, replies[name])
    assert replies["after"]["said_s"] > 0.3
    assert replies["result"]["reason"] == "stopped" and replies["result"]["stats"]["utterances"] >= 3


def test_class_long_text_is_synthesised_in_pieces_so_sessions_interleave(
    live_worker: LiveWorker, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A 5,000-character say never holds eSpeak's process-wide lock for more than one piece."""
    calls: list[int] = []
    original = espeak.EspeakSynthesizer.synthesize

    def counted(self, text, voice):
        calls.append(len(text))
        return original(self, text, voice)

    monkeypatch.setattr(espeak.EspeakSynthesizer, "synthesize", counted)
    text = ("Every piece of this long text is spoken in turn, while other sessions speak too. " * 70)[:5000]

    async def scenario() -> dict:
        peer, offer = await client_offer()
        task = live_worker.start(live_worker.payload(offer))
        answer = await asyncio.to_thread(live_worker.control.answer, task.session_id)
        await peer.accept(answer["answer"])
        seq = live_worker.control.command(task.session_id, "say", text)
        said = await asyncio.to_thread(live_worker.control.said, task.session_id, seq)
        live_worker.control.command(task.session_id, "stop")
        await asyncio.to_thread(task.result)
        await peer.close()
        return said

    said = asyncio.run(scenario())
    limit = live_worker.host.limits.speech_piece_chars
    assert said["duration_s"] > 200  # all of it scheduled
    assert max(calls) <= limit and len(calls) >= 5000 // limit


# ---- slots, the task table, the token --------------------------------------------------------------


def test_class_session_slots_reserved_before_any_work(live_worker: LiveWorker) -> None:
    live_worker.host.limits.max_sessions = 1

    async def scenario() -> tuple[dict, dict, dict]:
        peer, offer = await client_offer()
        first = live_worker.start(live_worker.payload(offer))
        second = live_worker.run(live_worker.payload(offer))  # at once: the first is still setting up
        again = live_worker.run({**live_worker.payload(offer), "session_id": first.session_id})
        answer = await asyncio.to_thread(live_worker.control.answer, first.session_id)
        live_worker.control.command(first.session_id, "stop")
        result = await asyncio.to_thread(first.result)
        await peer.close()
        return second, again, {"answer": answer, **result}

    second, again, first = asyncio.run(scenario())
    assert second["error_code"] == "too_many_sessions"
    assert again["error_code"] in ("session_exists", "too_many_sessions")
    assert first["answer"] is not None and first["reason"] == "stopped"


def test_dispatch_without_aiortc_answers_task_not_served(
    local_settings: Settings, runtime, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(handlers, "TASKS", {k: v for k, v in handlers.TASKS.items() if k != "live_session"})
    monkeypatch.setitem(__import__("sys").modules, "aiortc", None)  # as if the realtime extra were not installed
    assert realtime.available() is False and realtime.serve_live_sessions() is False
    served = runtime.with_settings(local_settings.model_copy(update={"worker_tasks": "live_session"}))
    _, offer = {}, {"sdp": "v=0\r\n", "type": "offer"}
    payload = {
        "task": "live_session",
        "session_id": "b" * 32,
        "user_id": "u",
        "image": "file:///x.png",
        "offer": offer,
        "control": {"url": "http://127.0.0.1:9", "token": "t" * 16},
    }
    result = handlers.dispatch(payload, served)
    assert result["error_code"] == "task_not_served" and "`realtime` extra" in result["error"]
    health = handlers.dispatch({"task": "health"}, served)["tasks"]["live_session"]
    assert health["status"] == "unavailable" and "`realtime` extra" in health["reason"]


def test_health_names_the_live_engine_and_the_session_limit(live_worker: LiveWorker) -> None:
    health = handlers.dispatch({"task": "health"}, live_worker.runtime)["tasks"]["live_session"]
    assert health["status"] == "ok" and health["engine"]["name"] == "viseme_warp"  # no weights on this worker
    assert health["image_engine"]["name"] == "viseme_warp" and "no wav2lip96 weights" in health["engine"]["reason"]
    assert health["max_sessions"] == live_worker.host.limits.max_sessions and health["sessions"] == 0
    not_served = live_worker.runtime.with_settings(live_worker.runtime.settings.model_copy(update={"worker_tasks": ""}))
    assert handlers.dispatch({"task": "health"}, not_served)["tasks"]["live_session"] == {"status": "not_served"}


def test_the_control_token_is_never_logged(live_worker: LiveWorker, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    _, offer = asyncio.run(client_offer())
    refused = live_worker.payload(offer)
    live_worker.control.sessions[refused["session_id"]].refuse.update({"answer", "end"})
    assert live_worker.run(refused)["error_code"] == "control_refused"
    lost = live_worker.payload(offer, control={"url": "http://127.0.0.1:9/control", "token": "s" * 40})
    assert live_worker.run(lost)["error_code"] == "control_lost"
    for token in (refused["control"]["token"], "s" * 40):
        assert token not in caplog.text


def test_a_control_url_that_is_not_http_is_refused_at_once(live_worker: LiveWorker) -> None:
    bad = live_worker.payload({"sdp": "v=0\r\n", "type": "offer"}, control={"url": "file:///etc", "token": "t" * 16})
    result = live_worker.run(bad)
    assert result["error_code"] == "invalid_input" and "`control.url`" in result["error"]
