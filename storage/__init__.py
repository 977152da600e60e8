"""Object stores (s3://, gs://, file://), single-object fetch (those plus https://, http://, data:) and avatar TARs.

``import storage`` stays light: boto3, google-cloud-storage and httpx load only when their scheme is used.
"""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlsplit

from storage.access import InputPolicy, check_input_uri, normalise_root, normalise_uri
from storage.base import ObjectInfo, ObjectStore, PutResult
from storage.config import StorageSettings
from storage.errors import StorageError

__all__ = [
    "ObjectInfo",
    "ObjectStore",
    "PutResult",
    "StorageError",
    "InputPolicy",
    "StorageSettings",
    "check_input_uri",
    "fetch",
    "normalise_root",
    "normalise_uri",
    "open_store",
]

STORE_SCHEMES = ("s3", "gs", "file")
FETCH_SCHEMES = (*STORE_SCHEMES, "https", "http", "data")


def open_store(root_uri: str, settings: StorageSettings | None = None) -> ObjectStore:
    """The store rooted at ``s3://bucket[/prefix]``, ``gs://bucket[/prefix]`` or ``file:///dir`` / ``file://./dir``;
    the root is normalised first (``normalise_uri``: a root with dot segments or encoded slashes is refused)."""
    settings = settings or StorageSettings()
    scheme = _scheme(root_uri)
    if scheme in STORE_SCHEMES:
        root_uri = normalise_uri(root_uri, what="store", prefix=True)
    if scheme == "file":
        from storage.local import LocalStore

        return LocalStore.from_uri(root_uri)
    if scheme in ("s3", "gs"):
        bucket, prefix = split_bucket_uri(root_uri)
        return _bucket_store(scheme, bucket, prefix, settings)
    raise StorageError(
        "unsupported_uri", f"store URI {root_uri!r} has an unsupported scheme; use one of {', '.join(STORE_SCHEMES)}"
    )


def fetch(
    uri: str,
    dest: Path,
    settings: StorageSettings | None = None,
    max_bytes: int | None = None,
    policy: InputPolicy | None = None,
) -> Path:
    """Download one object named by ``uri`` to ``dest`` (streamed, atomic), refusing more than ``max_bytes``.

    ``uri`` is normalised and checked first (``check_input_uri`` with ``policy``, by default the settings'
    ALLOWED_INPUT_PREFIXES and ALLOW_FILE_URIS), and the normalised URI is what is opened."""
    settings = settings or StorageSettings()
    policy = policy or InputPolicy.from_settings(settings)
    if _scheme(uri) in FETCH_SCHEMES:
        uri = check_input_uri(uri, policy)  # data: passes unchanged: it carries its bytes and reads nothing
    scheme = _scheme(uri)
    if scheme in ("s3", "gs"):
        bucket, key = split_bucket_uri(uri)
        if not key:
            raise StorageError("invalid_uri", f"{uri!r} names a bucket, not an object")
        return _bucket_store(scheme, bucket, "", settings).get(key, dest, max_bytes=max_bytes)
    if scheme == "file":
        from storage.local import fetch_file

        return fetch_file(uri, dest, max_bytes)
    if scheme in ("http", "https"):
        from storage.http import fetch_http

        return fetch_http(uri, dest, settings, max_bytes, policy)
    if scheme == "data":
        from storage.http import fetch_data_uri

        return fetch_data_uri(uri, dest, settings, max_bytes)
    raise StorageError(
        "unsupported_uri", f"URI {_short(uri)!r} has an unsupported scheme; use one of {', '.join(FETCH_SCHEMES)}"
    )


def split_bucket_uri(uri: str) -> tuple[str, str]:
    """``s3://bucket/some/key`` -> ("bucket", "some/key"); the key part may be empty."""
    parts = urlsplit(uri)
    if not parts.netloc or parts.query or parts.fragment:
        raise StorageError("invalid_uri", f"{uri!r} is not of the form {parts.scheme}://bucket[/key]")
    return parts.netloc, parts.path.lstrip("/")


def _bucket_store(scheme: str, bucket: str, prefix: str, settings: StorageSettings) -> ObjectStore:
    if scheme == "s3":
        from storage.s3 import S3Store

        return S3Store(bucket, prefix, settings)
    from storage.gcs import GCSStore

    return GCSStore(bucket, prefix, settings)


def _scheme(uri: str) -> str:
    head, sep, _ = uri.partition(":")
    return head.lower() if sep else ""


def _short(uri: str) -> str:
    return uri if len(uri) <= 80 else uri[:77] + "..."
