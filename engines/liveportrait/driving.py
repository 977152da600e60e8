"""Driving keypoints from a driving motion, upstream's video-driven pipeline (``src/live_portrait_pipeline.py``).

A driving video's frames go through M (``motion_template``); each output frame's keypoints are the source's
canonical keypoints under a pose, expression, scale and shift taken from the driving frame: **relative**
(default: the driving frame's change since the driving video's first frame, applied to the source) or
**absolute** (the driving frame's own values), limited to ``animation_region`` (all, exp, pose, lip, eyes).
Then, as upstream: "expression-friendly" rescaling of relative motion for a portrait source, lip
normalisation, eye / lip retargeting (upstream's work-in-progress switches), stitching, and the driving
multiplier. A source *video* (v2v) takes each source frame's own motion and smooths the driving
expression and rotation with upstream's Kalman smoother.

Everything here works on torch tensors of a chunk of frames at once (upstream loops frame by frame; the
arithmetic is the same).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch

from engines.liveportrait.model import NUM_KP
from engines.liveportrait.pipeline import LivePortrait, rotation_matrix

Region = Literal["all", "exp", "pose", "lip", "eyes"]
REGIONS: tuple[str, ...] = ("all", "exp", "pose", "lip", "eyes")
DRIVING_OPTIONS = ("expression-friendly", "pose-friendly")
LIP_KEYPOINTS = (6, 12, 14, 17, 19, 20)
EYE_KEYPOINTS = (11, 13, 15, 16, 18)
# The expression entries an "exp" / "all" edit takes from the driving frame when not relative to frame 0:
# whole keypoints, then (keypoints, axes) pairs, as upstream's pipeline lists them.
EXP_KEYPOINTS = (1, 2, 6, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20)
EXP_PARTS = ((slice(3, 5), 1), (5, 2), (8, 2), (9, slice(1, None)))
LIP_NORMALIZE_THRESHOLD = 0.03  # upstream: close the source's lips first only when they are this open
PROCESS_VARIANCE = 1e-5  # upstream's Kalman smoother


@dataclass(frozen=True)
class DrivingOptions:
    """Upstream's inference switches for a driving video (names without upstream's ``flag_`` prefix)."""

    relative_motion: bool = True
    animation_region: str = "all"
    stitching: bool = True
    paste_back: bool = True
    driving_option: str = "expression-friendly"
    driving_multiplier: float = 1.0
    normalize_lip: bool = False
    eye_retargeting: bool = False
    lip_retargeting: bool = False
    smooth_observation_variance: float = 3e-7  # a source video's smoothing (larger: smoother)

    def __post_init__(self) -> None:
        if self.animation_region not in REGIONS:
            raise ValueError(f"animation_region must be one of {REGIONS}, got {self.animation_region!r}")
        if self.driving_option not in DRIVING_OPTIONS:
            raise ValueError(f"driving_option must be one of {DRIVING_OPTIONS}, got {self.driving_option!r}")

    @property
    def moves_pose(self) -> bool:
        return self.animation_region in ("all", "pose")

    @property
    def moves_exp(self) -> bool:
        return self.animation_region in ("all", "exp")

    @property
    def retargets(self) -> bool:
        return self.eye_retargeting or self.lip_retargeting


@dataclass
class Motion:
    """Per-frame motion (upstream's motion template): M's outputs of each frame and its eye / lip ratios."""

    scale: np.ndarray  # (N, 1)
    R: np.ndarray  # (N, 3, 3) rotation (transposed, as upstream stores it)
    exp: np.ndarray  # (N, 21, 3)
    t: np.ndarray  # (N, 3)
    kp: np.ndarray  # (N, 21, 3) canonical keypoints
    x_s: np.ndarray  # (N, 21, 3) posed keypoints
    c_eyes: np.ndarray  # (N, 2) eye-open ratios
    c_lip: np.ndarray  # (N, 1) lip-open ratio
    fps: float = 25.0

    def __len__(self) -> int:
        return len(self.exp)

    def part(self, rows: slice) -> Motion:
        fields = {name: getattr(self, name)[rows] for name in MOTION_ARRAYS}
        return Motion(**fields, fps=self.fps)


MOTION_ARRAYS = ("scale", "R", "exp", "t", "kp", "x_s", "c_eyes", "c_lip")
MOTION_SHAPES = {
    "scale": (1,),
    "R": (3, 3),
    "exp": (NUM_KP, 3),
    "t": (3,),
    "kp": (NUM_KP, 3),
    "x_s": (NUM_KP, 3),
    "c_eyes": (2,),
    "c_lip": (1,),
}


def motion_of(lp: LivePortrait, x: torch.Tensor, eye_ratios: np.ndarray, lip_ratios: np.ndarray) -> Motion:
    """The motion of a batch of (B, 3, s, s) crops in [0, 1] (upstream's ``make_motion_template``)."""
    info = lp.motion(x)
    rot = rotation_matrix(info["pitch"], info["yaw"], info["roll"])
    arrays = {
        "scale": info["scale"],
        "R": rot,
        "exp": info["exp"],
        "t": info["t"],
        "kp": info["kp"],
        "x_s": lp.keypoints(info),
    }
    numpy = {k: v.detach().cpu().numpy().astype(np.float32) for k, v in arrays.items()}
    ratios = {"c_eyes": np.asarray(eye_ratios, np.float32).reshape(-1, 2), "c_lip": np.asarray(lip_ratios, np.float32)}
    return Motion(**numpy, c_eyes=ratios["c_eyes"], c_lip=ratios["c_lip"].reshape(-1, 1))


def concat_motion(parts: list[Motion], fps: float) -> Motion:
    fields = {name: np.concatenate([getattr(p, name) for p in parts]) for name in MOTION_ARRAYS}
    return Motion(**fields, fps=fps)


def _tensor(array: np.ndarray, device: torch.device) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32)).to(device)


