"""The demo page in headless Chromium (Debian's package, driven by Playwright): upload a portrait, start a
live session, send text, and see the video element show changing frames with the mouth moving."""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Iterator
from pathlib import Path

import cv2
import httpx
import numpy as np
import pytest

from engines.face import load_face_analyzer
from storage.local import path_from_file_uri
from tests.browser import BROWSER_ARGS, CHROMIUM, needs_chromium, offline_page
from tests.entrypoints.conftest import training_video  # noqa: F401  (a fixture)
from tests.media import coffee_bgr
from tests.orchestrator.conftest import eventually
from tests.realtime.conftest import TOKEN, LiveApi, mouth_openings
from tests.turn import NO_TURNSERVER, TURNSERVER, turn_server

REPO_ROOT = Path(__file__).resolve().parents[2]
SCREENSHOT = REPO_ROOT / "var" / "demo-page.png"
FINISHED = ("completed", "failed", "cancelled", "timed_out")
pytestmark = needs_chromium
sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (the dev extra has it)")
GRAB_FRAME = """() => {
  const video = document.getElementById("video");
  const canvas = document.createElement("canvas");
  canvas.width = video.videoWidth; canvas.height = video.videoHeight;
  canvas.getContext("2d").drawImage(video, 0, 0);
  return canvas.toDataURL("image/png");
}"""


def grab(page, seconds: float, every_s: float = 0.1) -> list[np.ndarray]:
    """What the video element shows, sampled for ``seconds``."""
    frames, end = [], time.monotonic() + seconds
    while time.monotonic() < end:
        data = page.evaluate(GRAB_FRAME).split(",", 1)[1]
        frames.append(cv2.imdecode(np.frombuffer(base64.b64decode(data), np.uint8), cv2.IMREAD_COLOR))
        time.sleep(every_s)
    return frames


RELAYED = """async () => {
  const stats = await pc.getStats();
  for (const report of stats.values()) {
    if (report.type === "candidate-pair" && report.nominated && report.state === "succeeded") {
      return stats.get(report.localCandidateId).candidateType;
    }
  }
  return null;
}"""


@pytest.fixture(autouse=True)
def loopback_peers(monkeypatch: pytest.MonkeyPatch) -> None:
    """The session's worker accepts the browser's loopback (and loopback-relayed) candidates."""
    monkeypatch.setenv("REALTIME_ALLOW_PRIVATE_CANDIDATES", "1")


@pytest.fixture(params=["direct", "relay"])
def ice_mode(request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """`relay`: coturn on loopback in ICE_SERVERS with TURN_SECRET, and the page opened with `?relay=1`."""
    if request.param == "direct":
        yield "direct"
        return
    if TURNSERVER is None:
        pytest.skip(NO_TURNSERVER)
    with turn_server(tmp_path) as turn:
        monkeypatch.setenv("ICE_SERVERS", json.dumps(turn.ice_servers))
        monkeypatch.setenv("TURN_SECRET", turn.secret)
        yield "relay"


def test_the_demo_page_runs_a_live_session_in_chromium(ice_mode: str, live_api: LiveApi) -> None:
    """Direct, and relay-only: Chromium takes the ICE servers (coturn, time-limited credentials) from the API and
    `?relay=1` makes it use relayed candidates only."""
    portrait = path_from_file_uri(live_api.portrait_uri)
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=BROWSER_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1100, "height": 900})
            page.goto(live_api.url + ("/?relay=1" if ice_mode == "relay" else "/"))
            page.fill("#token", TOKEN)
            page.dispatch_event("#token", "change")
            page.set_input_files("#portrait", str(portrait))
            page.click("#start")
            page.wait_for_function("document.getElementById('video').videoWidth > 0", timeout=30000)
            idle = grab(page, 1.5)
            candidate = page.evaluate(RELAYED)
            page.fill("#text", "Hello there! Watch my mouth move while I speak to you.")
            page.click("#say")
            speaking = grab(page, 2.5)
            SCREENSHOT.parent.mkdir(exist_ok=True)
            page.screenshot(path=str(SCREENSHOT))
            page.click("#stop")
        finally:
            browser.close()

    assert candidate == ("relay" if ice_mode == "relay" else "host"), candidate
    assert all(frame.shape[:2] == (256, 256) and frame.mean() > 30 for frame in idle + speaking)  # video, not black
    changes = [np.abs(a.astype(int) - b.astype(int)).mean() for a, b in zip(idle, idle[1:], strict=False)]
    assert max(changes) > 0.3  # the frames change while idle
    openings = mouth_openings(idle + speaking, load_face_analyzer())
    rest = np.nanmedian(openings[: len(idle)])
    assert np.nanmax(openings[len(idle) :]) > rest + 0.04, (rest, openings[len(idle) :])  # the mouth moves
    assert SCREENSHOT.stat().st_size > 10_000


