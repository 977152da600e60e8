"""`generate_video` with `driving_video`: LivePortrait reenactment of a portrait (or a stored avatar) by a video.

Stages: fetch (the driving video or motion template within the video limits, the source, `audio`) ->
driving (the driving video's face tracked with our landmarks, cropped as upstream does, M on every crop:
the motion; a template is read instead) -> render (``engines.liveportrait.reenact``: keypoints per frame,
W and G in batches, pasted back) while encoding -> upload. The output has one frame per driving frame at 25
fps (a stored avatar: per frame of the shorter of the two, as upstream's video-to-video), with the driving
video's sound unless `audio` replaces it (cut or padded with silence to the video's length).
"""

from __future__ import annotations

import logging
import math
import tempfile
import time
from collections.abc import Iterator
from contextlib import ExitStack, closing
from pathlib import Path
from typing import Any

import numpy as np

import storage
from engines.codecs.video_out import Mp4Writer
from engines.constants import FPS, SAMPLE_RATE
from engines.face.boxes import FaceBoxStream, FaceGapError, NoFaceError
from engines.liveportrait.driving import MOTION_ARRAYS, DrivingOptions, Motion
from engines.liveportrait.reenact import CropOptions, Reenactor, Source
from handlers import Progress, engine_choice
from handlers.driving_options import DrivingVideoOptions
from handlers.errors import TaskError
from handlers.inputs import fetch_video, probe_within_limits, timed
from handlers.outputs import new_id, resolve_store, upload
from handlers.runtime import WorkerRuntime
from handlers.schemas import GenerateVideoRequest, GenerateVideoResult
from handlers.settings import Settings
from handlers.sources import avatar_frames, portrait_image
from handlers.speech import decode_speech, fetch_audio
from storage.keys import video_key

log = logging.getLogger(__name__)

DRIVING = "`driving_video`"
LIVEPORTRAIT = "liveportrait"
STAGE_START = {"fetch": 0.0, "driving": 0.05, "render": 0.3, "upload": 0.95}
PROGRESS_EVERY_FRAMES = 25
ENGINE_OPTIONS = tuple(DrivingOptions.__dataclass_fields__)


def run(request: GenerateVideoRequest, runtime: WorkerRuntime, progress: Progress) -> GenerateVideoResult:
    started = time.perf_counter()
    settings = runtime.settings
    timings: dict[str, float] = {}
    store = resolve_store(request.store, settings)
    video_id = request.video_id or new_id()
    options = request.driving_options or DrivingVideoOptions()
    reenactor, engine_info = _reenactor(request, runtime)  # missing weights: refused before any download
    with tempfile.TemporaryDirectory(prefix="driving-video-") as tmp, ExitStack() as holds:
        work = Path(tmp)
        progress("fetch", STAGE_START["fetch"])
        with timed(timings, "fetch"):
            driving_path = fetch_video(request.driving_video or "", work, settings, DRIVING, stem="driving")
            audio_path = fetch_audio(request.audio, settings, work) if request.audio else None
            source_frames, landmarks, faces = _source(request, store, runtime, work, holds)
        progress("driving", STAGE_START["driving"])
        with timed(timings, "driving"):
            motion, from_template = _driving_motion(driving_path, reenactor, options, runtime)
            source = _prepare_source(reenactor, request, source_frames, landmarks, len(motion), options)
        count = len(motion) if request.image is not None else len(source.frames)
        sound = audio_path or (None if from_template else driving_path)
        audio = _soundtrack(sound, count, settings, optional=audio_path is None)
        output = work / f"{video_id}.mp4"
        with timed(timings, "render"):
            rendered = _render(
                reenactor, source, motion.part(slice(0, count)), options, audio, output, settings, progress
            )
        num_frames, size, encode_s = rendered
        timings["encode"] = round(encode_s * 1000, 1)
        progress("upload", STAGE_START["upload"])
        with timed(timings, "upload"):
            stored = upload(store, output, video_key(request.user_id, video_id), settings, "video/mp4")
    timings["total"] = round((time.perf_counter() - started) * 1000, 1)
    progress("done", 1.0)
    engine_info |= {"mode": "driving_video", "source": "image" if request.image else "avatar"}
    engine_info["driving"] = "motion_template" if from_template else "video"
    return GenerateVideoResult(
        video=stored,
        video_id=video_id,
        num_frames=num_frames,
        duration_s=round(num_frames / FPS, 3),
        fps=float(FPS),
        width=size[0],
        height=size[1],
        timings_ms=timings,
        engine=engine_info,
        faces_found=faces[0] if faces else None,
        face_index=faces[1] if faces else None,
    )


