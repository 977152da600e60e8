"""A job's events as it advances: its status and progress, a streamed video's segments, then its end.

The same sequence serves ``GET /v1/jobs/{id}/events`` (Server-Sent Events) and ``avatarctl generate
--follow``. Segments are read from the playlist the task keeps in the store, so every backend is
relayed the same way (local, RunPod, Modal: the worker writes it, whatever carries its progress).

Events: ``progress`` ``{status, stage, fraction}`` when either changes; ``segment`` (the stream items'
fields but ``timings_ms``) once per new segment; last, the job's final status as the event name
(``completed`` with its output, or ``failed`` / ``cancelled`` / ``timed_out`` with its error).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from handlers.outputs import resolve_store
from handlers.schemas import TaskName
from handlers.streaming import published_segments
from orchestrator.models import JobNotFound, JobView
from orchestrator.service import JobService
from storage import StorageError

log = logging.getLogger(__name__)

POLL_S = 0.25  # how often a running job and its playlist are looked at
KEEPALIVE_S = 15.0  # an SSE comment line at least this often, so proxies keep the connection open


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
    """New segments of a streamed job's playlist since the last call."""

    def __init__(self, service: JobService, job: JobView) -> None:
        self._store = resolve_store(job.input.get("store"), service.handler_settings)
        self._user_id = str(job.input.get("user_id"))
        self._video_id = str(job.input.get("video_id") or job.id)
        self._sent = 0

    def new(self) -> list[JobEvent]:
        try:
            items, _ = published_segments(self._store, self._user_id, self._video_id)
        except StorageError as exc:  # a store hiccup: the next look may succeed
            log.warning("reading the playlist of video %s failed: %s", self._video_id, exc.message)
            return []
        fresh = items[self._sent :]
        self._sent = max(self._sent, len(items))
        return [JobEvent("segment", item) for item in fresh]


def job_events(service: JobService, job_id: str, *, poll_s: float = POLL_S) -> Iterator[JobEvent | None]:
    """The job's events until it finishes; ``None`` when nothing happened for ``poll_s`` (a keep-alive chance)."""
    job = service.get(job_id)
    if job is None:
        raise JobNotFound(job_id)
    reader = _SegmentReader(service, job) if is_streamed(job) else None
    seen: tuple[str, Any] | None = None
    while True:
        quiet = True
        if (job.status, job.progress) != seen:
            seen = (job.status, job.progress)
            quiet = False
            yield _progress_event(job)
        for event in reader.new() if reader is not None else []:
            quiet = False
            yield event
        if job.finished:
            yield _end_event(job)
            return
        if quiet:
            yield None
        job = service.wait(job_id, poll_s)


def sse_stream(service: JobService, job_id: str, *, keepalive_s: float = KEEPALIVE_S) -> Iterator[str]:
    """``job_events`` as Server-Sent Events text, with a comment line when the job is quiet for a while."""
    last = time.monotonic()
    for event in job_events(service, job_id):
        now = time.monotonic()
        if event is not None:
            last = now
            yield event.sse()
        elif now - last >= keepalive_s:
            last = now
            yield ": keep-alive\n\n"
