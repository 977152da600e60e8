"""Streaming output: fragmented MP4 (CMAF-style) segments plus an HLS playlist, then the usual faststart mp4.

One H.264 + AAC encoder feeds FFmpeg's mp4 muxer in fragmented mode; every segment starts with a
forced IDR frame and the muxer cuts a fragment (``moof`` + ``mdat``) at each keyframe, so segment
``k`` is exactly the frames of the plan ``[start_k, start_k+1)`` with the audio interleaved with them.
The bytes are parsed as the muxer writes them: ``ftyp`` + ``moov`` become ``init.mp4`` and each
complete fragment becomes ``segment_NNNNN.m4s``; the caller collects them with :meth:`pop_segments`
while it keeps writing frames. The first segment is short so it is ready early.

A/V sync: the AAC encoder's 1024 priming samples are trimmed by an edit list, which FFmpeg writes in
a fragmented file only with ``delay_moov`` (the ``moov`` then waits for the first fragment). Without
it, decoded audio lags the picture by 64 ms at 16 kHz (media.md); ``cmaf`` alone does the same.
Audio is encoded a few AAC frames ahead of the video so the muxer's interleaving never holds a
keyframe (and so the previous fragment) back waiting for audio.

The final mp4 is a remux of the same packets (no second encode) with ``+faststart``.
"""

from __future__ import annotations

import logging
import math
import queue
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from engines.codecs.video_out import AUDIO_FRAME_SAMPLES, Mp4Writer

logger = logging.getLogger(__name__)

FRAGMENT_FLAGS = "frag_keyframe+empty_moov+default_base_moof+delay_moov"
INIT_NAME = "init.mp4"
PLAYLIST_NAME = "index.m3u8"
PLAYLIST_CONTENT_TYPE = "application/vnd.apple.mpegurl"
SEGMENT_CONTENT_TYPE = "video/iso.segment"
INIT_CONTENT_TYPE = "video/mp4"
FIRST_SEGMENT_S = 0.24
SEGMENT_S = 1.0
_BOX_HEADER = 8


def segment_name(index: int) -> str:
    return f"segment_{index:05d}.m4s"


@dataclass(frozen=True)
class Segment:
    """One finished media segment: frames ``[start_frame, start_frame + num_frames)``, its file on disk."""

    index: int
    path: Path
    start_frame: int
    num_frames: int
    fps: int

    @property
    def start_s(self) -> float:
        return self.start_frame / self.fps

    @property
    def duration_s(self) -> float:
        return self.num_frames / self.fps

    @property
    def name(self) -> str:
        return self.path.name


class SegmentPlan:
    """Where segments start: a short first one (ready early), then equal ones."""

    def __init__(self, fps: int, first_s: float = FIRST_SEGMENT_S, segment_s: float = SEGMENT_S) -> None:
        if first_s <= 0 or segment_s <= 0:
            raise ValueError("segment durations must be positive")
        self.fps = fps
        self.first_frames = max(1, round(first_s * fps))
        self.segment_frames = max(1, round(segment_s * fps))

    def starts_segment(self, frame: int) -> bool:
        if frame < self.first_frames:
            return frame == 0
        return (frame - self.first_frames) % self.segment_frames == 0

    def start(self, index: int) -> int:
        """First frame of segment ``index``."""
        return 0 if index == 0 else self.first_frames + (index - 1) * self.segment_frames

    @property
    def target_duration_s(self) -> int:
        """HLS EXT-X-TARGETDURATION: no segment, rounded to the nearest second, is longer."""
        return max(1, math.ceil(max(self.first_frames, self.segment_frames) / self.fps))


class _FragmentSink:
    """The muxer's output file: keeps a copy of the whole stream and cuts it into init + segment files."""

    def __init__(self, writer: SegmentedMp4Writer) -> None:
        self._writer = writer
        self._pending = bytearray()
        self._moof: bytes | None = None
        self._init = bytearray()
        self._file = writer.stream_path.open("wb")

    def write(self, data: Any) -> int:
        chunk = bytes(data)
        self._file.write(chunk)
        self._pending += chunk
        self._split_boxes()
        return len(chunk)

    def flush(self) -> None:
        self._file.flush()

    def close(self) -> None:
        self._file.close()

    def _split_boxes(self) -> None:
        while len(self._pending) >= _BOX_HEADER:
            size = int.from_bytes(self._pending[:4], "big")
            if size < _BOX_HEADER:  # 64-bit or to-the-end sizes: never written by the fragmenting muxer
                raise ValueError(f"unexpected mp4 box size {size}")
            if len(self._pending) < size:
                return
            box = bytes(self._pending[:size])
            del self._pending[:size]
            self._take(box[4:8], box)

    def _take(self, kind: bytes, box: bytes) -> None:
        if kind in (b"ftyp", b"moov"):
            self._init += box
            if kind == b"moov":
                self._writer.init_ready(bytes(self._init))
        elif kind == b"moof":
            self._moof = box
        elif kind == b"mdat" and self._moof is not None:
            self._writer.fragment_ready(self._moof + box)
            self._moof = None
        # mfra (the random-access index written at the end) is not part of any segment