def _reenactor(request: GenerateVideoRequest, runtime: WorkerRuntime) -> tuple[Reenactor, dict[str, Any]]:
    """LivePortrait's loaded networks (the lip-sync engine's, shared), behind the reenactment pipeline."""
    engine, info = engine_choice.lipsync_engine(LIVEPORTRAIT, runtime, portrait=True)
    info["reason"] = "driving_video"
    lp, input_size = engine.lp, engine.animator.input_size  # type: ignore[attr-defined]
    return Reenactor(lp, input_size), info


# ---- source ----------------------------------------------------------------------------------


def _source(
    request: GenerateVideoRequest, store: storage.ObjectStore, runtime: WorkerRuntime, work: Path, holds: ExitStack
) -> tuple[Any, np.ndarray, tuple[int, int] | None]:
    """(frames, landmarks (N, 68, 2), (faces found, face used) of a portrait): the portrait (one frame, its
    largest face or the `face_index`-th) or a stored avatar's frames."""
    if request.image is not None:
        from engines.face import find_face

        image = portrait_image(request.image, runtime, work)
        found = find_face(image, runtime.engines.face_analyzer(), request.face_index)
        return [image], found.landmarks[None], (found.faces_found, found.index)
    avatar = avatar_frames(request.user_id, request.avatar_id, None, store, runtime, work, holds)
    if avatar.landmarks is None:
        raise TaskError(
            "invalid_avatar",
            f"Avatar `{request.avatar_id}` has no landmarks.npy (LiveTalking-made?): a stored avatar driven by a "
            "video needs the landmarks preprocess_avatar writes. Prepare it again, or give `image`.",
        )
    return avatar.frames, avatar.landmarks, None


def _prepare_source(
    reenactor: Reenactor,
    request: GenerateVideoRequest,
    frames: Any,
    landmarks: np.ndarray,
    driving_frames: int,
    options: DrivingVideoOptions,
) -> Source:
    crop = CropOptions(options.scale, options.vx_ratio, options.vy_ratio)
    if request.image is not None:
        return reenactor.portrait(frames[0], landmarks[0], crop)
    return reenactor.video(frames, landmarks, min(len(frames), driving_frames), crop)


# ---- driving motion --------------------------------------------------------------------------


def _driving_motion(
    path: Path, reenactor: Reenactor, options: DrivingVideoOptions, runtime: WorkerRuntime
) -> tuple[Motion, bool]:
    """(motion at 25 fps, whether it came from a motion template)."""
    from engines.liveportrait.motion_file import is_motion_file, load_motion

    settings = runtime.settings
    max_frames = math.ceil(settings.max_video_seconds * FPS)
    if is_motion_file(path):
        return resampled(load_motion(path, max_frames), FPS), True
    info = probe_within_limits(path, settings, f"The {DRIVING}")
    crop = options.crop_driving_video or info.width != info.height  # upstream: a square video is a face crop
    needs_landmarks = crop or options.eye_retargeting or options.lip_retargeting
    landmarks = _driving_landmarks(path, runtime, max_frames) if needs_landmarks else None
    return _motion_of_video(path, reenactor, options, landmarks, crop, max_frames), False


def _driving_landmarks(path: Path, runtime: WorkerRuntime, max_frames: int) -> list[np.ndarray]:
    """The driving face's 68 landmarks in every frame (short gaps filled in, as preprocess_avatar does)."""
    from engines.codecs.video_in import read_frames
    from engines.face.tracker import FaceTracker

    settings = runtime.settings
    tracker, stream, landmarks = FaceTracker(runtime.engines.face_analyzer()), None, []
    try:
        with closing(read_frames(path, FPS, max_frames)) as frames:
            for frame in frames:
                if stream is None:
                    h, w = frame.shape[:2]
                    stream = FaceBoxStream(w, h, (0, 0, 0, 0), smooth=False, max_gap=settings.max_face_gap_frames)
                landmarks += [f.landmarks for f in stream.push(tracker.update(frame))]
        if stream is None:
            raise TaskError("invalid_video", f"The {DRIVING} has no frames.")
        landmarks += [f.landmarks for f in stream.finish()]
    except NoFaceError:
        raise TaskError("no_face", f"No face detected in the {DRIVING}.") from None
    except FaceGapError as exc:
        raise TaskError(
            "face_lost",
            f"No face in frames {exc.first}-{exc.last} of the {DRIVING}; at most {settings.max_face_gap_frames} "
            "consecutive frames without a face are filled in (MAX_FACE_GAP_FRAMES).",
        ) from None
    return landmarks


