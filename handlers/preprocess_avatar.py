"""`preprocess_avatar`: a training video -> a LiveTalking wav2lip avatar, as a TAR in the store and in the cache.

Stages: fetch the video (size cap) -> probe it (length and size limits) -> frames: decode at 25 fps,
track the face, fill short gaps, pad and smooth the boxes, crop and write PNGs -> tables (coords.pkl,
landmarks.npy, meta.json) -> pack the TAR -> upload it -> install the directory into the local cache.

The frames stage is one streamed pipeline: the main thread decodes and tracks, a small thread pool
encodes PNGs (OpenCV releases the GIL) behind a bounded queue, so memory stays flat with video length.
Everything is built in a temporary directory; nothing reaches the store before the TAR is complete,
and a failed install removes the uploaded TAR again.

``face_det_batch_size`` is accepted for compatibility with upstream's CLI; the CPU tracker does not
batch detections, so it has no effect.
"""

from __future__ import annotations

import importlib.metadata
import logging
import math
import os
import tempfile
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import ExitStack, closing, contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

import cv2
import numpy as np

import storage
from engines.codecs.video_in import VideoInfo, read_frames
from engines.constants import FPS
from engines.face import FaceAnalyzer
from engines.face.boxes import AvatarFrame, FaceBoxStream, FaceGapError, NoFaceError
from engines.face.tracker import FaceTracker
from handlers import engine_choice
from handlers.errors import TaskError
from handlers.inputs import fetch_video, probe_within_limits, timed
from handlers.livetalking_export import export_tars, upload_with_exports
from handlers.musetalk_material import add_material
from handlers.outputs import resolve_store
from handlers.runtime import WorkerRuntime
from handlers.schemas import AvatarModel, PreprocessAvatarRequest, PreprocessAvatarResult
from handlers.settings import Settings
from storage.avatar.archive import pack_avatar
from storage.avatar.cache import open_cache
from storage.avatar.layout import AvatarWriter
from storage.keys import avatar_key

if TYPE_CHECKING:
    from engines.lipsync.musetalk.engine import MuseTalkEngine

log = logging.getLogger(__name__)

PACKAGE = "serverless-talking-head"
TAR_CONTENT_TYPE = "application/x-tar"
# zlib level 1 with the RLE strategy and the AVG row filter: measured on 512x512 photos, about twice as fast
# as level 1's defaults and a few per cent smaller (PNG stays lossless).
PNG_PARAMS = [
    cv2.IMWRITE_PNG_COMPRESSION, 1,
    cv2.IMWRITE_PNG_STRATEGY, cv2.IMWRITE_PNG_STRATEGY_RLE,
    cv2.IMWRITE_PNG_FILTER, cv2.IMWRITE_PNG_FILTER_AVG,
]  # fmt: skip
WRITE_WORKERS = max(2, os.cpu_count() or 2)
WRITE_QUEUE = 2 * WRITE_WORKERS
PROGRESS_STEP = 0.1
# Fractions of the task reached at the start of each stage, for the progress callback.
STAGE_START = {"fetch": 0.0, "probe": 0.04, "frames": 0.05, "tar": 0.85, "upload": 0.9, "install": 0.97}

Progress = Callable[[str, float], None]


def load(runtime: WorkerRuntime) -> None:
    runtime.engines.face_analyzer()


def describe(runtime: WorkerRuntime) -> dict[str, Any]:
    return {
        "engine": "dlib_hog",
        "reason": "CPU face pipeline: dlib HOG detection on downscaled frames, 68-landmark tracking in between",
    }


