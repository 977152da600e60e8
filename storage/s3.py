"""s3:// stores with boto3 (AWS, MinIO, R2, moto): streamed ranged downloads, multipart uploads, presigned URLs."""

from __future__ import annotations

import functools
import logging
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
from boto3.s3.transfer import TransferConfig
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError

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
MAX_PRESIGN_TTL_S = 7 * 24 * 3600  # SigV4 presigned URLs are refused by S3 beyond 7 days.
DEFAULT_TRANSFER = TransferConfig(multipart_threshold=8 * 1024 * 1024, multipart_chunksize=8 * 1024 * 1024)
NOT_FOUND_CODES = {"404", "NoSuchKey", "NotFound", "NoSuchBucket"}
DENIED_CODES = {"403", "AccessDenied", "Forbidden", "InvalidAccessKeyId", "SignatureDoesNotMatch"}

_client_lock = threading.Lock()
_unsigned_logged: set[str] = set()


@functools.lru_cache(maxsize=16)
def _cached_client(endpoint: str | None, region: str | None, key_id: str | None, secret: str | None) -> Any:
    session = boto3.session.Session(aws_access_key_id=key_id, aws_secret_access_key=secret, region_name=region)
    # Path-style addressing works with every S3-compatible server (MinIO, R2, moto) behind a custom endpoint.
    addressing = {"addressing_style": "path"} if endpoint else {}
    config = Config(retries={"max_attempts": 5, "mode": "standard"}, s3=addressing, signature_version="s3v4")
    return session.client("s3", endpoint_url=endpoint, config=config)


def s3_client(settings: StorageSettings) -> Any:
    """One boto3 S3 client per (endpoint, region, credentials); clients are thread-safe, sessions are not."""
    with _client_lock:
        return _cached_client(
            settings.s3_endpoint_url, settings.s3_region, settings.s3_access_key_id, settings.s3_secret_access_key
        )


def _error(exc: Exception, uri: str, action: str) -> StorageError:
    if isinstance(exc, StorageError):
        return exc
    if isinstance(exc, ClientError):
        err = exc.response.get("Error", {})
        code = str(err.get("Code", ""))
        if code in NOT_FOUND_CODES:
            what = "its bucket does not exist" if code == "NoSuchBucket" else "no such object"
            return StorageError("not_found", f"{uri} does not exist ({what})")
        if code in DENIED_CODES:
            return StorageError("access_denied", f"{action} {uri}: access denied ({code}); check the S3 credentials")
        return StorageError("storage_error", f"{action} {uri}: S3 error {code}: {err.get('Message', exc)}")
    if isinstance(exc, NoCredentialsError):
        return StorageError(
            "access_denied", f"{action} {uri}: no S3 credentials; set S3_AWS_ACCESS_KEY_ID/S3_AWS_SECRET_ACCESS_KEY"
        )
    if isinstance(exc, BotoCoreError):
        return StorageError("storage_unavailable", f"{action} {uri}: {exc}")
    return StorageError("storage_error", f"{action} {uri}: {type(exc).__name__}: {exc}")


class S3Store(ObjectStore):
    """Objects under ``s3://bucket/prefix``."""

    def __init__(
        self,
        bucket: str,
        prefix: str = "",
        settings: StorageSettings | None = None,
        *,
        transfer: TransferConfig = DEFAULT_TRANSFER,
        page_size: int = LIST_PAGE_SIZE,
    ) -> None:
        prefix = prefix.strip("/")
        self.bucket = bucket
        self._name_prefix = f"{check_key(prefix)}/" if prefix else ""
        self.root_uri = f"s3://{bucket}/{prefix}".rstrip("/")
        self._client = s3_client(settings or StorageSettings())
        self._transfer = transfer
        self._page_size = page_size

    def _name(self, key: str) -> str:
        return self._name_prefix + check_key(key)

    def get(self, key: str, dest: Path, max_bytes: int | None = None) -> Path:
        name, uri = self._name(key), self.uri(key)
        try:
            head = self._client.head_object(Bucket=self.bucket, Key=name)
            check_size(head["ContentLength"], max_bytes, uri)
            with atomic_file(dest) as fh:
                # Ranged, parallel GETs (the transfer manager pins their ETag); an object replaced since the
                # size check shows up as a length mismatch.
                self._client.download_fileobj(self.bucket, name, fh, Config=self._transfer)
                received = fh.seek(0, 2)
                if received != head["ContentLength"]:
                    raise StorageError(
                        "storage_error", f"{uri}: received {received} bytes, expected {head['ContentLength']}"
                    )
        except StorageError:
            raise
        except Exception as exc:
            raise _error(exc, uri, "download") from exc
        return dest

    def put(self, src: Path, key: str, content_type: str | None = None) -> PutResult:
        name, uri = self._name(key), self.uri(key)
        extra = {"ContentType": content_type} if content_type else {}
        with src.open("rb") as fh:
            reader = HashingReader(fh)
            try:
                # A failed multipart upload is aborted by the transfer manager; a failed single PUT stores nothing.
                self._client.upload_fileobj(reader, self.bucket, name, ExtraArgs=extra, Config=self._transfer)
            except Exception as exc:
                err = _error(exc, uri, "upload")
                if err.code == "storage_error":
                    err = StorageError("upload_failed", err.message)
                raise err from exc
            return PutResult(uri=uri, bytes=reader.size, sha256=reader.hexdigest())

    def stat(self, key: str) -> ObjectInfo:
        try:
            head = self._client.head_object(Bucket=self.bucket, Key=self._name(key))
        except (ClientError, BotoCoreError) as exc:
            raise _error(exc, self.uri(key), "check") from exc
        return ObjectInfo(key=key, size=head["ContentLength"], fingerprint=head["ETag"])

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        full_prefix = self._name_prefix + check_prefix(prefix)
        paginator = self._client.get_paginator("list_objects_v2")
        pages = paginator.paginate(
            Bucket=self.bucket, Prefix=full_prefix, PaginationConfig={"PageSize": self._page_size}
        )
        try:
            for page in pages:
                for obj in page.get("Contents", []):
                    key = obj["Key"][len(self._name_prefix) :]
                    yield ObjectInfo(key=key, size=obj["Size"], fingerprint=obj["ETag"])
        except (ClientError, BotoCoreError) as exc:
            raise _error(exc, f"{self.root_uri}/{prefix}", "list") from exc

    def delete(self, key: str) -> None:
        try:
            self._client.delete_object(Bucket=self.bucket, Key=self._name(key))
        except (ClientError, BotoCoreError) as exc:
            raise _error(exc, self.uri(key), "delete") from exc

    def signed_url(self, key: str, ttl_s: int) -> str | None:
        params = {"Bucket": self.bucket, "Key": self._name(key)}
        try:
            return self._client.generate_presigned_url(
                "get_object", Params=params, ExpiresIn=min(ttl_s, MAX_PRESIGN_TTL_S)
            )
        except NoCredentialsError:
            if self.root_uri not in _unsigned_logged:
                _unsigned_logged.add(self.root_uri)
                log.warning("no S3 credentials to presign URLs for %s; returning none", self.root_uri)
            return None
