"""`generate_video`: an avatar (or one portrait) + text or speech audio -> a lip-synced mp4 in the store.

Stages: fetch (avatar from the cache or the store, or the portrait image; the audio file) -> tts
(synthesis or decoding, to 16 kHz mono) -> render (the lip-sync engine streams frames) -> encode
(H.264 + AAC in a background thread, overlapping the render) -> upload to
``generated-videos/{user_id}/{video_id}.mp4``. Everything is built in a temporary directory; nothing
is uploaded unless the whole video was made.

With ``stream: true`` the encoder also cuts the video into fMP4 segments as it goes, and each one is
stored (with the HLS playlist naming it) before the render goes on: :func:`stream` yields a
``StreamSegment`` per stored segment, then the usual result (plus the ended playlist). A failed or
abandoned stream deletes what it published.

``timings_ms``: ``features`` is the time until the engine's first frame (engines analyse the whole
audio before they render), ``render`` the rest of the time spent inside the engine, ``encode`` the
encoder thread's busy time (it runs in parallel with ``render``, so the stages overlap).

``quality`` (``handlers.quality``): the lip-sync score of the frames as they are made, silence held still,
face lost, A/V offset; under the request's ``min_lip_sync`` the task fails as ``low_quality`` after the
upload, the result (marked ``low_quality: true``) kept in the error for inspection.
"""

from __future__ import annotations

import logging
import tempfile
import time
from collections import deque
from collections.abc import Generator, Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import numpy as np

import storage
from engines.codecs.segments import SegmentedMp4Writer, SegmentPlan
from engines.codecs.video_out import EncodeStats, Mp4Writer
from engines.errors import EngineError
from engines.lipsync import FPS, SAMPLE_RATE, AvatarFrames, DrivingAudio, LipSyncEngine
from handlers import Progress, engine_choice
from handlers.inputs import timed
from handlers.outputs import new_id, resolve_store, upload
from handlers.quality import RenderQuality, check_min_lip_sync
from handlers.runtime import WorkerRuntime
from handlers.schemas import HOSTED_ENGINES, GenerateVideoRequest, GenerateVideoResult, StreamSegment
from handlers.settings import Settings
from handlers.sources import avatar_frames
from handlers.speech import decode_speech, fetch_audio, speak, synthesizer
from handlers.streaming import SegmentPublisher
from storage.keys import video_key

log = logging.getLogger(__name__)

VIDEO_CONTENT_TYPE = "video/mp4"
PROGRESS_EVERY_FRAMES = 25
FIRST_SEGMENT_WAIT_S = 5.0  # the most rendering waits for the encoder to finish the first segment
STAGE_START = {"fetch": 0.0, "tts": 0.1, "render": 0.2, "upload": 0.95}


def load(runtime: WorkerRuntime) -> None:
    """Load what the first request would: face analyzer, eSpeak, the lip-sync engine."""
    runtime.engines.face_analyzer()
    synthesizer("espeak", runtime)
    engine_choice.lipsync_engine("auto", runtime)


def describe(runtime: WorkerRuntime) -> dict[str, Any]:
    from handlers.hosted_video import describe as hosted

    return {**engine_choice.describe(runtime), "hosted": hosted(runtime)}


def run(request: GenerateVideoRequest, runtime: WorkerRuntime, progress: Progress) -> GenerateVideoResult:
    (result,) = deque(stream(request, runtime, progress), maxlen=1)
    assert isinstance(result, GenerateVideoResult)
    return result


def stream(
    request: GenerateVideoRequest, runtime: WorkerRuntime, progress: Progress
) -> Iterator[StreamSegment | GenerateVideoResult]:
    """The task as a sequence: a ``StreamSegment`` per stored segment (``stream: true`` only), the result last."""
    if request.driving_video is not None:  # LivePortrait reenactment: its own pipeline (never streamed)
        from handlers import driving_video  # torch: imported only by the requests that need it

        yield driving_video.run(request, runtime, progress)
        return
    if request.engine in HOSTED_ENGINES:  # rendered by a hosted service; we keep its mp4
        from handlers import hosted_video

        yield hosted_video.run(request, runtime, progress)
        return
    started = time.perf_counter()
    settings = runtime.settings
    timings: dict[str, float] = {}
    store = resolve_store(request.store, settings)
    video_id = request.video_id or new_id()
    # first: a named engine without its weights is refused before anything is downloaded or spoken
    engine, engine_info = engine_choice.lipsync_engine(request.engine, runtime, portrait=request.image is not None)
    with tempfile.TemporaryDirectory(prefix="generate-video-") as tmp, ExitStack() as holds:
        work = Path(tmp)
        progress("fetch", STAGE_START["fetch"])
        with timed(timings, "fetch"):
            avatar = _avatar(request, store, runtime, work, holds)
            audio_path = fetch_audio(request.audio, settings, work) if request.audio else None
        progress("tts", STAGE_START["tts"])
        with timed(timings, "tts"):
            audio = _speech(request, audio_path, runtime)
        output = work / f"{video_id}.mp4"
        plan = SegmentPlan(FPS)
        publisher = (
            SegmentPublisher(store, request.user_id, video_id, settings, plan, work, started)
            if request.stream
            else None
        )
        quality = RenderQuality(runtime.engines.face_analyzer(), avatar, audio)
        try:
            stats = yield from _render(engine, avatar, audio, output, settings, progress, timings, publisher, quality)
            measured = quality.report(output)
            playlist = publisher.finish() if publisher is not None else None
            progress("upload", STAGE_START["upload"])
            with timed(timings, "upload"):
                stored = upload(store, output, video_key(request.user_id, video_id), settings, VIDEO_CONTENT_TYPE)
        except BaseException:  # also a consumer that stops iterating (GeneratorExit): nothing half-published
            if publisher is not None:
                publisher.discard()
            raise
    progress("done", 1.0)
    result = GenerateVideoResult(
        video=stored,
        video_id=video_id,
        num_frames=stats.num_frames,
        duration_s=round(stats.duration_s, 3),
        fps=float(stats.fps),
        width=stats.width,
        height=stats.height,
        timings_ms=timings,
        engine=engine_info,
        playlist=playlist,
        faces_found=avatar.faces_found,
        face_index=(request.face_index or 0) if request.image is not None else None,
        quality=measured,
        low_quality=None if request.min_lip_sync is None else False,
    )
    check_min_lip_sync(request.min_lip_sync, result.model_dump(mode="json"))
    yield result


