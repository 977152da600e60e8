"""Video-driven LivePortrait: the keypoint math of upstream's pipeline, its smoother, crops, motion templates.

The driver's arithmetic is checked by properties that follow from upstream's formulas (a driving video that
repeats its first frame leaves the source where it is under relative motion; a region moves only its
keypoints; absolute motion takes the driving pose) on random weights and synthetic motions; equality with
upstream's own pipeline was measured separately on the same random weights (README, "Driving video").
"""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from engines.errors import EngineError
from engines.liveportrait import LivePortrait, load_liveportrait, rotation_matrix
from engines.liveportrait.crop import CROP_SIZE, crop_box, driving_box, face_square
from engines.liveportrait.driving import (
    EYE_KEYPOINTS,
    LIP_KEYPOINTS,
    MOTION_ARRAYS,
    DrivingOptions,
    KeypointDriver,
    Motion,
    kalman_smooth,
)
from engines.liveportrait.motion_file import FORMAT, load_motion, save_motion
from engines.liveportrait.random_weights import write_random_weights

NO_STITCH = {"stitching": False, "driving_option": "pose-friendly"}


@pytest.fixture(scope="module")
def lp(tmp_path_factory: pytest.TempPathFactory) -> LivePortrait:
    return load_liveportrait(write_random_weights(tmp_path_factory.mktemp("lp-driving"), seed=11), device="cpu")


def motion(frames: int, seed: int) -> Motion:
    """A plausible random motion: small poses, expressions and shifts, scale near 1."""
    rng = np.random.default_rng(seed)
    angles = torch.from_numpy(rng.uniform(-15, 15, (frames, 3)).astype(np.float32))
    rot = rotation_matrix(angles[:, 0], angles[:, 1], angles[:, 2]).numpy()
    kp = np.repeat(rng.normal(0, 0.3, (1, 21, 3)), frames, axis=0).astype(np.float32)
    exp = rng.normal(0, 0.02, (frames, 21, 3)).astype(np.float32)
    scale = rng.uniform(0.9, 1.1, (frames, 1)).astype(np.float32)
    t = rng.normal(0, 0.05, (frames, 3)).astype(np.float32)
    x_s = scale[..., None] * (kp @ rot + exp)
    x_s[..., :2] += t[:, None, :2]
    c_eyes = rng.uniform(0.2, 0.4, (frames, 2)).astype(np.float32)
    c_lip = rng.uniform(0.0, 0.3, (frames, 1)).astype(np.float32)
    return Motion(scale, rot, exp, t, kp, x_s.astype(np.float32), c_eyes, c_lip)


def still(first: Motion, frames: int) -> Motion:
    """A driving motion that repeats ``first``'s frame 0."""
    return Motion(**{name: np.repeat(getattr(first, name)[:1], frames, axis=0) for name in MOTION_ARRAYS})


def drive(lp: LivePortrait, source: Motion, driving: Motion, video: bool = False, **options: object) -> torch.Tensor:
    return KeypointDriver(lp, source, driving, DrivingOptions(**options), video_source=video)(slice(0, len(driving)))


def test_relative_motion_of_a_still_driving_video_keeps_the_source(lp: LivePortrait) -> None:
    source = motion(1, seed=1)
    x_s = torch.from_numpy(source.x_s)
    for region in ("all", "exp", "pose", "lip", "eyes"):
        out = drive(lp, source, still(motion(1, seed=2), 3), animation_region=region, **NO_STITCH)
        assert torch.allclose(out, x_s.expand(3, -1, -1), atol=1e-5), region
    # expression-friendly: the first frame lands on the source exactly (its difference is zero)
    out = drive(lp, source, motion(4, seed=3), stitching=False)
    assert torch.allclose(out[0], x_s[0], atol=1e-6)


