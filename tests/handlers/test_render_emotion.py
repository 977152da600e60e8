"""render_emotion through handlers.dispatch: real stores, real images, nothing written on error."""

from __future__ import annotations

import base64
import struct
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest

import handlers
from engines.expression import EMOTIONS
from handlers import render_emotion
from handlers.runtime import WorkerRuntime
from handlers.settings import Settings
from storage import open_store
from storage.local import LocalStore
from tests.media import astronaut_bgr, coffee_bgr


def data_uri(image: np.ndarray, ext: str = ".png", mime: str = "image/png") -> str:
    return f"data:{mime};base64," + base64.b64encode(cv2.imencode(ext, image)[1].tobytes()).decode()


def stored_files(settings: Settings) -> list[str]:
    return sorted(info.key for info in open_store(settings.avatar_store_uri, settings.storage).list())


def decode(uri: str) -> np.ndarray:
    path = Path(uri.removeprefix("file://"))
    image = cv2.imdecode(np.fromfile(path, np.uint8), cv2.IMREAD_COLOR)
    assert image is not None, uri
    return image


def payload(image: str, **fields) -> dict:
    return {"task": "render_emotion", "user_id": "u1", "image": image, **fields}


@pytest.fixture(scope="module")
def portrait_uri() -> str:
    return data_uri(astronaut_bgr())


def test_single_emotion_from_a_data_uri(local_settings, portrait_uri, runtime: WorkerRuntime) -> None:
    stages: list[tuple[str, float]] = []
    result = handlers.dispatch(
        payload(portrait_uri, emotion="happy", render_id="r1"), runtime, lambda s, f: stages.append((s, f))
    )
    assert "error" not in result, result
    (render,) = result["renders"]
    assert render["emotion"] == "happy" and render["intensity"] == 0.7
    assert render["uri"].endswith("/emotions/u1/r1_happy.png")
    assert (render["width"], render["height"]) == (512, 512) and render["latency_ms"] > 0
    assert result["engine"] == {"name": "landmark_warp", "version": "1.1.0"} and result["gpu_used"] is False
    image = decode(render["uri"])
    assert image.shape == (512, 512, 3) and np.any(image != astronaut_bgr())
    assert stored_files(local_settings) == ["emotions/u1/r1_happy.png"]
    assert [s for s, _ in stages][:2] == ["fetch", "analyze"] and stages[-1] == ("done", 1.0)
    assert all(a[1] <= b[1] for a, b in zip(stages, stages[1:], strict=False))


def test_batch_of_all_seven_from_a_file_uri(local_settings, tmp_path, runtime: WorkerRuntime) -> None:
    source = tmp_path / "portrait.jpg"
    cv2.imwrite(str(source), astronaut_bgr(), [cv2.IMWRITE_JPEG_QUALITY, 95])
    request = payload(source.as_uri(), emotions=list(EMOTIONS), output_format="jpg", render_id="batch", intensity=0.5)
    result = handlers.dispatch(request, runtime)
    assert "error" not in result, result
    assert [r["emotion"] for r in result["renders"]] == list(EMOTIONS)
    assert stored_files(local_settings) == sorted(f"emotions/u1/batch_{e}.jpg" for e in EMOTIONS)
    stills = [decode(r["uri"]) for r in result["renders"]]
    assert all(s.shape == (512, 512, 3) for s in stills)
    # Seven different expressions, not seven copies; the analysis is counted in the first latency only.
    assert len({s.tobytes() for s in stills}) == 7
    assert all(r["intensity"] == 0.5 for r in result["renders"])


def test_webp_output_and_duplicate_emotions(local_settings, portrait_uri, runtime: WorkerRuntime) -> None:
    request = payload(portrait_uri, emotions=["sad", "sad"], output_format="webp", render_id="w")
    result = handlers.dispatch(request, runtime)
    assert [r["emotion"] for r in result["renders"]] == ["sad"]
    assert decode(result["renders"][0]["uri"]).shape == (512, 512, 3)
    assert stored_files(local_settings) == ["emotions/u1/w_sad.webp"]


def test_output_to_s3(s3_bucket, local_settings, portrait_uri, runtime: WorkerRuntime) -> None:
    result = handlers.dispatch(
        payload(portrait_uri, emotion="surprised", render_id="s3", store=s3_bucket), runtime.with_settings(Settings())
    )
    assert result["renders"][0]["uri"] == f"{s3_bucket}/emotions/u1/s3_surprised.png"
    assert result["renders"][0]["url"].startswith("http")
    keys = [o.key for o in open_store(s3_bucket).list()]
    assert keys == ["emotions/u1/s3_surprised.png"]


def test_large_images_are_scaled_to_the_max_side(
    local_settings, portrait_uri, monkeypatch, runtime: WorkerRuntime
) -> None:
    monkeypatch.setenv("EMOTION_MAX_SIDE", "256")
    result = handlers.dispatch(payload(portrait_uri, emotion="angry"), runtime.with_settings(Settings()))
    render = result["renders"][0]
    assert (render["width"], render["height"]) == (256, 256)
    assert decode(render["uri"]).shape == (256, 256, 3)


def test_no_face_writes_nothing(local_settings, runtime: WorkerRuntime) -> None:
    result = handlers.dispatch(payload(data_uri(coffee_bgr()), emotions=["happy", "sad"]), runtime)
    assert result == {"error": "No face detected in image", "error_code": "no_face"}
    assert stored_files(local_settings) == []