def run(request: PreprocessAvatarRequest, runtime: WorkerRuntime, progress: Progress) -> PreprocessAvatarResult:
    started = time.perf_counter()
    settings = runtime.settings
    analyzer = runtime.engines.face_analyzer()
    store = resolve_store(request.store, settings)
    musetalk = _musetalk_engine(request, runtime)  # a missing engine is refused before any download
    timings: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="preprocess-avatar-") as tmp:
        work = Path(tmp)
        progress("fetch", STAGE_START["fetch"])
        with timed(timings, "fetch"):
            video = fetch_video(request.video, work, settings)
        progress("probe", STAGE_START["probe"])
        with timed(timings, "probe"):
            info = probe_within_limits(video, settings)
        avatar = AvatarWriter(work / request.avatar_id, PNG_PARAMS)
        frames = _make_frames(video, info, avatar, request, settings, analyzer, progress, timings)
        with timed(timings, "tables"):
            _write_tables(avatar, frames, request, info, video.stat().st_size)
        if musetalk is not None:
            with timed(timings, "musetalk"):
                material_info = {"avatar_id": request.avatar_id, "video_path": request.video}
                add_material(avatar.path, musetalk, np.stack(frames.landmarks), runtime.engines.frames, material_info,
                             request.bbox_shift, request.extra_margin)  # fmt: skip
        key = avatar_key(request.user_id, request.avatar_id)
        progress("tar", STAGE_START["tar"])
        tar_path = work / f"{request.avatar_id}.tar"
        with timed(timings, "tar"):
            pack_avatar(avatar.path, tar_path)
            exports = export_tars(avatar.path, request.export_livetalking, work)
        progress("upload", STAGE_START["upload"])
        with timed(timings, "upload"):
            stored, livetalking = upload_with_exports(
                store, tar_path, key, exports, request.user_id, settings, TAR_CONTENT_TYPE
            )
        progress("install", STAGE_START["install"])
        with timed(timings, "install"):
            _install(avatar.path, request.avatar_id, settings, store, key)
    timings["total"] = round((time.perf_counter() - started) * 1000, 1)
    progress("done", 1.0)
    log.info("avatar %s: %d frames in %.0f ms", request.avatar_id, len(frames.coords), timings["total"])
    return PreprocessAvatarResult(
        avatar=stored,
        num_frames=len(frames.coords),
        fps=float(FPS),
        img_size=request.img_size,
        timings_ms=timings,
        engine={"face": analyzer.name, "tracker": frames.policy, "tracking": frames.stats},
        models=request.prepared_models,
        livetalking=livetalking,
    )


def _musetalk_engine(request: PreprocessAvatarRequest, runtime: WorkerRuntime) -> MuseTalkEngine | None:
    if AvatarModel.musetalk.value not in request.prepared_models:
        return None
    return engine_choice.lipsync_engine(AvatarModel.musetalk.value, runtime)[0]  # type: ignore[return-value]


@dataclass
class _Frames:
    """What the frames stage produced, in frame order."""

    coords: list[tuple[int, int, int, int]] = field(default_factory=list)
    landmarks: list[np.ndarray] = field(default_factory=list)
    detector: str = ""
    policy: str = ""
    stats: dict[str, int] = field(default_factory=dict)

    def add(self, frame: AvatarFrame) -> None:
        self.coords.append(frame.coords)
        self.landmarks.append(frame.landmarks)


# ---- fetch and probe ---------------------------------------------------------------------------


# ---- frames: decode -> track -> boxes -> PNGs ----------------------------------------------------


