"""The object-store interface every scheme implements, and the helpers the schemes share (BucketStore: s3, gs)."""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import tempfile
from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from storage.errors import StorageError

COPY_CHUNK_BYTES = 1024 * 1024
TEMP_SUFFIX = ".part"


@dataclass(frozen=True)
class PutResult:
    uri: str
    bytes: int
    sha256: str


@dataclass(frozen=True)
class ObjectInfo:
    key: str
    size: int
    # Changes whenever the object is replaced: the S3 ETag, the GCS generation, size/mtime/inode for file://.
    fingerprint: str = ""


class ObjectStore(ABC):
    """A bucket (or directory) addressed by keys relative to a root URI such as ``s3://bucket/prefix``."""

    root_uri: str

    def uri(self, key: str) -> str:
        """The full URI of ``key`` under this store's root."""
        return f"{self.root_uri.rstrip('/')}/{check_key(key)}"

    @abstractmethod
    def get(self, key: str, dest: Path, max_bytes: int | None = None) -> Path:
        """Stream the object to ``dest`` (written atomically); StorageError ``not_found`` when absent,
        ``too_large`` when it is bigger than ``max_bytes``."""

    @abstractmethod
    def put(self, src: Path, key: str, content_type: str | None = None) -> PutResult:
        """Upload a local file; a failed upload leaves no object behind."""

    @abstractmethod
    def stat(self, key: str) -> ObjectInfo:
        """Size and fingerprint of one object, from a HEAD-like call; StorageError ``not_found`` when absent."""

    def exists(self, key: str) -> bool:
        try:
            self.stat(key)
        except StorageError as exc:
            if exc.code == "not_found":
                return False
            raise
        return True

    @abstractmethod
    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        """Objects whose key starts with ``prefix`` (keys relative to the root)."""

    @abstractmethod
    def delete(self, key: str) -> None:
        """Remove the object; deleting a missing object is not an error."""

    @abstractmethod
    def signed_url(self, key: str, ttl_s: int) -> str | None:
        """A URL a browser can fetch, or None (with the reason logged) when the store cannot sign."""


def check_key(key: str) -> str:
    """``key`` if it is a relative object key that stays under the store root; else StorageError ``invalid_key``."""
    problem = _key_problem(key)
    if problem:
        raise StorageError("invalid_key", f"object key {key!r} {problem}")
    return key


def check_prefix(prefix: str) -> str:
    """A listing prefix: empty, or a key (a trailing ``/`` allowed)."""
    if prefix:
        check_key(prefix[:-1] if prefix.endswith("/") else prefix)
    return prefix


def _key_problem(key: str) -> str | None:
    if not key:
        return "is empty"
    if "\x00" in key or "\\" in key:
        return "contains a NUL byte or a backslash"
    if key.startswith("/"):
        return "is absolute; keys are relative to the store root"
    if any(part in ("", ".", "..") for part in key.split("/")):
        return "has an empty, '.' or '..' path segment; keys must not escape the store root"
    return None


def check_size(size: int, max_bytes: int | None, uri: str) -> None:
    """StorageError ``too_large`` when ``size`` exceeds ``max_bytes`` (None: no limit)."""
    if max_bytes is not None and size > max_bytes:
        raise StorageError("too_large", f"{uri} is {size} bytes, over the limit of {max_bytes} bytes")


@contextlib.contextmanager
def atomic_file(dest: Path) -> Iterator[BinaryIO]:
    """A temp file next to ``dest`` that is renamed onto ``dest`` only when the block succeeds."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=TEMP_SUFFIX)
    try:
        with os.fdopen(fd, "wb") as fh:
            yield fh
        os.replace(tmp_name, dest)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp_name)
        raise


def is_temp_name(name: str) -> bool:
    """Whether ``name`` is one of :func:`atomic_file`'s in-progress temp files."""
    return name.startswith(".") and name.endswith(TEMP_SUFFIX)


def copy_limited(src: BinaryIO, dst: BinaryIO, max_bytes: int | None, uri: str) -> int:
    """Copy ``src`` to ``dst`` in chunks, refusing (``too_large``) once more than ``max_bytes`` arrive."""
    total = 0
    while chunk := src.read(COPY_CHUNK_BYTES):
        total += len(chunk)
        if max_bytes is not None and total > max_bytes:
            raise StorageError("too_large", f"{uri} is over the limit of {max_bytes} bytes")
        dst.write(chunk)
    return total


