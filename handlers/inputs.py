"""Shared pieces of the tasks: stage timing, portrait images and videos fetched from URIs within the limits."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

import numpy as np

import storage
from engines.expression import fit_max_side
from handlers.errors import TaskError
from handlers.settings import Settings
from storage import StorageError

if TYPE_CHECKING:
    from engines.codecs.video_in import VideoInfo

log = logging.getLogger(__name__)

TRAINING_VIDEO = "The training video"


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


def fetch_video(uri: str, work: Path, settings: Settings, what: str = TRAINING_VIDEO, stem: str = "source") -> Path:
    """Download a video (MAX_VIDEO_BYTES at most) into ``work/stem``, keeping a short alphanumeric suffix."""
    suffix = Path(urlsplit(uri).path).suffix.lower()
    dest = work / (stem + (suffix if suffix[1:].isalnum() and len(suffix) <= 6 else ""))
    try:
        return storage.fetch(uri, dest, settings.input_storage, max_bytes=settings.max_video_bytes)
    except StorageError as exc:
        if exc.code == "too_large":
            limit_mb = settings.max_video_bytes / 1e6
            raise TaskError("video_too_large", f"{what} is over the {limit_mb:g} MB limit (MAX_VIDEO_BYTES).") from None
        raise


def probe_within_limits(video: Path, settings: Settings, what: str = TRAINING_VIDEO) -> VideoInfo:
    """The video's size and length, refused past MAX_VIDEO_SECONDS and MAX_VIDEO_SIDE."""
    from engines.codecs.video_in import probe_video

    info = probe_video(video)
    if info.duration_s is not None and info.duration_s > settings.max_video_seconds:
        raise TaskError(
            "video_too_long",
            f"{what} is {info.duration_s:.1f} s long; the limit is "
            f"{settings.max_video_seconds:g} s (MAX_VIDEO_SECONDS).",
        )
    if max(info.width, info.height) > settings.max_video_side:
        raise TaskError(
            "video_too_large",
            f"{what} is {info.width}x{info.height}; its longest side may be at most "
            f"{settings.max_video_side} px (MAX_VIDEO_SIDE).",
        )
    log.info("%s: %s", what.lower(), info)
    return info
