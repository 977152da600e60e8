"""s3:// stores with boto3 (AWS, MinIO, R2, moto): streamed ranged downloads, multipart uploads, presigned URLs."""

from __future__ import annotations

import functools
import logging
import threading
from collections.abc import Iterator
from typing import Any, BinaryIO

import boto3
from boto3.s3.transfer import TransferConfig
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError

from storage.base import BucketStore, HashingReader, ObjectInfo
from storage.config import StorageSettings
from storage.errors import StorageError

LIST_PAGE_SIZE = 1000
MAX_PRESIGN_TTL_S = 7 * 24 * 3600  # SigV4 presigned URLs are refused by S3 beyond 7 days.
DEFAULT_TRANSFER = TransferConfig(multipart_threshold=8 * 1024 * 1024, multipart_chunksize=8 * 1024 * 1024)
NOT_FOUND_CODES = {"404", "NoSuchKey", "NotFound", "NoSuchBucket"}
DENIED_CODES = {"403", "AccessDenied", "Forbidden", "InvalidAccessKeyId", "SignatureDoesNotMatch"}

_client_lock = threading.Lock()


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


class S3Store(BucketStore):
    """Objects under ``s3://bucket/prefix``."""

    def __init__(
        self,
        bucket: str,
        prefix: str,
        settings: StorageSettings,
        *,
        transfer: TransferConfig = DEFAULT_TRANSFER,
        page_size: int = LIST_PAGE_SIZE,
    ) -> None:
        super().__init__("s3", bucket, prefix)
        self._client = s3_client(settings)
        self._transfer = transfer
        self._page_size = page_size

    @staticmethod
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
                return StorageError(
                    "access_denied", f"{action} {uri}: access denied ({code}); check the S3 credentials"
                )
            return StorageError("storage_error", f"{action} {uri}: S3 error {code}: {err.get('Message', exc)}")
        if isinstance(exc, NoCredentialsError):
            return StorageError(
                "access_denied", f"{action} {uri}: no S3 credentials; set S3_AWS_ACCESS_KEY_ID/S3_AWS_SECRET_ACCESS_KEY"
            )
        if isinstance(exc, BotoCoreError):
            return StorageError("storage_unavailable", f"{action} {uri}: {exc}")
        return StorageError("storage_error", f"{action} {uri}: {type(exc).__name__}: {exc}")

    def _head(self, key: str) -> ObjectInfo:
        head = self._client.head_object(Bucket=self.bucket, Key=self._name(key))
        return ObjectInfo(key=key, size=head["ContentLength"], fingerprint=head["ETag"])

    def _download(self, key: str, expected: ObjectInfo, out: BinaryIO) -> None:
        # Ranged, parallel GETs (the transfer manager pins their ETag); an object replaced since the
        # size check shows up as a length mismatch.
        self._client.download_fileobj(self.bucket, self._name(key), out, Config=self._transfer)
        received = out.seek(0, 2)
        if received != expected.size:
            raise StorageError("storage_error", f"{self.uri(key)}: received {received} bytes, expected {expected.size}")

    def _upload(self, body: HashingReader, key: str, content_type: str | None) -> None:
        # A failed multipart upload is aborted by the transfer manager; a failed single PUT stores nothing.
        extra = {"ContentType": content_type} if content_type else {}
        self._client.upload_fileobj(body, self.bucket, self._name(key), ExtraArgs=extra, Config=self._transfer)

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        full_prefix = self._listing_prefix(prefix)
        paginator = self._client.get_paginator("list_objects_v2")
        pages = paginator.paginate(
            Bucket=self.bucket, Prefix=full_prefix, PaginationConfig={"PageSize": self._page_size}
        )
        try:
            for page in pages:
                for obj in page.get("Contents", []):
                    yield ObjectInfo(key=self._key(obj["Key"]), size=obj["Size"], fingerprint=obj["ETag"])
        except (ClientError, BotoCoreError) as exc:
            raise self._error(exc, f"{self.root_uri}/{prefix}", "list") from exc

    def delete(self, key: str) -> None:
        try:
            self._client.delete_object(Bucket=self.bucket, Key=self._name(key))
        except (ClientError, BotoCoreError) as exc:
            raise self._error(exc, self.uri(key), "delete") from exc

    def signed_url(self, key: str, ttl_s: int) -> str | None:
        params = {"Bucket": self.bucket, "Key": self._name(key)}
        try:
            return self._client.generate_presigned_url(
                "get_object", Params=params, ExpiresIn=min(ttl_s, MAX_PRESIGN_TTL_S)
            )
        except NoCredentialsError:
            self._log_unsigned_once(
                logging.WARNING, "no S3 credentials to presign URLs for %s; returning none", self.root_uri
            )
            return None
