"""Where a task's outputs go: the request's store (or the configured default) and the uploaded object."""

from __future__ import annotations

import logging
import uuid
from pathlib import Path

from handlers.schemas import StoredObject
from handlers.settings import Settings
from storage import ObjectStore, open_store

log = logging.getLogger(__name__)


def resolve_store(request_store: str | None, settings: Settings) -> ObjectStore:
    """The store named by the request, else ``AVATAR_STORE_URI``."""
    return open_store(request_store or settings.avatar_store_uri, settings.storage)


def upload(
    store: ObjectStore, src: Path, key: str, settings: Settings, content_type: str | None = None
) -> StoredObject:
    """Upload ``src`` as ``key`` and describe it as the contract's stored object (URL signed or null)."""
    put = store.put(src, key, content_type=content_type)
    url = store.signed_url(key, settings.storage.signed_url_ttl_s)
    return StoredObject(uri=put.uri, url=url, bytes=put.bytes, sha256=put.sha256)


def new_id() -> str:
    return uuid.uuid4().hex
