"""Silence is still: which output frames show speech, and how much of the engine's frame each one shows.

The rule every lip-sync engine goes through (``engines.lipsync.stream``), live and offline alike:

- Each 40-ms audio frame gets its level in dBFS (RMS of its 640 samples; -inf for digital silence).
- An output frame's level is the loudest audio frame in the span the engine's mouth at that frame is driven
  by (its ``audio_span``: Wav2Lip's frame ``k`` sees audio frames ``k..k+4``, MuseTalk's ``k-2..k+2``).
- Hysteresis: speech starts at a frame whose level reaches ``SPEECH_ON_DBFS`` and ends once ``HOLD_FRAMES``
  frames in a row stayed below ``SPEECH_OFF_DBFS`` (a level in between keeps the current state), so short
  pauses between words do not close and reopen the mouth, and background noise below the on-threshold never
  opens it.
- Weights: a silent frame shows the avatar's own frame exactly (weight 0; the engine is not even asked for
  it). The first and last ``FADE_FRAMES`` frames of a speech run cross-fade (weights 1/4, 2/4, 3/4 with 3
  frames), so the engine's face comes in and goes out without a jump.
"""

from __future__ import annotations

import math

import numpy as np

from engines.constants import FPS, SAMPLE_RATE

SAMPLES_PER_FRAME = SAMPLE_RATE // FPS
SPEECH_ON_DBFS = -50.0  # a frame at least this loud starts speech (the CPU engine's own gate before)
SPEECH_OFF_DBFS = -55.0  # speech ends after HOLD_FRAMES frames in a row below this
HOLD_FRAMES = 4  # 160 ms: the pause between two words keeps the mouth live
FADE_FRAMES = 3  # frames of cross-fade into and out of speech


def frame_dbfs(samples: np.ndarray) -> float:
    """Level of one audio frame (any length) in dBFS; -inf when it is digital silence or empty."""
    if samples.size == 0:
        return -math.inf
    power = float(np.mean(np.square(samples, dtype=np.float64)))
    return 10.0 * math.log10(power) if power > 0.0 else -math.inf


class SilenceGate:
    """The speaking/silent decision of one utterance's frames, made in order as their audio arrives."""

    def __init__(self, span: tuple[int, int] = (0, 0)) -> None:
        self.before, self.after = span
        self.speaking: list[bool] = []  # per utterance frame, decided so far
        self._on = False
        self._quiet = 0

    @property
    def lookahead(self) -> int:
        """Audio frames after frame ``k`` needed before its weight is known."""
        return self.after + FADE_FRAMES

    def advance(self, levels: list[float], complete: int, final: bool) -> None:
        """Decide the frames whose span is heard: ``levels`` per audio frame, the first ``complete`` of them
        whole (all of them once the utterance is ``final``)."""
        known = len(levels) if final else complete
        while len(self.speaking) < len(levels) and (final or len(self.speaking) + self.after < known):
            k = len(self.speaking)
            level = max(levels[max(0, k - self.before) : k + self.after + 1])
            if level >= SPEECH_ON_DBFS:
                self._on, self._quiet = True, 0
            elif self._on and level >= SPEECH_OFF_DBFS:
                self._quiet = 0
            elif self._on:
                self._quiet += 1
                self._on = self._quiet <= HOLD_FRAMES
            self.speaking.append(self._on)

    def weight(self, k: int, total: int | None) -> float | None:
        """Share of the engine's frame in output frame ``k`` (0: the avatar's own frame); None while undecided.
        ``total``: the utterance's frame count once it is final (frames after it are silence)."""
        decided = len(self.speaking)
        if k >= decided:
            return None
        if not self.speaking[k]:
            return 0.0
        since = next((d for d in range(1, FADE_FRAMES + 1) if k - d < 0 or not self.speaking[k - d]), FADE_FRAMES + 1)
        until = FADE_FRAMES + 1
        for d in range(1, FADE_FRAMES + 1):
            if total is not None and k + d >= total:
                until = d
                break
            if k + d >= decided:
                return None
            if not self.speaking[k + d]:
                until = d
                break
        return min(1.0, since / (FADE_FRAMES + 1), until / (FADE_FRAMES + 1))


__all__ = [
    "FADE_FRAMES",
    "HOLD_FRAMES",
    "SPEECH_OFF_DBFS",
    "SPEECH_ON_DBFS",
    "SilenceGate",
    "frame_dbfs",
]
