"""Speech synthesis behind one interface: text -> float32 PCM plus a phoneme timeline.

Registry: provider name -> class (``espeak`` offline default; ``fish`` and ``openai`` over HTTP).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

import numpy as np


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


def register(name: str):
    def wrap(cls: type) -> type:
        TTS_PROVIDERS[name] = cls
        cls.name = name
        return cls

    return wrap
