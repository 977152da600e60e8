"""Results you can open with the default file:// store: every result the API answers carries a signed,
expiring URL under the API's own address, served with byte ranges (video seeking), the right content types,
and nothing outside the store."""

from __future__ import annotations

import base64
import os
import stat
import time
from urllib.parse import urljoin

import httpx
import pytest

from handlers.settings import Settings
from orchestrator.api.files import FileSigner, signing_secret
from orchestrator.core.config import OrchestratorSettings
from storage.local import LocalStore, path_from_file_uri
from tests.orchestrator import test_api
from tests.orchestrator.test_api import PORTRAIT, Api
from tests.orchestrator.test_events import follow

api = test_api.api  # the fixture: the API under uvicorn, local backend, file:// store

PORTRAIT_URI = "data:image/png;base64," + base64.b64encode(PORTRAIT).decode()


def test_emotion_results_carry_signed_urls_that_serve_the_stills(api: Api) -> None:
    job = api.client.post("/v1/emotions", json={"user_id": "u1", "image": PORTRAIT_URI, "emotions": ["happy", "sad"]})
    done = api.wait_finished(job.json()["id"])
    assert done["status"] == "completed", done
    for render in done["output"]["renders"]:
        assert render["url"].startswith(f"{api.url}/files/"), render
        still = httpx.get(render["url"])  # no bearer token: the signature is the capability
        assert still.status_code == 200 and still.headers["content-type"] == "image/png"
        assert still.content == path_from_file_uri(render["uri"]).read_bytes()
    listed = api.client.get("/v1/jobs", params={"user_id": "u1"}).json()
    assert listed[0]["output"]["renders"][0]["url"].startswith(f"{api.url}/files/")


def test_a_video_url_serves_byte_ranges_for_seeking(api: Api) -> None:
    body = {"user_id": "u1", "image": PORTRAIT_URI, "text": "Hello there, this is a short clip."}
    done = api.wait_finished(api.client.post("/v1/videos", json=body).json()["id"], timeout_s=120)
    assert done["status"] == "completed", done
    video = done["output"]["video"]
    size = path_from_file_uri(video["uri"]).stat().st_size
    whole = httpx.get(video["url"])
    assert whole.status_code == 200 and whole.headers["content-type"] == "video/mp4"
    assert whole.headers["accept-ranges"] == "bytes" and len(whole.content) == size
    part = httpx.get(video["url"], headers={"Range": "bytes=100-199"})
    assert part.status_code == 206 and part.headers["content-range"] == f"bytes 100-199/{size}"
    assert part.content == whole.content[100:200]
    tail = httpx.get(video["url"], headers={"Range": "bytes=-50"})
    assert tail.status_code == 206 and tail.content == whole.content[-50:]
    beyond = httpx.get(video["url"], headers={"Range": f"bytes={size + 10}-"})
    assert beyond.status_code == 416
    head = httpx.head(video["url"])
    assert head.status_code == 200 and int(head.headers["content-length"]) == size


def test_streamed_segments_and_the_playlist_are_signed_and_the_playlist_resolves(api: Api) -> None:
    body = {"user_id": "u1", "image": PORTRAIT_URI, "text": "Streaming this one, segment by segment.", "stream": True}
    events = [(name, data) for name, data, _ in follow(api, api.client.post("/v1/videos", json=body).json()["id"])]
    segments = [data for name, data in events if name == "segment"]
    assert segments and all(s["url"].startswith(f"{api.url}/files/") for s in segments)
    assert httpx.get(segments[0]["url"]).headers["content-type"] == "video/iso.segment"
    completed = [data for name, data in events if name == "completed"][-1]
    playlist = completed["output"]["playlist"]
    text = httpx.get(playlist["url"])
    assert text.status_code == 200 and text.headers["content-type"] == "application/vnd.apple.mpegurl"
    names = [line for line in text.text.splitlines() if line and not line.startswith("#")]
    for name in names:  # relative names resolve under the playlist's signed folder
        assert httpx.get(urljoin(playlist["url"], name)).status_code == 200, name


def test_bad_signatures_expiry_and_traversal_are_refused(api: Api) -> None:
    job = api.client.post("/v1/emotions", json={"user_id": "u1", "image": PORTRAIT_URI, "emotion": "happy"})
    url = api.wait_finished(job.json()["id"])["output"]["renders"][0]["url"]
    prefix, _, key = url.partition("/files/")
    expires, signature, key = key.split("/", 2)
    tampered = f"{prefix}/files/{expires}/{'A' * len(signature)}/{key}"
    assert httpx.get(tampered).json()["error_code"] == "invalid_signature"
    other_key = f"{prefix}/files/{expires}/{signature}/{key.replace('happy', 'sad')}"
    assert httpx.get(other_key).status_code == 403
    later = f"{prefix}/files/{int(expires) + 300}/{signature}/{key}"
    assert httpx.get(later).status_code == 403
    for path in ("..%2F..%2Fjobs.db", "emotions/u1/..%2F..%2F..%2Fjobs.db", "%2Fetc%2Fpasswd", "a%00b"):
        refused = httpx.get(f"{prefix}/files/{expires}/{signature}/{path}")
        assert refused.status_code in (400, 403, 404), path
    settings = Settings()
    signer = FileSigner(LocalStore.from_uri(settings.avatar_store_uri), api.service.settings, 60)
    expired = signer.url(api.url, key, now=time.time() - 3600)
    answer = httpx.get(expired)
    assert answer.status_code == 410 and answer.json()["error_code"] == "url_expired"
    assert httpx.get(signer.url(api.url, "emotions/u1/none.png")).status_code == 404


def test_the_signing_key_is_generated_once_private_and_kept(tmp_path: pytest.TempPathFactory) -> None:
    settings = OrchestratorSettings(avatarctl_home=tmp_path)
    first = signing_secret(settings)
    path = settings.secrets_dir / "url-signing.key"
    assert len(first) == 64 and stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert signing_secret(OrchestratorSettings(avatarctl_home=tmp_path)) == first
    assert signing_secret(OrchestratorSettings(avatarctl_home=tmp_path, url_signing_secret="x" * 32)) == b"x" * 32
