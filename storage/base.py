"""The object-store interface every scheme implements."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class PutResult:
    uri: str
    bytes: int
    sha256: str


@dataclass(frozen=True)
class ObjectInfo:
    key: str
    size: int


class ObjectStore(ABC):
    """A bucket (or directory) addressed by keys relative to a root URI such as ``s3://bucket/prefix``."""

    root_uri: str

    def uri(self, key: str) -> str:
        """The full URI of ``key`` under this store's root."""
        return f"{self.root_uri.rstrip('/')}/{key.lstrip('/')}"

    @abstractmethod
    def get(self, key: str, dest: Path) -> Path:
        """Stream the object to ``dest`` (written atomically); StorageError ``not_found`` when absent."""

    @abstractmethod
    def put(self, src: Path, key: str, content_type: str | None = None) -> PutResult:
        """Upload a local file; a failed upload leaves no object behind."""

    @abstractmethod
    def exists(self, key: str) -> bool: ...

    @abstractmethod
    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        """Objects whose key starts with ``prefix`` (keys relative to the root)."""

    @abstractmethod
    def delete(self, key: str) -> None:
        """Remove the object; deleting a missing object is not an error."""

    @abstractmethod
    def signed_url(self, key: str, ttl_s: int) -> str | None:
        """A URL a browser can fetch, or None (with the reason logged) when the store cannot sign."""
