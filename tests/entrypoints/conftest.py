"""Fixtures shared by the entry-point tests: generated media, object checks, subprocess environments."""

from __future__ import annotations

import base64
import os
import sys
from pathlib import Path
from urllib.parse import urlparse

import cv2
import pytest

from tests.media import astronaut_bgr, head_motion, write_video

REPO_ROOT = Path(__file__).resolve().parents[2]
PYTHON = sys.executable
# The astronaut's face inside a 256 px crop of the 512 px photo (the same crop as test_input.json).
FACE_CROP = (slice(0, 256), slice(96, 352))


def face_jpeg() -> bytes:
    ok, buf = cv2.imencode(".jpg", astronaut_bgr(512)[FACE_CROP], [cv2.IMWRITE_JPEG_QUALITY, 85])
    assert ok
    return buf.tobytes()


@pytest.fixture(scope="session")
def face_data_uri() -> str:
    return "data:image/jpeg;base64," + base64.b64encode(face_jpeg()).decode()


@pytest.fixture(scope="session")
def training_video(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 2 s, 256x256, 25 fps H.264 video of the astronaut's head (face ~90 px) moving a little."""
    frames, _ = head_motion(50, 25.0, size=512)
    return write_video(tmp_path_factory.mktemp("media") / "train.mp4", [f[FACE_CROP] for f in frames], 25.0)


def child_env(**overrides: str) -> dict[str, str]:
    """The environment for a worker subprocess: this one's, without RunPod's job URLs, plus overrides."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RUNPOD_")}
    env.update(overrides)
    return env


MOTO_CREDENTIALS = {"aws_access_key_id": "testing", "aws_secret_access_key": "testing", "region_name": "us-east-1"}


def s3_client(endpoint: str):
    """A boto3 client for moto's server, with credentials of its own (no dependence on the environment)."""
    import boto3

    return boto3.client("s3", endpoint_url=endpoint, **MOTO_CREDENTIALS)


def s3_object_size(endpoint: str, uri: str) -> int:
    parsed = urlparse(uri)
    return s3_client(endpoint).head_object(Bucket=parsed.netloc, Key=parsed.path.lstrip("/"))["ContentLength"]


def s3_download(endpoint: str, uri: str, dest: Path) -> Path:
    parsed = urlparse(uri)
    s3_client(endpoint).download_file(parsed.netloc, parsed.path.lstrip("/"), str(dest))
    return dest


def media_summary(path: Path) -> dict[str, float]:
    """Decoded facts of an mp4: video frames, size and whether it has sound."""
    import av

    with av.open(str(path)) as container:
        video = container.streams.video[0]
        has_audio = bool(container.streams.audio)
        frames = sum(1 for _ in container.decode(video))
        return {"frames": frames, "width": video.width, "height": video.height, "audio": has_audio}
