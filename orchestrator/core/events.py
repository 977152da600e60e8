"""A job's events as it advances: its status and progress, a streamed video's segments, then its end.

The same sequence serves ``GET /v1/jobs/{id}/events`` (Server-Sent Events, ``sse_stream``: asynchronous, so
an open stream holds no worker thread while it waits) and ``avatarctl generate --follow`` (``job_events``).
Segments are read from the playlist the task keeps in the store, so every backend is relayed the same way
(local, RunPod, Modal: the worker writes it, whatever carries its progress).

Events: ``progress`` ``{status, stage, fraction}`` when either changes; ``segment`` (the stream items'
fields but ``timings_ms``) once per new segment; last, the job's final status as the event name
(``completed`` with its output, or ``failed`` / ``cancelled`` / ``timed_out`` with its error). A completed
streamed video's ``completed`` comes after every segment of its final playlist (read until it carries
``EXT-X-ENDLIST``, for up to ``FINAL_PLAYLIST_WAIT_S``). A stream open longer than its lifetime ends with
``expired`` ``{id, status}``: reconnect to follow on.

``EventStreams`` counts the open streams: per tenant (its user ids; the operator is one caller) and in all.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import anyio

from handlers.outputs import resolve_store
from handlers.schemas import TaskName
from handlers.streaming import published_segments
from orchestrator.core.models import JobNotFound, JobStatus, JobView, OrchestratorError
from orchestrator.core.service import JobService
from storage import StorageError

log = logging.getLogger(__name__)

POLL_S = 0.25  # how often a running job and its playlist are looked at
KEEPALIVE_S = 15.0  # an SSE comment line at least this often, so proxies keep the connection open
FINAL_PLAYLIST_WAIT_S = 10.0  # how long a completed stream's playlist may take to show its last segments
STORE_THREADS = 4  # threads the open streams share for their short database and store reads


@dataclass(frozen=True)
class JobEvent:
    name: str
    data: dict[str, Any]

    def sse(self) -> str:
        return f"event: {self.name}\ndata: {json.dumps(self.data, separators=(',', ':'))}\n\n"


def is_streamed(job: JobView) -> bool:
    return job.task == TaskName.generate_video.value and bool(job.input.get("stream"))


def _progress_event(job: JobView) -> JobEvent:
    progress = job.progress if isinstance(job.progress, dict) else {"fraction": job.progress}
    return JobEvent(
        "progress", {"status": job.status, "stage": progress.get("stage"), "fraction": progress.get("fraction")}
    )


def _end_event(job: JobView) -> JobEvent:
    if job.output is not None and job.error is None:
        return JobEvent(job.status, {"id": job.id, "output": job.output})
    return JobEvent(job.status, {"id": job.id, "error": job.error, "error_code": job.error_code})


class _SegmentReader:
    """New segments of a streamed job's playlist since the last call, and whether the playlist has ended."""

    def __init__(self, service: JobService, job: JobView) -> None:
        self._store = resolve_store(job.input.get("store"), service.handler_settings)
        self._user_id = str(job.input.get("user_id"))
        self._video_id = str(job.input.get("video_id") or job.id)
        self._sent = 0

    def new(self) -> tuple[list[JobEvent], bool]:
        try:
            items, ended = published_segments(self._store, self._user_id, self._video_id)
        except StorageError as exc:  # a store hiccup: the next look may succeed
            log.warning("reading the playlist of video %s failed: %s", self._video_id, exc.message)
            return [], False
        fresh = items[self._sent :]
        self._sent = max(self._sent, len(items))
        return [JobEvent("segment", item) for item in fresh], ended


class _Follower:
    """What to send for a job each time it is looked at; ``look`` says when the stream is complete."""

    def __init__(self, service: JobService, job: JobView) -> None:
        self._reader = _SegmentReader(service, job) if is_streamed(job) else None
        self._seen: tuple[str, Any] | None = None
        self._final_deadline: float | None = None

    def look(self, job: JobView) -> tuple[list[JobEvent], bool]:
        events = []
        if (job.status, job.progress) != self._seen:
            self._seen = (job.status, job.progress)
            events.append(_progress_event(job))
        ended = True
        if self._reader is not None:
            segments, ended = self._reader.new()
            events += segments
        if not job.finished:
            return events, False
        if not ended and job.status == JobStatus.completed.value:  # every segment before `completed`
            self._final_deadline = self._final_deadline or time.monotonic() + FINAL_PLAYLIST_WAIT_S
            if time.monotonic() < self._final_deadline:
                return events, False
            log.warning("job %s completed but its playlist shows no end; ending its events", job.id)
        return [*events, _end_event(job)], True


