"""Shared pieces of the tasks: stage timing and portrait images fetched from URIs."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np

import storage
from engines.expression import fit_max_side
from handlers.errors import TaskError
from handlers.settings import Settings
from storage import StorageError


@contextmanager
def timed(timings: dict[str, float], stage: str) -> Iterator[None]:
    """Add the block's wall time, in milliseconds, to ``timings[stage]``."""
    started = time.perf_counter()
    try:
        yield
    finally:
        timings[stage] = round(timings.get(stage, 0.0) + (time.perf_counter() - started) * 1000, 1)


def fetch_image(uri: str, settings: Settings, work: Path) -> Path:
    """Download the request's `image` (MAX_IMAGE_BYTES at most) into ``work``."""
    try:
        return storage.fetch(uri, work / "source-image", settings.input_storage, max_bytes=settings.max_image_bytes)
    except StorageError as exc:
        if exc.code == "too_large":
            raise TaskError(
                "image_too_large", f"`image` is over the limit of {settings.max_image_bytes} bytes (MAX_IMAGE_BYTES)."
            ) from None
        raise


def read_image(path: Path, settings: Settings, max_side: int) -> np.ndarray:
    """BGR uint8, downscaled to ``max_side`` at most; TaskError for non-images and pixel bombs."""
    import cv2
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as probe:  # reads the header only: refuse a pixel bomb before decoding it
            width, height = probe.size
    except Image.DecompressionBombError as exc:  # Pillow's own cap (2x its MAX_IMAGE_PIXELS) trips in open()
        raise TaskError(
            "image_too_large",
            f"`image` is too large ({exc}); the limit is {settings.max_image_pixels} (MAX_IMAGE_PIXELS).",
        ) from None
    except (UnidentifiedImageError, OSError) as exc:
        raise TaskError("invalid_image", f"`image` is not a readable image ({exc}); use PNG, JPEG or WebP.") from None
    if width * height > settings.max_image_pixels:
        raise TaskError(
            "image_too_large",
            f"`image` is {width}x{height} pixels; the limit is {settings.max_image_pixels} (MAX_IMAGE_PIXELS).",
        )
    image = cv2.imdecode(np.fromfile(path, np.uint8), cv2.IMREAD_COLOR)
    if image is None:
        raise TaskError("invalid_image", "`image` could not be decoded; use PNG, JPEG or WebP.")
    return fit_max_side(image, max_side)
