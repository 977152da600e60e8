"""`generate_video` with `engine: d-id`: D-ID renders the talk; we stage its inputs and keep its mp4.

Stages: fetch (the portrait, decoded and checked, re-encoded as JPEG; `audio` decoded, or `text` spoken by our
own TTS, as 16 kHz WAV) -> stage both in the store under ``hosted/{user_id}/{video_id}/`` with signed URLs D-ID
can fetch -> render (create the talk, follow it to ``done``) -> download ``result_url`` through the fetch layer
(ALLOWED_INPUT_PREFIXES and the private-address rules apply to it like to any input) -> store it as the job's
mp4, probed for the usual result fields. The staged inputs are deleted whatever happens.

Following a talk from a stateless worker (RunPod, Modal, a local process): the worker cannot take D-ID's
webhook itself, and a route on the orchestrator that workers wait on would tie them to one orchestrator. The
store, which both already share, is the meeting point instead: with PUBLIC_BASE_URL and WEBHOOK_SECRET set, the
talk is created with ``webhook: {PUBLIC_BASE_URL}/v1/webhooks/d-id/{nonce}?token=<HMAC of the nonce>``; the
orchestrator checks the token and writes D-ID's call as ``webhooks/d-id/{nonce}.json`` in its store
(AVATAR_STORE_URI); the worker checks for that object every second (a HEAD on its own store) and then reads the
talk from D-ID once, so a forged or lost webhook changes nothing but timing. D-ID is polled anyway, backing off
from DID_POLL_INTERVAL_S to DID_POLL_MAX_INTERVAL_S; without a webhook that polling is all there is.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

import storage
from engines import table
from engines.constants import SAMPLE_RATE
from engines.errors import EngineError
from engines.hosted.did import DidClient, Following, Talk
from handlers import Progress
from handlers.errors import TaskError
from handlers.inputs import timed
from handlers.outputs import new_id, resolve_store, upload
from handlers.runtime import WorkerRuntime
from handlers.schemas import GenerateVideoRequest, GenerateVideoResult
from handlers.settings import Settings
from handlers.sources import portrait_image
from handlers.speech import decode_speech, fetch_audio, speak
from storage import StorageError
from storage.keys import video_key

log = logging.getLogger(__name__)

ENGINE = table.row_of_module(DidClient.__module__).name  # its row in engines.table
WEBHOOK_PATH = "/v1/webhooks/d-id/{nonce}"
RENDEZVOUS_KEY = "webhooks/d-id/{nonce}.json"
NONCE_PATTERN = r"^[0-9a-f]{32}$"
STAGED_URL_MARGIN_S = 600  # signed input URLs outlive the talk's own deadline by this much
JPEG_QUALITY = 95
STAGE_START = {"fetch": 0.0, "tts": 0.05, "render": 0.15, "download": 0.9, "upload": 0.95}


def webhook_token(secret: str, nonce: str) -> str:
    """The token of a D-ID webhook URL (the orchestrator checks it with the same secret)."""
    return hmac.new(secret.encode(), f"d-id:{nonce}".encode(), hashlib.sha256).hexdigest()


def rendezvous_key(nonce: str) -> str:
    return RENDEZVOUS_KEY.format(nonce=nonce)


def describe(runtime: WorkerRuntime) -> dict[str, Any]:
    settings = runtime.settings
    return {
        ENGINE: {
            "configured": settings.did_api_key is not None,
            "base_url": settings.did_base_url,
            "webhook": bool(settings.public_base_url and settings.webhook_secret),
        }
    }


def run(request: GenerateVideoRequest, runtime: WorkerRuntime, progress: Progress) -> GenerateVideoResult:
    started = time.perf_counter()
    settings = runtime.settings
    key = settings.did_api_key.get_secret_value() if settings.did_api_key else None
    client = DidClient(key, settings.did_base_url, settings.did_request_timeout_s)  # no key: refused first
    timings: dict[str, float] = {}
    store = resolve_store(request.store, settings)
    video_id = request.video_id or new_id()
    staged: list[str] = []
    with tempfile.TemporaryDirectory(prefix="hosted-video-") as tmp:
        work = Path(tmp)
        try:
            talk = _talk(request, runtime, client, store, video_id, work, staged, timings, progress)
            progress("download", STAGE_START["download"])
            with timed(timings, "download"):
                result = _download(talk, work, settings)
            info = _probe(result, talk)
            progress("upload", STAGE_START["upload"])
            with timed(timings, "upload"):
                stored = upload(store, result, video_key(request.user_id, video_id), settings, "video/mp4")
        finally:
            _delete(store, staged)
    timings["total"] = round((time.perf_counter() - started) * 1000, 1)
    progress("done", 1.0)
    return GenerateVideoResult(
        video=stored,
        video_id=video_id,
        num_frames=info["num_frames"],
        duration_s=info["duration_s"],
        fps=info["fps"],
        width=info["width"],
        height=info["height"],
        timings_ms=timings,
        engine={"name": ENGINE, "version": "talks", "reason": "requested", "hosted": True, "talk_id": talk.id},
    )


def _talk(
    request: GenerateVideoRequest,
    runtime: WorkerRuntime,
    client: DidClient,
    store: storage.ObjectStore,
    video_id: str,
    work: Path,
    staged: list[str],
    timings: dict[str, float],
    progress: Progress,
) -> Talk:
    """Stage the inputs, create the talk and follow it to ``done``; ``staged`` collects what to delete."""
    settings = runtime.settings
    progress("fetch", STAGE_START["fetch"])
    with timed(timings, "fetch"):
        portrait = portrait_image(request.image or "", runtime, work)
        audio_path = fetch_audio(request.audio, settings, work) if request.audio else None
    progress("tts", STAGE_START["tts"])
    with timed(timings, "tts"):
        if audio_path is not None:
            samples = decode_speech(audio_path, settings)
        else:
            samples = speak(request.text or "", request.voice, runtime).samples
    prefix = f"hosted/{request.user_id}/{video_id}"
    source_url = _stage(store, f"{prefix}/portrait.jpg", _jpeg(portrait), "image/jpeg", work, staged, settings)
    audio_url = _stage(store, f"{prefix}/speech.wav", _wav(samples), "audio/wav", work, staged, settings)
    progress("render", STAGE_START["render"])
    with timed(timings, "render"):
        rendezvous = _Rendezvous.open(settings)
        talk = client.create_talk(source_url, audio_url, webhook=rendezvous.url if rendezvous else None)
        following = Following(
            timeout_s=settings.did_timeout_s,
            poll_s=settings.did_poll_interval_s,
            max_poll_s=settings.did_poll_max_interval_s,
            woken=rendezvous.arrived if rendezvous else None,
        )
        try:
            return client.follow(talk, following)
        finally:
            if rendezvous is not None:
                rendezvous.close()


# ---- staging ---------------------------------------------------------------------------------


def _jpeg(image: np.ndarray) -> bytes:
    import cv2

    ok, data = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
    if not ok:
        raise TaskError("invalid_image", "`image` could not be re-encoded for D-ID")
    return data.tobytes()


def _wav(samples: np.ndarray) -> bytes:
    from engines.codecs.audio import encode_wav

    return encode_wav(samples, SAMPLE_RATE)


def _stage(
    store: storage.ObjectStore,
    key: str,
    data: bytes,
    content_type: str,
    work: Path,
    staged: list[str],
    settings: Settings,
) -> str:
    """Put ``data`` at ``key`` and return a signed URL D-ID can fetch; TaskError when the store cannot sign."""
    path = work / key.rsplit("/", 1)[-1]
    path.write_bytes(data)
    store.put(path, key, content_type=content_type)
    staged.append(key)
    url = store.signed_url(key, int(settings.did_timeout_s) + STAGED_URL_MARGIN_S)
    if url is None or not url.startswith(("https://", "http://")):
        raise TaskError(
            "did_needs_signed_urls",
            f"D-ID fetches the portrait and the audio by URL, and the store cannot sign one for {store.uri(key)} "
            "(a file:// store, or GCS without a service-account key): use an s3:// or signing gs:// store.",
        )
    return url


def _delete(store: storage.ObjectStore, keys: list[str]) -> None:
    for key in keys:
        try:
            store.delete(key)
        except Exception:
            log.warning("could not delete the staged D-ID input %s", key, exc_info=True)


@dataclass
class _Rendezvous:
    """Where the orchestrator leaves D-ID's webhook call for this worker (see the module docstring)."""

    store: storage.ObjectStore
    key: str
    url: str

    @classmethod
    def open(cls, settings: Settings) -> _Rendezvous | None:
        if not (settings.public_base_url and settings.webhook_secret):
            return None
        nonce = uuid.uuid4().hex
        token = webhook_token(settings.webhook_secret.get_secret_value(), nonce)
        url = f"{settings.public_base_url.rstrip('/')}{WEBHOOK_PATH.format(nonce=nonce)}?token={token}"
        store = storage.open_store(settings.avatar_store_uri, settings.storage)
        return cls(store, rendezvous_key(nonce), url)

    def arrived(self) -> bool:
        try:
            return self.store.exists(self.key)
        except StorageError:
            return False  # the store is unreachable for a moment: polling D-ID still finishes the talk

    def close(self) -> None:
        try:
            self.store.delete(self.key)
        except Exception:
            log.debug("rendezvous %s: nothing to delete", self.key)


# ---- the result ------------------------------------------------------------------------------


def _download(talk: Talk, work: Path, settings: Settings) -> Path:
    try:
        dest, limit = work / "d-id-result.mp4", settings.max_video_bytes
        return storage.fetch(talk.result_url or "", dest, settings.input_storage, max_bytes=limit)
    except StorageError as exc:
        raise StorageError(exc.code, f"D-ID's result_url of talk {talk.id}: {exc.message}") from None


def _probe(path: Path, talk: Talk) -> dict[str, Any]:
    from engines.codecs.video_in import probe_video

    try:
        info = probe_video(path)
    except EngineError as exc:
        raise EngineError(
            "did_provider_error", f"D-ID's result of talk {talk.id} is not a video: {exc.message}"
        ) from None
    duration = info.duration_s or ((info.num_frames or 0) / info.fps if info.fps else 0.0)
    frames = info.num_frames or round(duration * info.fps)
    return {
        "num_frames": int(frames),
        "duration_s": round(float(duration), 3),
        "fps": float(info.fps),
        "width": info.width,
        "height": info.height,
    }
