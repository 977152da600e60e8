"""`render_emotion`: one portrait -> a still per requested emotion, in the store at
``emotions/{user_id}/{render_id}_{emotion}.{ext}``.

Stages: fetch (any storage URI or a data: URI, capped at MAX_IMAGE_BYTES) -> decode (the header is
checked against MAX_IMAGE_PIXELS before decoding; larger sides are scaled down to EMOTION_MAX_SIDE, so
outputs have the size of the scaled input) -> analyse the face once -> render and encode every emotion
-> upload. Nothing is uploaded until every still is made; a failed upload removes the ones it wrote.

``latency_ms`` of a render is the time to render and encode that still; the first render's figure
also includes the face analysis that the whole batch shares (so a single-emotion request reports all
of its compute). Fetching, decoding and uploading are not counted.
"""

from __future__ import annotations

import logging
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from engines.constants import IMAGE_CONTENT_TYPES
from engines.expression import ExpressionEngine, encode_image
from handlers import Progress, expression_choice
from handlers.inputs import fetch_image, read_image
from handlers.outputs import new_id, resolve_store, upload
from handlers.runtime import WorkerRuntime
from handlers.schemas import EmotionRender, RenderEmotionRequest, RenderEmotionResult
from handlers.settings import Settings
from storage import ObjectStore, check_input_uri
from storage.avatar.cache import open_cache
from storage.avatar.reader import load_avatar
from storage.keys import avatar_key, emotion_key

log = logging.getLogger(__name__)

STAGE_START = {"fetch": 0.0, "analyze": 0.1, "render": 0.2, "upload": 0.9}
DELETE_ATTEMPTS = 4
DELETE_RETRY_WAIT_S = 0.2


def load(runtime: WorkerRuntime) -> None:
    expression_choice.expression_engine("auto", runtime)


def describe(runtime: WorkerRuntime) -> dict[str, Any]:
    return expression_choice.describe(runtime)


def run(request: RenderEmotionRequest, runtime: WorkerRuntime, progress: Progress) -> RenderEmotionResult:
    settings = runtime.settings
    store = resolve_store(request.store, settings)
    render_id = request.render_id or new_id()
    # first: a named engine without its weights is refused before anything is downloaded
    engine, _ = expression_choice.expression_engine(request.engine, runtime)
    with tempfile.TemporaryDirectory(prefix="render-emotion-") as tmp:
        work = Path(tmp)
        progress("fetch", STAGE_START["fetch"])
        image = _portrait(request, store, runtime, work)
        progress("analyze", STAGE_START["analyze"])
        stills, faces_found = _render_all(engine, image, request, work, progress)
        progress("upload", STAGE_START["upload"])
        renders = _upload_all(store, stills, request, render_id, settings)
    progress("done", 1.0)
    engine_info = {"name": engine.name, "version": engine.version}
    if faces_found > 1:
        log.info("the image has %d faces: rendered face %d (0 = the largest)", faces_found, request.face_index or 0)
    return RenderEmotionResult(
        renders=renders,
        engine=engine_info,
        gpu_used=engine.gpu,
        faces_found=faces_found,
        face_index=request.face_index or 0,
    )


def _portrait(request: RenderEmotionRequest, store: ObjectStore, runtime: WorkerRuntime, work: Path) -> np.ndarray:
    """The request's image, or its avatar's first frame (from the local avatar cache, fetched when missing)."""
    settings = runtime.settings
    if request.image is not None:
        return read_image(fetch_image(request.image, settings, work), settings, settings.emotion_max_side)
    avatar_id = request.avatar_id or ""
    check_input_uri(store.uri(avatar_key(request.user_id, avatar_id)), settings.input_policy, what="avatar")
    cache = open_cache(settings.avatar_local_path, settings.avatar_revalidate_s)
    with cache.acquire(store, request.user_id, avatar_id, settings.hand_placed_avatars) as path:
        first_frame = load_avatar(path).full_frame_paths[0]
        return read_image(first_frame, settings, settings.emotion_max_side)


def output_format(request: RenderEmotionRequest) -> str:
    return str(request.output_format)


def _render_all(
    engine: ExpressionEngine, image: np.ndarray, request: RenderEmotionRequest, work: Path, progress: Progress
) -> tuple[list[tuple[str, Path, int, int, float]], int]:
    """(emotion, encoded file, width, height, latency ms) per emotion, all written under ``work``; and the number
    of faces in the image."""
    started = time.perf_counter()
    analysis = engine.analyze(image, request.face_index)
    emotions = request.emotion_list
    stills = []
    for i, emotion in enumerate(emotions):
        rendered = engine.render(analysis, emotion, request.intensity)
        path = work / f"{emotion}.{output_format(request)}"
        path.write_bytes(encode_image(rendered, output_format(request)))
        finished = time.perf_counter()
        stills.append((emotion, path, rendered.shape[1], rendered.shape[0], (finished - started) * 1000.0))
        started = finished
        span = STAGE_START["upload"] - STAGE_START["render"]
        progress("render", STAGE_START["render"] + span * (i + 1) / len(emotions))
    return stills, analysis.faces_found


def _upload_all(
    store: ObjectStore,
    stills: list[tuple[str, Path, int, int, float]],
    request: RenderEmotionRequest,
    render_id: str,
    settings: Settings,
) -> list[EmotionRender]:
    fmt = output_format(request)
    written: list[str] = []
    renders = []
    try:
        for emotion, path, width, height, latency_ms in stills:
            key = emotion_key(request.user_id, render_id, emotion, fmt)
            stored = upload(store, path, key, settings, IMAGE_CONTENT_TYPES[fmt])
            written.append(key)
            renders.append(
                EmotionRender(
                    emotion=emotion,
                    intensity=request.intensity,
                    uri=stored.uri,
                    url=stored.url,
                    width=width,
                    height=height,
                    latency_ms=round(latency_ms, 2),
                )
            )
    except Exception:
        _remove(store, written)
        raise
    return renders


def _remove(store: ObjectStore, keys: list[str]) -> None:
    """A batch is all or nothing: stills already uploaded go when a later one fails. The store that just
    failed an upload may fail a delete too, so each delete is tried again (DELETE_ATTEMPTS, growing waits)."""
    for key in keys:
        for attempt in range(1, DELETE_ATTEMPTS + 1):
            try:
                store.delete(key)
                break
            except Exception:
                if attempt == DELETE_ATTEMPTS:
                    log.error("could not remove %s after a failed batch upload", store.uri(key), exc_info=True)
                else:
                    time.sleep(DELETE_RETRY_WAIT_S * attempt)