def test_unreadable_image(local_settings, runtime: WorkerRuntime) -> None:
    garbage = "data:image/png;base64," + base64.b64encode(b"not an image at all" * 10).decode()
    result = handlers.dispatch(payload(garbage, emotion="happy"), runtime)
    assert result["error_code"] == "invalid_image"
    assert stored_files(local_settings) == []


def test_image_over_the_byte_limit(local_settings, portrait_uri, monkeypatch, runtime: WorkerRuntime) -> None:
    monkeypatch.setenv("MAX_IMAGE_BYTES", "10000")
    result = handlers.dispatch(payload(portrait_uri, emotion="happy"), runtime.with_settings(Settings()))
    assert result["error_code"] == "image_too_large" and "MAX_IMAGE_BYTES" in result["error"]
    assert stored_files(local_settings) == []


def test_image_over_the_pixel_limit(local_settings, monkeypatch, runtime: WorkerRuntime) -> None:
    monkeypatch.setenv("MAX_IMAGE_PIXELS", "1000000")
    # A 4000x4000 PNG of one colour is a few kB: the header is refused before anything is decoded.
    huge = data_uri(np.full((4000, 4000, 3), 128, np.uint8))
    result = handlers.dispatch(payload(huge, emotion="happy"), runtime.with_settings(Settings()))
    assert result["error_code"] == "image_too_large" and "4000x4000" in result["error"]
    assert stored_files(local_settings) == []


def test_unknown_emotion_lists_the_allowed_ones(local_settings, portrait_uri, runtime: WorkerRuntime) -> None:
    result = handlers.dispatch(payload(portrait_uri, emotion="bored"), runtime)
    assert result["error_code"] == "invalid_input" and "`emotion`" in result["error"]
    assert all(f"'{e}'" in result["error"] for e in EMOTIONS)


def test_intensity_out_of_range(local_settings, portrait_uri, runtime: WorkerRuntime) -> None:
    result = handlers.dispatch(payload(portrait_uri, emotion="happy", intensity=1.5), runtime)
    assert result["error_code"] == "invalid_input" and "`intensity`" in result["error"]


class FailingStore(LocalStore):
    """A real file:// store whose third upload fails, as a network store can mid-batch."""

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.puts = 0

    def put(self, src, key, content_type=None):
        self.puts += 1
        if self.puts == 3:
            raise OSError("connection reset")
        return super().put(src, key, content_type)


def test_failed_upload_removes_the_stills_already_written(
    local_settings, portrait_uri, monkeypatch, runtime: WorkerRuntime
) -> None:
    store = FailingStore(Path(local_settings.avatar_store_uri.removeprefix("file://")))
    monkeypatch.setattr(render_emotion, "resolve_store", lambda uri, settings: store)
    result = handlers.dispatch(payload(portrait_uri, emotions=["happy", "sad", "angry"]), runtime)
    assert result["error_code"] == "internal_error"
    assert store.puts == 3
    assert stored_files(local_settings) == []


class FlakyStore(FailingStore):
    """... whose deletes fail twice each before they work, as a store in trouble does right after a failure."""

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.delete_failures: dict[str, int] = {}

    def delete(self, key):
        failures = self.delete_failures.get(key, 0)
        if failures < 2:
            self.delete_failures[key] = failures + 1
            raise OSError("service unavailable")
        return super().delete(key)


def test_batch_stays_all_or_nothing_when_the_store_also_fails_deletes(
    local_settings, portrait_uri, monkeypatch, runtime: WorkerRuntime
) -> None:
    """Class: batch outputs are all or nothing even when the store fails mid-batch (deletes retried)."""
    store = FlakyStore(Path(local_settings.avatar_store_uri.removeprefix("file://")))
    monkeypatch.setattr(render_emotion, "resolve_store", lambda uri, settings: store)
    monkeypatch.setattr(render_emotion, "DELETE_RETRY_WAIT_S", 0.01)
    result = handlers.dispatch(payload(portrait_uri, emotions=["happy", "sad", "angry", "fearful"]), runtime)
    assert result["error_code"] == "internal_error" and store.puts == 3
    assert sorted(store.delete_failures.values()) == [2, 2]
    assert stored_files(local_settings) == []


def test_health_describes_the_engine(local_settings, runtime: WorkerRuntime) -> None:
    render_emotion.load(runtime)
    health = handlers.dispatch({"task": "health"}, runtime)
    assert health["tasks"]["render_emotion"]["engine"] == "landmark_warp"


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def test_image_over_pillows_own_bomb_cap(local_settings, runtime: WorkerRuntime) -> None:
    # A 20000x20000 (400 Mpx) PNG header: Pillow refuses it inside Image.open, before our own pixel check.
    ihdr = struct.pack(">IIBBBBB", 20000, 20000, 8, 2, 0, 0, 0)
    header = (
        b"\x89PNG\r\n\x1a\n"
        + png_chunk(b"IHDR", ihdr)
        + png_chunk(b"IDAT", zlib.compress(b""))
        + png_chunk(b"IEND", b"")
    )
    bomb = "data:image/png;base64," + base64.b64encode(header).decode()
    result = handlers.dispatch(payload(bomb, emotion="happy"), runtime)
    assert result["error_code"] == "image_too_large" and "MAX_IMAGE_PIXELS" in result["error"], result
    assert stored_files(local_settings) == []
