"""Wav2Lip's audio features in numpy: 80-band mel spectrogram of 16 kHz speech, and frame -> mel window.

Follows the original hparams: pre-emphasis 0.97, STFT n_fft 800 / hop 200 / window 800 (periodic hann,
centred with reflect padding like librosa 0.7, which the released models were trained with), a slaney
mel filter bank (80 bands, 55..7600 Hz, area-normalised), 20*log10 amplitude floored at -100 dB, minus
a 20 dB reference, then scaled symmetrically to [-4, 4] and clipped.
"""

from __future__ import annotations

from functools import cache

import numpy as np

from engines.constants import SAMPLE_RATE

PREEMPHASIS = 0.97
N_FFT = 800
HOP = 200
WIN = 800
N_MELS = 80
FMIN = 55.0
FMAX = 7600.0
MIN_LEVEL_DB = -100.0
REF_LEVEL_DB = 20.0
MAX_ABS_VALUE = 4.0
MEL_FRAMES_PER_SECOND = SAMPLE_RATE / HOP  # 80
MEL_WINDOW = 16  # mel columns the model sees per video frame (0.2 s)
STFT_BLOCK_FRAMES = 4096  # frames per FFT block: bounds memory for long audio

# Slaney's mel scale: linear below 1 kHz (200/3 Hz per mel), logarithmic above.
_F_SP = 200.0 / 3
_MIN_LOG_HZ = 1000.0
_MIN_LOG_MEL = _MIN_LOG_HZ / _F_SP
_LOG_STEP = np.log(6.4) / 27.0


def hz_to_mel(hz: np.ndarray) -> np.ndarray:
    hz = np.asarray(hz, dtype=np.float64)
    mel = hz / _F_SP
    log_region = hz >= _MIN_LOG_HZ
    return np.where(log_region, _MIN_LOG_MEL + np.log(np.maximum(hz, 1e-10) / _MIN_LOG_HZ) / _LOG_STEP, mel)


def mel_to_hz(mel: np.ndarray) -> np.ndarray:
    mel = np.asarray(mel, dtype=np.float64)
    hz = mel * _F_SP
    log_region = mel >= _MIN_LOG_MEL
    return np.where(log_region, _MIN_LOG_HZ * np.exp(_LOG_STEP * (mel - _MIN_LOG_MEL)), hz)


