"""Tenant isolation through handlers.dispatch: two users with the same avatar_id render at the same time,
and every frame of each video is its owner's (a colour band only that user's avatar frames carry)."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import av
import cv2
import numpy as np
import pytest

from engines.face import load_face_analyzer
from handlers import dispatch
from handlers.runtime import WorkerRuntime
from handlers.settings import Settings
from storage.avatar.archive import pack_avatar
from storage.avatar.layout import AvatarWriter
from tests.media import astronaut_bgr

AVATAR = "shared-name"
BAND = slice(0, 12)  # rows above the face that the lip-sync engine never touches
COLOURS = {"user-red": (0, 0, 255), "user-blue": (255, 0, 0)}  # BGR


def _write_avatar(store: Path, user: str, tmp_path: Path, colour: tuple[int, int, int] | None = None) -> None:
    face = np.ascontiguousarray(astronaut_bgr(768)[70:326, 208:464])
    analyzer = load_face_analyzer()
    box = analyzer.detect(face)[0]
    landmarks = analyzer.landmarks(face, box)
    y1, y2, x1, x2 = max(box.y1, BAND.stop), min(256, box.y2 + 10), box.x1, box.x2
    frame = face.copy()
    frame[BAND] = colour or COLOURS[user]
    writer = AvatarWriter(tmp_path / f"{user}-{frame[0, 0]}" / AVATAR)
    for i in range(6):
        writer.write_frame(i, frame, cv2.resize(frame[y1:y2, x1:x2], (256, 256)))
    writer.write_tables([(y1, y2, x1, x2)] * 6, np.stack([landmarks] * 6))
    (store / "avatars" / user).mkdir(parents=True, exist_ok=True)
    pack_avatar(writer.path, store / "avatars" / user / f"{AVATAR}.tar")


def _band_colours(video: Path) -> list[np.ndarray]:
    with av.open(str(video)) as container:
        return [f.to_ndarray(format="bgr24")[2:10, 8:-8].reshape(-1, 3).mean(axis=0) for f in container.decode(video=0)]


def test_two_users_same_avatar_id_concurrent_renders_never_mix_frames(
    local_settings: Settings, runtime: WorkerRuntime, tmp_path: Path
) -> None:
    """Class: tenant isolation: the avatar cache is keyed by owner and a held avatar never changes."""
    store = Path(local_settings.avatar_store_uri.removeprefix("file://"))
    for user in COLOURS:
        _write_avatar(store, user, tmp_path)

    def render(user: str) -> tuple[str, dict]:
        payload = {"task": "generate_video", "user_id": user, "avatar_id": AVATAR, "text": "Hello there, friend."}
        return user, dispatch(payload, runtime)

    with ThreadPoolExecutor(max_workers=4) as pool:
        results = list(pool.map(render, [*COLOURS, *COLOURS]))

    for user, result in results:
        assert "error" not in result, result
        video = store / "generated-videos" / user / f"{result['video_id']}.mp4"
        colours = _band_colours(video)
        assert len(colours) == result["num_frames"] > 10
        for i, colour in enumerate(colours):
            assert np.abs(colour - COLOURS[user]).max() < 40, f"{user} frame {i} has band colour {colour}"


def test_an_avatar_replaced_in_the_store_renders_with_its_new_frames(
    local_settings: Settings, runtime: WorkerRuntime, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Class: stale cache: re-preprocessing an avatar (here: its TAR replaced in the store, as another worker's
    preprocess_avatar does) changes what this worker's next render shows."""
    monkeypatch.setenv("AVATAR_REVALIDATE_S", "0")
    settings = Settings()
    store = Path(settings.avatar_store_uri.removeprefix("file://"))
    payload = {"task": "generate_video", "user_id": "user-red", "avatar_id": AVATAR, "text": "Hi."}
    for colour in ((0, 0, 255), (0, 255, 0)):
        _write_avatar(store, "user-red", tmp_path, colour)
        result = dispatch(payload, runtime.with_settings(settings))
        assert "error" not in result, result
        video = store / "generated-videos" / "user-red" / f"{result['video_id']}.mp4"
        assert all(np.abs(band - colour).max() < 40 for band in _band_colours(video))
