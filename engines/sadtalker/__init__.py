"""SadTalker in-process: audio -> 3DMM expression and head pose -> face-vid2vid render, key-compatible with the
official files (``SadTalker_V0.0.2_{256,512}.safetensors`` + the two mapping networks).

``load_sadtalker(root, size=256, precision="auto")`` returns a ``SadTalker`` with upstream's methods
(``face_coeffs``, ``audio_windows``, ``audio_to_exp``, ``audio_to_pose``, ``source_keypoints``, ``mapping``,
``render``).
"""

from engines.sadtalker.model import SadTalker, load_sadtalker

__all__ = ["SadTalker", "load_sadtalker"]