@cache
def mel_filterbank(
    sample_rate: int = SAMPLE_RATE, n_fft: int = N_FFT, n_mels: int = N_MELS, fmin: float = FMIN, fmax: float = FMAX
) -> np.ndarray:
    """(n_mels, 1 + n_fft // 2) triangular slaney filters, each normalised to unit area in Hz."""
    fft_freqs = np.linspace(0.0, sample_rate / 2.0, 1 + n_fft // 2)
    mel_points = mel_to_hz(np.linspace(hz_to_mel(fmin), hz_to_mel(fmax), n_mels + 2))
    widths = np.diff(mel_points)
    ramps = mel_points[:, None] - fft_freqs[None, :]
    rising = -ramps[:-2] / widths[:-1, None]
    falling = ramps[2:] / widths[1:, None]
    weights = np.maximum(0.0, np.minimum(rising, falling))
    weights *= (2.0 / (mel_points[2:] - mel_points[:-2]))[:, None]
    weights = weights.astype(np.float32)
    weights.flags.writeable = False  # cached: shared by every caller
    return weights


@cache
def _hann(length: int) -> np.ndarray:
    """Periodic hann window (scipy's get_window('hann', N), as librosa uses)."""
    return (0.5 - 0.5 * np.cos(2.0 * np.pi * np.arange(length) / length)).astype(np.float32)


def stft_magnitude(signal: np.ndarray) -> np.ndarray:
    """|STFT| as (1 + N_FFT // 2, frames), centred frames, computed in blocks to bound memory."""
    padded = np.pad(signal, N_FFT // 2, mode="reflect" if len(signal) > N_FFT // 2 else "constant")
    n_frames = 1 + (len(padded) - N_FFT) // HOP
    frames = np.lib.stride_tricks.as_strided(
        padded, shape=(n_frames, N_FFT), strides=(padded.strides[0] * HOP, padded.strides[0]), writeable=False
    )
    window = _hann(WIN)
    out = np.empty((1 + N_FFT // 2, n_frames), dtype=np.float32)
    for start in range(0, n_frames, STFT_BLOCK_FRAMES):
        block = frames[start : start + STFT_BLOCK_FRAMES] * window
        out[:, start : start + len(block)] = np.abs(np.fft.rfft(block, axis=1)).T
    return out


def melspectrogram(wav_16k: np.ndarray) -> np.ndarray:
    """Wav2Lip's normalised mel spectrogram: (80, 1 + len // 200) float32 in [-4, 4]."""
    wav = np.asarray(wav_16k, dtype=np.float32).reshape(-1)
    if wav.size == 0:
        raise ValueError("melspectrogram needs at least one audio sample")
    emphasised = np.empty_like(wav)
    emphasised[0] = wav[0]
    emphasised[1:] = wav[1:] - PREEMPHASIS * wav[:-1]
    mel = mel_filterbank() @ stft_magnitude(emphasised)
    min_amplitude = 10.0 ** (MIN_LEVEL_DB / 20.0)
    db = 20.0 * np.log10(np.maximum(min_amplitude, mel)) - REF_LEVEL_DB
    scaled = 2.0 * MAX_ABS_VALUE * (db - MIN_LEVEL_DB) / -MIN_LEVEL_DB - MAX_ABS_VALUE
    return np.clip(scaled, -MAX_ABS_VALUE, MAX_ABS_VALUE).astype(np.float32)


def mel_window_starts(num_columns: int, fps: float, num_frames: int | None = None) -> list[int]:
    """First mel column of each video frame's 16-column window.

    Frame i starts at ``int(i * 80 / fps)``; a window that would run past the end is replaced by the
    last 16 columns. Without ``num_frames`` the count is Wav2Lip's: windows up to and including the
    first one that reaches the end. With it, exactly that many (later frames reuse the last window).
    """
    last = max(0, num_columns - MEL_WINDOW)
    if num_frames is None:
        starts = []
        while (start := int(len(starts) * MEL_FRAMES_PER_SECOND / fps)) + MEL_WINDOW <= num_columns:
            starts.append(start)
        return [*starts, last]
    return [min(int(i * MEL_FRAMES_PER_SECOND / fps), last) for i in range(num_frames)]


def mel_windows(mel: np.ndarray, starts: list[int]) -> np.ndarray:
    """(len(starts), 1, 80, 16) windows; a spectrogram shorter than 16 columns is padded with silence."""
    if mel.shape[1] < MEL_WINDOW:
        mel = np.pad(mel, ((0, 0), (0, MEL_WINDOW - mel.shape[1])), constant_values=-MAX_ABS_VALUE)
    index = np.asarray(starts)[:, None] + np.arange(MEL_WINDOW)[None, :]
    return np.ascontiguousarray(mel[:, index].transpose(1, 0, 2)[:, None])


def window_rms(wav_16k: np.ndarray, starts: list[int]) -> np.ndarray:
    """RMS of the audio each mel window covers (samples [start * 200, (start + 16) * 200))."""
    wav = np.asarray(wav_16k, dtype=np.float32).reshape(-1)
    squares = np.concatenate(([0.0], np.cumsum(wav.astype(np.float64) ** 2)))
    lo = np.clip(np.asarray(starts) * HOP, 0, len(wav))
    hi = np.clip(lo + MEL_WINDOW * HOP, 0, len(wav))
    count = np.maximum(hi - lo, 1)
    return np.sqrt(np.maximum(squares[hi] - squares[lo], 0.0) / count).astype(np.float32)
