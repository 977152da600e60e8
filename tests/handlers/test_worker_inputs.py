"""Worker-side input policy (issue 11): file:// stores under ALLOW_FILE_URIS=0, ALLOWED_INPUT_PREFIXES for
every input a task reads (the avatar TAR included), and nothing written when an input is refused."""

from __future__ import annotations

import base64
from pathlib import Path

import cv2

import handlers
from handlers.runtime import WorkerRuntime
from tests.media import astronaut_bgr


def portrait_data_uri() -> str:
    return "data:image/png;base64," + base64.b64encode(cv2.imencode(".png", astronaut_bgr(256))[1]).decode()


def files_under(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if p.is_file()] if root.exists() else []


def test_a_file_store_in_the_request_is_refused_when_file_uris_are_off(runtime: WorkerRuntime, tmp_path: Path) -> None:
    """Class: ALLOW_FILE_URIS=0 governs every file:// the worker touches, `store` included."""
    settings = runtime.settings.model_copy(
        update={"storage": runtime.settings.storage.model_copy(update={"allow_file_uris": False})}
    )
    target = tmp_path / "elsewhere"
    payload = {"task": "render_emotion", "user_id": "u1", "image": portrait_data_uri(), "emotion": "happy"}
    result = handlers.dispatch({**payload, "store": target.as_uri()}, runtime.with_settings(settings))
    assert result["error_code"] == "url_refused" and "ALLOW_FILE_URIS" in result["error"]
    assert files_under(target) == []
    # the operator's own AVATAR_STORE_URI may be file:// (the RunPod hub tests use file:///tmp/store)
    assert "error" not in handlers.dispatch(payload, runtime.with_settings(settings))


def test_inputs_outside_the_allowed_prefixes_are_refused_naming_them(runtime: WorkerRuntime, tmp_path: Path) -> None:
    """Class: ALLOWED_INPUT_PREFIXES for every input: image, audio and the avatar TAR in a named store."""
    allowed = "s3://uploads-only/"
    storage_settings = runtime.settings.storage.model_copy(update={"allowed_input_prefixes": allowed})
    limited = runtime.with_settings(runtime.settings.model_copy(update={"storage": storage_settings}))
    image = tmp_path / "face.png"
    cv2.imwrite(str(image), astronaut_bgr(256))
    store = Path(runtime.settings.avatar_store_uri.removeprefix("file://"))
    upload = store / "uploads" / "u1" / "face.png"  # the configured store is the operator's own: it passes
    upload.parent.mkdir(parents=True)
    cv2.imwrite(str(upload), astronaut_bgr(256))
    requests = [
        {"task": "render_emotion", "user_id": "u1", "image": image.as_uri(), "emotion": "sad"},
        {"task": "generate_video", "user_id": "u1", "image": image.as_uri(), "text": "Hi."},
        {"task": "generate_video", "user_id": "u1", "image": upload.as_uri(), "audio": image.as_uri()},
        {"task": "generate_video", "user_id": "u1", "avatar_id": "a1", "text": "Hi.", "store": "s3://victim"},
    ]
    for request in requests:
        result = handlers.dispatch(request, limited)
        assert result["error_code"] == "url_refused", (request, result)
        assert allowed in result["error"] and "ALLOWED_INPUT_PREFIXES" in result["error"]
    assert files_under(store) == [upload] and files_under(runtime.settings.avatar_local_path) == []
    ok = handlers.dispatch({**requests[0], "image": upload.as_uri()}, limited)
    assert "error" not in ok, ok
    missing_avatar = handlers.dispatch({**requests[3], "store": None}, limited)
    assert missing_avatar["error_code"] == "avatar_not_found", missing_avatar