# ---- avatar and speech -----------------------------------------------------------------------


def _avatar(
    request: GenerateVideoRequest, store: storage.ObjectStore, runtime: WorkerRuntime, work: Path, holds: ExitStack
) -> AvatarFrames:
    """The avatar's frames; a stored avatar's folder stays held (unchanged on disk) until ``holds`` closes."""
    return avatar_frames(
        request.user_id, request.avatar_id, request.image, store, runtime, work, holds, face_index=request.face_index
    )


def _speech(request: GenerateVideoRequest, audio_path: Path | None, runtime: WorkerRuntime) -> DrivingAudio:
    if audio_path is not None:
        return DrivingAudio(samples=decode_speech(audio_path, runtime.settings))
    return speak(request.text or "", request.voice, runtime)  # the schema allows exactly one of text / audio


# ---- render + encode -------------------------------------------------------------------------


def _render(
    engine: LipSyncEngine,
    avatar: AvatarFrames,
    audio: DrivingAudio,
    output: Path,
    settings: Settings,
    progress: Progress,
    timings: dict[str, float],
    publisher: SegmentPublisher | None,
    quality: RenderQuality,
) -> Generator[StreamSegment, None, EncodeStats]:
    """Stream the engine's frames into the mp4 writer, publishing segments as they are finished;
    fills the features/render/encode timings."""
    height, width = avatar.frames[0].shape[:2]
    options = {
        "fps": FPS,
        "crf": settings.video_crf,
        "preset": settings.video_preset,
        "audio": audio.samples,
        "sample_rate": SAMPLE_RATE,
    }
    if publisher is None:
        writer: Mp4Writer = Mp4Writer(output, width, height, **options)
    else:
        segment_dir = output.parent / "segments"
        writer = SegmentedMp4Writer(output, segment_dir, width, height, plan=SegmentPlan(FPS), **options)
    with writer:
        frames = engine.render(avatar, audio)
        features_s, engine_s = yield from _stream(frames, writer, audio.num_frames, progress, publisher, quality)
    stats = writer.close()
    yield from _publish_ready(writer, publisher)
    timings.update(
        features=round(features_s * 1000, 1),
        render=round((engine_s - features_s) * 1000, 1),
        encode=round(stats.encode_s * 1000, 1),
    )
    name = getattr(engine, "name", type(engine).__name__)
    log.info("%s: %d frames, engine %.2f s, encoder %.2f s", name, stats.num_frames, engine_s, stats.encode_s)
    return stats


def _stream(
    frames: Iterator[np.ndarray],
    writer: Mp4Writer,
    total: int,
    progress: Progress,
    publisher: SegmentPublisher | None,
    quality: RenderQuality,
) -> Generator[StreamSegment, None, tuple[float, float]]:
    """Write ``total`` frames (each also measured by ``quality``); returns (seconds until the first frame,
    seconds spent inside the engine)."""
    first_s = engine_s = 0.0
    span = STAGE_START["upload"] - STAGE_START["render"]
    for i in range(total):
        started = time.perf_counter()
        frame = next(frames, None)
        frame_s = time.perf_counter() - started
        engine_s += frame_s
        if i == 0:
            first_s = engine_s
        if frame is None:
            raise EngineError("render_failed", f"the lip-sync engine stopped after {i} of {total} frames")
        writer.write(frame)
        quality.add(i, frame, frame_s)
        yield from _publish_ready(writer, publisher, first_segment_due=i >= _first_segment_frames(writer))
        if i % PROGRESS_EVERY_FRAMES == 0:
            progress("render", STAGE_START["render"] + span * i / total)
    return first_s, engine_s


def _first_segment_frames(writer: Mp4Writer) -> int:
    return writer.plan.first_frames if isinstance(writer, SegmentedMp4Writer) else 0


def _publish_ready(
    writer: Mp4Writer, publisher: SegmentPublisher | None, first_segment_due: bool = False
) -> Iterator[StreamSegment]:
    """Store the segments the encoder has finished since the last call (streamed requests only).

    Once the first segment's frames are all written, rendering waits for it: otherwise the renderer
    fills the encoder's queue first and, on a small CPU, delays the first segment by that much work.
    """
    if publisher is None or not isinstance(writer, SegmentedMp4Writer):
        return
    wait_s = FIRST_SEGMENT_WAIT_S if first_segment_due and publisher.published == 0 else 0.0
    for segment in writer.pop_segments(wait_s):
        yield publisher.publish(segment, writer.init_path)