class SegmentedMp4Writer(Mp4Writer):
    """An :class:`Mp4Writer` whose output also comes out as fMP4 segments while frames are written.

    ``segment_dir`` receives ``init.mp4`` and ``segment_NNNNN.m4s``; :meth:`pop_segments` returns the
    segments finished since the last call (the first call that returns any also means ``init.mp4``
    exists). ``path`` gets the single faststart mp4 on :meth:`close`.
    """

    audio_lead_samples = 3 * AUDIO_FRAME_SAMPLES

    def __init__(self, path: Path, segment_dir: Path, width: int, height: int, *, plan: SegmentPlan, **kwargs: Any):
        super().__init__(path, width, height, **kwargs)
        if plan.fps != self.fps:
            raise ValueError(f"segment plan is for {plan.fps} fps, the video is {self.fps} fps")
        self.plan = plan
        self.segment_dir = Path(segment_dir)
        self.stream_path = self._tmp.with_name(self._tmp.name.replace(".part.mp4", ".frag.mp4"))
        self.init_path = self.segment_dir / INIT_NAME
        self._ready: queue.SimpleQueue[Segment] = queue.SimpleQueue()
        self._fragments = 0
        self._sink: _FragmentSink | None = None

    def _open_container(self) -> Any:
        import av

        self.segment_dir.mkdir(parents=True, exist_ok=True)
        self._sink = _FragmentSink(self)
        return av.open(self._sink, mode="w", format="mp4", options={"movflags": FRAGMENT_FLAGS})

    def _video_options(self) -> dict[str, str]:
        # zerolatency: a packet per frame, no lookahead holding the next keyframe (and the fragment) back.
        # Keyframes only where the plan says (no scene-cut or interval keyframes, which would cut fragments).
        return {
            **super()._video_options(),
            "tune": "zerolatency",
            "forced-idr": "1",
            "x264-params": "scenecut=0:keyint=infinite",
        }

    def _starts_segment(self, index: int) -> bool:
        return self.plan.starts_segment(index)

    # ---- called by the sink, on the encoder thread ---------------------------------------------

    def init_ready(self, data: bytes) -> None:
        self.init_path.write_bytes(data)

    def fragment_ready(self, data: bytes) -> None:
        index = self._fragments
        start = self.plan.start(index)
        # A fragment is cut when the next segment's keyframe arrives, or at the end of the stream.
        end = min(self.plan.start(index + 1), self._frames_encoded)
        path = self.segment_dir / segment_name(index)
        path.write_bytes(data)
        self._fragments += 1
        self._ready.put(Segment(index, path, start, end - start, self.fps))

    # ---- caller side -----------------------------------------------------------------------------

    def pop_segments(self, wait_s: float = 0.0) -> list[Segment]:
        """Segments finished since the last call, in order; waits up to ``wait_s`` for one when there is none."""
        done = []
        if wait_s > 0:
            try:
                done.append(self._ready.get(timeout=wait_s))
            except queue.Empty:
                return done
        while True:
            try:
                done.append(self._ready.get_nowait())
            except queue.Empty:
                return done

    def _finish_file(self) -> None:
        self._close_sink()
        try:
            remux_faststart(self.stream_path, self._tmp)
            super()._finish_file()
        finally:
            self.stream_path.unlink(missing_ok=True)

    def _discard(self) -> None:
        super()._discard()
        self._close_sink()
        self.stream_path.unlink(missing_ok=True)

    def _close_sink(self) -> None:
        if self._sink is not None:
            self._sink.close()
            self._sink = None


def remux_faststart(src: Path, dest: Path) -> None:
    """Copy every packet of ``src`` into a plain mp4 with the index first (timing and edit lists kept)."""
    import av

    with av.open(str(src)) as source, av.open(str(dest), "w", format="mp4", options={"movflags": "+faststart"}) as out:
        streams = {stream.index: out.add_stream_from_template(stream) for stream in source.streams}
        for packet in source.demux():
            if packet.dts is None:  # the demuxer's end-of-stream marker
                continue
            packet.stream = streams[packet.stream.index]
            out.mux(packet)


def hls_playlist(segments: list[tuple[str, float]], init_uri: str, target_duration_s: int, ended: bool) -> str:
    """An HLS media playlist (fMP4, version 7) of ``(uri, duration_s)`` segments.

    ``EVENT`` while segments are still coming (players poll it and only ever see it grow), with
    ``EXT-X-ENDLIST`` once the last one is in.
    """
    lines = [
        "#EXTM3U",
        "#EXT-X-VERSION:7",
        f"#EXT-X-TARGETDURATION:{target_duration_s}",
        "#EXT-X-PLAYLIST-TYPE:EVENT",
        "#EXT-X-MEDIA-SEQUENCE:0",
        "#EXT-X-INDEPENDENT-SEGMENTS",
        f'#EXT-X-MAP:URI="{init_uri}"',
    ]
    for uri, duration_s in segments:
        lines += [f"#EXTINF:{duration_s:.3f},", uri]
    if ended:
        lines.append("#EXT-X-ENDLIST")
    return "\n".join(lines) + "\n"


def parse_hls_playlist(text: str) -> tuple[list[tuple[str, float]], bool]:
    """The ``(uri, duration_s)`` segments of a media playlist written by :func:`hls_playlist`, and whether it ended."""
    entries: list[tuple[str, float]] = []
    duration: float | None = None
    for line in (line.strip() for line in text.splitlines()):
        if line.startswith("#EXTINF:"):
            duration = float(line[len("#EXTINF:") :].split(",", 1)[0])
        elif line and not line.startswith("#") and duration is not None:
            entries.append((line, duration))
            duration = None
    return entries, "#EXT-X-ENDLIST" in text


__all__ = [
    "INIT_NAME",
    "PLAYLIST_NAME",
    "Segment",
    "SegmentPlan",
    "SegmentedMp4Writer",
    "hls_playlist",
    "parse_hls_playlist",
    "remux_faststart",
    "segment_name",
]