def _take_exp(base: torch.Tensor, driving: torch.Tensor) -> torch.Tensor:
    """``base`` with upstream's "exp" entries taken from ``driving`` (both (B, 21, 3))."""
    out = base.clone()
    out[:, list(EXP_KEYPOINTS), :] = driving[:, list(EXP_KEYPOINTS), :]
    for rows, axes in EXP_PARTS:
        out[:, rows, axes] = driving[:, rows, axes]
    return out


def _take_rows(base: torch.Tensor, driving: torch.Tensor, rows: tuple[int, ...]) -> torch.Tensor:
    out = base.clone()
    out[:, list(rows), :] = driving[:, list(rows), :]
    return out


def _region_exp(options: DrivingOptions, source_exp: torch.Tensor, target: torch.Tensor, whole: bool) -> torch.Tensor:
    """The new expression: ``target`` where the region moves (all of it when ``whole``, else upstream's entries)."""
    region = options.animation_region
    if options.moves_exp:
        return target if whole else _take_exp(source_exp, target)
    if region == "lip":
        return _take_rows(source_exp, target, LIP_KEYPOINTS)
    if region == "eyes":
        return _take_rows(source_exp, target, EYE_KEYPOINTS)
    return source_exp.clone()  # pose only


def _posed(
    kp: torch.Tensor, rot: torch.Tensor, exp: torch.Tensor, scale: torch.Tensor, t: torch.Tensor
) -> torch.Tensor:
    """scale * (kp @ R + exp) + t, with t's z zeroed (upstream's ``x_d_i_new``)."""
    shift = t.clone()
    shift[..., 2] = 0
    return scale[..., None] * (kp @ rot + exp) + shift[:, None, :]


def hull_volume(points: np.ndarray) -> float:
    from scipy.spatial import ConvexHull

    return float(ConvexHull(points).volume)


@dataclass
class SourceMotion:
    """A source's M outputs as tensors, one row per source frame (a portrait: one row for every frame)."""

    kp: torch.Tensor  # (B, 21, 3)
    R: torch.Tensor  # (B, 3, 3)
    exp: torch.Tensor
    scale: torch.Tensor  # (B, 1)
    t: torch.Tensor  # (B, 3)
    x_s: torch.Tensor  # (B, 21, 3)
    lip_ratio: np.ndarray  # (B,)
    eye_ratios: np.ndarray  # (B, 2)

    @classmethod
    def of(cls, motion: Motion, device: torch.device) -> SourceMotion:
        t = {name: _tensor(getattr(motion, name), device) for name in ("kp", "R", "exp", "scale", "t", "x_s")}
        return cls(**t, lip_ratio=motion.c_lip[:, 0].astype(np.float32), eye_ratios=motion.c_eyes.astype(np.float32))

    def expand(self, n: int) -> SourceMotion:
        def grow(x: torch.Tensor) -> torch.Tensor:
            return x.expand(n, *x.shape[1:]) if x.shape[0] == 1 else x

        tensors = {name: grow(getattr(self, name)) for name in ("kp", "R", "exp", "scale", "t", "x_s")}
        lip = np.broadcast_to(self.lip_ratio, (n,)) if len(self.lip_ratio) == 1 else self.lip_ratio
        eyes = np.broadcast_to(self.eye_ratios, (n, 2)) if len(self.eye_ratios) == 1 else self.eye_ratios
        return SourceMotion(**tensors, lip_ratio=lip, eye_ratios=eyes)


