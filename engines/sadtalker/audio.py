"""SadTalker's audio features and sequence helpers, in numpy: mel windows, blink ratios, pose smoothing.

The mel spectrogram is Wav2Lip's recipe as SadTalker computes it with librosa 0.9: pre-emphasis 0.97,
STFT n_fft 800 / hop 200 / window 800 (periodic Hann) centred with ZERO padding (Wav2Lip's own engine pads
by reflection), the same slaney filter bank (shared with ``engines.lipsync.wav2lip.audio``), dB, normalised
to [-4, 4]; float64 throughout, as upstream.
"""

from __future__ import annotations

import numpy as np
from scipy.signal import lfilter, savgol_filter

from engines.constants import FPS, SAMPLE_RATE
from engines.lipsync.wav2lip.audio import (
    HOP,
    MAX_ABS_VALUE,
    MEL_WINDOW,
    MIN_LEVEL_DB,
    N_FFT,
    PREEMPHASIS,
    REF_LEVEL_DB,
    WIN,
    mel_filterbank,
)

SAMPLES_PER_FRAME = SAMPLE_RATE // FPS  # 640
MEL_PER_SECOND = SAMPLE_RATE / HOP  # 80
WINDOW_LEAD = 2  # frame i's window starts at frame i - 2
BLINK = (0.5, 0.9, 1.0, 0.9, 0.5)
BLINK_MIN_FRAMES = 20  # no blinks in shorter clips
SMOOTH_WINDOW = 13
SMOOTH_ORDER = 2


def num_frames(num_samples: int) -> int:
    """Video frames of ``num_samples`` at 16 kHz (upstream: floor, 640 samples a frame)."""
    return int(num_samples / SAMPLES_PER_FRAME)


def melspectrogram(wav: np.ndarray) -> np.ndarray:
    """(mel frames, 80) float64: 1 + len // 200 frames, as ``audio.melspectrogram(wav).T`` upstream."""
    emphasised = lfilter([1.0, -PREEMPHASIS], [1.0], np.asarray(wav, dtype=np.float64))
    padded = np.pad(emphasised, N_FFT // 2)
    count = 1 + (len(padded) - N_FFT) // HOP
    frames = np.lib.stride_tricks.as_strided(
        padded, shape=(count, N_FFT), strides=(padded.strides[0] * HOP, padded.strides[0]), writeable=False
    )
    window = 0.5 - 0.5 * np.cos(2.0 * np.pi * np.arange(WIN) / WIN)
    magnitude = np.abs(np.fft.rfft(frames * window, axis=1))  # (frames, 401)
    mel = magnitude @ mel_filterbank().T.astype(np.float64)
    db = 20.0 * np.log10(np.maximum(10.0 ** (MIN_LEVEL_DB / 20.0), mel)) - REF_LEVEL_DB
    scaled = 2.0 * MAX_ABS_VALUE * (db - MIN_LEVEL_DB) / -MIN_LEVEL_DB - MAX_ABS_VALUE
    return np.clip(scaled, -MAX_ABS_VALUE, MAX_ABS_VALUE)


def mel_windows(wav_16k: np.ndarray, fps: float = FPS) -> np.ndarray:
    """(T, 80, 16) float32 windows, T = int(len / 640): the wave cut to T frames, frame i's window the
    16 mel frames from int(80 (i - 2) / fps), indices clamped to the spectrogram."""
    wav = np.asarray(wav_16k, dtype=np.float32).reshape(-1)
    frames = int(len(wav) / (SAMPLE_RATE / fps))
    wav = wav[: int(frames * SAMPLE_RATE / fps)]
    if frames == 0:
        return np.zeros((0, 80, MEL_WINDOW), np.float32)
    mel = melspectrogram(wav)
    starts = np.array([int(MEL_PER_SECOND * ((i - WINDOW_LEAD) / float(fps))) for i in range(frames)])
    index = np.clip(starts[:, None] + np.arange(MEL_WINDOW)[None, :], 0, len(mel) - 1)
    return np.ascontiguousarray(mel[index].transpose(0, 2, 1)).astype(np.float32)


def blink_ratios(num: int, rng: np.random.Generator) -> np.ndarray:
    """(num,) eye-blink ratios: upstream's random schedule (a 5-frame blink every 10..70 frames)."""
    ratio = np.zeros(num, np.float32)
    if num <= BLINK_MIN_FRAMES:
        return ratio
    frame = 0
    while frame < num:
        start = int(rng.integers(min(10, num), min(int(num / 2), 70)))
        if frame + start + len(BLINK) > num - 1:
            break
        ratio[frame + start : frame + start + len(BLINK)] = BLINK
        frame += start + len(BLINK)
    return ratio


def smooth_poses(pose: np.ndarray) -> np.ndarray:
    """Savitzky-Golay (window 13, order 2, along time) of (B, T, 6) poses; shorter clips use the largest odd
    window <= T; 1-2 frame clips (no window fits order 2) are returned as they are."""
    length = pose.shape[1]
    window = SMOOTH_WINDOW if length >= SMOOTH_WINDOW else int((length - 1) / 2) * 2 + 1
    if window <= SMOOTH_ORDER:
        return pose.astype(np.float32)
    return savgol_filter(pose, window, SMOOTH_ORDER, axis=1).astype(np.float32)
