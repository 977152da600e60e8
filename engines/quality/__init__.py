"""Quality measures computed from an engine's output alone (frames and the driving audio), so they hold for
any engine, weights we have never seen included. ``lip_sync``: does the mouth follow the speech; ``report``: the
``quality`` of every result (lip sync within a time budget, silence held still, face lost, A/V offset)."""

from engines.quality.lip_sync import (
    MAX_LAG_FRAMES,
    LipSyncMeter,
    LipSyncScore,
    audio_energy,
    best_lag_correlation,
    mouth_opening,
    score_lip_sync,
)
from engines.quality.report import BUDGET, QualityMeter, QualityReport

__all__ = [
    "BUDGET",
    "QualityMeter",
    "QualityReport",
    "MAX_LAG_FRAMES",
    "LipSyncMeter",
    "LipSyncScore",
    "audio_energy",
    "best_lag_correlation",
    "mouth_opening",
    "score_lip_sync",
]
