"""Motion templates in a safe file format: ``.npz`` of plain float arrays, read without pickle.

Upstream saves a driving video's motion as a pickle (``<driving>.pkl``: per-frame dicts of ``scale``, ``R``,
``exp``, ``t``, ``kp``, ``x_s`` plus ``c_eyes_lst`` / ``c_lip_lst`` and ``output_fps``). A pickle runs code
when loaded, so workers never read one: ``python -m tools.convert_motion_template`` turns a trusted upstream
template into this format once, outside the worker. Here a template is one ``.npz`` holding each field
stacked over frames (``scale`` (N, 1), ``R`` (N, 3, 3), ``exp`` / ``kp`` / ``x_s`` (N, 21, 3), ``t`` (N, 3),
``c_eyes`` (N, 2), ``c_lip`` (N, 1)), ``fps`` (a scalar) and ``format`` (``liveportrait-motion-1``).

Reading checks the zip's declared sizes before anything is decompressed, then names, shapes, dtypes and
finiteness; ``np.load(allow_pickle=False)`` refuses object arrays.
"""

from __future__ import annotations

import zipfile
from pathlib import Path
from typing import BinaryIO

import numpy as np

from engines.errors import EngineError
from engines.liveportrait.driving import MOTION_ARRAYS, MOTION_SHAPES, Motion

FORMAT = "liveportrait-motion-1"
ZIP_MAGIC = b"PK\x03\x04"
BYTES_PER_FRAME = 4 * sum(int(np.prod(shape)) for shape in MOTION_SHAPES.values())
MAX_FPS = 120.0


def is_motion_file(path: Path) -> bool:
    """Whether ``path`` starts like an ``.npz`` (a zip) rather than a video."""
    with path.open("rb") as fh:
        return fh.read(4) == ZIP_MAGIC


def save_motion(target: Path | BinaryIO, motion: Motion) -> None:
    arrays = {name: np.ascontiguousarray(getattr(motion, name), dtype=np.float32) for name in MOTION_ARRAYS}
    np.savez_compressed(target, **arrays, fps=np.float32(motion.fps), format=np.array(FORMAT))


def _refuse(path: Path, problem: str) -> EngineError:
    return EngineError("invalid_motion_template", f"motion template {path.name}: {problem}")


def _check_declared_sizes(path: Path, max_frames: int) -> None:
    """Refuse a zip whose members would decompress past what ``max_frames`` frames need (a zip bomb)."""
    budget = max_frames * BYTES_PER_FRAME + 64 * 1024
    try:
        with zipfile.ZipFile(path) as archive:
            members = archive.infolist()
    except (zipfile.BadZipFile, OSError) as exc:
        raise _refuse(path, f"not an .npz file ({exc})") from None
    if len(members) > len(MOTION_ARRAYS) + 2:
        raise _refuse(path, f"has {len(members)} entries; expected {', '.join(MOTION_ARRAYS)}, fps, format")
    declared = sum(member.file_size for member in members)
    if declared > budget:
        raise _refuse(path, f"declares {declared} bytes, over {budget} for {max_frames} frames")


def load_motion(path: Path, max_frames: int) -> Motion:
    """The template in ``path``; EngineError ``invalid_motion_template`` for anything else."""
    _check_declared_sizes(path, max_frames)
    try:
        with np.load(path, allow_pickle=False) as data:
            names = set(data.files)
            expected = {*MOTION_ARRAYS, "fps", "format"}
            if names != expected:
                raise _refuse(path, f"holds {sorted(names)}; expected {sorted(expected)}")
            if str(data["format"]) != FORMAT:
                raise _refuse(path, f"format {str(data['format'])[:40]!r} is not {FORMAT!r}")
            arrays = {name: data[name] for name in MOTION_ARRAYS}
            fps = float(data["fps"])
    except EngineError:
        raise
    except (ValueError, OSError, zipfile.BadZipFile) as exc:  # object arrays, bad headers, truncated data
        raise _refuse(path, f"unreadable ({type(exc).__name__}: {exc})") from None
    return _checked(path, arrays, fps, max_frames)


def _checked(path: Path, arrays: dict[str, np.ndarray], fps: float, max_frames: int) -> Motion:
    frames = len(arrays["exp"]) if arrays["exp"].ndim else 0
    if not 1 <= frames <= max_frames:
        raise _refuse(path, f"has {frames} frames; 1 to {max_frames} are allowed")
    for name, array in arrays.items():
        if array.shape != (frames, *MOTION_SHAPES[name]) or array.dtype.kind != "f":
            shape = (frames, *MOTION_SHAPES[name])
            raise _refuse(path, f"`{name}` is {array.dtype} {array.shape}; expected float {shape}")
        if not np.isfinite(array).all():
            raise _refuse(path, f"`{name}` holds NaN or infinite values")
    if not (0 < fps <= MAX_FPS):
        raise _refuse(path, f"fps {fps:g} is outside 0..{MAX_FPS:g}")
    motion = {name: array.astype(np.float32) for name, array in arrays.items()}
    return Motion(**motion, fps=fps)
