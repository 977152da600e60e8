"""The engines the GPU run measures: how each one's random weights are written (by the tests' own fixtures,
in the official layout), which settings point the worker at them, and what drives it (avatar or portrait).

SadTalker joins when ``engines.sadtalker`` is present on the checkout (its helper adds it)."""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from bench.gpu.profiles import Profile


@dataclass(frozen=True)
class BenchEngine:
    name: str
    portrait: bool  # animates one image (generate_video's ``image``) rather than a stored avatar
    write: Callable[[Path, Profile], Path]  # writes the weights under the weights dir: their file or folder
    settings_env: Callable[[Path], dict[str, str]]  # worker settings that find them (weights dir given)
    paper: str  # the published figure to set the measurement beside (never put in the README's table)


def _write_wav2lip(variant: str) -> Callable[[Path, Profile], Path]:
    def write(weights_dir: Path, profile: Profile) -> Path:
        from tests.engines.wav2lip_fixtures import write_checkpoint

        weights_dir.mkdir(parents=True, exist_ok=True)
        return write_checkpoint(weights_dir / f"{variant}.pth", variant)

    return write


def _write_musetalk(weights_dir: Path, profile: Profile) -> Path:
    from tests.engines.musetalk_fixtures import write_models

    return write_models(weights_dir / "musetalk", tiny=profile.musetalk_tiny)


def _write_liveportrait(weights_dir: Path, profile: Profile) -> Path:
    from engines.liveportrait.random_weights import write_random_weights

    return write_random_weights(weights_dir / "liveportrait")


ENGINES: tuple[BenchEngine, ...] = (
    BenchEngine(
        "wav2lip96",
        False,
        _write_wav2lip("wav2lip96"),
        lambda d: {"WAV2LIP96_CHECKPOINT": str(d / "wav2lip96.pth")},  # a user's file: no manifest checksum
        "published: 120 frames/s on an RTX 3080 Ti",
    ),
    BenchEngine(
        "wav2lip256",
        False,
        _write_wav2lip("wav2lip256"),
        lambda d: {"WAV2LIP256_CHECKPOINT": str(d / "wav2lip256.pth")},
        "published: 120 frames/s on an RTX 3080 Ti",
    ),
    BenchEngine(
        "liveportrait",
        True,
        _write_liveportrait,
        lambda d: {"LIVEPORTRAIT_DIR": str(d / "liveportrait")},
        "paper: 12.8 ms/frame on an RTX 4090",
    ),
    BenchEngine(
        "musetalk",
        False,
        _write_musetalk,
        lambda d: {},  # found in WEIGHTS_DIR/musetalk (no checksums published: loaded unverified)
        "published: 72 frames/s on an RTX 4090",
    ),
)


def _write_sadtalker(weights_dir: Path, profile: Profile) -> Path:
    from engines.sadtalker.random_weights import write_random_weights  # the engine's own writer, as its tests use

    return write_random_weights(weights_dir / "sadtalker")


def sadtalker_engine() -> BenchEngine | None:
    """SadTalker's row, when the checkout has the engine (it animates one portrait, found in WEIGHTS_DIR)."""
    if importlib.util.find_spec("engines.sadtalker") is None:
        return None
    return BenchEngine("sadtalker", True, _write_sadtalker, lambda d: {}, "no published frames/s")


def engines() -> tuple[BenchEngine, ...]:
    extra = sadtalker_engine()
    return (*ENGINES, extra) if extra else ENGINES


def by_name(name: str) -> BenchEngine:
    return {e.name: e for e in engines()}[name]
