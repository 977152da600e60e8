"""``liveportrait`` expression engine: emotion stills from one portrait (render_emotion, GPU).

The face is found by the face analyzer it is given (largest face, 68 landmarks), then F and M run once per
portrait; each emotion is an edit of the source expression and pose (``editing.EMOTION_PRESETS`` scaled by
intensity), stitched, warped, decoded and pasted back into the full image.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from engines.context import EngineContext, required_weights
from engines.errors import EngineError
from engines.expression import check_render_args, register
from engines.face import FaceAnalyzer, find_face
from engines.liveportrait.animate import FrameEdits, PortraitAnimator, PortraitSource
from engines.liveportrait.crop import INPUT_SIZE
from engines.liveportrait.editing import emotion_edit
from engines.liveportrait.loader import weights_root
from engines.liveportrait.pipeline import LivePortrait, load_liveportrait

log = logging.getLogger(__name__)

ENGINE_VERSION = "1.0"


@dataclass
class PortraitAnalysis:
    """What ``render`` needs of one portrait; computed once, shared by every emotion."""

    source: PortraitSource
    landmarks: np.ndarray  # (68, 2) in the portrait's pixels
    faces_found: int = 1


@register("liveportrait")
class LivePortraitExpressionEngine:
    version = ENGINE_VERSION
    gpu = True

    def __init__(self, lp: LivePortrait, faces: FaceAnalyzer, input_size: int = INPUT_SIZE) -> None:
        self.animator = PortraitAnimator(lp, input_size)
        self.faces = faces
        self.gpu = lp.device.type == "cuda"

    @classmethod
    def load(cls, weights: Path | None, context: EngineContext) -> LivePortraitExpressionEngine:
        """From the weights root, or its ``base_models/warping_module.pth`` (the file that stands for the set);
        ``context.faces`` finds the portrait's face; option ``input_size``."""
        root = weights_root(required_weights(weights, "liveportrait"))
        lp = load_liveportrait(root, context.precision, context.device)
        return cls(lp, context.faces, context.option("input_size", INPUT_SIZE))

    @property
    def info(self) -> dict[str, object]:
        return self.animator.lp.info

    def analyze(self, image_bgr: np.ndarray, face_index: int | None = None) -> PortraitAnalysis:
        """Largest face, or the ``face_index``-th largest (EngineError ``no_face`` / ``face_not_found`` /
        ``invalid_image``), then F and M once."""
        if image_bgr.ndim != 3 or image_bgr.shape[2] != 3 or image_bgr.dtype != np.uint8:
            raise EngineError("invalid_image", "Expected a BGR uint8 image.")
        face = find_face(image_bgr, self.faces, face_index)
        return PortraitAnalysis(self.animator.prepare(image_bgr, face.landmarks), face.landmarks, face.faces_found)

    def render(self, analysis: PortraitAnalysis, emotion: str, intensity: float) -> np.ndarray:
        check_render_args(emotion, intensity)
        if emotion == "neutral" or intensity == 0.0:
            return analysis.source.image.copy()
        delta, pose = emotion_edit(emotion, intensity)
        edits = FrameEdits(exp=delta[None], pose=np.array([[pose["pitch"], pose["yaw"], pose["roll"]]], np.float32))
        kp_driving = self.animator.drive(analysis.source, edits)
        return self.animator.render(analysis.source, kp_driving)[0]
