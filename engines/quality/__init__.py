"""Quality measures computed from an engine's output alone (frames and the driving audio), so they hold for
any engine, weights we have never seen included. ``lip_sync``: does the mouth follow the speech."""

from engines.quality.lip_sync import (
    MAX_LAG_FRAMES,
    LipSyncMeter,
    LipSyncScore,
    audio_energy,
    best_lag_correlation,
    mouth_opening,
    score_lip_sync,
)

__all__ = [
    "MAX_LAG_FRAMES",
    "LipSyncMeter",
    "LipSyncScore",
    "audio_energy",
    "best_lag_correlation",
    "mouth_opening",
    "score_lip_sync",
]
