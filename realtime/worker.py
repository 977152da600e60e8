"""A live session on a worker: set up from the task, answered through the control URL, run until it ends.

``serve_session`` is the ``live_session`` task once a slot is held (``realtime.manager``):

1. the offer is checked (size, media sections, candidates, syntax) before any work (``realtime.sdp``);
2. the engine is chosen and loaded like a job's (``handlers.engine_choice``), the avatar built through the
   handlers' helpers under the job's input policy,
   the peer connection set up with the task's ICE servers, the answer made and checked (size);
3. the answer is posted to ``{control}/answer``; only then is the session running. A failure in 1-3
   tears down whatever was made (peer connection, threads, avatar holds), posts ``/end`` with
   ``reason: error`` and the error's code, and fails the task with that code;
4. ``SessionRun`` takes commands (long-poll) and reports events until the session ends: ``stopped``
   (a stop command, or 410 from the control routes), ``closed`` / ``peer_failed`` (the peer),
   ``idle``, ``max_duration``, or ``error`` (``control_lost`` when the control URL stays unreachable for
   ``control_lost_s``); then ``/end`` is posted once and the task returns a ``LiveSessionResult``.
"""

from __future__ import annotations

import asyncio
import logging
import tempfile
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from engines.errors import EngineError
from engines.lipsync import DrivingAudio
from engines.quality.report import QualityMeter
from handlers.engine_choice import lipsync_engine
from handlers.errors import TaskError
from handlers.generate_video import avatar_frames, speak
from handlers.outputs import resolve_store
from handlers.runtime import WorkerRuntime
from handlers.schemas import LiveAnswer, LiveSessionRequest, LiveSessionResult, SessionDescription, SessionEnd
from handlers.speech import decode_speech, fetch_audio
from realtime.control import ControlClient
from realtime.limits import RealtimeSettings
from realtime.run import SessionRun
from realtime.sdp import checked_answer, checked_offer
from realtime.session import LiveSession
from storage.errors import StorageError

log = logging.getLogger(__name__)

CODED_ERRORS = (TaskError, EngineError, StorageError)


async def serve_session(
    request: LiveSessionRequest, runtime: WorkerRuntime, limits: RealtimeSettings
) -> LiveSessionResult:
    """Run one live session to its end (see the module docstring)."""
    control = ControlClient(request.control, limits)
    try:
        session = await _started(request, runtime, limits, control)
        return await SessionRun(session, control, request, limits).until_ended()
    finally:
        await control.aclose()


async def _started(
    request: LiveSessionRequest, runtime: WorkerRuntime, limits: RealtimeSettings, control: ControlClient
) -> LiveSession:
    session: LiveSession | None = None
    try:
        session, answer, engine_info = await asyncio.wait_for(
            open_session(request, runtime, limits), limits.setup_timeout_s
        )
        await control.post_answer(LiveAnswer(answer=SessionDescription(**answer), engine=engine_info))
        return session
    except BaseException as exc:
        error = _coded(exc, limits)
        if session is not None:
            await session.end("error", error)
        log.info("session %s not started: %s", request.session_id, error.code)
        await control.post_end(SessionEnd(reason="error", error_code=error.code, error=error.message))
        if isinstance(exc, asyncio.TimeoutError):
            raise error from None
        raise


def _coded(exc: BaseException, limits: RealtimeSettings) -> TaskError:
    if isinstance(exc, CODED_ERRORS):
        return TaskError(exc.code, exc.message)
    if isinstance(exc, asyncio.TimeoutError):
        return TaskError("setup_timeout", f"The session was not set up within {limits.setup_timeout_s:g} s.")
    return TaskError("internal_error", f"Internal error ({type(exc).__name__}); see the worker logs.")


async def open_session(
    request: LiveSessionRequest, runtime: WorkerRuntime, limits: RealtimeSettings
) -> tuple[LiveSession, dict[str, str], dict[str, Any]]:
    """A session answering the request's offer: (session, checked SDP answer, engine info). Nothing of it
    is left behind when this raises (or is cancelled)."""
    offer = checked_offer(request.offer.sdp, limits)
    executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"live-{request.session_id[:8]}")
    holds = ExitStack()
    session: LiveSession | None = None
    try:
        portrait = request.image is not None
        choice = (request.engine, runtime, portrait)
        engine, engine_info = await asyncio.get_running_loop().run_in_executor(executor, live_engine, *choice)
        build = (request.user_id, request.avatar_id, request.image, request.store, runtime, limits, holds)
        avatar = await asyncio.get_running_loop().run_in_executor(executor, build_avatar, *build)
        speak_with = _speaker(runtime)
        idle = request.idle_timeout_s
        session = LiveSession(
            request.session_id,
            avatar,
            holds,
            engine,
            executor,
            speak_with,
            limits,
            idle,
            engine_info["name"],
            read_audio=_audio_reader(runtime),
            meter=QualityMeter(runtime.engines.face_analyzer(), avatar),
        )
        session.user_id = request.user_id
        answer = checked_answer(await session.answer(offer, request.ice_servers))
    except BaseException as exc:
        if session is not None:
            await asyncio.shield(session.end("error", _coded(exc, limits)))
        else:
            await asyncio.shield(asyncio.get_running_loop().run_in_executor(None, release, executor, holds))
        raise
    return session, answer, engine_info


def release(executor: ThreadPoolExecutor, holds: ExitStack) -> None:
    """Let the thread finish what it is doing (it may still be taking holds), then drop the holds."""
    executor.shutdown(wait=True, cancel_futures=True)
    holds.close()


def live_engine(requested: str, runtime: WorkerRuntime, portrait: bool = False) -> tuple[Any, dict[str, Any]]:
    """The engine a session renders with and its info: chosen like a job's (``auto`` by device and weights;
    every lip-sync engine streams)."""
    return lipsync_engine(requested, runtime, portrait)


def build_avatar(
    user_id: str,
    avatar_id: str | None,
    image: str | None,
    store: str | None,
    runtime: WorkerRuntime,
    limits: RealtimeSettings,
    holds: ExitStack,
) -> Any:
    """The session's avatar through the jobs' own helpers and input policy (stored avatar held in ``holds``)."""
    with tempfile.TemporaryDirectory(prefix="live-avatar-") as tmp:
        return avatar_frames(
            user_id,
            avatar_id,
            image,
            resolve_store(store, runtime.settings),
            runtime,
            Path(tmp),
            holds,
            portrait_max_side=limits.max_side,
        )


def _speaker(runtime: WorkerRuntime) -> Any:
    def speak_with(text: str, voice: Any) -> Any:
        return speak(text, voice, runtime)

    return speak_with


def _audio_reader(runtime: WorkerRuntime) -> Any:
    """A `play` command's speech file: fetched under the worker's input rules, decoded to 16 kHz."""

    def read(uri: str) -> DrivingAudio:
        with tempfile.TemporaryDirectory(prefix="live-audio-") as tmp:
            path = fetch_audio(uri, runtime.settings, Path(tmp))
            return DrivingAudio(samples=decode_speech(path, runtime.settings, "the audio file"))

    return read


__all__ = ["build_avatar", "live_engine", "open_session", "release", "serve_session"]
