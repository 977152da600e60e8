"""One render queue per worker: the streams of several live sessions take turns, one engine pass at a time.

Each round, before the work is gathered, every stream's ``refill`` hook runs (the session gives its stream the
audio scheduled since the last round). Then, per engine, the streams are visited in round-robin order, one
frame each per turn, until the batch is full or nobody has a ready frame (a batch: the engine's ``batch_size``
speaking frames, or, live, as many as it renders in ``TARGET_PASS_S`` by its measured speed): a session with
much to render cannot starve another, and the engine runs one batched pass for all of them (``render_frames``
takes frames of several streams). The next round starts its turns one stream later. Silent frames cost no
model work and do not count against the batch. Each stream gets its frames through its ``deliver`` callback, in order.

``run_round`` does one round on the caller's thread (tests, benchmarks); ``start`` runs rounds on a thread of
its own until ``stop``, sleeping while nobody has anything to render (``wake`` ends the sleep early).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from engines.lipsync.stream import LipSyncStream, Pending

log = logging.getLogger(__name__)

IDLE_WAIT_S = 0.01  # a round found nothing to do: look again after this long (or on wake)
TARGET_PASS_S = 0.12  # a pass is cut to about this long (measured per engine): live frames wait for no big batch
SMOOTHING = 0.3  # weight of the newest pass in the per-engine averages
MAX_SILENT_PER_TURN = 64  # silent frames one stream may pass through in one turn

Deliver = Callable[[list[tuple[int, np.ndarray]]], None]


@dataclass(eq=False)
class Entry:
    stream: LipSyncStream
    deliver: Deliver
    refill: Callable[[], None] | None = None
    failed: Callable[[BaseException], None] | None = None
    pending: list[Pending] = field(default_factory=list)


class StreamScheduler:
    """``target_pass_s``: cut passes to about this long (live); None: always the engine's full batch."""

    def __init__(self, target_pass_s: float | None = None) -> None:
        self.target_pass_s = target_pass_s
        self._entries: list[Entry] = []
        self._turn = 0
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self._stopping = False
        self.frames_rendered = 0
        self.passes = 0
        self._frame_s: dict[int, float] = {}  # per engine: seconds per speaking frame (running average)

    def add(
        self,
        stream: LipSyncStream,
        deliver: Deliver,
        refill: Callable[[], None] | None = None,
        failed: Callable[[BaseException], None] | None = None,
    ) -> Entry:
        entry = Entry(stream, deliver, refill, failed)
        with self._lock:
            self._entries.append(entry)
        self.wake()
        return entry

    def remove(self, entry: Entry) -> None:
        with self._lock:
            if entry in self._entries:
                self._entries.remove(entry)

    def __len__(self) -> int:
        return len(self._entries)

    def wake(self) -> None:
        self._wake.set()

    def run_round(self) -> int:
        """Refill every stream, then one batched pass per engine; returns the frames delivered."""
        with self._lock:
            entries = self._entries[self._turn :] + self._entries[: self._turn]
            self._turn = (self._turn + 1) % max(1, len(self._entries))
        for entry in entries:
            self._guarded(entry, entry.refill)
        delivered = 0
        for group in by_engine(entries).values():
            delivered += self._pass(group)
        return delivered

    def _pass(self, entries: list[Entry]) -> int:
        """Fill one batch of the group's engine, turn by turn, render it and deliver the frames."""
        engine = entries[0].stream.engine
        limit = self.batch_limit(engine)
        speaking, active = 0, list(entries)
        while active and speaking < limit:
            for entry in list(active):
                got = self._take_turn(entry)
                speaking += got
                if got == 0:
                    active.remove(entry)
                if speaking >= limit:
                    break
        jobs, owners = [], []
        for entry in entries:
            for job in entry.stream.jobs(entry.pending):
                jobs.append(job)
                owners.append(entry)
        started = time.perf_counter()
        try:
            images = engine.render_frames(jobs) if jobs else []
        except Exception as exc:  # one pass failed: every stream in it is told, the worker carries on
            log.exception("render pass of %s failed", getattr(engine, "name", engine))
            for entry in entries:
                if entry.pending:
                    entry.pending = []
                    self.remove(entry)
                    self._guarded(entry, entry.failed, exc)
            return 0
        if jobs:
            self.passes += 1
            per_frame = (time.perf_counter() - started) / len(jobs)
            old = self._frame_s.get(id(engine), per_frame)
            self._frame_s[id(engine)] = (1 - SMOOTHING) * old + SMOOTHING * per_frame
        delivered = 0
        for entry in entries:
            if not entry.pending:
                continue
            mine = [image for image, owner in zip(images, owners, strict=True) if owner is entry]
            frames = entry.stream.compose(entry.pending, mine)
            entry.pending = []
            delivered += len(frames)
            self._guarded(entry, entry.deliver, frames)
        self.frames_rendered += delivered
        return delivered

    def batch_limit(self, engine: object) -> int:
        """Speaking frames in the engine's next pass: its batch size, or fewer where a pass of that many would take
        longer than ``target_pass_s`` (a slow engine renders a few frames in time rather than many late); 1 until
        its speed is known."""
        if self.target_pass_s is None:
            return engine.batch_size
        per_frame = self._frame_s.get(id(engine))
        if per_frame is None:
            return 1
        return max(1, min(engine.batch_size, int(self.target_pass_s / max(per_frame, 1e-6))))

    def pass_seconds(self, engine: object) -> float:
        """How long the engine's next pass is expected to take (0 until its speed is known)."""
        return self._frame_s.get(id(engine), 0.0) * self.batch_limit(engine)

    @staticmethod
    def _take_turn(entry: Entry) -> int:
        """The stream's next speaking frame (and the silent ones before it); how many speaking frames it added
        (0: nothing ready)."""
        for _ in range(MAX_SILENT_PER_TURN):
            taken = entry.stream.take(1)
            if not taken:
                return 0
            entry.pending += taken
            if taken[0].weight > 0:
                return 1
        return 0

    def _guarded(self, entry: Entry, hook: Callable | None, *args: object) -> None:
        if hook is None:
            return
        try:
            hook(*args)
        except Exception as exc:  # a session's own hook failing ends that session, not the others
            log.exception("live stream hook failed")
            self.remove(entry)
            if entry.failed is not None and hook is not entry.failed:
                try:
                    entry.failed(exc)
                except Exception:
                    log.exception("live stream failure hook failed")

    # ---- the thread ----------------------------------------------------------------------------

    def start(self) -> None:
        if self._thread is None or not self._thread.is_alive():
            self._stopping = False
            self._thread = threading.Thread(target=self._loop, name="lipsync-scheduler", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        self._stopping = True
        self.wake()
        if self._thread is not None:
            self._thread.join(5)

    def _loop(self) -> None:
        while not self._stopping:
            if self.run_round() == 0:
                self._wake.wait(IDLE_WAIT_S)
                self._wake.clear()


def by_engine(entries: list[Entry]) -> dict[int, list[Entry]]:
    """Entries grouped by engine object (frames of one engine batch together), in turn order."""
    groups: dict[int, list[Entry]] = {}
    for entry in entries:
        groups.setdefault(id(entry.stream.engine), []).append(entry)
    return groups


__all__ = ["StreamScheduler"]
