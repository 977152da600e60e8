"""``avatarctl demo``: the whole product on one machine, from nothing, in a few minutes on a CPU.

It writes a 4 s training video of skimage's astronaut with head motion, uploads it to the store
(``training-videos/demo/``), makes an avatar from it (preprocess_avatar), makes a talking video from
a sentence (generate_video) and renders the seven emotions of the astronaut's portrait
(render_emotion). Every step is a job of the ``JobService`` on the local backend, with the job
database (SQLite) and a file:// store under ``root`` (AVATARCTL_HOME unless ``--root`` names another
folder), whatever the environment says, so the demo never touches a remote store or backend. It shows
each step with a progress bar, prints the local paths of what it made and the time of each step, then
the exact commands that go on from there with the same state (its user and avatar).
"""

import math
import os
import shlex
import sys
import time
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

import handlers
from handlers.schemas import REQUEST_MODELS, Emotion, TaskName
from orchestrator.cli.console import job_outputs, local_path, print_rows, wait_with_progress
from orchestrator.core.backends.local import LocalBackend
from orchestrator.core.config import OrchestratorSettings
from orchestrator.core.models import JobStatus, JobView
from orchestrator.core.service import JobService
from orchestrator.core.uploads import UploadKind, upload_file
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


def make_training_video(
    path: Path, seconds: float = VIDEO_SECONDS, fps: int = VIDEO_FPS, console: Console | None = None
) -> Path:
    """Encode the head-motion frames as H.264 mp4 at ``path`` (with a progress bar on ``console``)."""
    import av

    frames = head_motion_frames(seconds, fps)
    path.parent.mkdir(parents=True, exist_ok=True)
    columns = (TextColumn("  encoding"), BarColumn(), MofNCompleteColumn(), TextColumn("frames"))
    with av.open(str(path), "w") as container, Progress(*columns, console=console, disable=console is None) as bar:
        stream = container.add_stream("libx264", rate=Fraction(fps))
        stream.height, stream.width = frames[0].shape[:2]
        stream.pix_fmt = "yuv420p"
        stream.options = {"crf": "18", "preset": "veryfast"}
        task = bar.add_task("encode", total=len(frames))
        for frame in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="bgr24")))
            bar.advance(task)
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


STEPS = 5  # the training video, the uploads, then one job each: avatar, video, stills


def _heading(console: Console, number: int, name: str) -> None:
    console.print(f"\n[bold][{number}/{STEPS}] {name}[/bold]")


def _run_step(
    service: JobService, console: Console, number: int, name: str, task: str, payload: dict[str, Any]
) -> StepResult:
    _heading(console, number, name)
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


def cli_name() -> str:
    """How this process's ``avatarctl`` was invoked (``.venv/bin/avatarctl`` under ``make demo``)."""
    invoked = Path(sys.argv[0])
    if invoked.name != "avatarctl":
        return "avatarctl"
    inside = invoked.is_absolute() and invoked.is_relative_to(Path.cwd())
    return os.path.relpath(invoked) if inside else str(invoked)


def next_commands(portrait: Path) -> list[str]:
    """The commands that go on from what the demo made, with its state, user and avatar."""
    exe = cli_name()
    user = f"--user-id {DEMO_USER_ID}"
    return [
        f'{exe} generate {user} --avatar-id {DEMO_AVATAR_ID} --text "Any sentence you like." --output hello.mp4',
        f"{exe} emotion {user} --avatar-id {DEMO_AVATAR_ID} --emotion surprised --output surprised.png",
        f"{exe} emotion {user} --image {shlex.quote(str(portrait))} --emotion happy --emotion sad --output stills",
        f"{exe} jobs list --user-id {DEMO_USER_ID}",
        f"{exe} serve   # then open http://127.0.0.1:8000/ : user {DEMO_USER_ID}, avatar id {DEMO_AVATAR_ID}",
    ]


def _state_note(root: Path) -> str | None:
    """How to point the CLI at the demo's state when its defaults (from the environment) name other places."""
    settings, handler_settings = OrchestratorSettings(), handlers.Settings()
    demo_settings_, demo_handler_settings = demo_settings(root)
    same = (
        settings.database_url == demo_settings_.database_url
        and handler_settings.avatar_store_uri == demo_handler_settings.avatar_store_uri
        and handler_settings.avatar_local_path == demo_handler_settings.avatar_local_path
    )
    if same:
        return None
    return f"export AVATARCTL_HOME={shlex.quote(str(root))}; unset DATABASE_URL AVATAR_STORE_URI AVATAR_LOCAL_PATH"


def _what_next(console: Console, root: Path, portrait: Path) -> None:
    console.print(f"\n[bold]Go on from here[/bold] (state in {root}; user {DEMO_USER_ID}, avatar {DEMO_AVATAR_ID}):")
    note = _state_note(root)
    for line in ([note] if note else []) + next_commands(portrait):
        console.print(f"  {line}", markup=False, soft_wrap=True)


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
        _heading(console, 1, "a training video of the astronaut moving her head")
        video = make_training_video(files / "training.mp4", console=console)
        console.print(f"  {video} ({VIDEO_SECONDS:g} s, {VIDEO_SIZE}x{VIDEO_SIZE})", markup=False)
        _heading(console, 2, "the video and a portrait into the store")
        upload = upload_file(
            store, video, kind=UploadKind.training_video, user_id=DEMO_USER_ID, settings=handler_settings
        )
        portrait_path = files / "portrait.png"
        cv2.imwrite(str(portrait_path), astronaut_bgr())
        portrait = upload_file(
            store, portrait_path, kind=UploadKind.image, user_id=DEMO_USER_ID, settings=handler_settings
        )
        console.print(f"  {local_path(upload.uri)}\n  {local_path(portrait.uri)}", markup=False)
        steps = [
            _run_step(
                service,
                console,
                3,
                "an avatar from the training video",
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
                4,
                "a talking video from a sentence",
                TaskName.generate_video.value,
                {"user_id": DEMO_USER_ID, "avatar_id": DEMO_AVATAR_ID, "text": DEMO_SENTENCE},
            ),
            _run_step(
                service,
                console,
                5,
                "the seven emotions",
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
    ok = all(step.job.status == JobStatus.completed.value for step in steps)
    if ok:
        _what_next(console, root, portrait_path)
    return 0 if ok else 1
