"""file:// stores: a directory whose files are the objects, written atomically (temp file + rename)."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import unquote, urlsplit

from storage.base import (
    HashingReader,
    ObjectInfo,
    ObjectStore,
    PutResult,
    atomic_file,
    check_key,
    check_prefix,
    check_size,
    copy_limited,
    is_temp_name,
)
from storage.errors import StorageError

log = logging.getLogger(__name__)


def path_from_file_uri(uri: str) -> Path:
    """``file:///abs/dir`` -> /abs/dir; ``file://./rel/dir`` -> rel/dir under the current directory."""
    parts = urlsplit(uri)
    if parts.scheme.lower() != "file" or parts.query or parts.fragment:
        raise StorageError("invalid_uri", f"{uri!r} is not a file:// URI")
    path = unquote(parts.path)
    if parts.netloc in ("", "localhost"):
        if not path.startswith("/"):
            raise StorageError("invalid_uri", f"{uri!r}: use file:///absolute/path or file://./relative/path")
        return Path(path)
    if parts.netloc in (".", ".."):
        return Path.cwd() / (parts.netloc + path)
    raise StorageError("invalid_uri", f"{uri!r} names host {parts.netloc!r}; file:// URIs must be local paths")


def fetch_file(uri: str, dest: Path, max_bytes: int | None = None) -> Path:
    """Copy the local file named by a normalised file:// URI (``storage.access``: symlinks already resolved)
    to ``dest`` atomically; a symlink put in its place since is not followed."""
    return _copy_out(path_from_file_uri(uri), dest, max_bytes, uri, os.O_NOFOLLOW)


def _copy_out(src: Path, dest: Path, max_bytes: int | None, uri: str, flags: int = 0) -> Path:
    if not src.is_file():
        raise StorageError("not_found", f"{uri} does not exist")
    check_size(src.stat().st_size, max_bytes, uri)
    try:
        fd = os.open(src, os.O_RDONLY | flags)
    except OSError as exc:
        raise StorageError("not_found", f"{uri} cannot be opened ({exc.strerror})") from None
    with os.fdopen(fd, "rb") as fh, atomic_file(dest) as out:
        copy_limited(fh, out, max_bytes, uri)
    return dest


def _info(key: str, path: Path) -> ObjectInfo:
    # Every put renames a new file in, so the inode changes even when size and mtime would not.
    st = path.stat()
    return ObjectInfo(key=key, size=st.st_size, fingerprint=f"{st.st_size}-{st.st_mtime_ns}-{st.st_ino}")


class LocalStore(ObjectStore):
    """Objects as files under ``root``; keys never escape it."""

    def __init__(self, root: Path) -> None:
        self.root = root.absolute()
        self.root_uri = self.root.as_uri()

    @classmethod
    def from_uri(cls, root_uri: str) -> LocalStore:
        return cls(path_from_file_uri(root_uri))

    def uri(self, key: str) -> str:
        """A proper file URI (percent-encoded), which :func:`storage.fetch` reads back."""
        return (self.root / check_key(key)).as_uri()

    def local_path(self, key: str) -> Path:
        """The file that holds ``key`` (checked to lie under the root; it may not exist yet)."""
        return self._path(key)

    def _path(self, key: str) -> Path:
        path = self.root / check_key(key)
        # Keys are checked lexically; a symlink inside the root must not lead out of it either.
        if not path.resolve().is_relative_to(self.root.resolve()):
            raise StorageError("invalid_key", f"object key {key!r} resolves outside the store root {self.root}")
        return path

    def get(self, key: str, dest: Path, max_bytes: int | None = None) -> Path:
        return _copy_out(self._path(key), dest, max_bytes, self.uri(key))

    def put(self, src: Path, key: str, content_type: str | None = None) -> PutResult:
        target = self._path(key)
        with src.open("rb") as fh, atomic_file(target) as out:
            reader = HashingReader(fh)
            size = copy_limited(reader, out, None, str(src))
            out.flush()
            os.fsync(out.fileno())
        return PutResult(uri=self.uri(key), bytes=size, sha256=reader.hexdigest())

    def stat(self, key: str) -> ObjectInfo:
        path = self._path(key)
        if not path.is_file():
            raise StorageError("not_found", f"{self.uri(key)} does not exist")
        return _info(key, path)

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        check_prefix(prefix)
        folder = self.root / prefix.rpartition("/")[0]
        if not folder.is_dir():
            return
        found = []
        for dirpath, _, filenames in os.walk(folder):
            for name in filenames:
                path = Path(dirpath) / name
                key = path.relative_to(self.root).as_posix()
                if key.startswith(prefix) and not is_temp_name(name) and path.is_file():
                    found.append(_info(key, path))
        # Lexicographic key order, as S3 and GCS list.
        yield from sorted(found, key=lambda info: info.key)

    def delete(self, key: str) -> None:
        self._path(key).unlink(missing_ok=True)

    def signed_url(self, key: str, ttl_s: int) -> str | None:
        log.debug("file:// store %s has no URLs to sign; returning none for %s", self.root_uri, key)
        return None
