"""Speech synthesis behind one interface: text -> float32 PCM plus a phoneme timeline.

Registry: provider name -> class (``espeak`` offline default; ``fish`` and ``openai`` over HTTP).
"""

from __future__ import annotations

import importlib
import inspect
import math
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from engines.constants import VOICE_PROVIDER_MODULES
from engines.errors import EngineError
from engines.registry import registrar


@dataclass(frozen=True)
class Phoneme:
    symbol: str
    start: float  # seconds
    end: float  # seconds


@dataclass
class Speech:
    samples: np.ndarray  # float32 mono in [-1, 1]
    sample_rate: int
    phonemes: list[Phoneme] = field(default_factory=list)  # empty when the provider gives none

    @property
    def duration_s(self) -> float:
        return len(self.samples) / float(self.sample_rate)


@dataclass(frozen=True)
class VoiceParams:
    name: str | None = None
    rate: int | None = None
    pitch: int | None = None
    ref_id: str | None = None


class SpeechSynthesizer(Protocol):
    name: str

    def synthesize(self, text: str, voice: VoiceParams) -> Speech: ...


TTS_PROVIDERS: dict[str, type] = {}
register = registrar(TTS_PROVIDERS)


def load_synthesizer(provider: str, **config: Any) -> SpeechSynthesizer:
    """The synthesizer registered as ``provider``, built with ``config`` (HTTP providers: api_key, base_url...)."""
    module = VOICE_PROVIDER_MODULES.get(provider)
    if module is not None:
        importlib.import_module(module)
    if provider not in TTS_PROVIDERS:
        known = sorted(set(VOICE_PROVIDER_MODULES) | set(TTS_PROVIDERS))
        raise EngineError("unknown_tts_provider", f"`voice.provider` {provider!r} is not one of {known}")
    synthesizer_class = TTS_PROVIDERS[provider]
    try:
        inspect.signature(synthesizer_class).bind(**config)
    except TypeError as exc:
        raise EngineError("tts_not_configured", f"speech provider {provider!r} configuration: {exc}") from exc
    return synthesizer_class(**config)


def resample(samples: np.ndarray, src_rate: int, dst_rate: int) -> np.ndarray:
    """``samples`` (time on axis 0) from ``src_rate`` to ``dst_rate`` Hz with a polyphase filter, as float32."""
    if src_rate <= 0 or dst_rate <= 0:
        raise ValueError(f"sample rates must be positive, got {src_rate} -> {dst_rate}")
    audio = np.asarray(samples, dtype=np.float32)
    if src_rate == dst_rate or len(audio) == 0:
        return audio
    from scipy.signal import resample_poly

    common = math.gcd(src_rate, dst_rate)
    out = resample_poly(audio, dst_rate // common, src_rate // common, axis=0)
    return out.astype(np.float32, copy=False)


__all__ = [
    "Phoneme",
    "Speech",
    "VoiceParams",
    "SpeechSynthesizer",
    "TTS_PROVIDERS",
    "register",
    "load_synthesizer",
    "resample",
]
