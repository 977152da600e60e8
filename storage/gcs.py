"""gs:// stores with google-cloud-storage (or gcp-storage-emulator via STORAGE_EMULATOR_HOST)."""

from __future__ import annotations

import functools
import logging
import threading
from collections.abc import Iterator
from datetime import timedelta
from typing import Any, BinaryIO
from urllib.parse import quote

from google.api_core import exceptions as gexc
from google.auth.credentials import AnonymousCredentials
from google.auth.exceptions import GoogleAuthError
from google.cloud import storage as gcs

from storage.base import BucketStore, HashingReader, ObjectInfo
from storage.config import StorageSettings
from storage.errors import StorageError

log = logging.getLogger(__name__)

LIST_PAGE_SIZE = 1000
UPLOAD_CHUNK_BYTES = 8 * 1024 * 1024  # resumable-upload chunk held in memory; a multiple of 256 KiB
MAX_SIGNED_TTL_S = 7 * 24 * 3600  # v4 signed URLs are limited to 7 days
PUBLIC_BASE_URL = "https://storage.googleapis.com"
EMULATOR_PROJECT = "emulator"

_client_lock = threading.Lock()


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


def _info(key: str, blob: gcs.Blob) -> ObjectInfo:
    return ObjectInfo(key=key, size=blob.size or 0, fingerprint=str(blob.generation or ""))


class GCSStore(BucketStore):
    """Objects under ``gs://bucket/prefix``."""

    def __init__(
        self,
        bucket: str,
        prefix: str,
        settings: StorageSettings,
        *,
        page_size: int = LIST_PAGE_SIZE,
    ) -> None:
        super().__init__("gs", bucket, prefix)
        self._settings = settings
        self._client = gcs_client(self._settings)
        self._bucket = self._client.bucket(bucket)
        self._page_size = page_size

    @staticmethod
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

    def _blob(self, key: str) -> gcs.Blob:
        blob = self._bucket.blob(self._name(key))
        blob.chunk_size = UPLOAD_CHUNK_BYTES
        return blob

    def _head(self, key: str) -> ObjectInfo:
        blob = self._blob(key)
        blob.reload()
        return _info(key, blob)

    def _download(self, key: str, expected: ObjectInfo, out: BinaryIO) -> None:
        # The generation pins the object whose size was checked; the client verifies its checksum.
        generation = int(expected.fingerprint) if expected.fingerprint else None
        self._blob(key).download_to_file(out, if_generation_match=generation)

    def _upload(self, body: HashingReader, key: str, content_type: str | None) -> None:
        # An upload that fails before its final request never becomes an object.
        self._blob(key).upload_from_file(body, size=body.size, content_type=content_type, rewind=False)

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        full_prefix = self._listing_prefix(prefix)
        try:
            for blob in self._client.list_blobs(self._bucket, prefix=full_prefix, page_size=self._page_size):
                yield _info(self._key(blob.name), blob)
        except gexc.GoogleAPIError as exc:
            raise self._error(exc, f"{self.root_uri}/{prefix}", "list") from exc

    def delete(self, key: str) -> None:
        try:
            self._blob(key).delete()
        except gexc.NotFound:
            pass
        except Exception as exc:
            raise self._error(exc, self.uri(key), "delete") from exc

    def signed_url(self, key: str, ttl_s: int) -> str | None:
        blob = self._blob(key)
        key_file = self._settings.gcs_credentials_file
        signer = _signing_credentials(key_file) if key_file else None
        if signer is not None:
            expiration = timedelta(seconds=min(ttl_s, MAX_SIGNED_TTL_S))
            return blob.generate_signed_url(version="v4", expiration=expiration, method="GET", credentials=signer)
        if self._settings.gcs_public:
            return f"{PUBLIC_BASE_URL}/{self._bucket.name}/{quote(blob.name, safe='/~')}"
        self._log_unsigned_once(
            logging.INFO,
            "no signed URLs for %s: set GCS_CREDENTIALS_FILE to a service-account key, or GCS_PUBLIC=1 for a "
            "public bucket; result URLs will be null",
            self.root_uri,
        )
        return None
