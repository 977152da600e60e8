"""Media fixtures generated on the fly: a real face photo (skimage's astronaut) moved and encoded."""

from __future__ import annotations

import math
from fractions import Fraction
from pathlib import Path

import av
import cv2
import numpy as np
from skimage import data


def astronaut_bgr(size: int = 512) -> np.ndarray:
    img = cv2.cvtColor(data.astronaut(), cv2.COLOR_RGB2BGR)
    return img if img.shape[0] == size else cv2.resize(img, (size, size), interpolation=cv2.INTER_AREA)


def coffee_bgr() -> np.ndarray:
    """A photo with no face in it."""
    return cv2.cvtColor(data.coffee(), cv2.COLOR_RGB2BGR)


# The astronaut's face centre in the 512x512 photo (between the eyes and the mouth).
ASTRONAUT_FACE_CENTER = (224.0, 127.0)


def head_motion(n: int, fps: float, size: int = 512) -> tuple[list[np.ndarray], list[tuple[float, float]]]:
    """Frames of the astronaut with small head motion (shift, scale, rotation) and the true face centres."""
    base = astronaut_bgr(size)
    cx, cy = ASTRONAUT_FACE_CENTER[0] * size / 512, ASTRONAUT_FACE_CENTER[1] * size / 512
    frames, centres = [], []
    for i in range(n):
        t = i / fps
        angle = 3.0 * math.sin(2 * math.pi * 0.4 * t)
        scale = 1.0 + 0.03 * math.sin(2 * math.pi * 0.3 * t)
        dx, dy = 8.0 * math.sin(2 * math.pi * 0.5 * t), 5.0 * math.cos(2 * math.pi * 0.35 * t)
        m = cv2.getRotationMatrix2D((cx, cy), angle, scale)
        m[:, 2] += (dx, dy)
        frames.append(cv2.warpAffine(base, m, (size, size), borderMode=cv2.BORDER_REFLECT))
        centres.append((cx + dx, cy + dy))
    return frames, centres


def write_video(path: Path, frames: list[np.ndarray], fps: float, codec: str = "libx264") -> Path:
    """Encode BGR frames (mp4/H.264, mov, or webm/VP9 by extension and codec)."""
    with av.open(str(path), "w") as out:
        stream = out.add_stream(codec, rate=Fraction(fps).limit_denominator(1001))
        h, w = frames[0].shape[:2]
        stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
        if codec == "libx264":
            stream.options = {"crf": "18", "preset": "veryfast"}
        for frame in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="bgr24")):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return path