def _motion_of_video(
    path: Path,
    reenactor: Reenactor,
    options: DrivingVideoOptions,
    landmarks: list[np.ndarray] | None,
    crop: bool,
    max_frames: int,
) -> Motion:
    """M on every driving frame: cropped around the face (one square for the video) or whole when square."""
    from engines.codecs.video_in import read_frames
    from engines.liveportrait.crop import crop_box, driving_box, eye_ratios, lip_ratio

    box = None
    if crop and landmarks is not None:
        scale, vx, vy = (
            options.scale_crop_driving_video,
            options.vx_ratio_crop_driving_video,
            options.vy_ratio_crop_driving_video,
        )
        box = driving_box(landmarks, scale, vx, vy)

    def crops() -> Iterator[tuple[np.ndarray, np.ndarray, float]]:
        with closing(read_frames(path, FPS, max_frames)) as frames:
            for i, frame in enumerate(frames):
                points = landmarks[min(i, len(landmarks) - 1)] if landmarks else None
                image = crop_box(frame, box).image if box is not None else frame
                if points is None:
                    yield image, np.zeros(2, np.float32), 0.0  # ratios unused: no retargeting asked for
                else:
                    yield image, eye_ratios(points), lip_ratio(points)

    try:
        return reenactor.driving_motion(crops(), float(FPS))
    except ValueError:
        raise TaskError("invalid_video", f"The {DRIVING} has no frames.") from None


def resampled(motion: Motion, fps: float) -> Motion:
    """A motion template at ``fps``: each output frame takes the template frame shown at its time."""
    if abs(motion.fps - fps) < 1e-6:
        return motion
    count = max(1, math.floor(len(motion) * fps / motion.fps))
    rows = np.minimum((np.arange(count) * motion.fps / fps).astype(np.int64), len(motion) - 1)
    return Motion(**{name: getattr(motion, name)[rows] for name in MOTION_ARRAYS}, fps=fps)


# ---- sound, render ---------------------------------------------------------------------------


def _soundtrack(path: Path | None, frames: int, settings: Settings, optional: bool) -> np.ndarray | None:
    """`audio` (or, ``optional``, the driving video's own sound) cut or padded with silence to ``frames``;
    None: a silent video (a motion template, or a driving video without sound)."""
    from engines.codecs.audio import has_audio

    if path is None or (optional and not has_audio(path)):
        return None
    samples = decode_speech(path, settings, "`audio`" if not optional else f"The {DRIVING}'s sound")
    length = frames * SAMPLE_RATE // FPS
    return np.pad(samples[:length], (0, max(0, length - len(samples))))


def _render(
    reenactor: Reenactor,
    source: Source,
    motion: Motion,
    options: DrivingVideoOptions,
    audio: np.ndarray | None,
    output: Path,
    settings: Settings,
    progress: Progress,
) -> tuple[int, tuple[int, int], float]:
    """Render and encode one frame per ``motion`` frame; (frames written, (width, height), encoder seconds)."""
    engine_options = DrivingOptions(**{name: getattr(options, name) for name in ENGINE_OPTIONS})
    if options.paste_back and options.stitching:
        height, width = source.frames[0].shape[:2]
    else:
        width = height = 2 * reenactor.input_size
    span = STAGE_START["upload"] - STAGE_START["render"]
    progress("render", STAGE_START["render"])
    encoding = {"fps": FPS, "crf": settings.video_crf, "preset": settings.video_preset, "audio": audio}
    writer = Mp4Writer(output, width, height, sample_rate=SAMPLE_RATE, **encoding)
    with writer:
        for i, frame in enumerate(reenactor.render(source, motion, engine_options)):
            writer.write(frame)
            if i % PROGRESS_EVERY_FRAMES == 0:
                progress("render", STAGE_START["render"] + span * i / len(motion))
    stats = writer.close()
    log.info("driving video: %d frames %dx%d, encoder %.2f s", stats.num_frames, width, height, stats.encode_s)
    return stats.num_frames, (stats.width, stats.height), stats.encode_s
