"""Piecewise-affine warps: displacement fields interpolated over a Delaunay triangulation of control points.

Control points (landmarks plus fixed anchors on a crop's border) each carry a displacement; the dense
field is their piecewise-linear interpolation over the triangulation, sampled on a coarse grid (linear
upsampling loses little), and an image is warped by one resize and one ``cv2.remap``. The mouth warp
(``engines.lipsync.warp``) and the portrait's blinks (``engines.lipsync.portrait_avatar``) build on it.
"""

from __future__ import annotations

import math
import threading

import cv2
import numpy as np

MIN_POINT_DISTANCE = 0.75  # px; coincident landmarks (closed lips) are nudged apart for the triangulation
BARY_EPS = 1e-6  # barycentric tolerance for "inside a triangle"


def separate_points(points: np.ndarray, min_distance: float = MIN_POINT_DISTANCE) -> np.ndarray:
    """Nudge points that (nearly) coincide apart, so every one is a vertex of the triangulation."""
    out = points.astype(np.float64).copy()
    gaps = np.linalg.norm(out[:, None] - out[None], axis=2)
    crowded = np.flatnonzero((np.tril(gaps < min_distance, k=-1)).any(axis=1))
    for i in crowded:  # usually a handful: the inner lip points of a closed mouth
        for _ in range(8):
            if np.linalg.norm(out[:i] - out[i], axis=1).min() >= min_distance:
                break
            out[i, 1] += min_distance  # deterministic: push the later point down a little
    return out


def border_anchors(width: int, height: int, spacing: float) -> np.ndarray:
    """Fixed points on a rectangle just outside a (width x height) crop, corners included."""
    left, top, right, bottom = -1.0, -1.0, float(width), float(height)
    nx = max(2, int(math.ceil((right - left) / spacing)) + 1)
    ny = max(2, int(math.ceil((bottom - top) / spacing)) + 1)
    xs, ys = np.linspace(left, right, nx), np.linspace(top, bottom, ny)
    edges = [
        np.stack([xs, np.full(nx, top)], 1),
        np.stack([xs, np.full(nx, bottom)], 1),
        np.stack([np.full(ny - 2, left), ys[1:-1]], 1),
        np.stack([np.full(ny - 2, right), ys[1:-1]], 1),
    ]
    return np.concatenate(edges).astype(np.float64)


def displacement_fields(
    points: np.ndarray, displacements: np.ndarray, size: tuple[int, int], grid: tuple[int, int]
) -> np.ndarray:
    """(K, gh, gw, 2) piecewise-linear interpolation of K displacement sets over the points' triangulation.

    ``points`` (V, 2) in crop coordinates must enclose the crop (include border anchors); the grid
    samples sit where ``cv2.resize(..., (width, height), INTER_LINEAR)`` expects them.
    """
    from scipy.spatial import Delaunay

    width, height = size
    gw, gh = grid
    tri = Delaunay(points)
    gx = (np.arange(gw) + 0.5) * width / gw - 0.5
    gy = (np.arange(gh) + 0.5) * height / gh - 0.5
    samples = np.stack(np.meshgrid(gx, gy), axis=-1).reshape(-1, 2)
    owner, bary = locate(points[tri.simplices], tri.neighbors, samples, (gw / width, gh / height), (gh, gw))
    k = displacements.shape[0]
    flat = displacements.transpose(1, 0, 2).reshape(len(points), k * 2)  # (V, K*2)
    values = np.einsum("nj,njc->nc", bary, flat[tri.simplices[owner]])
    return np.ascontiguousarray(values.astype(np.float32).reshape(gh, gw, k, 2).transpose(2, 0, 1, 3))


