"""Random weights for every engine of the run, written at its start (smaller to send as code than as files:
MuseTalk alone is 3.4 GB). Runs in the background while the CUDA tests do; each engine's folder gets a
``<engine>.ready`` marker once complete, which the engine's sections wait for."""

from __future__ import annotations

import json
import time
from pathlib import Path

from bench.gpu.profiles import Profile

READY_SUFFIX = ".ready"


def marker(weights_dir: Path, engine: str) -> Path:
    return weights_dir / f"{engine}{READY_SUFFIX}"


def write_all(weights_dir: Path, profile: Profile) -> dict:
    """Each engine's weights, smallest first (MuseTalk last: the others' sections start while it is written)."""
    import torch

    from bench.gpu.specs import engines

    written = {}
    for engine in engines():
        started = time.perf_counter()
        torch.manual_seed(0)
        path = engine.write(weights_dir, profile)
        size = sum(f.stat().st_size for f in _files(path))
        written[engine.name] = {"path": str(path), "bytes": size, "seconds": round(time.perf_counter() - started, 2)}
        marker(weights_dir, engine.name).write_text(json.dumps(written[engine.name]))
    return written


def _files(path: Path) -> list[Path]:
    """The files an engine's weights path stands for (a file, or every file of its set's folder)."""
    return sorted(f for f in path.rglob("*") if f.is_file()) if path.is_dir() else [path]


def wait_ready(weights_dir: Path, engine: str, timeout_s: float) -> dict:
    """The engine's marker, waiting for the background writer (TimeoutError naming the engine)."""
    deadline = time.monotonic() + timeout_s
    path = marker(weights_dir, engine)
    while not path.is_file():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{engine}: weights not written within {timeout_s:.0f} s")
        time.sleep(0.2)
    return json.loads(path.read_text())


def weight_files(weights_dir: Path, engine: str) -> list[Path]:
    """Every file of ``engine``'s weights (for dropping them from the page cache before a cold start)."""
    info = json.loads(marker(weights_dir, engine).read_text())
    return _files(Path(info["path"]))
