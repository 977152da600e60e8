"""The store's outputs through the API itself, for file:// stores (which cannot sign URLs of their own).

Every result the API answers (jobs, events, seed routes) gets, for each stored object of the configured
file:// store whose ``url`` is null, a signed, expiring URL under the API's own address:

    {base}/files/{expires}/{signature}/{key}

``signature`` is the HMAC-SHA256 (URL_SIGNING_SECRET, else a key generated once under
``{AVATARCTL_HOME}/secrets/``) of the expiry and the key. A streamed video's playlist is signed for its
folder, so the relative segment names inside it resolve to URLs the same signature covers. The route is
public (a browser's ``<video src>`` sends no bearer token): the URL is the capability, handed out only in
answers to callers who may see the job (tenancy as for jobs). ``GET`` serves byte ranges (206), so a
browser can seek in a video.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import hmac
import json
import logging
import math
import mimetypes
import os
import secrets
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import unquote

from fastapi import APIRouter
from fastapi.responses import FileResponse

from orchestrator.api.errors import ApiError
from orchestrator.core.config import OrchestratorSettings
from storage import StorageError
from storage.base import check_key
from storage.local import LocalStore

log = logging.getLogger(__name__)

FILES_PREFIX = "/files"
SECRET_FILE = "url-signing.key"
EXPIRY_STEP_S = 300  # expiries are rounded up to this step, so a page polling a job keeps the same URLs
PLAYLIST_SUFFIX = ".m3u8"
CONTENT_TYPES = {
    ".mp4": "video/mp4",
    ".m4s": "video/iso.segment",
    ".m3u8": "application/vnd.apple.mpegurl",
    ".tar": "application/x-tar",
    ".png": "image/png",
    ".jpg": "image/jpeg",
    ".jpeg": "image/jpeg",
    ".webp": "image/webp",
    ".wav": "audio/wav",
    ".json": "application/json",
}


def signing_secret(settings: OrchestratorSettings) -> bytes:
    """URL_SIGNING_SECRET, else the key in ``{AVATARCTL_HOME}/secrets/url-signing.key`` (made once, mode 0600)."""
    if settings.url_signing_secret:
        return settings.url_signing_secret.encode()
    path = settings.secrets_dir / SECRET_FILE
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return _written_key(path)
    with os.fdopen(fd, "wb") as out:
        out.write(secrets.token_hex(32).encode())
    log.info("generated the API's URL-signing key at %s (set URL_SIGNING_SECRET to share one between replicas)", path)
    return _written_key(path)


def _written_key(path: Path, wait_s: float = 2.0) -> bytes:
    """The key in ``path``, waiting briefly while another process that just created the file writes it."""
    give_up = time.monotonic() + wait_s
    while not (key := path.read_bytes().strip()) and time.monotonic() < give_up:
        time.sleep(0.05)
    if not key:
        raise RuntimeError(f"{path} is empty: delete it (a new key is made) or set URL_SIGNING_SECRET")
    return key


@dataclass(frozen=True)
class FileSigner:
    """Signs and checks ``/files/...`` URLs of one file:// store's objects (the key is read or made when first
    needed: an app built only for its OpenAPI document writes nothing)."""

    store: LocalStore
    settings: OrchestratorSettings
    ttl_s: int

    @functools.cached_property
    def secret(self) -> bytes:
        return signing_secret(self.settings)

    def _signature(self, expires: int, scope: str) -> str:
        digest = hmac.new(self.secret, f"{expires}\n{scope}".encode(), hashlib.sha256).digest()
        return base64.urlsafe_b64encode(digest).decode().rstrip("=")

    def url(self, base_url: str, key: str, now: float | None = None) -> str:
        """The signed URL of ``key`` (a playlist's covers its folder: the segments it names)."""
        check_key(key)
        expires = math.ceil(((now or time.time()) + self.ttl_s) / EXPIRY_STEP_S) * EXPIRY_STEP_S
        scope = key.rpartition("/")[0] + "/" if key.endswith(PLAYLIST_SUFFIX) else key
        return f"{base_url.rstrip('/')}{FILES_PREFIX}/{expires}/{self._signature(expires, scope)}/{key}"

    def check(self, expires: int, signature: str, key: str) -> Path:
        """The file of a signed URL; ApiError 403 (bad signature), 410 (expired) or 404 (no such object)."""
        try:
            check_key(key)
        except StorageError as exc:
            raise ApiError(400, "invalid_key", exc.message) from None
        scopes = (key, key.rpartition("/")[0] + "/")
        if not any(hmac.compare_digest(signature, self._signature(expires, scope)) for scope in scopes):
            raise ApiError(
                403, "invalid_signature", "This file URL's signature does not match: use a URL the API gave."
            )
        if expires < time.time():
            raise ApiError(410, "url_expired", "This file URL has expired: read the job again for a fresh one.")
        path = self.store.local_path(key)
        if not path.is_file():
            raise ApiError(404, "not_found", f"No object {key!r} in the store (deleted, or not made yet).")
        return path

    def sign_output(self, value: Any, base_url: str) -> Any:
        """``value`` (a job's output, an event's data) with each stored object of this store given its URL."""
        if isinstance(value, list):
            return [self.sign_output(item, base_url) for item in value]
        if not isinstance(value, dict):
            return value
        signed = {name: self.sign_output(item, base_url) for name, item in value.items()}
        key = self._key_of(value.get("uri"))
        if key is not None and "url" in value and value["url"] is None:
            signed["url"] = self.url(base_url, key)
        return signed

    def _key_of(self, uri: Any) -> str | None:
        root = self.store.root_uri.rstrip("/") + "/"
        if not isinstance(uri, str) or not uri.startswith(root):
            return None
        try:
            return check_key(unquote(uri[len(root) :]))
        except StorageError:
            return None


def file_signer(settings: OrchestratorSettings, store_uri: str, ttl_s: int) -> FileSigner | None:
    """The signer of the configured store when it is file:// (other stores sign their own URLs), else None."""
    if not store_uri.lower().startswith("file:"):
        return None
    return FileSigner(LocalStore.from_uri(store_uri), settings, ttl_s)


def content_type(key: str) -> str:
    suffix = Path(key).suffix.lower()
    return CONTENT_TYPES.get(suffix) or mimetypes.guess_type(key)[0] or "application/octet-stream"


def add_file_routes(router: APIRouter, signer: FileSigner | None) -> None:
    """``GET``/``HEAD /files/{expires}/{signature}/{key}`` (public: the signature authenticates the URL)."""

    def signed_file(expires: int, signature: str, key: str) -> FileResponse:
        """The object a signed URL from a result names (file:// stores only; other stores sign their own URLs)."""
        if signer is None:
            raise ApiError(404, "not_found", "The store is not file://: its results carry the store's own URLs.")
        path = signer.check(expires, signature, key)
        disposition = "attachment" if key.endswith(".tar") else "inline"
        return FileResponse(
            path,
            media_type=content_type(key),
            filename=Path(key).name,
            content_disposition_type=disposition,
            headers={"Cache-Control": "private, max-age=300"},
        )

    path = FILES_PREFIX + "/{expires}/{signature}/{key:path}"
    summary = "A stored output by its signed URL (byte ranges supported)"
    router.add_api_route(
        path, signed_file, methods=["GET"], response_class=FileResponse, tags=["files"], summary=summary
    )
    router.add_api_route(path, signed_file, methods=["HEAD"], include_in_schema=False, name="signed_file_head")


async def signed_sse(chunks: AsyncIterator[str], signer: FileSigner | None, base_url: str) -> AsyncIterator[str]:
    """Server-Sent Events text with the stored objects in each event's data given their signed URLs."""
    async for chunk in chunks:
        if signer is None or not chunk.startswith("event:"):
            yield chunk
            continue
        head, _, data = chunk.rstrip("\n").partition("\ndata: ")
        signed = signer.sign_output(json.loads(data), base_url)
        yield f"{head}\ndata: {json.dumps(signed, separators=(',', ':'))}\n\n"