def test_the_demo_pages_video_form_stills_and_job_list(live_api: LiveApi, training_video: Path) -> None:  # noqa: F811
    """The non-live parts: jobs of the chosen user only, statuses in words, a failed job's error, an error that
    goes once the next action starts, a video made from an avatar and played through its signed URL, and the
    seven stills of the avatar without an upload."""
    client = httpx.Client(base_url=live_api.url, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=60)
    video = client.post(
        "/v1/uploads",
        files={"file": ("train.mp4", training_video.read_bytes(), "video/mp4")},
        data={"user_id": "page-user", "kind": "training_video"},
    ).json()["uri"]
    avatar = client.post("/v1/avatars", json={"user_id": "page-user", "avatar_id": "page-avatar", "video": video})
    coffee = "data:image/png;base64," + base64.b64encode(cv2.imencode(".png", coffee_bgr())[1].tobytes()).decode()
    failed = client.post("/v1/emotions", json={"user_id": "page-user", "image": coffee, "emotion": "happy"}).json()
    other = client.post("/v1/emotions", json={"user_id": "someone-else", "image": coffee, "emotion": "sad"}).json()
    for job_id in (avatar.json()["id"], failed["id"], other["id"]):
        eventually(lambda job_id=job_id: client.get(f"/v1/jobs/{job_id}").json()["status"] in FINISHED, 120, 0.2)

    with offline_page() as (page, blocked):
        page.goto(live_api.url + "/")
        page.fill("#token", TOKEN)
        page.dispatch_event("#token", "change")
        page.fill("#user", "page-user")
        page.dispatch_event("#user", "change")
        page.wait_for_function("document.querySelectorAll('#jobs tr').length >= 3", timeout=15000)
        table = page.inner_text("#jobs")
        assert failed["id"][:8] in table and other["id"][:8] not in table, table
        assert "failed" in table and "no_face" in table and "done" in table and "{" not in table, table
        assert page.eval_on_selector("#avatars option", "o => o.value") == "page-avatar"

        page.click("#make-video")  # neither an avatar nor a portrait yet: an error the user can act on
        page.wait_for_function("document.getElementById('message').textContent.includes('avatar id')")
        page.fill("#avatar", "page-avatar")
        page.click("#make-video")
        assert page.inner_text("#message") == ""  # the stale error is gone as soon as the next action starts
        page.wait_for_function("document.getElementById('clip').readyState >= 1", timeout=120000)
        src = page.get_attribute("#clip", "src")
        assert (
            src.startswith(live_api.url + "/files/") and page.evaluate("document.getElementById('clip').duration") > 0.5
        )

        page.click("#emotions")
        page.wait_for_function(
            "[...document.querySelectorAll('#gallery img')].filter(i => i.complete && i.naturalWidth > 0).length == 7",
            timeout=60000,
        )
        assert page.inner_text("#emotion-status") == "done" and page.inner_text("#message") == ""
        page.screenshot(path=str(SCREENSHOT.with_name("demo-page-video.png")))
    assert blocked == []
