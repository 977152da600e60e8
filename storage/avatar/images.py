"""Image sizes read from PNG and JPEG headers, without decoding pixels (a header is all a bomb needs)."""

from __future__ import annotations

import os
import struct
from pathlib import Path
from typing import BinaryIO

from storage.errors import StorageError

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
JPEG_SOF_MARKERS = frozenset({0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF})


def image_size(path: Path) -> tuple[int, int]:
    """(width, height) of a PNG or JPEG read from its header, without decoding the pixels."""
    with path.open("rb") as fh:
        head = fh.read(24)
        if head[:8] == PNG_SIGNATURE and head[12:16] == b"IHDR":
            width, height = struct.unpack(">II", head[16:24])
            return width, height
        if head[:2] == b"\xff\xd8":
            fh.seek(2)
            return _jpeg_size(fh, path)
    raise StorageError("invalid_avatar", f"{path} is neither a PNG nor a JPEG")


def _jpeg_size(fh: BinaryIO, path: Path) -> tuple[int, int]:
    while True:
        marker = fh.read(2)
        if len(marker) < 2 or marker[0] != 0xFF:
            raise StorageError("invalid_avatar", f"{path}: JPEG without a frame header")
        if marker[1] in (0xD8, 0x01) or 0xD0 <= marker[1] <= 0xD7:
            continue
        length_bytes = fh.read(2)
        if len(length_bytes) < 2:
            raise StorageError("invalid_avatar", f"{path}: truncated JPEG")
        (length,) = struct.unpack(">H", length_bytes)
        if length < 2:
            raise StorageError("invalid_avatar", f"{path}: corrupt JPEG segment length")
        if marker[1] in JPEG_SOF_MARKERS:
            header = fh.read(5)
            if len(header) < 5:
                raise StorageError("invalid_avatar", f"{path}: truncated JPEG")
            _precision, height, width = struct.unpack(">BHH", header)
            return width, height
        fh.seek(length - 2, os.SEEK_CUR)
