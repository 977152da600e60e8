"""Input files into the store, for the HTTP API, the CLI, the demo and ``modal run``: no HTTP here.

A training video goes to ``training-videos/{user_id}/{uuid}.{ext}`` (seed 000), an image or audio to
``uploads/{user_id}/{uuid}.{ext}``; the extension comes from the file's first bytes. A file over its
kind's limit is refused with ``too_large`` before anything reaches the store.

Also the input policy of submitted jobs: large ``data:`` inputs are stored and passed by URI
(``stage_inline_data``; content-addressed, so an idempotent retry names the same object); which input URIs a
request may name is ``orchestrator.core.input_policy``'s.
"""

from __future__ import annotations

import hashlib
import logging
import re
import tempfile
import uuid
from collections.abc import Callable
from enum import Enum
from pathlib import Path
from typing import Any, BinaryIO

from pydantic import BaseModel, Field

import handlers
from handlers.errors import TaskError
from handlers.schemas import DEFAULT_USER_ID, ID_PATTERN
from storage import ObjectStore, fetch
from storage.keys import training_video_key
from storage.keys import upload_key as storage_upload_key

log = logging.getLogger(__name__)

UPLOAD_CHUNK_BYTES = 1024 * 1024
MAX_AUDIO_UPLOAD_BYTES = 200 * 1024 * 1024
MULTIPART_ENVELOPE_BYTES = 64 * 1024  # form fields and part headers around an uploaded file


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


def multipart_limit(settings: handlers.Settings, *kinds: UploadKind) -> int:
    """The request body limit of a multipart route taking one file of these kinds (plus its envelope)."""
    return max(upload_limit(kind, settings) for kind in kinds) + MULTIPART_ENVELOPE_BYTES


def upload_key(kind: UploadKind, user_id: str, ext: str, upload_id: str | None = None) -> str:
    """``training-videos/{user_id}/{id}.{ext}`` for training videos (seed 000), else ``uploads/{user_id}/...``;
    the id is a fresh uuid unless given."""
    upload_id = upload_id or uuid.uuid4().hex
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
    content_addressed: bool = False,
) -> StoredUpload:
    """Copy ``src`` (refusing more than the kind's byte limit) into the store under a fresh key (or, when
    ``content_addressed``, a key named by the bytes' SHA-256)."""
    _check_user_id(user_id)
    limit = upload_limit(kind, settings)
    with tempfile.TemporaryDirectory(prefix="avatarctl-upload-") as tmp:
        path = Path(tmp) / "upload"
        size, digest = 0, hashlib.sha256()
        with path.open("wb") as out:
            while chunk := src.read(UPLOAD_CHUNK_BYTES):
                size += len(chunk)
                if size > limit:
                    raise TaskError("too_large", f"The {kind.value} upload is over the limit of {limit} bytes.")
                out.write(chunk)
                digest.update(chunk)
        if size == 0:
            raise TaskError("invalid_input", f"The {kind.value} upload is empty.")
        with path.open("rb") as fh:
            ext = guess_extension(fh.read(16), filename, kind)
        key = upload_key(kind, user_id, ext, digest.hexdigest()[:32] if content_addressed else None)
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


def stage_inline_data(
    payload: dict[str, Any], store: Callable[[], ObjectStore], settings: handlers.Settings, max_inline_bytes: int
) -> dict[str, Any]:
    """``payload`` with each ``data:`` input longer than ``max_inline_bytes`` stored in ``store()`` (opened only
    then) and named by its URI, so job rows and queues carry a URI, not megabytes of base64."""
    staged = dict(payload)
    user_id = str(payload.get("user_id") or DEFAULT_USER_ID)
    for name, kind in INPUT_FIELD_KINDS.items():
        value = payload.get(name)
        if not (isinstance(value, str) and value.startswith("data:") and len(value) > max_inline_bytes):
            continue
        with tempfile.TemporaryDirectory(prefix="avatarctl-inline-") as tmp:
            path = fetch(value, Path(tmp) / "inline", settings.storage, upload_limit(kind, settings))
            with path.open("rb") as fh:
                upload = upload_stream(
                    store(), fh, kind=kind, user_id=user_id, settings=settings, content_addressed=True
                )
        staged[name] = upload.uri
    return staged


def own_upload_prefixes(store_uri: str, user_id: str | None) -> tuple[str, ...]:
    """Where a user's own uploads lie in the store (``uploads/{user_id}/``, ``training-videos/{user_id}/``)."""
    if not user_id:
        return ()
    root = store_uri.rstrip("/")
    return tuple(f"{root}/{key.rsplit('/', 1)[0]}/" for key in (upload_key(k, user_id, "x") for k in UploadKind))


__all__ = [
    "INPUT_FIELD_KINDS",
    "StoredUpload",
    "UploadKind",
    "guess_extension",
    "own_upload_prefixes",
    "stage_inline_data",
    "upload_file",
    "upload_stream",
]
