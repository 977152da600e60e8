"""LiveTalking's web API against a real live session: the API under uvicorn, its session on a local worker process
(the real ``live_session`` task), and a client doing what LiveTalking's ``web/client.js`` and ``webrtcapi.html``
do, request for request: two recvonly transceivers (video, then audio), the offer once ICE gathering is
complete, ``POST /offer`` ``{sdp, type}``, the answer applied, then ``/human``, ``/is_speaking``,
``/interrupt_talk`` and ``/humanaudio`` with their JSON and form. What the peer hears follows: speech after
``/human`` and ``/humanaudio``, silence after ``/interrupt_talk``; ``/is_speaking`` turns false when the speech
has played; texts sent without ``interrupt`` play one after the other. ``chat`` is answered by a small
OpenAI-compatible server the test runs. With Chromium, a page served from LIVETALKING_WEB_DIR does the same
fetches with the token cookie only."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

pytest.importorskip("aiortc", reason="live sessions need the `realtime` extra (aiortc)")

from engines.codecs.audio import encode_wav  # noqa: E402
from orchestrator.api import create_app  # noqa: E402
from orchestrator.core.config import OrchestratorSettings  # noqa: E402
from orchestrator.core.service import JobService  # noqa: E402
from orchestrator.devtools.background_server import BackgroundServer  # noqa: E402
from storage.local import path_from_file_uri  # noqa: E402
from tests.browser import BROWSER_ARGS, CHROMIUM, needs_chromium  # noqa: E402
from tests.media import tone  # noqa: E402
from tests.realtime.conftest import AUTH, TOKEN, write_portrait  # noqa: E402

LLM_ANSWER = "The weather is fine today, and I hope you enjoy it."
LLM_KEY = "llm-key"
SPEECH = "Hello there, I am speaking through the LiveTalking interface of this server."
LONG_SPEECH = " ".join([SPEECH] * 4)
LOUD = 300.0  # RMS of received 16-bit audio frames: speech is well above it, Opus silence far below


@dataclass
class ChatServer:
    """An OpenAI-compatible chat completions server: answers LLM_ANSWER, keeps what it was asked."""

    url: str
    requests: list[dict[str, Any]] = field(default_factory=list)


@pytest.fixture
def chat_server() -> Iterator[ChatServer]:
    seen: list[dict[str, Any]] = []

    class Completions(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 (http.server's name)
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            seen.append({"path": self.path, "authorization": self.headers.get("Authorization"), "body": body})
            message = {"role": "assistant", "content": LLM_ANSWER}
            answer = {
                "id": "c1",
                "object": "chat.completion",
                "model": body["model"],
                "choices": [{"index": 0, "message": message, "finish_reason": "stop"}],
            }
            data = json.dumps(answer).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Completions)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield ChatServer(f"http://127.0.0.1:{server.server_address[1]}/v1", seen)
    finally:
        server.shutdown()
        server.server_close()


@dataclass
class Server:
    url: str
    app: Any


@pytest.fixture
def server(
    tmp_path: Path, local_settings, chat_server: ChatServer, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Server]:
    monkeypatch.setenv("REALTIME_ALLOW_PRIVATE_CANDIDATES", "1")  # the peers' candidates are on loopback
    portrait = write_portrait(path_from_file_uri(local_settings.avatar_store_uri))
    web = tmp_path / "web"
    web.mkdir()
    (web / "page.html").write_text(PAGE)
    settings = OrchestratorSettings(
        database_url=f"sqlite:///{tmp_path / 'jobs.db'}",
        api_token=TOKEN,
        livetalking_image=portrait,
        livetalking_web_dir=web,
        llm_base_url=chat_server.url,
        llm_api_key=LLM_KEY,
        llm_model="tiny-chat",
    )
    service = JobService(settings)
    app = create_app(service)
    with BackgroundServer(app) as running:
        yield Server(running.url, app)
    service.stop()


@dataclass
class Heard:
    """Per received audio frame: (arrival time, RMS); and how many video frames came."""

    audio: list[tuple[float, float]] = field(default_factory=list)
    video_frames: int = 0

    def loudest(self, start: float, end: float) -> float:
        levels = [rms for at, rms in self.audio if start <= at <= end]
        return max(levels, default=0.0)


async def client_js_session(http: httpx.AsyncClient, heard: Heard) -> tuple[Any, str]:
    """client.js's negotiate(): recvonly video and audio transceivers, the offer after ICE gathering, /offer."""
    from aiortc import RTCPeerConnection, RTCSessionDescription
    from aiortc.mediastreams import MediaStreamError

    pc = RTCPeerConnection()  # client.js: no STUN unless its checkbox is ticked

    async def collect(track: Any) -> None:
        try:
            while True:
                frame = await track.recv()
                if track.kind == "video":
                    heard.video_frames += 1
                else:
                    samples = frame.to_ndarray().astype(np.float64)
                    heard.audio.append((time.monotonic(), float(np.sqrt(np.mean(samples**2)))))
        except MediaStreamError:
            return

    pc.on("track", lambda track: asyncio.ensure_future(collect(track)))
    pc.addTransceiver("video", direction="recvonly")
    pc.addTransceiver("audio", direction="recvonly")
    await pc.setLocalDescription(await pc.createOffer())
    assert pc.iceGatheringState == "complete"  # aiortc gathers inside setLocalDescription
    offer = pc.localDescription
    response = await http.post(
        "/offer",
        content=json.dumps({"sdp": offer.sdp, "type": offer.type}),
        headers={"Content-Type": "application/json"},
    )
    answer = response.json()
    assert set(answer) == {"sdp", "type", "sessionid"}, answer
    await pc.setRemoteDescription(RTCSessionDescription(sdp=answer["sdp"], type=answer["type"]))
    return pc, answer["sessionid"]


