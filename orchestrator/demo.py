"""``avatarctl demo``: the whole product on one machine, from nothing, in a few minutes on a CPU.

It writes a 4 s training video of skimage's astronaut with head motion, uploads it to the store
(``training-videos/demo/``), makes an avatar from it (preprocess_avatar), makes a talking video from
a sentence (generate_video) and renders the seven emotions of the astronaut's portrait
(render_emotion). Every step is a job of the ``JobService`` on the local backend, with the job
database (SQLite) and a file:// store under ``root`` (``./var``), whatever the environment says, so
the demo never touches a remote store or backend. It prints the local paths of what it made and the
time of each step.
"""

import math
import time
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console

import handlers
from handlers.schemas import REQUEST_MODELS, Emotion, TaskName
from orchestrator.backends.local import LocalBackend
from orchestrator.config import OrchestratorSettings
from orchestrator.console import job_outputs, local_path, print_rows, wait_with_progress
from orchestrator.models import JobStatus, JobView
from orchestrator.service import JobService
from orchestrator.uploads import UploadKind, upload_file
from storage import StorageSettings, open_store

DEMO_USER_ID = "demo"
DEMO_AVATAR_ID = "demo-astronaut"
DEMO_SENTENCE = "Hello! I was made from a single photo of an astronaut, and now I can talk."
VIDEO_SECONDS = 4.0
VIDEO_FPS = 25
VIDEO_SIZE = 512
AVATAR_IMG_SIZE = 256
# Where the astronaut's face is in the 512x512 photo: the head moves around this point.
FACE_CENTER = (224.0, 127.0)
STEP_TIMEOUT_S = 600.0


@dataclass
class StepResult:
    name: str
    job: JobView
    seconds: float


def astronaut_bgr(size: int = VIDEO_SIZE) -> np.ndarray:
    import cv2
    from skimage import data

    image = cv2.cvtColor(data.astronaut(), cv2.COLOR_RGB2BGR)
    return image if image.shape[0] == size else cv2.resize(image, (size, size), interpolation=cv2.INTER_AREA)


def head_motion_frames(seconds: float = VIDEO_SECONDS, fps: int = VIDEO_FPS, size: int = VIDEO_SIZE) -> list:
    """The astronaut turning, nodding and leaning a little, as a person recording a training video does."""
    import cv2

    base = astronaut_bgr(size)
    cx, cy = FACE_CENTER[0] * size / 512, FACE_CENTER[1] * size / 512
    frames = []
    for i in range(round(seconds * fps)):
        t = i / fps
        angle = 3.0 * math.sin(2 * math.pi * 0.4 * t)
        scale = 1.0 + 0.03 * math.sin(2 * math.pi * 0.3 * t)
        matrix = cv2.getRotationMatrix2D((cx, cy), angle, scale)
        matrix[:, 2] += (8.0 * math.sin(2 * math.pi * 0.5 * t), 5.0 * math.cos(2 * math.pi * 0.35 * t))
        frames.append(cv2.warpAffine(base, matrix, (size, size), borderMode=cv2.BORDER_REFLECT))
    return frames


def make_training_video(path: Path, seconds: float = VIDEO_SECONDS, fps: int = VIDEO_FPS) -> Path:
    """Encode the head-motion frames as H.264 mp4 at ``path``."""
    import av

    frames = head_motion_frames(seconds, fps)
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=Fraction(fps))
        stream.height, stream.width = frames[0].shape[:2]
        stream.pix_fmt = "yuv420p"
        stream.options = {"crf": "18", "preset": "veryfast"}
        for frame in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="bgr24")))
        container.mux(stream.encode())
    return path


def demo_settings(root: Path) -> tuple[OrchestratorSettings, handlers.Settings]:
    """Local backend, SQLite and a file:// store under ``root``, whatever the environment says."""
    local = {f"backend_{task}": "local" for task in REQUEST_MODELS}
    settings = OrchestratorSettings(database_url=f"sqlite:///{root / 'jobs.db'}", **local)
    handler_settings = handlers.Settings(
        avatar_store_uri=(root / "store").as_uri(),
        avatar_local_path=root / "avatars",
        worker_tasks=",".join(handlers.WORK_TASKS),
        storage=StorageSettings(allow_file_uris=True),  # the demo's inputs are files in its own store
    )
    return settings, handler_settings