def test_a_region_moves_only_its_keypoints(lp: LivePortrait) -> None:
    source, driving = motion(1, seed=4), motion(3, seed=5)
    x_s = torch.from_numpy(source.x_s)
    for region, rows in (("lip", LIP_KEYPOINTS), ("eyes", EYE_KEYPOINTS)):
        for relative in (True, False):
            out = drive(lp, source, driving, animation_region=region, relative_motion=relative, **NO_STITCH)
            moved = sorted(set(np.flatnonzero((out - x_s).abs().amax(dim=(0, 2)).numpy() > 1e-6)))
            assert moved and set(moved) <= set(rows), (region, relative, moved)


def test_absolute_pose_takes_the_driving_rotation_and_shift(lp: LivePortrait) -> None:
    source, driving = motion(1, seed=6), motion(2, seed=7)
    out = drive(lp, source, driving, relative_motion=False, animation_region="pose", **NO_STITCH)
    rot, t = torch.from_numpy(driving.R), torch.from_numpy(driving.t)
    expected = torch.from_numpy(source.scale)[..., None] * (
        torch.from_numpy(source.kp) @ rot + torch.from_numpy(source.exp)
    )
    expected[..., :2] += t[:, None, :2]
    assert torch.allclose(out, expected, atol=1e-5)


def test_stitching_multiplier_and_retargeting_follow_upstream(lp: LivePortrait) -> None:
    source, driving = motion(1, seed=8), motion(3, seed=9)
    x_s = torch.from_numpy(source.x_s)
    raw = drive(lp, source, driving, **NO_STITCH)
    stitched = drive(lp, source, driving, driving_option="pose-friendly")
    assert torch.allclose(stitched, lp.stitch(x_s.expand(3, -1, -1), raw), atol=1e-6)
    doubled = drive(lp, source, driving, driving_multiplier=2.0, **NO_STITCH)
    assert torch.allclose(doubled, x_s + 2 * (raw - x_s), atol=1e-5)
    # relative retargeting replaces the motion by the eye and lip deltas on the source (upstream's WIP switch)
    retargeted = drive(lp, source, driving, eye_retargeting=True, lip_retargeting=True, stitching=False)
    eye = np.concatenate([np.repeat(source.c_eyes, 3, 0), driving.c_eyes[:, :1]], axis=1)
    lip = np.stack([np.repeat(source.c_lip[:, 0], 3), driving.c_lip[:, 0]], axis=1)
    kp = x_s.expand(3, -1, -1)
    expected = kp + lp.retarget_eye(kp, torch.from_numpy(eye)) + lp.retarget_lip(kp, torch.from_numpy(lip))
    assert torch.allclose(retargeted, expected, atol=1e-6)


def test_a_source_video_keeps_each_frames_pose_under_relative_motion(lp: LivePortrait) -> None:
    source = motion(4, seed=10)
    out = drive(lp, source, still(motion(1, seed=12), 4), video=True, **NO_STITCH)
    # upstream's smoothing (observation variance 3e-7) mixes in about 3% of the next frame: close, not equal
    assert torch.allclose(out, torch.from_numpy(source.x_s), atol=3e-2)
    unsmoothed = drive(
        lp, source, still(motion(1, seed=12), 4), video=True, smooth_observation_variance=1e-12, **NO_STITCH
    )
    assert torch.allclose(unsmoothed, torch.from_numpy(source.x_s), atol=1e-5)


def reference_kalman(z: np.ndarray, r: float, q: float) -> np.ndarray:
    """The textbook Kalman filter and RTS smoother in matrix form (identity dynamics, unit initial covariance)."""
    n, d = z.shape
    eye = np.eye(d)
    m, p = z[0].copy(), eye.copy()
    means, covs, preds = [], [], []
    for i in range(n):
        preds.append(p)
        k = p @ np.linalg.inv(p + r * eye)
        m = m + k @ (z[i] - m)
        p = (eye - k) @ p
        means.append(m)
        covs.append(p)
        p = p + q * eye
    out = [means[-1]]
    for i in range(n - 2, -1, -1):
        gain = covs[i] @ np.linalg.inv(preds[i + 1])
        out.insert(0, means[i] + gain @ (out[0] - means[i]))
    return np.stack(out)


