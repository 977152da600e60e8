"""Where a task's outputs go: the request's store (or the configured default) and the uploaded object."""

from __future__ import annotations

import logging
import uuid
from pathlib import Path

from handlers.schemas import StoredObject
from handlers.settings import Settings
from storage import ObjectStore, StorageError, open_store
from storage.access import check_store_uri, normalise_prefixes, normalise_root

log = logging.getLogger(__name__)


def resolve_store(request_store: str | None, settings: Settings) -> ObjectStore:
    """The store named by the request, else ``AVATAR_STORE_URI`` (the operator's, so a file:// one is allowed).

    A request's file:// store is the worker's own disk: refused when ALLOW_FILE_URIS=0, as file:// inputs are.
    A request's store is normalised first, and must lie under ALLOWED_STORE_PREFIXES when that is set."""
    if request_store is None:
        return open_store(settings.avatar_store_uri, settings.storage)
    if request_store.lower().startswith("file:") and not settings.storage.allow_file_uris:
        raise StorageError(
            "url_refused",
            f"`store` {request_store[:80]!r} is on this worker's disk; file:// is disabled (ALLOW_FILE_URIS)",
        )
    allowed: tuple[str, ...] = ()
    if settings.storage.store_prefixes:
        allowed = (*normalise_prefixes(settings.storage.store_prefixes), normalise_root(settings.avatar_store_uri))
    return open_store(check_store_uri(request_store, allowed), settings.storage)


def upload(
    store: ObjectStore, src: Path, key: str, settings: Settings, content_type: str | None = None
) -> StoredObject:
    """Upload ``src`` as ``key`` and describe it as the contract's stored object (URL signed or null)."""
    put = store.put(src, key, content_type=content_type)
    url = store.signed_url(key, settings.storage.signed_url_ttl_s)
    return StoredObject(uri=put.uri, url=url, bytes=put.bytes, sha256=put.sha256)


def new_id() -> str:
    return uuid.uuid4().hex
