"""Wav2Lip lip-sync in-process: the 96-px model and LiveTalking's 256-px variant.

Importing this package registers the ``wav2lip96`` and ``wav2lip256`` engines in ``engines.lipsync``.
"""

from engines.lipsync.wav2lip.audio import mel_window_starts, mel_windows, melspectrogram
from engines.lipsync.wav2lip.engine import Wav2Lip96Engine, Wav2Lip256Engine, Wav2LipEngine
from engines.lipsync.wav2lip.loader import load_wav2lip, prepare_for_inference
from engines.lipsync.wav2lip.model import WAV2LIP96, WAV2LIP256, Wav2Lip, build_model, fold_batchnorm

__all__ = [
    "WAV2LIP96",
    "WAV2LIP256",
    "Wav2Lip",
    "Wav2LipEngine",
    "Wav2Lip96Engine",
    "Wav2Lip256Engine",
    "build_model",
    "fold_batchnorm",
    "load_wav2lip",
    "mel_window_starts",
    "mel_windows",
    "melspectrogram",
    "prepare_for_inference",
]
