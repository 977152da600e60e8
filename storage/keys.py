"""Object keys of the layouts shared with the existing backend (seed 000)."""

from __future__ import annotations

AVATARS_PREFIX = "avatars/"
VIDEOS_PREFIX = "generated-videos/"
EMOTIONS_PREFIX = "emotions/"
TRAINING_VIDEOS_PREFIX = "training-videos/"
UPLOADS_PREFIX = "uploads/"
LIVETALKING_PREFIX = "livetalking/"


def avatar_key(user_id: str, avatar_id: str) -> str:
    return f"{AVATARS_PREFIX}{user_id}/{avatar_id}.tar"


def livetalking_key(user_id: str, avatar_id: str, model: str) -> str:
    """An avatar exported for LiveTalking's ``model`` loader (apart from ``avatars/``: not one of our avatars)."""
    return f"{LIVETALKING_PREFIX}{user_id}/{model}/{avatar_id}.tar"


def video_key(user_id: str, video_id: str) -> str:
    return f"{VIDEOS_PREFIX}{user_id}/{video_id}.mp4"


def stream_key(user_id: str, video_id: str, name: str) -> str:
    """A streamed video's HLS playlist, init segment and media segments, next to its mp4."""
    return f"{VIDEOS_PREFIX}{user_id}/{video_id}/stream/{name}"


def emotion_key(user_id: str, render_id: str, emotion: str, ext: str) -> str:
    return f"{EMOTIONS_PREFIX}{user_id}/{render_id}_{emotion}.{ext}"


def training_video_key(user_id: str, upload_id: str, ext: str = "mp4") -> str:
    return f"{TRAINING_VIDEOS_PREFIX}{user_id}/{upload_id}.{ext}"


def upload_key(user_id: str, upload_id: str, ext: str) -> str:
    """Inputs uploaded by the API, the CLI or `modal run` before a job names them (``ext`` without a dot)."""
    return f"{UPLOADS_PREFIX}{user_id}/{upload_id}.{ext}"


def parse_avatar_key(key: str) -> tuple[str, str] | None:
    """``avatars/{user_id}/{avatar_id}.tar`` -> (user_id, avatar_id); None for any other key."""
    if not key.startswith(AVATARS_PREFIX) or not key.endswith(".tar"):
        return None
    parts = key[len(AVATARS_PREFIX) : -len(".tar")].split("/")
    if len(parts) != 2 or not all(parts):
        return None
    return parts[0], parts[1]