def _make_frames(
    video: Path,
    info: VideoInfo,
    avatar: AvatarWriter,
    request: PreprocessAvatarRequest,
    settings: Settings,
    analyzer: FaceAnalyzer,
    progress: Progress,
    timings: dict[str, float],
) -> _Frames:
    tracker = FaceTracker(analyzer)
    reporter = _FrameProgress(progress, info)
    max_frames = math.ceil(settings.max_video_seconds * FPS)
    progress("frames", STAGE_START["frames"])
    with ExitStack() as stack:
        stack.enter_context(timed(timings, "frames"))
        stack.enter_context(_face_errors(settings))
        writer = stack.enter_context(_PngWriter(avatar, request.img_size))
        result, stream = _Frames(detector=analyzer.name, policy=tracker.policy), None
        held: dict[int, np.ndarray] = {}
        decoded = stack.enter_context(closing(read_frames(video, FPS, max_frames)))
        for index, frame in enumerate(_timed_iter(decoded, timings, "decode")):
            if stream is None:
                stream = _box_stream(frame, request, settings)
            with timed(timings, "track"):
                track = tracker.update(frame)
            if stream.failed:  # this video will be refused: stop keeping frames, keep tracking to name the gap
                held.clear()
            else:
                held[index] = frame
            _write_ready(stream.push(track), held, writer, result, request)
            reporter.frame(index)
        if stream is None:
            raise TaskError("invalid_video", "The training video has no frames.")
        _write_ready(stream.finish(), held, writer, result, request)
    _record_stats(result, tracker, stream, writer, timings)
    return result


def _record_stats(
    result: _Frames, tracker: FaceTracker, stream: FaceBoxStream, writer: _PngWriter, timings: dict[str, float]
) -> None:
    stats = tracker.stats
    timings.update(
        detect=round(stats.detect_s * 1000, 1),
        landmarks=round(stats.landmarks_s * 1000, 1),
        crop_write=round(writer.busy_s * 1000, 1),
        crop_write_cpu=round(writer.cpu_s * 1000, 1),
        write_wait=round(writer.wait_s * 1000, 1),
    )
    result.stats = {
        "acquisitions": stats.acquisitions,
        "verifications": stats.verifications,
        "faceless_frames": stats.faceless_frames,
        "filled_frames": stream.filled_frames,
    }


def _box_stream(frame: np.ndarray, request: PreprocessAvatarRequest, settings: Settings) -> FaceBoxStream:
    h, w = frame.shape[:2]
    return FaceBoxStream(w, h, request.pads, smooth=not request.nosmooth, max_gap=settings.max_face_gap_frames)


def _write_ready(
    ready: list[AvatarFrame],
    held: dict[int, np.ndarray],
    writer: _PngWriter,
    result: _Frames,
    request: PreprocessAvatarRequest,
) -> None:
    for frame in ready:
        y1, y2, x1, x2 = frame.coords
        if y2 <= y1 or x2 <= x1:
            raise TaskError(
                "invalid_pads", f"`pads` {list(request.pads)} leave an empty face box in frame {frame.index}."
            )
        writer.submit(frame.index, held.pop(frame.index), frame.coords)
        result.add(frame)


@contextmanager
def _face_errors(settings: Settings) -> Iterator[None]:
    """The face stream's errors as the task's error codes."""
    try:
        yield
    except NoFaceError:
        raise TaskError("no_face", "No face detected in video") from None
    except FaceGapError as exc:
        seconds = f"{exc.first / FPS:.2f}-{(exc.last + 1) / FPS:.2f} s"
        raise TaskError(
            "face_lost",
            f"No face in frames {exc.first}-{exc.last} ({seconds} at {FPS} fps); at most "
            f"{settings.max_face_gap_frames} consecutive frames without a face are filled in "
            "(MAX_FACE_GAP_FRAMES). Trim the video or keep the face in view.",
        ) from None


def _timed_iter(frames: Iterator[np.ndarray], timings: dict[str, float], stage: str) -> Iterator[np.ndarray]:
    """``frames`` with the time spent producing them added to ``timings[stage]``."""
    while True:
        with timed(timings, stage):
            frame = next(frames, None)
        if frame is None:
            return
        yield frame


class _FrameProgress:
    """Calls progress("frames", f) about every 10 % of the expected frame count."""

    def __init__(self, progress: Progress, info: VideoInfo) -> None:
        self._progress = progress
        self._expected = round(info.duration_s * FPS) if info.duration_s else 0
        self._next = PROGRESS_STEP

    def frame(self, index: int) -> None:
        if not self._expected:
            return
        done = min(1.0, (index + 1) / self._expected)
        if done >= self._next:
            span = STAGE_START["tar"] - STAGE_START["frames"]
            self._progress("frames", round(STAGE_START["frames"] + span * done, 3))
            self._next = (math.floor(done / PROGRESS_STEP) + 1) * PROGRESS_STEP


