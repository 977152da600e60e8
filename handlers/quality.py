"""The ``quality`` of a generate_video result, measured on the engine's frames as they stream to the encoder.

``RenderQuality`` feeds ``engines.quality.QualityMeter`` (lip sync within 5 % of the render time, silence
held still, face lost) and adds the muxed file's A/V offset; ``check_min_lip_sync`` turns a score under the
request's ``min_lip_sync`` into the ``low_quality`` failure, which keeps the (uploaded) result for inspection.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from engines.codecs.video_in import av_offset_ms
from engines.face import FaceAnalyzer
from engines.lipsync import AvatarFrames, DrivingAudio, pingpong_index
from engines.quality import QualityMeter, audio_energy
from handlers.errors import TaskError


class LowQuality(TaskError):
    """The render's lip-sync score is under the request's ``min_lip_sync``; ``result`` is what was made."""

    def __init__(self, message: str, result: dict[str, Any]) -> None:
        super().__init__("low_quality", message)
        self.result = result


class RenderQuality:
    """One render's meter: ``add`` each frame in order with the engine's seconds for it, ``report`` at the end."""

    def __init__(self, analyzer: FaceAnalyzer, avatar: AvatarFrames, audio: DrivingAudio) -> None:
        self._frames = len(avatar)
        self._energy = audio_energy(audio.samples, audio.num_frames)
        self.meter = QualityMeter(analyzer, avatar, expected_frames=audio.num_frames)

    def add(self, index: int, frame: np.ndarray, render_s: float) -> None:
        energy = self._energy[index] if index < len(self._energy) else 0.0
        self.meter.add(frame, energy, pingpong_index(index, self._frames), render_s)

    def report(self, video: Path) -> dict[str, Any]:
        return self.meter.report(av_offset_ms(video)).as_dict()


def check_min_lip_sync(minimum: float | None, result: dict[str, Any]) -> None:
    """Raise ``LowQuality`` (the result marked ``low_quality: true``) when the score is under ``minimum``."""
    if minimum is None:
        return
    score = result["quality"]["lip_sync"]
    if score < minimum:
        marked = {**result, "low_quality": True}
        raise LowQuality(
            f"The mouth does not follow the speech well enough: lip-sync score {score:.2f} is under the "
            f"requested `min_lip_sync` {minimum:.2f}. The video was kept for inspection: {result['video']['uri']}",
            marked,
        )
