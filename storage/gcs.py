"""gs:// stores with google-cloud-storage (or gcp-storage-emulator via STORAGE_EMULATOR_HOST)."""

from __future__ import annotations

import functools
import logging
import threading
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any
from urllib.parse import quote

from google.api_core import exceptions as gexc
from google.auth.credentials import AnonymousCredentials
from google.auth.exceptions import GoogleAuthError
from google.cloud import storage as gcs

from storage.base import (
    HashingReader,
    ObjectInfo,
    ObjectStore,
    PutResult,
    atomic_file,
    check_key,
    check_prefix,
    check_size,
)
from storage.config import StorageSettings
from storage.errors import StorageError

log = logging.getLogger(__name__)

LIST_PAGE_SIZE = 1000
UPLOAD_CHUNK_BYTES = 8 * 1024 * 1024  # resumable-upload chunk held in memory; a multiple of 256 KiB
MAX_SIGNED_TTL_S = 7 * 24 * 3600  # v4 signed URLs are limited to 7 days
PUBLIC_BASE_URL = "https://storage.googleapis.com"
EMULATOR_PROJECT = "emulator"

_client_lock = threading.Lock()
_unsigned_logged: set[str] = set()


@functools.lru_cache(maxsize=8)
def _cached_client(emulator_host: str | None, project: str | None, credentials_file: str | None) -> gcs.Client:
    if emulator_host:
        endpoint = emulator_host if "://" in emulator_host else f"http://{emulator_host}"
        return gcs.Client(
            project=project or EMULATOR_PROJECT,
            credentials=AnonymousCredentials(),
            client_options={"api_endpoint": endpoint},
            use_auth_w_custom_endpoint=False,
        )
    if credentials_file:
        return gcs.Client.from_service_account_json(credentials_file, project=project)
    return gcs.Client(project=project)


@functools.lru_cache(maxsize=8)
def _signing_credentials(credentials_file: str) -> Any:
    """Service-account credentials able to sign URLs locally, or None (the reason logged) when the file can't."""
    from google.oauth2 import service_account

    try:
        return service_account.Credentials.from_service_account_file(credentials_file)
    except (OSError, ValueError, KeyError) as exc:
        log.warning("GCS credentials file %s cannot sign URLs (%s); signed URLs will be null", credentials_file, exc)
        return None


def gcs_client(settings: StorageSettings) -> gcs.Client:
    """One client per (emulator, project, credentials file)."""
    with _client_lock:
        try:
            return _cached_client(settings.gcs_emulator_host, settings.gcs_project, settings.gcs_credentials_file)
        except (GoogleAuthError, OSError, ValueError) as exc:
            raise StorageError("access_denied", f"cannot create a GCS client: {exc}") from exc


def _error(exc: Exception, uri: str, action: str) -> StorageError:
    if isinstance(exc, StorageError):
        return exc
    if isinstance(exc, gexc.NotFound):
        return StorageError("not_found", f"{uri} does not exist")
    if isinstance(exc, (gexc.Forbidden, gexc.Unauthorized, GoogleAuthError)):
        return StorageError("access_denied", f"{action} {uri}: access denied; check the GCS credentials ({exc})")
    if isinstance(exc, (gexc.ServiceUnavailable, gexc.GatewayTimeout, ConnectionError, TimeoutError)):
        return StorageError("storage_unavailable", f"{action} {uri}: {exc}")
    return StorageError("storage_error", f"{action} {uri}: {type(exc).__name__}: {exc}")


def _info(key: str, blob: gcs.Blob) -> ObjectInfo:
    return ObjectInfo(key=key, size=blob.size or 0, fingerprint=str(blob.generation or ""))


class GCSStore(ObjectStore):
    """Objects under ``gs://bucket/prefix``."""

    def __init__(
        self,
        bucket: str,
        prefix: str = "",
        settings: StorageSettings | None = None,
        *,
        page_size: int = LIST_PAGE_SIZE,
    ) -> None:
        self._settings = settings or StorageSettings()
        prefix = prefix.strip("/")
        self._name_prefix = f"{check_key(prefix)}/" if prefix else ""
        self.root_uri = f"gs://{bucket}/{prefix}".rstrip("/")
        self._client = gcs_client(self._settings)
        self._bucket = self._client.bucket(bucket)
        self._page_size = page_size

    def _blob(self, key: str) -> gcs.Blob:
        blob = self._bucket.blob(self._name_prefix + check_key(key))
        blob.chunk_size = UPLOAD_CHUNK_BYTES
        return blob

    def get(self, key: str, dest: Path, max_bytes: int | None = None) -> Path:
        blob, uri = self._blob(key), self.uri(key)
        try:
            blob.reload()
            check_size(blob.size or 0, max_bytes, uri)
            with atomic_file(dest) as fh:
                # The generation pins the object whose size was checked; the client verifies its checksum.
                blob.download_to_file(fh, if_generation_match=blob.generation)
        except StorageError:
            raise
        except Exception as exc:
            raise _error(exc, uri, "download") from exc
        return dest

    def put(self, src: Path, key: str, content_type: str | None = None) -> PutResult:
        blob, uri = self._blob(key), self.uri(key)
        with src.open("rb") as fh:
            reader = HashingReader(fh)
            try:
                # An upload that fails before its final request never becomes an object.
                blob.upload_from_file(reader, size=reader.size, content_type=content_type, rewind=False)
            except Exception as exc:
                err = _error(exc, uri, "upload")
                if err.code == "storage_error":
                    err = StorageError("upload_failed", err.message)
                raise err from exc
            return PutResult(uri=uri, bytes=reader.size, sha256=reader.hexdigest())

    def stat(self, key: str) -> ObjectInfo:
        blob = self._blob(key)
        try:
            blob.reload()
        except Exception as exc:
            raise _error(exc, self.uri(key), "check") from exc
        return _info(key, blob)

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        full_prefix = self._name_prefix + check_prefix(prefix)
        try:
            for blob in self._client.list_blobs(self._bucket, prefix=full_prefix, page_size=self._page_size):
                yield _info(blob.name[len(self._name_prefix) :], blob)
        except gexc.GoogleAPIError as exc:
            raise _error(exc, f"{self.root_uri}/{prefix}", "list") from exc

    def delete(self, key: str) -> None:
        try:
            self._blob(key).delete()
        except gexc.NotFound:
            pass
        except Exception as exc:
            raise _error(exc, self.uri(key), "delete") from exc

    def signed_url(self, key: str, ttl_s: int) -> str | None:
        blob = self._blob(key)
        key_file = self._settings.gcs_credentials_file
        signer = _signing_credentials(key_file) if key_file else None
        if signer is not None:
            expiration = timedelta(seconds=min(ttl_s, MAX_SIGNED_TTL_S))
            return blob.generate_signed_url(version="v4", expiration=expiration, method="GET", credentials=signer)
        if self._settings.gcs_public:
            return f"{PUBLIC_BASE_URL}/{self._bucket.name}/{quote(blob.name, safe='/~')}"
        if self.root_uri not in _unsigned_logged:
            _unsigned_logged.add(self.root_uri)
            log.info(
                "no signed URLs for %s: set GCS_CREDENTIALS_FILE to a service-account key, or GCS_PUBLIC=1 for a "
                "public bucket; result URLs will be null",
                self.root_uri,
            )
        return None