def job_events(service: JobService, job_id: str, *, poll_s: float = POLL_S) -> Iterator[JobEvent | None]:
    """The job's events until it finishes; ``None`` when nothing happened for ``poll_s`` (a keep-alive chance).
    Blocking: for ``avatarctl generate --follow`` (the API uses ``sse_stream``)."""
    job = service.get(job_id)
    if job is None:
        raise JobNotFound(job_id)
    follower = _Follower(service, job)
    while True:
        events, done = follower.look(job)
        yield from events
        if done:
            return
        if not events:
            yield None
        if job.finished:  # waiting for the playlist's last segments
            time.sleep(poll_s)
            job = service.get(job_id) or job
        else:
            job = service.wait(job_id, poll_s)


async def sse_stream(
    service: JobService,
    job_id: str,
    *,
    max_s: float,
    poll_s: float = POLL_S,
    keepalive_s: float = KEEPALIVE_S,
    limiter: anyio.CapacityLimiter | None = None,
) -> AsyncIterator[str]:
    """The job's events as Server-Sent Events text, with a comment line when it is quiet for ``keepalive_s``.

    It waits with ``asyncio.sleep`` (no thread held); each look at the job and its playlist is a short read on
    one of ``limiter``'s threads. After ``max_s`` it ends with an ``expired`` event."""

    async def blocking(fn: Callable[..., Any], *args: Any) -> Any:
        return await anyio.to_thread.run_sync(fn, *args, limiter=limiter)

    started = last = time.monotonic()
    job = await blocking(service.get, job_id)
    if job is None:
        return
    follower = _Follower(service, job)
    while True:
        events, done = await blocking(follower.look, job)
        for event in events:
            yield event.sse()
        now = time.monotonic()
        if events:
            last = now
        if done:
            return
        if now - started >= max_s:
            yield JobEvent("expired", {"id": job.id, "status": job.status}).sse()
            return
        if now - last >= keepalive_s:
            last = now
            yield ": keep-alive\n\n"
        await asyncio.sleep(poll_s)
        job = await blocking(service.get, job_id) or job


class TooManyStreams(OrchestratorError):
    http_status = 429
    headers = {"Retry-After": "5"}

    def __init__(self, message: str) -> None:
        super().__init__("too_many_streams", message)


@dataclass
class EventStreams:
    """The API's open event streams: at most ``per_tenant`` for one caller and ``total`` in all, each at most
    ``max_s`` long (EVENT_STREAMS_PER_TENANT, MAX_EVENT_STREAMS, EVENT_STREAM_MAX_S)."""

    per_tenant: int
    total: int
    max_s: float
    limiter: anyio.CapacityLimiter = field(default_factory=lambda: anyio.CapacityLimiter(STORE_THREADS))
    _open: Counter[str] = field(default_factory=Counter)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def open(self, caller: str, service: JobService, job_id: str) -> AsyncIterator[str]:
        """A stream of the job's events held as one of ``caller``'s; TooManyStreams (429) past a cap. The slot
        is given back when the stream ends, fails, is cancelled by a disconnect, or is dropped unstarted."""
        with self._lock:
            if sum(self._open.values()) >= self.total:
                raise TooManyStreams(f"This server follows {self.total} event streams at most; try again shortly.")
            if self._open[caller] >= self.per_tenant:
                raise TooManyStreams(
                    f"This token has {self.per_tenant} event streams open, the most it may; close one first."
                )
            self._open[caller] += 1
        return _Held(sse_stream(service, job_id, max_s=self.max_s, limiter=self.limiter), self, caller)

    def count(self, caller: str | None = None) -> int:
        with self._lock:
            return sum(self._open.values()) if caller is None else self._open[caller]

    def release(self, caller: str) -> None:
        with self._lock:
            self._open[caller] -= 1
            if self._open[caller] <= 0:
                del self._open[caller]


class _Held:
    """An async iterator that gives its slot back exactly once: at its end, on an error or cancellation, or
    when it is garbage-collected without having run (a client that left before the first byte)."""

    def __init__(self, inner: AsyncIterator[str], streams: EventStreams, caller: str) -> None:
        self._inner, self._streams, self._caller = inner, streams, caller
        self._held = True

    def __aiter__(self) -> _Held:
        return self

    async def __anext__(self) -> str:
        try:
            return await self._inner.__anext__()
        except BaseException:
            self._give_back()
            raise

    def _give_back(self) -> None:
        if self._held:
            self._held = False
            self._streams.release(self._caller)

    def __del__(self) -> None:
        self._give_back()
