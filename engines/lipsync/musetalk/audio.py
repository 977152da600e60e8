"""MuseTalk 1.5 audio features: whisper-tiny encoder states and the per-frame windows the UNet attends to.

Speech is cut into 30-s segments (whisper's input length); each is turned into log-mel features and
encoded, and every hidden state (the embeddings, each layer; the last one layer-normed) is kept:
(L, layers + 1, 384) at 50 feature steps per second, trimmed to the audio's length. Video frame ``i``
at ``fps`` looks at the ``WINDOW`` steps starting ``floor(i * 50 / fps)`` steps into the features
padded with ``PAD_LEFT * ceil(50 / fps)`` zero steps in front: 2 frames of context before the frame
and 2 after at 25 fps. Past the end the features read as zeros (upstream pads 12 zero steps; a frame
beyond that gets zeros too instead of an error). Each window is flattened step-major to (50, 384).
"""

from __future__ import annotations

import math

import numpy as np
import torch

SAMPLE_RATE = 16000
FEATURE_RATE = 50  # whisper encoder steps per second
SEGMENT_SECONDS = 30
PAD_LEFT = 2  # frames of audio context before the frame (upstream audio_padding_length_left)
PAD_RIGHT = 2
WINDOW = 2 * (PAD_LEFT + PAD_RIGHT + 1)  # feature steps per frame: 10, i.e. 50 tokens with 5 states


def frame_count(num_samples: int, fps: int) -> int:
    """Upstream's frame count for the audio: whole frames only (floor)."""
    return math.floor(num_samples / SAMPLE_RATE * fps)


def window_starts(num_frames: int, fps: int) -> list[int]:
    """Start of each frame's window in the left-padded feature sequence."""
    step = FEATURE_RATE / fps
    return [math.floor(i * step) for i in range(num_frames)]


def left_padding(fps: int) -> int:
    return math.ceil(FEATURE_RATE / fps) * PAD_LEFT


def segments(samples: np.ndarray) -> list[np.ndarray]:
    """30-s pieces of the speech, as upstream feeds them to whisper."""
    length = SEGMENT_SECONDS * SAMPLE_RATE
    return [samples[i : i + length] for i in range(0, len(samples), length)]


def frame_windows(features: torch.Tensor, num_samples: int, fps: int, num_frames: int | None = None) -> torch.Tensor:
    """(L, S, D) encoder states -> (T, WINDOW * S, D) per-frame windows (see the module docstring).

    ``features`` may be longer than the audio (whisper pads each segment to 30 s); they are cut to
    ``floor(num_samples / 16000 * 50)`` steps first. ``num_frames`` defaults to upstream's count.
    """
    if num_frames is None:
        num_frames = frame_count(num_samples, fps)
    actual = math.floor(num_samples / SAMPLE_RATE * FEATURE_RATE)
    features = features[:actual]
    starts = window_starts(num_frames, fps)
    pad_left = left_padding(fps)
    needed = (starts[-1] + WINDOW if starts else 0) - pad_left - features.shape[0]
    pad_right = max(math.ceil(FEATURE_RATE / fps) * 3 * PAD_RIGHT, needed)
    zeros = features.new_zeros
    padded = torch.cat([zeros(pad_left, *features.shape[1:]), features, zeros(pad_right, *features.shape[1:])])
    index = torch.tensor(starts, device=features.device)[:, None] + torch.arange(WINDOW, device=features.device)
    windows = padded[index]  # (T, WINDOW, S, D)
    return windows.flatten(1, 2)


def sinusoidal_encoding(length: int, d_model: int) -> torch.Tensor:
    """(length, d_model) float32 positional encoding added to the windows before the UNet (upstream's PE)."""
    position = torch.arange(length, dtype=torch.float32)[:, None]
    div_term = torch.exp(torch.arange(0, d_model, 2).float() * (-math.log(10000.0) / d_model))
    encoding = torch.zeros(length, d_model)
    encoding[:, 0::2] = torch.sin(position * div_term)
    encoding[:, 1::2] = torch.cos(position * div_term)
    return encoding