def locate(
    triangles: np.ndarray,
    neighbors: np.ndarray,
    samples: np.ndarray,
    scale: tuple[float, float],
    shape: tuple[int, int],
) -> tuple[np.ndarray, np.ndarray]:
    """(triangle index, barycentric coordinates (n, 3)) of grid samples: the triangle that contains each.

    A first guess comes from rasterising the triangles onto the grid (``cv2.fillConvexPoly``), right
    away from edges; a sample its guess does not contain is tried in the guess's neighbours, then in
    every triangle. (scipy's ``find_simplex`` needs ``Delaunay.transform``, which is slow to build.)
    """
    inverse, origin, valid = barycentric_transforms(triangles)
    guess = np.full(shape, -1, dtype=np.int32)
    fixed_point = np.round((np.asarray(scale) * (triangles + 0.5) - 0.5) * 16).astype(np.int32)  # 4 fraction bits
    for index in np.flatnonzero(valid):
        cv2.fillConvexPoly(guess, fixed_point[index], int(index), cv2.LINE_8, shift=4)
    owner = guess.reshape(-1).copy()
    bary = np.zeros((len(samples), 3))
    wrong = owner >= 0
    bary[wrong] = _barycentric(inverse[owner[wrong]], samples[wrong] - origin[owner[wrong]])
    wrong = (owner < 0) | (bary.min(axis=1) < -BARY_EPS)
    near = np.flatnonzero(wrong & (owner >= 0))
    if near.size:
        candidates = neighbors[owner[near]]  # (m, 3), -1 where the edge is on the hull
        _settle(near, candidates, samples, inverse, origin, valid, owner, bary)
        wrong[near] = bary[near].min(axis=1) < -BARY_EPS
    rest = np.flatnonzero(wrong)
    if rest.size:
        every = np.broadcast_to(np.arange(len(triangles)), (rest.size, len(triangles)))
        _settle(rest, every, samples, inverse, origin, valid, owner, bary)
    return owner, bary


def _settle(
    which: np.ndarray,
    candidates: np.ndarray,
    samples: np.ndarray,
    inverse: np.ndarray,
    origin: np.ndarray,
    valid: np.ndarray,
    owner: np.ndarray,
    bary: np.ndarray,
) -> None:
    """For samples ``which``, adopt the candidate triangle that contains them best (in place)."""
    safe = np.maximum(candidates, 0)
    trial = _barycentric(inverse[safe], samples[which][:, None, :] - origin[safe])  # (m, c, 3)
    score = np.where((candidates >= 0) & valid[safe], trial.min(axis=2), -np.inf)
    best = np.argmax(score, axis=1)
    rows = np.arange(len(which))
    improves = score[rows, best] > np.where(owner[which] >= 0, bary[which].min(axis=1), -np.inf)
    owner[which[improves]] = safe[rows, best][improves]
    bary[which[improves]] = trial[rows, best][improves]


def _barycentric(inverse: np.ndarray, relative: np.ndarray) -> np.ndarray:
    rx, ry = relative[..., 0], relative[..., 1]
    first = inverse[..., 0, 0] * rx + inverse[..., 0, 1] * ry
    second = inverse[..., 1, 0] * rx + inverse[..., 1, 1] * ry
    return np.stack([first, second, 1.0 - first - second], axis=-1)


def barycentric_transforms(triangles: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per triangle (T, 3, 2): inverse (T, 2, 2) and origin (T, 2) such that inverse @ (p - origin) are
    the first two barycentric coordinates of p, and whether the triangle is non-degenerate."""
    origin = triangles[:, 2]
    edges = np.stack([triangles[:, 0] - origin, triangles[:, 1] - origin], axis=2)  # columns: two edges
    det = edges[:, 0, 0] * edges[:, 1, 1] - edges[:, 0, 1] * edges[:, 1, 0]
    valid = np.abs(det) > 1e-9
    safe = np.where(valid, det, np.inf)
    inverse = np.empty_like(edges)
    inverse[:, 0, 0], inverse[:, 1, 1] = edges[:, 1, 1] / safe, edges[:, 0, 0] / safe
    inverse[:, 0, 1], inverse[:, 1, 0] = -edges[:, 0, 1] / safe, -edges[:, 1, 0] / safe
    return inverse, origin, valid


class _GridCache:
    """An (h, w, 2) array of pixel coordinates, grown on demand and sliced for smaller crops."""

    def __init__(self) -> None:
        self._grid = np.zeros((0, 0, 2), dtype=np.float32)
        self._lock = threading.Lock()

    def get(self, height: int, width: int) -> np.ndarray:
        grid = self._grid
        if grid.shape[0] < height or grid.shape[1] < width:
            with self._lock:
                h, w = max(height, self._grid.shape[0]), max(width, self._grid.shape[1])
                xs, ys = np.meshgrid(np.arange(w, dtype=np.float32), np.arange(h, dtype=np.float32))
                self._grid = grid = np.stack([xs, ys], axis=-1)
        return grid[:height, :width]


_GRID = _GridCache()


def warp_region(image: np.ndarray, field: np.ndarray) -> np.ndarray:
    """``image`` resampled so the pixel at q shows the source at q - field(q) (field upsampled to the image)."""
    h, w = image.shape[:2]
    if field.shape[:2] != (h, w):
        field = cv2.resize(field, (w, h), interpolation=cv2.INTER_LINEAR)
    mapping = _GRID.get(h, w) - field
    return cv2.remap(image, mapping, None, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
