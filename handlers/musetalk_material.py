"""MuseTalk material for avatars: prepared at ``preprocess_avatar`` time, handed to the engine at render time.

``preprocess_avatar`` with ``models`` holding ``musetalk`` computes, after the wav2lip files, the
MuseTalk face boxes from the stored landmarks (``bbox_shift``, ``extra_margin`` as upstream), the input
latents of each face crop, the blend masks and crop boxes, and writes them in LiveTalking's musetalk
layout beside the wav2lip files (``storage.avatar.reader``). ``generate_video`` turns stored
material into the engine's input with masks decoded lazily through the frame cache.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from engines.lipsync.frame_cache import FrameCache, LazyFrames
from storage.avatar.layout import FULL_IMGS, frame_files
from storage.avatar.reader import StoredMaterial, write_material

if TYPE_CHECKING:
    from engines.lipsync.musetalk.avatar import MuseTalkMaterial
    from engines.lipsync.musetalk.engine import MuseTalkEngine

log = logging.getLogger(__name__)

ENGINE = "musetalk"


def engine_material(stored: StoredMaterial, frame_cache: FrameCache) -> MuseTalkMaterial:
    """Stored material as the engine's input: boxes and latents in memory, masks decoded when used."""
    from engines.lipsync.musetalk.avatar import MuseTalkMaterial

    boxes = np.asarray(stored.boxes, dtype=np.int64)
    crop_boxes = np.asarray(stored.crop_boxes, dtype=np.int64)
    return MuseTalkMaterial(boxes, crop_boxes, LazyFrames(stored.mask_paths, frame_cache), stored.latents())


def add_material(
    avatar_dir: Path,
    engine: MuseTalkEngine,
    landmarks: np.ndarray,
    frame_cache: FrameCache,
    info: dict[str, Any],
    bbox_shift: int = 0,
    extra_margin: int = 10,
) -> int:
    """Compute and write MuseTalk's material for the avatar written in ``avatar_dir``; returns the frame count."""
    from engines.lipsync.musetalk.avatar import landmark_box
    from engines.lipsync.musetalk.engine import build_material

    frames = LazyFrames(frame_files(avatar_dir, FULL_IMGS), frame_cache)
    height, width = frames[0].shape[:2]
    boxes = [landmark_box(points, height, width, bbox_shift, extra_margin) for points in landmarks]
    material = build_material(engine.model, frames, boxes, landmarks, engine.parser)
    write_material(avatar_dir, material, {**info, "bbox_shift": bbox_shift, "extra_margin": extra_margin})
    log.info("MuseTalk material written for %d frames (%s)", len(boxes), engine.info)
    return len(boxes)