class _PngWriter:
    """Writes full frames and resized face crops as PNGs on a thread pool, at most WRITE_QUEUE in flight."""

    def __init__(self, avatar: AvatarWriter, img_size: int) -> None:
        self._avatar = avatar
        self._size = img_size
        self._pool = ThreadPoolExecutor(WRITE_WORKERS, thread_name_prefix="avatar-png")
        self._inflight: deque[Future[None]] = deque()
        self._lock = threading.Lock()
        self.busy_s = 0.0  # summed over the writer threads, wall clock
        self.cpu_s = 0.0  # the same, CPU time: what the writes cost when other work competes for the cores
        self.wait_s = 0.0

    def __enter__(self) -> _PngWriter:
        return self

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        if exc_type is None:
            self._drain(0)
        self._pool.shutdown(wait=True, cancel_futures=True)

    def submit(self, index: int, image: np.ndarray, coords: tuple[int, int, int, int]) -> None:
        self._drain(WRITE_QUEUE - 1)
        self._inflight.append(self._pool.submit(self._write, index, image, coords))

    def _drain(self, keep: int) -> None:
        started = time.perf_counter()
        while len(self._inflight) > keep:
            self._inflight.popleft().result()  # re-raises a failed write here, in the caller
        self.wait_s += time.perf_counter() - started

    def _write(self, index: int, image: np.ndarray, coords: tuple[int, int, int, int]) -> None:
        started, started_cpu = time.perf_counter(), time.thread_time()
        y1, y2, x1, x2 = coords
        crop = cv2.resize(image[y1:y2, x1:x2], (self._size, self._size))
        self._avatar.write_frame(index, image, crop)
        with self._lock:
            self.busy_s += time.perf_counter() - started
            self.cpu_s += time.thread_time() - started_cpu


# ---- tables, install ----------------------------------------------------------------------------


def _write_tables(
    avatar: AvatarWriter, frames: _Frames, request: PreprocessAvatarRequest, info: VideoInfo, video_bytes: int
) -> None:
    meta = {
        "format": "livetalking-wav2lip",
        "fps": FPS,
        "num_frames": len(frames.coords),
        "img_size": request.img_size,
        "pads": list(request.pads),
        "nosmooth": request.nosmooth,
        "detector": frames.detector,
        "box_convention": "dlib_hog square box derived from 68 landmarks, then pads, then 5-frame smoothing",
        "tracker": frames.policy,
        "tracking": frames.stats,
        "generator": {"package": PACKAGE, "version": _package_version()},
        "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "source_video": {**info.as_dict(), "bytes": video_bytes},
    }
    avatar.write_tables(frames.coords, np.stack(frames.landmarks), meta)


def _package_version() -> str | None:
    try:
        return importlib.metadata.version(PACKAGE)
    except importlib.metadata.PackageNotFoundError:
        return None


def _install(avatar_dir: Path, avatar_id: str, settings: Settings, store: storage.ObjectStore, key: str) -> None:
    """Keep the avatar in the local cache too. The TAR in the store is the result: when the cache cannot take
    it (disk full, bad AVATAR_LOCAL_PATH) the task still succeeds and generate_video fetches the TAR later;
    deleting the upload instead would also lose the avatar this one replaced."""
    try:
        # The stat follows the upload: another worker's upload landing between the two would be taken for ours
        # (and go unnoticed here until the TAR changes again); that window is one HEAD request long.
        fingerprint = store.stat(key).fingerprint
        open_cache(settings.avatar_local_path, settings.avatar_revalidate_s).install(
            avatar_dir, owner=store.uri(key), fingerprint=fingerprint
        )
    except Exception:
        log.warning("avatar %s is in the store (%s) but not in the local cache", avatar_id, key, exc_info=True)
