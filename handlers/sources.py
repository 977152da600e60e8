"""What a video is made of: a stored avatar's frames (held in the cache while used) or one portrait image."""

from __future__ import annotations

from contextlib import ExitStack
from pathlib import Path

import numpy as np

import storage
from engines.lipsync import FPS, AvatarFrames
from engines.lipsync.frame_cache import FrameCache, LazyFrames
from handlers.inputs import fetch_image, read_image
from handlers.runtime import WorkerRuntime
from storage.avatar.cache import open_cache
from storage.avatar.reader import LoadedAvatar, load_avatar
from storage.keys import avatar_key

PORTRAIT_MAX_SIDE = 1280  # larger portraits are scaled down: the video is made at this size at most


def avatar_frames(
    user_id: str,
    avatar_id: str | None,
    image: str | None,
    store: storage.ObjectStore,
    runtime: WorkerRuntime,
    work: Path,
    holds: ExitStack,
    portrait_max_side: int = PORTRAIT_MAX_SIDE,
    face_index: int | None = None,
) -> AvatarFrames:
    """A stored avatar's frames (its folder held until ``holds`` closes), else the portrait ``image`` animated
    (its largest face, or the ``face_index``-th largest)."""
    if image is not None:
        return _portrait_avatar(image, runtime, work, portrait_max_side, face_index)
    # the TAR in the request's store is an input like any other (its store root was normalised when opened)
    storage.check_input_uri(
        store.uri(avatar_key(user_id, avatar_id or "")), runtime.settings.input_policy, what="avatar"
    )
    cache = open_cache(runtime.settings.avatar_local_path, runtime.settings.avatar_revalidate_s)
    path = holds.enter_context(cache.acquire(store, user_id, avatar_id or "", runtime.settings.hand_placed_avatars))
    return stored_avatar(load_avatar(path), runtime.engines.frames)


def stored_avatar(loaded: LoadedAvatar, frame_cache: FrameCache) -> AvatarFrames:
    """A stored avatar as engine input, its frames decoded lazily through the process's frame cache."""
    material = {}
    if loaded.musetalk is not None:
        from handlers.musetalk_material import ENGINE, engine_material

        stored = loaded.musetalk  # read (latents.pt) only if the MuseTalk engine renders this avatar
        material[ENGINE] = lambda: engine_material(stored, frame_cache)
    return AvatarFrames(
        frames=LazyFrames(loaded.full_frame_paths, frame_cache),
        coords=[tuple(int(v) for v in box) for box in loaded.coords],
        face_crops=LazyFrames(loaded.face_crop_paths, frame_cache) if loaded.face_crop_paths else None,
        landmarks=None if loaded.landmarks is None else np.asarray(loaded.landmarks, dtype=np.float32),
        fps=FPS,
        material=material,
        key=str(loaded.info.path),  # the cache's version folder: unchanged while it exists
    )


def portrait_image(uri: str, runtime: WorkerRuntime, work: Path, max_side: int = PORTRAIT_MAX_SIDE) -> np.ndarray:
    """The request's portrait, fetched within MAX_IMAGE_BYTES and decoded (BGR, ``max_side`` at most)."""
    return read_image(fetch_image(uri, runtime.settings, work), runtime.settings, max_side)


def _portrait_avatar(
    uri: str, runtime: WorkerRuntime, work: Path, max_side: int, face_index: int | None = None
) -> AvatarFrames:
    from engines.lipsync.portrait_avatar import build_portrait_avatar

    image = portrait_image(uri, runtime, work, max_side)
    return build_portrait_avatar(image, runtime.engines.face_analyzer(), face_index=face_index)