class KeypointDriver:
    """Driving keypoints of any chunk of frames for one source and one driving motion (see the module doc).

    ``source`` holds one row (a portrait) or one row per output frame (a source video, ``video_source``).
    """

    def __init__(
        self, lp: LivePortrait, source: Motion, driving: Motion, options: DrivingOptions, video_source: bool = False
    ) -> None:
        self.lp, self.options, self.video_source = lp, options, video_source
        self.device = lp.device
        self.source, self.driving = source, driving
        self.first = driving.part(slice(0, 1))
        self.smoothed: tuple[np.ndarray, np.ndarray | None] | None = None
        if video_source:
            self.smoothed = self._smoothed_video_motion()
        self.multiplier: float | None = None
        self.first_posed: torch.Tensor | None = None
        if options.relative_motion and options.driving_option == "expression-friendly" and not video_source:
            self.first_posed, self.multiplier = self._motion_multiplier()

    def __call__(self, frames: slice) -> torch.Tensor:
        """(B, 21, 3) keypoints of output frames ``frames`` (stitched / retargeted as the options say)."""
        src = SourceMotion.of(self.source.part(frames) if self.video_source else self.source, self.device)
        n = len(range(*frames.indices(len(self.driving))))
        src = src.expand(n)
        drv = self.driving.part(frames)
        x_d = self._posed_driving(src, drv, frames)
        x_d = self._finish(src, drv, x_d)
        return src.x_s + (x_d - src.x_s) * self.options.driving_multiplier

    # ---- posed keypoints -----------------------------------------------------------------------

    def _posed_driving(self, src: SourceMotion, drv: Motion, frames: slice) -> torch.Tensor:
        if self.video_source:
            return self._video_posed(src, drv, frames)
        x_d = self._image_posed(src, drv)
        if self.multiplier is not None and self.first_posed is not None:
            x_d = (x_d - self.first_posed) * self.multiplier + src.x_s
        return x_d

    def _image_posed(self, src: SourceMotion, drv: Motion) -> torch.Tensor:
        opts, dev = self.options, self.device
        d_rot, d_exp = _tensor(drv.R, dev), _tensor(drv.exp, dev)
        d_scale, d_t = _tensor(drv.scale, dev), _tensor(drv.t, dev)
        n = d_exp.shape[0]
        src = src.expand(n) if src.kp.shape[0] != n else src
        if opts.relative_motion:
            f_rot, f_exp = _tensor(self.first.R, dev), _tensor(self.first.exp, dev)
            f_scale, f_t = _tensor(self.first.scale, dev), _tensor(self.first.t, dev)
            rot = (d_rot @ f_rot.transpose(1, 2)) @ src.R if opts.moves_pose else src.R
            exp = _region_exp(opts, src.exp, src.exp + (d_exp - f_exp), whole=True)
            scale = src.scale * (d_scale / f_scale) if opts.animation_region == "all" else src.scale
            t = src.t + (d_t - f_t) if opts.moves_pose else src.t
        else:
            rot = d_rot if opts.moves_pose else src.R
            exp = _region_exp(opts, src.exp, d_exp, whole=False)
            scale = src.scale
            t = d_t if opts.moves_pose else src.t
        return _posed(src.kp, rot, exp, scale, t)

    def _video_posed(self, src: SourceMotion, drv: Motion, frames: slice) -> torch.Tensor:
        opts, dev = self.options, self.device
        assert self.smoothed is not None
        exp_rows, rot_rows = self.smoothed
        exp_smooth = _tensor(exp_rows[frames], dev).reshape(-1, NUM_KP, 3)
        rot = src.R
        if opts.moves_pose and rot_rows is not None:
            rot = _tensor(rot_rows[frames], dev).reshape(-1, 3, 3)
        exp = _region_exp(opts, src.exp, exp_smooth, whole=False)
        t = _tensor(drv.t, dev) if (not opts.relative_motion and opts.moves_pose) else src.t
        return _posed(src.kp, rot, exp, src.scale, t)

    def _smoothed_video_motion(self) -> tuple[np.ndarray, np.ndarray | None]:
        """Upstream's smoothed driving expression (and rotation, when the pose moves) for a source video."""
        n = len(self.driving)
        src, drv, opts = self.source, self.driving, self.options
        if opts.relative_motion:
            exp = src.exp[:n] + drv.exp - drv.exp[:1]
            rot = np.einsum("nij,nkj->nik", drv.R, np.broadcast_to(drv.R[:1], drv.R.shape)) @ src.R[:n]
        else:
            exp, rot = drv.exp, drv.R
        variance = opts.smooth_observation_variance
        exp_smooth = kalman_smooth(exp.reshape(n, -1), variance)
        rot_smooth = kalman_smooth(rot.reshape(n, -1), variance) if opts.moves_pose else None
        return exp_smooth, rot_smooth

    def _motion_multiplier(self) -> tuple[torch.Tensor, float]:
        """The first driven frame's keypoints and sqrt(hull volume of the source's / of those): expression-friendly."""
        src = SourceMotion.of(self.source, self.device)
        x_d0 = self._image_posed(src, self.first)
        ratio = np.sqrt(hull_volume(src.x_s[0].cpu().numpy())) / np.sqrt(hull_volume(x_d0[0].cpu().numpy()))
        return x_d0, float(ratio)

    # ---- stitching and retargeting -----------------------------------------------------------

    def _finish(self, src: SourceMotion, drv: Motion, x_d: torch.Tensor) -> torch.Tensor:
        opts = self.options
        if not opts.retargets:
            lip_before = self._lip_before(src)
            if opts.stitching:
                x_d = self.lp.stitch(src.x_s, x_d)
            return x_d + lip_before if lip_before is not None else x_d
        delta = torch.zeros_like(x_d)
        if opts.eye_retargeting:
            ratios = np.concatenate([src.eye_ratios, drv.c_eyes[:, :1]], axis=1)
            delta = delta + self.lp.retarget_eye(src.x_s, _tensor(ratios, self.device))
        if opts.lip_retargeting:
            ratios = np.stack([src.lip_ratio, drv.c_lip[:, 0]], axis=1)
            delta = delta + self.lp.retarget_lip(src.x_s, _tensor(ratios, self.device))
        x_d = (src.x_s if opts.relative_motion else x_d) + delta
        return self.lp.stitch(src.x_s, x_d) if opts.stitching else x_d

    def _lip_before(self, src: SourceMotion) -> torch.Tensor | None:
        """Upstream's lip normalisation: the source's open lips closed first (relative motion only)."""
        if not (self.options.normalize_lip and self.options.relative_motion):
            return None
        open_rows = src.lip_ratio >= LIP_NORMALIZE_THRESHOLD
        if not open_rows.any():
            return None
        ratios = np.stack([src.lip_ratio, np.zeros_like(src.lip_ratio)], axis=1)
        delta = self.lp.retarget_lip(src.x_s, _tensor(ratios, self.device))
        return delta * torch.from_numpy(open_rows.astype(np.float32)).to(delta)[:, None, None]


def kalman_smooth(observations: np.ndarray, observation_variance: float, process_variance: float = PROCESS_VARIANCE):
    """Upstream's smoother (pykalman ``KalmanFilter.smooth``, identity dynamics, isotropic noise) -> (N, D).

    With every covariance a multiple of the identity the filter is one scalar gain per step, so this is the
    same Rauch-Tung-Striebel smoother in closed form: starting at the first observation with unit variance.
    """
    z = np.asarray(observations, np.float64)
    n = len(z)
    means, variances, predicted = np.empty_like(z), np.empty(n), np.empty(n)
    mean, variance = z[0], 1.0
    for i in range(n):
        predicted[i] = variance
        gain = variance / (variance + observation_variance)
        mean = mean + gain * (z[i] - mean)
        variance = (1.0 - gain) * variance
        means[i], variances[i] = mean, variance
        variance = variance + process_variance
    smoothed = means.copy()
    for i in range(n - 2, -1, -1):
        gain = variances[i] / predicted[i + 1]
        smoothed[i] = means[i] + gain * (smoothed[i + 1] - means[i])
    return smoothed