def _run_step(service: JobService, console: Console, name: str, task: str, payload: dict[str, Any]) -> StepResult:
    console.print(f"\n[bold]{name}[/bold]")
    started = time.perf_counter()
    job = service.submit(task, payload)
    job = wait_with_progress(service, job, STEP_TIMEOUT_S, quiet=False)
    result = StepResult(name, job, time.perf_counter() - started)
    if job.status != JobStatus.completed.value:
        console.print(f"  {job.status} [{job.error_code}]: {job.error}", markup=False)
    for label, uri in job_outputs(job):
        console.print(f"  {label}: {local_path(uri)}", markup=False)
    return result


def _worker_ms(output: dict[str, Any]) -> str:
    """What the worker reported: its stage timings, or each still's render time."""
    timings = output.get("timings_ms") or {r["emotion"]: r["latency_ms"] for r in output.get("renders", [])}
    return ", ".join(f"{name} {ms:.0f}" for name, ms in timings.items() if name != "crop_write_cpu")


def _summary(console: Console, steps: list[StepResult], total_s: float) -> None:
    console.print("\nsummary (seconds: submit to finish; then the worker's own timings in ms)")
    rows = []
    for step in steps:
        output = step.job.output if isinstance(step.job.output, dict) else {}
        rows.append((step.name, step.job.status, f"{step.seconds:.1f} s", _worker_ms(output)))
    print_rows(("STEP", "STATUS", "TIME", "WORKER (ms)"), rows, console)
    console.print(f"total {total_s:.1f} s", markup=False)


def run_demo(root: Path, console: Console) -> int:
    """Run the demo under ``root``; returns 0 when every step completed, else 1."""
    import cv2

    started = time.perf_counter()
    root = root.absolute()
    settings, handler_settings = demo_settings(root)
    store = open_store(handler_settings.avatar_store_uri, handler_settings.storage)
    backend = LocalBackend(workers=settings.local_workers, settings=handler_settings)
    service = JobService(settings, backends={task: backend for task in REQUEST_MODELS})
    files = root / "demo"
    try:
        console.print(f"demo under {root} (jobs: {settings.database_url}, store: {handler_settings.avatar_store_uri})")
        video = make_training_video(files / "training.mp4")
        upload = upload_file(
            store, video, kind=UploadKind.training_video, user_id=DEMO_USER_ID, settings=handler_settings
        )
        console.print(f"training video: {video} ({VIDEO_SECONDS:g} s, {VIDEO_SIZE}x{VIDEO_SIZE}) -> {upload.uri}")
        portrait_path = files / "portrait.png"
        cv2.imwrite(str(portrait_path), astronaut_bgr())
        portrait = upload_file(
            store, portrait_path, kind=UploadKind.image, user_id=DEMO_USER_ID, settings=handler_settings
        )
        steps = [
            _run_step(
                service,
                console,
                "1. avatar from the training video",
                TaskName.preprocess_avatar.value,
                {
                    "user_id": DEMO_USER_ID,
                    "avatar_id": DEMO_AVATAR_ID,
                    "video": upload.uri,
                    "img_size": AVATAR_IMG_SIZE,
                },
            ),
            _run_step(
                service,
                console,
                "2. talking video from a sentence",
                TaskName.generate_video.value,
                {"user_id": DEMO_USER_ID, "avatar_id": DEMO_AVATAR_ID, "text": DEMO_SENTENCE},
            ),
            _run_step(
                service,
                console,
                "3. the seven emotions",
                TaskName.render_emotion.value,
                {
                    "user_id": DEMO_USER_ID,
                    "image": portrait.uri,
                    "emotions": [e.value for e in Emotion],
                    "output_format": "png",
                },
            ),
        ]
    finally:
        service.stop()
    _summary(console, steps, time.perf_counter() - started)
    return 0 if all(step.job.status == JobStatus.completed.value for step in steps) else 1
