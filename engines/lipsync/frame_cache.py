"""Avatar frames decoded on first use and kept in a per-process LRU bounded by bytes.

A warm request for the same avatar reads its frames from memory instead of decoding PNGs again.
Entries are keyed by path, inode, modification time and size, so an avatar replaced on disk is decoded
afresh; the avatar cache gives each owner's version its own folder, so two owners never share a key.
Cached arrays are read-only: engines copy before drawing on a frame.
"""

from __future__ import annotations

import logging
import os
import threading
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np

from engines.errors import EngineError

logger = logging.getLogger(__name__)

FileKey = tuple[str, int, int, int]


class FrameCache:
    """Thread-safe LRU of decoded BGR images, evicting the least recently used beyond ``max_bytes``."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self._items: OrderedDict[FileKey, np.ndarray] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def get(self, path: Path) -> np.ndarray:
        key = _file_key(path)
        with self._lock:
            image = self._items.get(key)
            if image is not None:
                self._items.move_to_end(key)
                self.hits += 1
                return image
            self.misses += 1
        image = decode_image(path)
        if image.nbytes <= self.max_bytes:
            self._add(key, image)
        return image

    def _add(self, key: FileKey, image: np.ndarray) -> None:
        with self._lock:
            if key in self._items:
                return
            self._items[key] = image
            self._bytes += image.nbytes
            while self._bytes > self.max_bytes:
                _, evicted = self._items.popitem(last=False)
                self._bytes -= evicted.nbytes

    def resize(self, max_bytes: int) -> None:
        with self._lock:
            self.max_bytes = max_bytes
            while self._items and self._bytes > self.max_bytes:
                _, evicted = self._items.popitem(last=False)
                self._bytes -= evicted.nbytes

    @property
    def nbytes(self) -> int:
        return self._bytes

    def __len__(self) -> int:
        return len(self._items)


def _file_key(path: Path) -> FileKey:
    try:
        stat = os.stat(path)
    except FileNotFoundError:
        raise EngineError("invalid_avatar", f"avatar frame {path} is missing") from None
    return str(path), stat.st_ino, stat.st_mtime_ns, stat.st_size


def decode_image(path: Path) -> np.ndarray:
    """A BGR uint8 image, read-only; EngineError ``invalid_avatar`` when the file does not decode."""
    image = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if image is None:
        raise EngineError("invalid_avatar", f"avatar frame {path} is not a readable image")
    image.setflags(write=False)
    return image


class LazyFrames(Sequence):
    """A sequence of images on disk, decoded through a FrameCache when indexed."""

    def __init__(self, paths: Sequence[Path], cache: FrameCache) -> None:
        self._paths = list(paths)
        self._cache = cache

    def __len__(self) -> int:
        return len(self._paths)

    def __getitem__(self, index: int) -> np.ndarray:  # type: ignore[override]
        return self._cache.get(self._paths[index])


__all__ = ["FrameCache", "LazyFrames", "decode_image"]
