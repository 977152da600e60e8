"""The demo page in headless Chromium (Debian's package, driven by Playwright): upload a portrait, start a
live session, send text, and see the video element show changing frames with the mouth moving."""

from __future__ import annotations

import base64
import json
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np
import pytest

from engines.face import load_face_analyzer
from storage.local import path_from_file_uri
from tests.realtime.conftest import TOKEN, LiveApi, mouth_openings
from tests.turn import NO_TURNSERVER, TURNSERVER, turn_server

REPO_ROOT = Path(__file__).resolve().parents[2]
SCREENSHOT = REPO_ROOT / "var" / "demo-page.png"
CHROMIUM = next((path for name in ("chromium", "chromium-browser") if (path := shutil.which(name))), None)
NO_BROWSER = "no Chromium: the demo page's browser test did not run (.ci/run installs Debian's chromium)"
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason=NO_BROWSER)
sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (the dev extra has it)")

BROWSER_ARGS = [
    "--no-sandbox",  # CI runs as root
    "--autoplay-policy=no-user-gesture-required",
    "--use-fake-ui-for-media-stream",
    "--disable-features=WebRtcHideLocalIpsWithMdns",  # plain host candidates: the server cannot resolve mDNS names
]
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
