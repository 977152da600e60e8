"""Mouth shapes per 25-fps frame, from an eSpeak phoneme timeline or from the audio alone.

A mouth shape is three numbers: ``open`` (jaw and lip opening, 0 = closed), ``spread`` (lips pulled
wide, as in "ee") and ``round`` (lips pushed together and forward, as in "oo"), each in 0..1.
Loudness gates the opening in both paths, so silence is always a closed (rest) mouth.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from engines.lipsync import FPS, SAMPLE_RATE
from engines.tts import Phoneme

SAMPLES_PER_FRAME = SAMPLE_RATE // FPS
OPEN, SPREAD, ROUND = 0, 1, 2

# Loudness: absolute gate (below it is silence) and the dynamic range mapped onto 0..1.
GATE_DBFS = -50.0
DYNAMIC_RANGE_DB = 30.0
MIN_PEAK_ABOVE_GATE_DB = 20.0
PEAK_PERCENTILE = 95.0

# Text path: the viseme sets the shape, loudness how far the jaw goes (louder vowels open wider):
# open = (floor + (1 - floor) * viseme opening) * loudness ** exponent; closed visemes stay closed.
TEXT_OPEN_FLOOR = 0.3
LOUDNESS_EXPONENT = 1.5
CLOSED_VISEME = 0.01

# Coarticulation: the mouth moves toward each target with these time constants (seconds); the track is
# smoothed forward and backward so the mouth also anticipates the next sound.
ATTACK_S = 0.035
RELEASE_S = 0.07

# Audio-only path: spectral centroid (Hz) above which voiced sound reads as spread, below which as round.
SPREAD_CENTROID_HZ = (1800.0, 3200.0)
ROUND_CENTROID_HZ = (1300.0, 800.0)
SPECTRUM_BAND_HZ = (80.0, 6000.0)

VISEMES: dict[str, tuple[float, float, float]] = {
    "rest": (0.0, 0.0, 0.0),
    "closed": (0.0, 0.0, 0.0),  # p b m
    "labiodental": (0.12, 0.15, 0.0),  # f v: lower lip to the upper teeth
    "dental": (0.3, 0.2, 0.0),  # T D
    "alveolar": (0.25, 0.3, 0.0),  # t d n l s z
    "postalveolar": (0.3, 0.0, 0.55),  # S Z tS dZ: lips pushed out
    "velar": (0.4, 0.1, 0.0),  # k g N h
    "approximant_r": (0.3, 0.0, 0.45),
    "glide_w": (0.12, 0.0, 1.0),
    "glide_j": (0.25, 0.6, 0.0),
    "open": (1.0, 0.15, 0.0),  # a A aI aU
    "open_mid": (0.75, 0.1, 0.0),  # V (strut), a#
    "mid": (0.55, 0.15, 0.05),  # @ 3 3:
    "front_mid": (0.6, 0.55, 0.0),  # e E eI e@
    "spread": (0.3, 1.0, 0.0),  # i I i:
    "rounded": (0.7, 0.0, 0.7),  # O O: oU OI 0
    "close_rounded": (0.3, 0.0, 1.0),  # u u: U
}

# eSpeak mnemonics (stress marks and length colons stripped) -> viseme. Longest prefix wins.
PHONEME_VISEMES: dict[str, str] = {
    "_": "rest",
    "p": "closed",
    "b": "closed",
    "m": "closed",
    "f": "labiodental",
    "v": "labiodental",
    "T": "dental",
    "D": "dental",
    "t": "alveolar",
    "d": "alveolar",
    "n": "alveolar",
    "l": "alveolar",
    "s": "alveolar",
    "z": "alveolar",
    "S": "postalveolar",
    "Z": "postalveolar",
    "tS": "postalveolar",
    "dZ": "postalveolar",
    "k": "velar",
    "g": "velar",
    "N": "velar",
    "h": "velar",
    "x": "velar",
    "r": "approximant_r",
    "R": "approximant_r",
    "w": "glide_w",
    "j": "glide_j",
    "a": "open",
    "A": "open",
    "aI": "open",
    "aU": "open",
    "V": "open_mid",
    "a#": "open_mid",
    "@": "mid",
    "3": "mid",
    "e": "front_mid",
    "E": "front_mid",
    "i": "spread",
    "I": "spread",
    "y": "close_rounded",
    "o": "rounded",
    "O": "rounded",
    "0": "rounded",
    "u": "close_rounded",
    "U": "close_rounded",
}
UNKNOWN_VISEME = "mid"
STRESS_MARKS = "',%=:"


def viseme_of(symbol: str) -> str:
    """The viseme of an eSpeak phoneme mnemonic (``'oU`` -> rounded, ``tS`` -> postalveolar)."""
    core = symbol.strip().lstrip(STRESS_MARKS).replace(":", "")
    if not core or core.startswith("_"):
        return "rest"
    for length in range(min(len(core), 2), 0, -1):
        viseme = PHONEME_VISEMES.get(core[:length])
        if viseme is not None:
            return viseme
    return UNKNOWN_VISEME


def frame_blocks(samples: np.ndarray, num_frames: int) -> np.ndarray:
    """(num_frames, 640) audio: frame i covers [i/25, (i+1)/25), zero-padded at the end."""
    audio = np.asarray(samples, dtype=np.float32).reshape(-1)
    padded = np.zeros(num_frames * SAMPLES_PER_FRAME, dtype=np.float32)
    n = min(len(audio), len(padded))
    padded[:n] = audio[:n]
    return padded.reshape(num_frames, SAMPLES_PER_FRAME)


def frame_rms(samples: np.ndarray, num_frames: int) -> np.ndarray:
    """RMS energy of each frame's audio."""
    blocks = frame_blocks(samples, num_frames)
    return np.sqrt(np.mean(np.square(blocks, dtype=np.float64), axis=1)).astype(np.float32)


def loudness(rms: np.ndarray) -> np.ndarray:
    """Per-frame loudness in 0..1: 0 below the absolute silence gate, 1 at the clip's loud frames."""
    db = 20.0 * np.log10(np.maximum(rms, 1e-9))
    voiced = db[db > GATE_DBFS]
    if voiced.size == 0:
        return np.zeros_like(rms, dtype=np.float32)
    peak = max(float(np.percentile(voiced, PEAK_PERCENTILE)), GATE_DBFS + MIN_PEAK_ABOVE_GATE_DB)
    floor = max(GATE_DBFS, peak - DYNAMIC_RANGE_DB)
    level = np.clip((db - floor) / (peak - floor), 0.0, 1.0)
    level[db <= GATE_DBFS] = 0.0
    return level.astype(np.float32)


def spectral_centroid(samples: np.ndarray, num_frames: int) -> np.ndarray:
    """Spectral centroid (Hz) of each frame within the speech band."""
    blocks = frame_blocks(samples, num_frames) * np.hanning(SAMPLES_PER_FRAME).astype(np.float32)
    power = np.abs(np.fft.rfft(blocks, axis=1)) ** 2
    freqs = np.fft.rfftfreq(SAMPLES_PER_FRAME, 1.0 / SAMPLE_RATE)
    band = (freqs >= SPECTRUM_BAND_HZ[0]) & (freqs <= SPECTRUM_BAND_HZ[1])
    weight = power[:, band]
    total = weight.sum(axis=1)
    centroid = (weight * freqs[band]).sum(axis=1) / np.maximum(total, 1e-12)
    return np.where(total > 0, centroid, 0.0).astype(np.float32)


def _ramp(x: np.ndarray, start: float, end: float) -> np.ndarray:
    return np.clip((x - start) / (end - start), 0.0, 1.0)


def smooth_track(targets: np.ndarray, fps: float = FPS) -> np.ndarray:
    """Coarticulation: follow targets with attack/release time constants, forward and backward, averaged."""
    attack = 1.0 - math.exp(-1.0 / (fps * ATTACK_S))
    release = 1.0 - math.exp(-1.0 / (fps * RELEASE_S))

    def one_pass(x: np.ndarray) -> np.ndarray:
        out = np.empty_like(x)
        state = x[0].copy()
        for i, target in enumerate(x):
            rate = np.where(target > state, attack, release)
            state = state + rate * (target - state)
            out[i] = state
        return out

    forward = one_pass(targets)
    backward = one_pass(targets[::-1])[::-1]
    return ((forward + backward) / 2.0).astype(np.float32)


def phoneme_targets(phonemes: Sequence[Phoneme], num_frames: int) -> np.ndarray:
    """(num_frames, 3) viseme targets: each frame averages the phonemes overlapping it, by overlap time."""
    targets = np.zeros((num_frames, 3), dtype=np.float64)
    covered = np.zeros(num_frames, dtype=np.float64)
    for ph in phonemes:
        shape = np.asarray(VISEMES[viseme_of(ph.symbol)])
        first, last = int(ph.start * FPS), min(num_frames - 1, int(math.ceil(ph.end * FPS)) - 1)
        for i in range(max(0, first), last + 1):
            overlap = min(ph.end, (i + 1) / FPS) - max(ph.start, i / FPS)
            if overlap > 0:
                targets[i] += overlap * shape
                covered[i] += overlap
    has = covered > 0
    targets[has] /= covered[has, None]
    return targets.astype(np.float32)


def mouth_track_from_phonemes(phonemes: Sequence[Phoneme], samples: np.ndarray, num_frames: int) -> np.ndarray:
    """(num_frames, 3) open/spread/round from the phoneme timeline, opening gated by the audio's loudness."""
    targets = phoneme_targets(phonemes, num_frames)
    level = loudness(frame_rms(samples, num_frames))
    viseme_open = targets[:, OPEN]
    shaped = (TEXT_OPEN_FLOOR + (1.0 - TEXT_OPEN_FLOOR) * viseme_open) * level**LOUDNESS_EXPONENT
    targets[:, OPEN] = np.where(viseme_open > CLOSED_VISEME, shaped, 0.0)
    targets[level == 0] = 0.0
    return _finish(smooth_track(targets), level)


def mouth_track_from_audio(samples: np.ndarray, num_frames: int) -> np.ndarray:
    """(num_frames, 3) open/spread/round from loudness and spectral shape when no phonemes are known."""
    level = loudness(frame_rms(samples, num_frames))
    centroid = spectral_centroid(samples, num_frames)
    voiced = level > 0
    targets = np.zeros((num_frames, 3), dtype=np.float32)
    targets[:, OPEN] = level**LOUDNESS_EXPONENT
    targets[:, SPREAD] = _ramp(centroid, *SPREAD_CENTROID_HZ) * voiced * 0.8
    rounding = 1.0 - _ramp(centroid, ROUND_CENTROID_HZ[1], ROUND_CENTROID_HZ[0])
    targets[:, ROUND] = rounding * voiced * 0.7
    return _finish(smooth_track(targets), level)


def _finish(track: np.ndarray, level: np.ndarray) -> np.ndarray:
    """Clamp to 0..1 and snap long-silent frames to exactly closed, so they show the untouched frame."""
    track = np.clip(track, 0.0, 1.0)
    silent = level == 0
    quiet_run = silent.copy()
    quiet_run[1:] &= silent[:-1]
    quiet_run[:-1] &= silent[1:]
    track[quiet_run & (track.max(axis=1) < 0.05)] = 0.0
    return track
