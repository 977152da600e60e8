"""Input files into the store, for the HTTP API, the CLI, the demo and ``modal run``: no HTTP here.

A training video goes to ``training-videos/{user_id}/{uuid}.{ext}`` (seed 000), an image or audio to
``uploads/{user_id}/{uuid}.{ext}``; the extension comes from the file's first bytes. A file over its
kind's limit is refused with ``too_large`` before anything reaches the store.
"""

from __future__ import annotations

import logging
import re
import tempfile
import uuid
from enum import Enum
from pathlib import Path
from typing import BinaryIO

from pydantic import BaseModel, Field

import handlers
from handlers.errors import TaskError
from handlers.schemas import ID_PATTERN
from storage import ObjectStore
from storage.keys import training_video_key
from storage.keys import upload_key as storage_upload_key

log = logging.getLogger(__name__)

UPLOAD_CHUNK_BYTES = 1024 * 1024
MAX_AUDIO_UPLOAD_BYTES = 200 * 1024 * 1024


class UploadKind(str, Enum):
    training_video = "training_video"
    image = "image"
    audio = "audio"


class StoredUpload(BaseModel):
    uri: str = Field(description="Pass this URI as the job's `video`, `image` or `audio`.")
    key: str
    bytes: int
    sha256: str


MAGIC = (
    (0, b"\x89PNG\r\n\x1a\n", "png"),
    (0, b"\xff\xd8\xff", "jpg"),
    (8, b"WEBP", "webp"),
    (8, b"WAVE", "wav"),
    (0, b"OggS", "ogg"),
    (0, b"fLaC", "flac"),
    (0, b"ID3", "mp3"),
    (0, b"\xff\xfb", "mp3"),
    (4, b"ftyp", "mp4"),
    (0, b"\x1aE\xdf\xa3", "webm"),
)
DEFAULT_EXTENSION = {UploadKind.training_video: "mp4", UploadKind.image: "png", UploadKind.audio: "wav"}
# The task fields that name an input file, and the kind of upload each one is.
INPUT_FIELD_KINDS = {"video": UploadKind.training_video, "image": UploadKind.image, "audio": UploadKind.audio}


def guess_extension(head: bytes, filename: str | None, kind: UploadKind) -> str:
    """The file's extension from its first bytes, else from its name, else the kind's usual one."""
    for offset, magic, ext in MAGIC:
        if head[offset : offset + len(magic)] == magic:
            return "m4a" if ext == "mp4" and kind is UploadKind.audio else ext
    suffix = Path(filename or "").suffix.lower().lstrip(".")
    return suffix if re.fullmatch(r"[a-z0-9]{1,5}", suffix) else DEFAULT_EXTENSION[kind]


def upload_limit(kind: UploadKind, settings: handlers.Settings) -> int:
    if kind is UploadKind.training_video:
        return settings.max_video_bytes
    return settings.max_image_bytes if kind is UploadKind.image else MAX_AUDIO_UPLOAD_BYTES


def upload_key(kind: UploadKind, user_id: str, ext: str) -> str:
    """``training-videos/{user_id}/{uuid}.{ext}`` for training videos (seed 000), else ``uploads/{user_id}/...``."""
    upload_id = uuid.uuid4().hex
    if kind is UploadKind.training_video:
        return training_video_key(user_id, upload_id, ext)
    return storage_upload_key(user_id, upload_id, ext)


def _check_user_id(user_id: str) -> None:
    if not re.fullmatch(ID_PATTERN, user_id):
        raise TaskError("invalid_input", f"`user_id` {user_id!r} is not an id: use letters, digits, _ and -.")


def upload_stream(
    store: ObjectStore,
    src: BinaryIO,
    *,
    kind: UploadKind,
    user_id: str,
    settings: handlers.Settings,
    filename: str | None = None,
) -> StoredUpload:
    """Copy ``src`` (refusing more than the kind's byte limit) into the store under a fresh key."""
    _check_user_id(user_id)
    limit = upload_limit(kind, settings)
    with tempfile.TemporaryDirectory(prefix="avatarctl-upload-") as tmp:
        path = Path(tmp) / "upload"
        size = 0
        with path.open("wb") as out:
            while chunk := src.read(UPLOAD_CHUNK_BYTES):
                size += len(chunk)
                if size > limit:
                    raise TaskError("too_large", f"The {kind.value} upload is over the limit of {limit} bytes.")
                out.write(chunk)
        if size == 0:
            raise TaskError("invalid_input", f"The {kind.value} upload is empty.")
        with path.open("rb") as fh:
            ext = guess_extension(fh.read(16), filename, kind)
        key = upload_key(kind, user_id, ext)
        put = store.put(path, key)
    log.info("uploaded %s (%d bytes) to %s", kind.value, put.bytes, put.uri)
    return StoredUpload(uri=put.uri, key=key, bytes=put.bytes, sha256=put.sha256)


def upload_file(
    store: ObjectStore, path: Path, *, kind: UploadKind, user_id: str, settings: handlers.Settings
) -> StoredUpload:
    """Upload a local file (the CLI's ``--video``/``--image``/``--audio`` paths)."""
    if not path.is_file():
        raise TaskError("invalid_input", f"{path} is not a file.")
    limit = upload_limit(kind, settings)
    if path.stat().st_size > limit:
        raise TaskError("too_large", f"{path} is {path.stat().st_size} bytes, over the limit of {limit} bytes.")
    with path.open("rb") as fh:
        return upload_stream(store, fh, kind=kind, user_id=user_id, settings=settings, filename=path.name)


__all__ = ["INPUT_FIELD_KINDS", "StoredUpload", "UploadKind", "guess_extension", "upload_file", "upload_stream"]