@pytest.mark.parametrize("variance", [3e-7, 3e-3, 1.0])
def test_the_smoother_is_the_kalman_rts_smoother(variance: float) -> None:
    z = np.cumsum(np.random.default_rng(0).normal(0, 0.01, (25, 9)), axis=0)
    np.testing.assert_allclose(kalman_smooth(z, variance), reference_kalman(z, variance, 1e-5), atol=1e-10)
    assert np.abs(np.diff(kalman_smooth(z, 1.0), axis=0)).mean() < np.abs(np.diff(z, axis=0)).mean() / 2


def test_driving_box_averages_unrotated_face_squares() -> None:
    base = np.random.default_rng(1).uniform(100, 200, (68, 2))
    box = driving_box([base, base + [10.0, 0.0]])
    center, side, _ = face_square(base, 2.2, 0.0, -0.1)
    assert box == pytest.approx((center[0] + 5.0, center[1], side))
    image = np.full((300, 300, 3), 200, np.uint8)
    crop = crop_box(image, (20.0, 20.0, 100.0)).image  # partly outside the image: black there, as upstream
    assert crop.shape == (CROP_SIZE, CROP_SIZE, 3) and crop[0, 0].max() == 0 and crop[-1, -1].min() == 200


# ---- motion templates ------------------------------------------------------------------------


def test_motion_template_round_trip(tmp_path: Path) -> None:
    original = motion(5, seed=13)
    original.fps = 30.0
    save_motion(tmp_path / "m.npz", original)
    loaded = load_motion(tmp_path / "m.npz", max_frames=10)
    assert loaded.fps == 30.0 and len(loaded) == 5
    for name in MOTION_ARRAYS:
        np.testing.assert_array_equal(getattr(loaded, name), getattr(original, name))
    with pytest.raises(EngineError, match="1 to 4 are allowed"):
        load_motion(tmp_path / "m.npz", max_frames=4)


def arrays(frames: int = 2) -> dict[str, np.ndarray]:
    m = motion(frames, seed=14)
    return {name: getattr(m, name) for name in MOTION_ARRAYS} | {"fps": np.float32(25), "format": np.array(FORMAT)}


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda a: a.update(exp=np.array([object()] * 2, dtype=object)), "unreadable"),  # a pickled object array
        (lambda a: a.update(exp=a["exp"][:, :20]), "expected float"),
        (lambda a: a.update(t=np.full((2, 3), np.nan, np.float32)), "NaN"),
        (lambda a: a.update(format=np.array("other")), "is not"),
        (lambda a: a.pop("kp"), "expected"),
        (lambda a: a.update(fps=np.float32(0)), "fps"),
    ],
)
def test_bad_motion_templates_are_refused(tmp_path: Path, change, message: str) -> None:
    content = arrays()
    change(content)
    np.savez(tmp_path / "bad.npz", **content)
    with pytest.raises(EngineError, match=message) as caught:
        load_motion(tmp_path / "bad.npz", max_frames=10)
    assert caught.value.code == "invalid_motion_template"


def test_a_zip_bomb_is_refused_from_its_declared_sizes(tmp_path: Path) -> None:
    buffer = io.BytesIO()
    np.save(buffer, np.zeros((4000, 21, 3), np.float32))
    with zipfile.ZipFile(tmp_path / "bomb.npz", "w", zipfile.ZIP_DEFLATED) as archive:
        for name in (*MOTION_ARRAYS, "fps", "format"):
            archive.writestr(f"{name}.npy", buffer.getvalue())
    with pytest.raises(EngineError, match="declares"):
        load_motion(tmp_path / "bomb.npz", max_frames=10)
    (tmp_path / "video.npz").write_bytes(b"\x00\x00\x00\x18ftypmp42")
    with pytest.raises(EngineError, match="not an .npz"):
        load_motion(tmp_path / "video.npz", max_frames=10)
