"""Lip-sync engines behind one interface: avatar frames + 16 kHz speech -> full frames at 25 fps.

Registry: engine name -> class, filled by ``@register`` in each engine's module; ``engines.table`` names the
engines and the module of each. Every engine loads as ``load(weights, context)`` (``engines.context``).
Every engine also implements the streaming interface of ``engines.lipsync.stream`` (audio in chunks, frames out
as soon as their audio context is there), and its ``render`` goes through it, so offline and live sessions share
one path and one silence rule.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from engines.constants import FPS, SAMPLE_RATE
from engines.context import EngineContext
from engines.registry import registrar
from engines.table import names
from engines.tts import Phoneme


@dataclass
class AvatarFrames:
    """What an engine needs of an avatar; sequences may load lazily."""

    frames: Sequence[np.ndarray]  # full frames, BGR uint8, all the same size
    coords: list[tuple[int, int, int, int]]  # face box per frame, (y1, y2, x1, x2)
    face_crops: Sequence[np.ndarray] | None = None  # img_size x img_size BGR crops, when stored
    landmarks: np.ndarray | None = None  # (frames, 68, 2) float32 full-frame pixels, when stored
    fps: float = FPS
    # per-engine precomputed data (MuseTalk latents...), or a function returning it when first used
    material: dict[str, Any] = field(default_factory=dict)
    key: str | None = None  # identity of a stored avatar's unchanging version, for engines' own caches
    faces_found: int | None = None  # a portrait's: how many faces its image has (the animated one is chosen)

    def __len__(self) -> int:
        return len(self.coords)


@dataclass
class DrivingAudio:
    samples: np.ndarray  # float32 mono at SAMPLE_RATE
    phonemes: list[Phoneme] | None = None  # known when the speech came from text

    @property
    def num_frames(self) -> int:
        """Frame i covers audio [i/25, (i+1)/25): ceil of the duration in frames."""
        return max(1, -(-len(self.samples) * FPS // SAMPLE_RATE))


def pingpong_index(i: int, n: int) -> int:
    """Avatar frame for output frame i: forward then backward so long audio never jumps."""
    if n <= 1:
        return 0
    period = 2 * n - 2
    k = i % period
    return k if k < n else period - k


class LipSyncEngine(Protocol):
    name: str
    version: str

    @classmethod
    def load(cls, weights: Path | None, context: EngineContext) -> LipSyncEngine:
        """The engine ready to render: ``weights`` as the caller found them (None for an engine without weights),
        device, precision and options decided by the caller."""
        ...

    def render(self, avatar: AvatarFrames, audio: DrivingAudio) -> Iterator[np.ndarray]:
        """Yield ``audio.num_frames`` full BGR frames, streamed (memory independent of length)."""
        ...


LIPSYNC_ENGINES: dict[str, type] = {}
_register = registrar(LIPSYNC_ENGINES)


def register(name: str) -> Callable[[type], type]:
    """``@register(name)`` for a lip-sync engine class; ``name`` must be a row of ``engines.table``."""
    if name not in names():
        raise ValueError(f"lip-sync engine {name!r} has no row in engines.table: add one there")
    return _register(name)