class HashingReader:
    """A seekable read-only view of a file that computes its sha256 as the bytes are first read.

    Upload libraries may read a body twice (a checksum pass, a retry after a seek back); only bytes past
    the furthest point already hashed are hashed, so the digest is right whatever the read pattern.
    """

    def __init__(self, fh: BinaryIO) -> None:
        self._fh = fh
        self._hash = hashlib.sha256()
        self._hashed_upto = 0
        self.size = os.fstat(fh.fileno()).st_size

    def read(self, size: int | None = -1) -> bytes:
        start = self._fh.tell()
        data = self._fh.read(size)
        self._absorb(start, data)
        return data

    def _absorb(self, start: int, data: bytes) -> None:
        end = start + len(data)
        if start <= self._hashed_upto < end:
            self._hash.update(data[self._hashed_upto - start :])
            self._hashed_upto = end

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        return self._fh.seek(offset, whence)

    def tell(self) -> int:
        return self._fh.tell()

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def fileno(self) -> int:
        return self._fh.fileno()

    def close(self) -> None:
        """The caller owns the underlying file; uploaders closing the body must not close it."""

    @property
    def closed(self) -> bool:
        return self._fh.closed

    def hexdigest(self) -> str:
        """The sha256 of the whole file, hashing whatever the uploader skipped."""
        if self._hashed_upto < self.size:
            position = self._fh.tell()
            self._fh.seek(self._hashed_upto)
            while chunk := self._fh.read(COPY_CHUNK_BYTES):
                self._absorb(self._hashed_upto, chunk)
            self._fh.seek(position)
        return self._hash.hexdigest()


# --- what the bucket stores (s3://, gs://) share ------------------------------------------------------

_unsigned_logged: set[str] = set()


class BucketStore(ObjectStore):
    """Objects stored as ``{prefix}/{key}`` in ``bucket``; the root URI is ``{scheme}://bucket/prefix``."""

    def __init__(self, scheme: str, bucket: str, prefix: str) -> None:
        prefix = prefix.strip("/")
        self.bucket = bucket
        self._name_prefix = f"{check_key(prefix)}/" if prefix else ""
        self.root_uri = f"{scheme}://{bucket}/{prefix}".rstrip("/")

    def _name(self, key: str) -> str:
        """The object's name in the bucket."""
        return self._name_prefix + check_key(key)

    def _listing_prefix(self, prefix: str) -> str:
        return self._name_prefix + check_prefix(prefix)

    def _key(self, name: str) -> str:
        """The key of a listed object's name."""
        return name[len(self._name_prefix) :]

    @staticmethod
    @abstractmethod
    def _error(exc: Exception, uri: str, action: str) -> StorageError:
        """The StorageError (with its error_code) for a client library's exception."""

    @abstractmethod
    def _head(self, key: str) -> ObjectInfo:
        """The object's size and fingerprint (client exceptions propagate)."""

    @abstractmethod
    def _download(self, key: str, expected: ObjectInfo, out: BinaryIO) -> None:
        """Write the object ``expected`` describes to ``out``; a replaced object must fail, not mix versions."""

    @abstractmethod
    def _upload(self, body: HashingReader, key: str, content_type: str | None) -> None:
        """Send the whole body as ``key``'s object; a failed upload must not leave an object behind."""

    def stat(self, key: str) -> ObjectInfo:
        try:
            return self._head(key)
        except Exception as exc:
            raise self._error(exc, self.uri(key), "check") from exc

    def get(self, key: str, dest: Path, max_bytes: int | None = None) -> Path:
        uri = self.uri(key)
        try:
            expected = self._head(key)
            check_size(expected.size, max_bytes, uri)
            with atomic_file(dest) as fh:
                self._download(key, expected, fh)
        except Exception as exc:
            raise self._error(exc, uri, "download") from exc
        return dest

    def put(self, src: Path, key: str, content_type: str | None = None) -> PutResult:
        uri = self.uri(key)
        with src.open("rb") as fh:
            reader = HashingReader(fh)
            try:
                self._upload(reader, key, content_type)
            except Exception as exc:
                err = self._error(exc, uri, "upload")
                if err.code == "storage_error":
                    err = StorageError("upload_failed", err.message)
                raise err from exc
            return PutResult(uri=uri, bytes=reader.size, sha256=reader.hexdigest())

    def _log_unsigned_once(self, level: int, message: str, *args: object) -> None:
        """Say once per store root and process why result URLs will be null."""
        if self.root_uri not in _unsigned_logged:
            _unsigned_logged.add(self.root_uri)
            logging.getLogger(type(self).__module__).log(level, message, *args)
