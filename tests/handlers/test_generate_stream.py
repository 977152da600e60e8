"""generate_video with `stream: true`: segments stored while the video renders, an HLS playlist, the usual mp4."""

from __future__ import annotations

import io
from pathlib import Path

import av
import cv2
import pytest

from handlers import dispatch, dispatch_stream
from handlers.runtime import WorkerRuntime
from handlers.settings import Settings
from tests.media import astronaut_bgr

USER = "user-1"
TEXT = "Good morning, my friend. Streaming video arrives while the rest of it renders."


@pytest.fixture
def portrait(tmp_path: Path) -> str:
    path = tmp_path / "portrait.png"
    cv2.imwrite(str(path), astronaut_bgr(256))
    return path.as_uri()


def request(portrait: str, video_id: str, **extra: object) -> dict:
    return {"task": "generate_video", "user_id": USER, "image": portrait, "text": TEXT, "video_id": video_id, **extra}


def stream_dir(settings: Settings, video_id: str) -> Path:
    return Path(settings.avatar_store_uri.removeprefix("file://")) / "generated-videos" / USER / video_id / "stream"


def count_frames(blob: bytes) -> int:
    with av.open(io.BytesIO(blob)) as container:
        return sum(1 for _ in container.decode(video=0))


def test_segments_are_stored_while_the_video_renders(
    local_settings: Settings, portrait: str, task_tmp: Path, runtime: WorkerRuntime
) -> None:
    store = Path(local_settings.avatar_store_uri.removeprefix("file://"))
    mp4 = store / "generated-videos" / USER / "v1.mp4"
    items, seen_before_end = [], None
    for item in dispatch_stream(request(portrait, "v1", stream=True), runtime):
        if not items:  # the first segment is in the store before the video is finished
            playlist = (stream_dir(local_settings, "v1") / "index.m3u8").read_text()
            seen_before_end = (mp4.exists(), "#EXT-X-ENDLIST" in playlist, Path(item["uri"][7:]).is_file())
        items.append(item)
    assert seen_before_end == (False, False, True)
    *segments, result = items
    assert "error" not in result, result
    assert [s["index"] for s in segments] == list(range(len(segments))) and len(segments) >= 3
    assert set(segments[0]) == {"index", "uri", "url", "duration_s", "playlist_uri", "timings_ms"}
    assert segments[0]["duration_s"] == pytest.approx(0.24) and all(s["duration_s"] <= 1.0 for s in segments)
    assert sum(s["duration_s"] for s in segments) == pytest.approx(result["duration_s"], abs=1e-3)
    assert all(s["timings_ms"]["ready"] > 0 for s in segments)
    assert result["playlist"]["uri"] == segments[0]["playlist_uri"]

    folder = stream_dir(local_settings, "v1")
    playlist = (folder / "index.m3u8").read_text().splitlines()
    assert playlist[-1] == "#EXT-X-ENDLIST" and '#EXT-X-MAP:URI="init.mp4"' in playlist
    assert [line for line in playlist if line.endswith(".m4s")] == [Path(s["uri"]).name for s in segments]
    stream = (folder / "init.mp4").read_bytes() + b"".join(Path(s["uri"][7:]).read_bytes() for s in segments)
    assert count_frames(stream) == result["num_frames"] == count_frames(mp4.read_bytes())
    assert list(task_tmp.iterdir()) == []


def test_stopping_a_stream_deletes_what_it_published(
    local_settings: Settings, portrait: str, task_tmp: Path, runtime: WorkerRuntime
) -> None:
    items = dispatch_stream(request(portrait, "v2", stream=True), runtime)
    first = next(items)
    assert Path(first["uri"][7:]).is_file()
    items.close()  # the consumer went away (a cancelled job, a dropped connection)
    assert not stream_dir(local_settings, "v2").exists() or not any(stream_dir(local_settings, "v2").iterdir())
    assert not (stream_dir(local_settings, "v2").parent.parent / "v2.mp4").exists()
    assert list(task_tmp.iterdir()) == []


def test_dispatch_stores_the_stream_and_plain_requests_do_not(
    local_settings: Settings, portrait: str, runtime: WorkerRuntime
) -> None:
    streamed = dispatch(request(portrait, "v3", stream=True), runtime)
    assert streamed["playlist"]["uri"].endswith("generated-videos/user-1/v3/stream/index.m3u8")
    assert (stream_dir(local_settings, "v3") / "segment_00000.m4s").is_file()
    items = list(dispatch_stream(request(portrait, "v4"), runtime))
    assert len(items) == 1 and "playlist" not in items[0] and items[0]["video"]["uri"].endswith("v4.mp4")
    assert not stream_dir(local_settings, "v4").exists()


def test_a_refused_stream_ends_with_the_error() -> None:
    items = list(dispatch_stream({"task": "generate_video", "user_id": USER, "text": "hi", "stream": True}))
    assert len(items) == 1 and items[0]["error_code"] == "invalid_input"
