"""Dense backward warp from control-point motion: a thin-plate spline fitted from the moved points back
to where they came from, evaluated on a coarse grid over the face ROI, upsampled with cv2.resize and
applied with cv2.remap. The warp is multiplied by a weight (the face hull's, ``geometry.hull_weights``)
so it fades to exactly zero beyond the face.

The linear algebra goes through OpenCV (cv2.solve, cv2.gemm): numpy's OpenBLAS starts threads for
these small systems, which costs tens of milliseconds on a busy 2-core machine.
"""

from __future__ import annotations

import cv2
import numpy as np

TPS_REGULARIZATION = 1e-3  # in IOD units: smooths near-coincident points with different targets
MERGE_DISTANCE = 0.01  # IOD: a control point this close to an earlier one is dropped (singular system)


def _squared_distances(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(len(a), len(b)) squared distances, as one matrix product."""
    left = np.column_stack([a, (a**2).sum(axis=1), np.ones(len(a))])
    right = np.column_stack([-2.0 * b, np.ones(len(b)), (b**2).sum(axis=1)])
    d2 = cv2.gemm(left, right, 1.0, None, 0.0, flags=cv2.GEMM_2_T)
    return np.maximum(d2, 0.0, out=d2)


def _kernel(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """TPS radial basis U = r^2 log r^2 between point sets a (n, 2) and b (m, 2)."""
    r2 = _squared_distances(a, b)
    tiny = r2 < 1e-300
    r2[tiny] = 1.0  # log(1) = 0, and U(0) = 0
    return r2 * np.log(r2)


def _distinct(points: np.ndarray) -> np.ndarray:
    """Indices of the points with no earlier point within MERGE_DISTANCE."""
    d2 = _squared_distances(points, points)
    close = np.triu(d2 < MERGE_DISTANCE**2, k=1)
    return np.flatnonzero(~close.any(axis=0))


def fit_tps(ctrl: np.ndarray, values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(kept control points, coefficients): the spline through ``values`` at ``ctrl``.

    Coefficients stack the kernel weights (one row per kept point) and the affine part (3 rows).
    """
    keep = _distinct(ctrl)
    ctrl, values = ctrl[keep], values[keep]
    n = len(ctrl)
    system = np.zeros((n + 3, n + 3))
    system[:n, :n] = _kernel(ctrl, ctrl) + TPS_REGULARIZATION * np.eye(n)
    system[:n, n] = system[n, :n] = 1.0
    system[:n, n + 1 :] = ctrl
    system[n + 1 :, :n] = ctrl.T
    rhs = np.zeros((n + 3, values.shape[1]))
    rhs[:n] = values
    ok, coefficients = cv2.solve(system, rhs, flags=cv2.DECOMP_LU)
    if not ok:  # only for degenerate (e.g. collinear) control points; an exact inverse is not needed
        ok, coefficients = cv2.solve(system, rhs, flags=cv2.DECOMP_SVD)
    return ctrl, coefficients


def eval_tps(points: np.ndarray, ctrl: np.ndarray, coefficients: np.ndarray) -> np.ndarray:
    basis = np.column_stack([_kernel(points, ctrl), np.ones(len(points)), points])
    return cv2.gemm(basis, coefficients, 1.0, None, 0.0)


def backward_maps(
    src: np.ndarray,
    dst: np.ndarray,
    grid: np.ndarray,
    roi: tuple[int, int, int, int],
    weight: np.ndarray,
    scale: float,
) -> tuple[np.ndarray, np.ndarray]:
    """cv2.remap maps (ROI-sized, absolute source coordinates) that move ``src`` points to ``dst``.

    ``scale`` (pixels per unit, the IOD) normalises coordinates so the system is well conditioned.
    """
    x1, y1, x2, y2 = roi
    centre = dst.mean(axis=0)
    ctrl, coefficients = fit_tps((dst - centre) / scale, (src - dst) / scale)
    samples = (grid.reshape(-1, 2) - centre) / scale
    coarse = (eval_tps(samples, ctrl, coefficients) * scale).reshape(grid.shape).astype(np.float32)
    dense = cv2.resize(coarse, (x2 - x1, y2 - y1), interpolation=cv2.INTER_LINEAR)
    xs = np.arange(x1, x2, dtype=np.float32)
    ys = np.arange(y1, y2, dtype=np.float32)
    return xs[None, :] + dense[..., 0] * weight, ys[:, None] + dense[..., 1] * weight
