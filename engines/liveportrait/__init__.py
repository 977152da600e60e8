"""LivePortrait in-process: F, M, W, G and the stitching/retargeting MLPs, key-compatible with the official weights.

``load_liveportrait(root, precision="auto")`` returns a ``LivePortrait`` whose methods follow the upstream
wrapper (``appearance``, ``motion``, ``keypoints``, ``stitch``, ``retarget_lip``, ``retarget_eye``, ``warp_decode``).
"""

from engines.liveportrait.loader import FILES, PARTS
from engines.liveportrait.pipeline import LivePortrait, load_liveportrait, pose_degrees, rotation_matrix

__all__ = ["FILES", "PARTS", "LivePortrait", "load_liveportrait", "pose_degrees", "rotation_matrix"]