def tone(seconds: float, sample_rate: int = 16000, freq: float = 220.0) -> np.ndarray:
    t = np.arange(int(seconds * sample_rate)) / sample_rate
    return (0.3 * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    """Peak signal-to-noise ratio of two uint8 images in dB (inf when identical)."""
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return float("inf") if mse == 0 else 10.0 * np.log10(255.0**2 / mse)


# The 768-px astronaut cropped to 256 x 256 around the face (a ~125 px face), as the lip-sync tests use it.
AVATAR_CROP = (slice(70, 326), slice(208, 464))


def moving_astronaut_avatar(analyzer, num_frames: int):
    """An in-memory avatar of the moving astronaut (head_motion) with its detected boxes and landmarks."""
    from engines.lipsync import AvatarFrames

    moving, _ = head_motion(num_frames, 25.0, 768)
    frames = [np.ascontiguousarray(f[AVATAR_CROP]) for f in moving]
    boxes = [analyzer.detect(f)[0] for f in frames]
    landmarks = np.array([analyzer.landmarks(f, b) for f, b in zip(frames, boxes, strict=True)], dtype=np.float32)
    coords = [(b.y1, b.y2, b.x1, b.x2) for b in boxes]
    return AvatarFrames(frames=frames, coords=coords, landmarks=landmarks)


def _smoothstep(t: np.ndarray) -> np.ndarray:
    t = np.clip(t, 0.0, 1.0)
    return t * t * (3.0 - 2.0 * t)


def three_quarter_astronaut(size: int = 768, yaw_degrees: float = 30.0) -> np.ndarray:
    """A SYNTHETIC three-quarter view of the astronaut: her head turned ``yaw_degrees`` to her left.

    No three-quarter face photo ships with our pip packages (skimage's only real face is this frontal
    one; lfw_subset's are 25 px), so the head is modelled as an ellipsoid (half width 74, half height
    100 and depth 74 px in the 512-px photo, centred between the eyes and the mouth) with a Gaussian
    bump for the nose (18 px high), rotated about the vertical axis and projected orthographically:
    each row is resampled so that a surface point at x moves to cx + (x - cx) cos(yaw) + z sin(yaw),
    hidden parts dropping out. The motion fades out over 30 px beside the head and 24 px below the
    chin, so the suit and background stay put. dlib finds the face with its nose tip at ~0.7 of the
    jaw's width (0.5 when frontal).
    """
    image = astronaut_bgr(size)
    h, w = image.shape[:2]
    s = w / 512.0
    cx, cy, rx, ry, rz = 224.0 * s, 118.0 * s, 74.0 * s, 100.0 * s, 74.0 * s
    nose_x, nose_y, nose_height, nose_sx, nose_sy = 225.0 * s, 125.0 * s, 18.0 * s, 7.0 * s, 10.0 * s
    chin, fade_below, fade_beside = 180.0 * s, 24.0 * s, 30.0 * s
    yaw = math.radians(yaw_degrees)
    xs = np.arange(w, dtype=np.float64)
    fine = np.linspace(cx - rx, cx + rx, 8 * int(rx) + 1)
    map_x = np.tile(xs, (h, 1)).astype(np.float32)
    for y in range(h):
        v = (y - cy) / ry
        below = 1.0 - float(_smoothstep(np.array((y - chin) / fade_below)))
        if abs(v) >= 1.0 or below <= 0.0:
            continue
        u = np.clip((fine - cx) / (rx * math.sqrt(1 - v * v)), -1.0, 1.0)
        z = rz * math.sqrt(1 - v * v) * np.sqrt(1 - u * u)
        z += nose_height * np.exp(-0.5 * (((fine - nose_x) / nose_sx) ** 2 + ((y - nose_y) / nose_sy) ** 2))
        seen = np.maximum.accumulate(cx + (fine - cx) * math.cos(yaw) + z * math.sin(yaw))  # hidden parts drop out
        keep = np.concatenate([[True], np.diff(seen) > 1e-9])
        shift = np.interp(xs, seen[keep], fine[keep]) - xs
        left, right = seen[0], seen[-1]
        shift[xs < left] = (fine[0] - left) * (1.0 - _smoothstep((left - xs[xs < left]) / fade_beside))
        shift[xs > right] = (fine[-1] - right) * (1.0 - _smoothstep((xs[xs > right] - right) / fade_beside))
        top_bottom = 1.0 - float(_smoothstep(np.array((abs(v) - 0.8) / 0.2)))
        map_x[y] = xs + shift * below * top_bottom
    map_y = np.tile(np.arange(h, dtype=np.float32)[:, None], (1, w))
    return cv2.remap(image, map_x, map_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)


def close_lips(image: np.ndarray, landmarks: np.ndarray) -> np.ndarray:
    """A copy of a portrait whose lip gap (inside landmarks 60-67) is painted shut: the upper lip's colour
    fading into the lower lip's, with a darker seam where they meet, so the mouth reads as closed."""
    out = image.astype(np.float32)
    mask = np.zeros(image.shape[:2], np.uint8)
    cv2.fillPoly(mask, [np.round(landmarks[60:68]).astype(np.int32)], 255)
    mask = cv2.dilate(mask, np.ones((5, 5), np.uint8))
    ys, xs = np.nonzero(mask)
    top, bottom = ys.min(), ys.max()

    def colour(points: list[int]) -> np.ndarray:
        at = np.round(landmarks[points]).astype(int)
        return np.median(image[at[:, 1], at[:, 0]].astype(np.float32), axis=0)

    upper = colour([50, 51, 52]) * 0.5 + colour([61, 62, 63]) * 0.5
    lower = colour([56, 57, 58]) * 0.5 + colour([65, 66, 67]) * 0.5
    t = np.clip((np.arange(image.shape[0], dtype=np.float32) - top) / max(bottom - top, 1), 0, 1)[:, None, None]
    seam = 1.0 - 0.35 * np.exp(-(((t - 0.5) * (bottom - top + 1)) ** 2) / 2.0)
    fill = (upper * (1 - t) + lower * t) * seam
    alpha = cv2.GaussianBlur(mask.astype(np.float32) / 255.0, (0, 0), 1.5)[..., None]
    return np.clip(out * (1.0 - alpha) + fill * alpha, 0, 255).astype(np.uint8)