async def speaking(http: httpx.AsyncClient, session_id: str) -> bool:
    answer = (await http.post("/is_speaking", json={"sessionid": session_id})).json()
    assert answer["code"] == 0, answer
    return answer["data"]


async def until_silent(http: httpx.AsyncClient, session_id: str, timeout_s: float) -> float:
    """When /is_speaking turned false (monotonic time)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not await speaking(http, session_id):
            return time.monotonic()
        await asyncio.sleep(0.1)
    raise AssertionError(f"still speaking after {timeout_s} s")


def test_a_client_following_client_js_drives_a_real_session(server: Server, chat_server: ChatServer) -> None:
    heard = Heard()
    marks: dict[str, float] = {}

    async def scenario() -> dict[str, Any]:
        async with httpx.AsyncClient(base_url=server.url, headers=AUTH, timeout=60) as http:
            pc, session_id = await client_js_session(http, heard)
            deadline = time.monotonic() + 30
            while heard.video_frames < 25 and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            assert heard.video_frames >= 25, "no video from the session"
            await asyncio.sleep(1.0)
            marks["idle"] = time.monotonic()
            assert not await speaking(http, session_id)

            # webrtcapi.html's echo form
            echo = {"text": SPEECH, "type": "echo", "interrupt": True, "sessionid": str(session_id)}
            said = (await http.post("/human", json=echo)).json()
            marks["said"] = time.monotonic()
            assert said["code"] == 0 and said["data"]["duration_s"] > 2.0, said
            assert await speaking(http, session_id)
            marks["silent"] = await until_silent(http, session_id, said["data"]["duration_s"] + 5)
            marks["spoken"] = marks["said"] + said["data"]["duration_s"]

            # without `interrupt` the texts are queued: the second plays after the first
            queue = {**echo, "interrupt": False}
            marks["queued"] = time.monotonic()
            first = (await http.post("/human", json={**queue, "text": SPEECH})).json()
            second = (await http.post("/human", json={**queue, "text": "And this comes after it."})).json()
            assert first["code"] == 0 and second["code"] == 0, (first, second)
            marks["queue_end"] = marks["queued"] + first["data"]["duration_s"] + second["data"]["duration_s"]
            marks["queue_silent"] = await until_silent(http, session_id, marks["queue_end"] - time.monotonic() + 5)

            long = (await http.post("/human", json={**queue, "text": LONG_SPEECH})).json()
            assert long["code"] == 0 and await speaking(http, session_id)
            await asyncio.sleep(1.0)
            assert (await http.post("/interrupt_talk", json={"sessionid": session_id})).json() == {
                "code": 0,
                "msg": "ok",
            }
            marks["interrupted"] = time.monotonic()
            assert not await speaking(http, session_id)
            await asyncio.sleep(2.0)

            form = {"sessionid": session_id}
            played = (
                await http.post(
                    "/humanaudio", data=form, files={"file": ("hi.wav", encode_wav(0.5 * tone(1.2), 16000))}
                )
            ).json()
            marks["played"] = time.monotonic()
            assert played["code"] == 0 and played["data"]["duration_s"] == pytest.approx(1.2, abs=0.05), played
            assert await speaking(http, session_id)
            await until_silent(http, session_id, 5)
            refused = (await http.post("/humanaudio", data=form, files={"file": ("x.wav", b"RIFF not audio")})).json()
            assert refused["code"] == -1 and refused["error_code"] == "unsupported_audio", refused

            chat = (await http.post("/human", json={**echo, "text": "How is the weather?", "type": "chat"})).json()
            assert chat["code"] == 0 and chat["data"]["answer"] == LLM_ANSWER and chat["data"]["duration_s"] > 1.0
            await asyncio.sleep(0.5)
            marks["chatted"] = time.monotonic()
            await http.delete(f"/v1/sessions/{session_id}")
            await pc.close()
            return (await http.get(f"/v1/sessions/{session_id}")).json()

    ended = asyncio.run(scenario())
    assert ended["status"] == "ended" and ended["end_reason"] == "stopped"
    assert heard.loudest(marks["idle"] - 0.8, marks["idle"]) < LOUD  # idle: silence
    assert heard.loudest(marks["said"], marks["spoken"] - 0.3) > LOUD  # /human echo: speech
    assert abs(marks["silent"] - marks["spoken"]) < 1.0, marks  # /is_speaking follows the speech's end
    assert marks["queue_end"] - 0.5 < marks["queue_silent"] < marks["queue_end"] + 1.5, marks  # both played in turn
    assert heard.loudest(marks["queue_end"] - 1.0, marks["queue_end"] - 0.5) > LOUD  # the second, after the first
    assert heard.loudest(marks["interrupted"] + 0.6, marks["played"] - 0.3) < LOUD  # /interrupt_talk: silence
    assert heard.loudest(marks["played"], marks["played"] + 0.9) > LOUD  # /humanaudio: the file plays
    assert heard.loudest(marks["chatted"] - 0.4, marks["chatted"]) > LOUD  # chat: the LLM's answer is spoken
    (asked,) = chat_server.requests
    assert asked["path"] == "/v1/chat/completions" and asked["authorization"] == f"Bearer {LLM_KEY}"
    assert asked["body"]["model"] == "tiny-chat" and asked["body"]["messages"][-1] == {
        "role": "user",
        "content": "How is the weather?",
    }


PAGE = """<!doctype html><meta charset="utf-8"><title>LiveTalking-style page</title>
<video id="video" autoplay playsinline muted></video>
<script>
// What LiveTalking's client.js and webrtcapi.html do, written for this test: same-origin fetches, no token header.
window.results = {};
async function post(path, body) {
  const response = await fetch(path, {body: JSON.stringify(body), headers: {'Content-Type': 'application/json'},
                                      method: 'POST'});
  return response.json();
}
async function run() {
  const pc = new RTCPeerConnection({sdpSemantics: 'unified-plan'});
  pc.addEventListener('track', (evt) => {
    if (evt.track.kind == 'video') document.getElementById('video').srcObject = evt.streams[0];
  });
  pc.addTransceiver('video', {direction: 'recvonly'});
  pc.addTransceiver('audio', {direction: 'recvonly'});
  await pc.setLocalDescription(await pc.createOffer());
  await new Promise((resolve) => {
    if (pc.iceGatheringState === 'complete') return resolve();
    pc.addEventListener('icegatheringstatechange', () => pc.iceGatheringState === 'complete' && resolve());
  });
  const answer = await post('/offer', {sdp: pc.localDescription.sdp, type: pc.localDescription.type});
  window.results.sessionid = answer.sessionid;
  await pc.setRemoteDescription(answer);
  const video = document.getElementById('video');
  while (!video.videoWidth) await new Promise((r) => setTimeout(r, 100));
  window.results.videoWidth = video.videoWidth;
  const sessionid = String(answer.sessionid);
  window.results.human = await post('/human', {text: 'Hello from the page.', type: 'echo', interrupt: true, sessionid});
  window.results.speaking = await post('/is_speaking', {sessionid});
  window.results.interrupt = await post('/interrupt_talk', {sessionid});
  window.results.after = await post('/is_speaking', {sessionid});
  pc.close();
}
run().then(() => { window.results.done = true; }, (e) => { window.results.error = String(e); });
</script>"""


@needs_chromium
def test_a_page_from_the_web_dir_runs_with_the_token_cookie(server: Server) -> None:
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (the dev extra has it)")
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=BROWSER_ARGS)
        try:
            page = browser.new_page()
            page.goto(f"{server.url}/livetalking/page.html?token={TOKEN}")
            page.wait_for_function("window.results.done || window.results.error", timeout=90_000)
            results = page.evaluate("window.results")
        finally:
            browser.close()
    assert "error" not in results, results
    assert results["videoWidth"] > 0 and len(results["sessionid"]) == 32
    assert results["human"]["code"] == 0 and results["human"]["data"]["duration_s"] > 0.5
    assert results["speaking"] == {"code": 0, "msg": "ok", "data": True}
    assert results["interrupt"] == {"code": 0, "msg": "ok"} and results["after"]["data"] is False
    session = httpx.get(f"{server.url}/v1/sessions/{results['sessionid']}", headers=AUTH).json()
    assert session["user_id"] == "default"
    httpx.delete(f"{server.url}/v1/sessions/{results['sessionid']}", headers=AUTH)
