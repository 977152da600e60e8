"""Publishing a streamed video: each finished fMP4 segment goes to the store, then the HLS playlist naming it.

Layout, next to the video's mp4: ``generated-videos/{user_id}/{video_id}/stream/`` holds ``init.mp4``,
``segment_NNNNN.m4s`` and ``index.m3u8``. The playlist is rewritten after every segment (an EVENT
playlist that only grows) and ends with ``EXT-X-ENDLIST`` once the video is complete. Its entries
are the objects' signed URLs where the store signs (a relative name would lose the signature),
else names relative to the playlist. When the task fails, everything published is deleted again.
"""

from __future__ import annotations

import logging
import tempfile
import time
from pathlib import Path
from urllib.parse import urlparse

from engines.codecs.segments import (
    INIT_CONTENT_TYPE,
    INIT_NAME,
    PLAYLIST_CONTENT_TYPE,
    PLAYLIST_NAME,
    SEGMENT_CONTENT_TYPE,
    Segment,
    SegmentPlan,
    hls_playlist,
    parse_hls_playlist,
)
from handlers.outputs import upload
from handlers.schemas import StoredObject, StreamSegment
from handlers.settings import Settings
from storage import ObjectStore, StorageError
from storage.keys import stream_key

log = logging.getLogger(__name__)

MAX_PLAYLIST_BYTES = 1024 * 1024


class SegmentPublisher:
    """Uploads segments as they are finished and keeps the playlist in the store up to date."""

    def __init__(
        self,
        store: ObjectStore,
        user_id: str,
        video_id: str,
        settings: Settings,
        plan: SegmentPlan,
        work: Path,
        started: float,
    ) -> None:
        self._store, self._user_id, self._video_id = store, user_id, video_id
        self._settings, self._plan, self._started = settings, plan, started
        self._playlist_path = work / PLAYLIST_NAME
        self._entries: list[tuple[str, float]] = []
        self._init_ref = INIT_NAME
        self._published: list[str] = []

    @property
    def published(self) -> int:
        """How many segments are in the store."""
        return len(self._entries)

    @property
    def playlist_uri(self) -> str:
        return self._store.uri(self._key(PLAYLIST_NAME))

    def publish(self, segment: Segment, init_path: Path) -> StreamSegment:
        """Store ``segment`` (and, before the first one, the init segment), then the grown playlist."""
        started = time.perf_counter()
        if not self._entries:
            init = self._put(init_path, INIT_NAME, INIT_CONTENT_TYPE)
            self._init_ref = init.url or INIT_NAME
        stored = self._put(segment.path, segment.name, SEGMENT_CONTENT_TYPE)
        self._entries.append((stored.url or segment.name, segment.duration_s))
        self._put_playlist(ended=False)
        now = time.perf_counter()
        log.debug("segment %d of %s stored (%.2f s of video)", segment.index, self._video_id, segment.duration_s)
        return StreamSegment(
            index=segment.index,
            uri=stored.uri,
            url=stored.url,
            duration_s=round(segment.duration_s, 3),
            playlist_uri=self.playlist_uri,
            timings_ms={
                "ready": round((now - self._started) * 1000, 1),
                "upload": round((now - started) * 1000, 1),
            },
        )

    def finish(self) -> StoredObject:
        """The ended playlist: every segment is in the store."""
        return self._put_playlist(ended=True)

    def discard(self) -> None:
        """Delete what was published (the task failed or was stopped); errors are logged, not raised."""
        for key in reversed(self._published):
            try:
                self._store.delete(key)
            except Exception:  # cleanup after a failure: report the original error, not this one
                log.warning("could not delete streamed object %s", key, exc_info=True)
        self._published.clear()

    def _put_playlist(self, ended: bool) -> StoredObject:
        text = hls_playlist(self._entries, self._init_ref, self._plan.target_duration_s, ended)
        self._playlist_path.write_text(text, encoding="utf-8")
        return self._put(self._playlist_path, PLAYLIST_NAME, PLAYLIST_CONTENT_TYPE)

    def _put(self, path: Path, name: str, content_type: str) -> StoredObject:
        key = self._key(name)
        stored = upload(self._store, path, key, self._settings, content_type)
        if key not in self._published:
            self._published.append(key)
        return stored

    def _key(self, name: str) -> str:
        return stream_key(self._user_id, self._video_id, name)


def published_segments(store: ObjectStore, user_id: str, video_id: str) -> tuple[list[dict[str, object]], bool]:
    """The segments a streamed video has in the store so far (from its playlist), and whether it is complete.

    For a reader that did not run the task (the orchestrator relaying a remote job): items have the
    stream items' fields except ``timings_ms``. No playlist yet (or a failed stream's, deleted) gives ``[]``.
    """
    playlist_key = stream_key(user_id, video_id, PLAYLIST_NAME)
    with tempfile.TemporaryDirectory(prefix="playlist-") as tmp:
        try:
            path = store.get(playlist_key, Path(tmp) / PLAYLIST_NAME, max_bytes=MAX_PLAYLIST_BYTES)
        except StorageError as exc:
            if exc.code == "not_found":
                return [], False
            raise
        entries, ended = parse_hls_playlist(path.read_text(encoding="utf-8"))
    items = []
    for index, (ref, duration_s) in enumerate(entries):
        signed = ref.startswith(("https://", "http://"))
        name = Path(urlparse(ref).path).name if signed else ref
        items.append(
            {
                "index": index,
                "uri": store.uri(stream_key(user_id, video_id, name)),
                "url": ref if signed else None,
                "duration_s": duration_s,
                "playlist_uri": store.uri(playlist_key),
            }
        )
    return items, ended
