"""``avatarctl``: submit and follow jobs, serve the HTTP API, emulate RunPod, recover avatars, run the demo.

Jobs go through the ``JobService`` on DATABASE_URL, to the backend configured per task (``local`` runs
them in this process). Local input files are uploaded to the store first (``training-videos/`` for
training videos, ``uploads/`` for images and audio) and the job gets their URI.

Exit codes: 0 the job completed (or the command succeeded); 1 the job failed, was cancelled or timed
out (or health is degraded, or an avatar failed to recover); 2 bad input; 3 the wait ended while the
job was still running.
"""

import json
import logging
from pathlib import Path
from typing import Annotated, Any

import typer
from pydantic import BaseModel

import handlers
from handlers.errors import TaskError
from handlers.logs import configure_logging
from handlers.schemas import (
    DEFAULT_USER_ID,
    URI_SCHEMES,
    VOICE_PROVIDERS,
    AvatarModel,
    Emotion,
    GenerateVideoRequest,
    ImageFormat,
    LipSyncEngineName,
    PreprocessAvatarRequest,
    RenderEmotionRequest,
    TaskName,
)
from orchestrator.cli.console import (
    EXIT_FAILED,
    EXIT_OK,
    EXIT_STILL_RUNNING,
    FaceIndexOption,
    JsonOption,
    OutputOption,
    StoreOption,
    TimeoutOption,
    UserOption,
    WaitOption,
    err,
    follow_job,
    handled_errors,
    job_service,
    print_job,
    print_rows,
    progress_of,
    save_outputs,
    wait_with_progress,
    watch_with_progress,
)
from orchestrator.cli.ops import add_operation_commands
from orchestrator.cli.replica import add_replica_commands
from orchestrator.core.config import BackendKind
from orchestrator.core.models import JobStatus, JobView
from orchestrator.core.uploads import UploadKind, upload_file
from storage import open_store

log = logging.getLogger(__name__)

app = typer.Typer(
    name="avatarctl",
    help="Talking-head jobs: avatars, lip-synced videos, emotion stills (local, RunPod, Modal).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,  # click's plain help: wraps to the terminal's width, never truncates option names
)
jobs_app = typer.Typer(help="List, show, wait for and cancel jobs.", no_args_is_help=True)
app.add_typer(jobs_app, name="jobs")
add_replica_commands(app)

# ---- plumbing ------------------------------------------------------------------------------


@app.callback()
def main(verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Log at INFO level.")] = False) -> None:
    configure_logging(logging.INFO if verbose else logging.WARNING)


def contract_default(model: type[BaseModel], name: str) -> Any:
    """A task field's default, from the contract (handlers/schemas.py) where it is defined once."""
    return model.model_fields[name].default


def exit_code(job: JobView) -> int:
    if job.status == JobStatus.completed.value:
        return EXIT_OK
    return EXIT_FAILED if job.finished else EXIT_STILL_RUNNING


def run_job(
    task: str,
    payload: dict[str, Any],
    *,
    wait: bool,
    timeout_s: float | None,
    as_json: bool,
    follow: bool = False,
    output: Path | None = None,
) -> None:
    """Submit a job, wait for it unless told not to (``follow``: printing its events), print it, save its outputs
    to ``output`` when given, exit with its code. A local job goes to a running replica (``avatarctl serve`` or
    ``work``, whose worker processes are warm) when one beats on the database, else runs in this process."""
    with job_service() as service:
        local = service.backend_for_task(task).kind is BackendKind.local
        handed = local and service.replica_running()
        # a local job nobody here waits for is left to a replica, not started in this short-lived process
        here = not handed and (wait or follow or not local)
        job = service.submit(task, payload, start=here)
        if follow:
            job = follow_job(service, job, as_json)
        elif wait and handed:
            job = watch_with_progress(service, job, timeout_s, quiet=as_json)
        elif wait and not job.finished:
            job = wait_with_progress(service, job, timeout_s, quiet=as_json)
        elif not here and not handed:
            err.print(
                "note: stored for a replica: a running `avatarctl serve` or `avatarctl work` starts this local job"
                f" at once (or `avatarctl jobs wait {job.id}` runs it here).",
                markup=False,
            )
        print_job(job, as_json)
        if output is not None and job.status == JobStatus.completed.value:
            save_outputs(job, output, quiet=as_json)
    code = exit_code(job)
    raise typer.Exit(EXIT_OK if code == EXIT_STILL_RUNNING and not wait else code)


def input_uri(value: str, option: str, kind: str, user_id: str, store: str | None) -> str:
    """A URI as given, or a local file uploaded to the store (returns its URI)."""
    if value.startswith(URI_SCHEMES):
        return value
    path = Path(value).expanduser()
    if not path.is_file():
        raise TaskError(
            "invalid_input", f"`{option}` {value!r} is neither a URI ({', '.join(URI_SCHEMES)}) nor a file."
        )
    settings = handlers.Settings()
    target = open_store(store or settings.avatar_store_uri, settings.storage)
    uploaded = upload_file(target, path, kind=UploadKind(kind), user_id=user_id, settings=settings)
    err.print(f"uploaded {path} to {uploaded.uri}", markup=False)
    return uploaded.uri


def _payload(**fields: Any) -> dict[str, Any]:
    return {name: value for name, value in fields.items() if value is not None}


# ---- task commands -------------------------------------------------------------------------


@app.command()
def preprocess(
    video: Annotated[str, typer.Option("--video", help="Training video: a local file or a URI.")],
    avatar_id: Annotated[str, typer.Option("--avatar-id", help="Id of the avatar to create.")],
    user_id: UserOption = DEFAULT_USER_ID,
    img_size: Annotated[int, typer.Option("--img-size", help="Face crop size: 96 or 256.")] = contract_default(
        PreprocessAvatarRequest, "img_size"
    ),
    pads: Annotated[
        tuple[int, int, int, int] | None, typer.Option("--pads", help="Box padding: top bottom left right.")
    ] = None,
    face_det_batch_size: Annotated[int | None, typer.Option("--face-det-batch-size")] = None,
    nosmooth: Annotated[bool, typer.Option("--nosmooth", help="Do not smooth face boxes over time.")] = False,
    models: Annotated[
        list[AvatarModel] | None,
        typer.Option("--model", help="Also prepare for this engine (musetalk; repeat for several)."),
    ] = None,
    store: StoreOption = None,
    wait: WaitOption = True,
    timeout: TimeoutOption = None,
    output: OutputOption = None,
    as_json: JsonOption = False,
) -> None:
    """Make an avatar from a training video (preprocess_avatar); --output saves its TAR."""
    with handled_errors():
        uri = input_uri(video, "--video", "training_video", user_id, store)
    payload = _payload(
        avatar_id=avatar_id,
        user_id=user_id,
        video=uri,
        img_size=img_size,
        pads=list(pads) if pads else None,
        face_det_batch_size=face_det_batch_size,
        nosmooth=nosmooth or None,
        models=list(dict.fromkeys(m.value for m in models)) if models else None,
        store=store,
    )
    run_job(TaskName.preprocess_avatar.value, payload, wait=wait, timeout_s=timeout, as_json=as_json, output=output)


@app.command()
def generate(
    avatar_id: Annotated[str | None, typer.Option("--avatar-id", help="Avatar to animate.")] = None,
    image: Annotated[str | None, typer.Option("--image", help="Portrait (file or URI) instead of an avatar.")] = None,
    text: Annotated[str | None, typer.Option("--text", help="Sentence to speak.")] = None,
    audio: Annotated[str | None, typer.Option("--audio", help="Speech audio (file or URI) instead of text.")] = None,
    engine: Annotated[
        LipSyncEngineName,
        typer.Option("--engine", metavar="ENGINE", help=", ".join(e.value for e in LipSyncEngineName)),
    ] = contract_default(GenerateVideoRequest, "engine"),
    voice_provider: Annotated[str | None, typer.Option("--voice-provider", help=", ".join(VOICE_PROVIDERS))] = None,
    voice: Annotated[str | None, typer.Option("--voice", help="Voice name (eSpeak: en-us).")] = None,
    user_id: UserOption = DEFAULT_USER_ID,
    video_id: Annotated[str | None, typer.Option("--video-id", help="Output id; the job id when absent.")] = None,
    face_index: FaceIndexOption = None,
    store: StoreOption = None,
    wait: WaitOption = True,
    timeout: TimeoutOption = None,
    follow: Annotated[
        bool,
        typer.Option("--follow", help="Stream the video and print each segment as it is stored (waits to the end)."),
    ] = False,
    output: OutputOption = None,
    as_json: JsonOption = False,
) -> None:
    """Make a lip-synced video from an avatar or a portrait, and text or audio (generate_video); --output saves
    the mp4."""
    with handled_errors():
        image_uri = input_uri(image, "--image", "image", user_id, store) if image else None
        audio_uri = input_uri(audio, "--audio", "audio", user_id, store) if audio else None
    voice_fields = _payload(provider=voice_provider, name=voice)
    payload = _payload(
        user_id=user_id,
        avatar_id=avatar_id,
        image=image_uri,
        text=text,
        audio=audio_uri,
        engine=engine.value,
        voice=voice_fields or None,
        video_id=video_id,
        face_index=face_index,
        store=store,
        stream=follow or None,
    )
    options = {"wait": wait, "timeout_s": timeout, "as_json": as_json, "follow": follow, "output": output}
    run_job(TaskName.generate_video.value, payload, **options)


@app.command()
def emotion(
    emotions: Annotated[list[Emotion], typer.Option("--emotion", help="Emotion to render (repeat for several).")],
    image: Annotated[str | None, typer.Option("--image", help="Portrait: a local file or a URI.")] = None,
    avatar_id: Annotated[
        str | None, typer.Option("--avatar-id", help="Instead of --image: an avatar's first frame.")
    ] = None,
    intensity: Annotated[float, typer.Option("--intensity", min=0.0, max=1.0)] = contract_default(
        RenderEmotionRequest, "intensity"
    ),
    output_format: Annotated[ImageFormat, typer.Option("--format")] = contract_default(
        RenderEmotionRequest, "output_format"
    ),
    user_id: UserOption = DEFAULT_USER_ID,
    render_id: Annotated[
        str | None, typer.Option("--render-id", help="Output id prefix; the job id when absent.")
    ] = None,
    face_index: FaceIndexOption = None,
    store: StoreOption = None,
    wait: WaitOption = True,
    timeout: TimeoutOption = None,
    output: OutputOption = None,
    as_json: JsonOption = False,
) -> None:
    """Render emotion stills of a portrait (render_emotion); --output saves the still (several: into a folder,
    one file per emotion)."""
    with handled_errors():
        image_uri = input_uri(image, "--image", "image", user_id, store) if image else None
    names = list(dict.fromkeys(e.value for e in emotions))
    payload = _payload(
        user_id=user_id,
        image=image_uri,
        avatar_id=avatar_id,
        emotion=names[0] if len(names) == 1 else None,
        emotions=names if len(names) > 1 else None,
        intensity=intensity,
        output_format=output_format.value,
        render_id=render_id,
        face_index=face_index,
        store=store,
    )
    run_job(TaskName.render_emotion.value, payload, wait=wait, timeout_s=timeout, as_json=as_json, output=output)


# ---- jobs ----------------------------------------------------------------------------------


@jobs_app.command("list")
def jobs_list(
    user_id: Annotated[str | None, typer.Option("--user-id")] = None,
    status: Annotated[JobStatus | None, typer.Option("--status")] = None,
    task: Annotated[TaskName | None, typer.Option("--task")] = None,
    limit: Annotated[int, typer.Option("--limit", min=1, max=1000)] = 50,
    as_json: JsonOption = False,
) -> None:
    """Jobs, newest first."""
    with job_service() as service:
        jobs = service.list(
            user_id=user_id, status=status.value if status else None, task=task.value if task else None, limit=limit
        )
    if as_json:
        typer.echo(json.dumps([job.model_dump(mode="json") for job in jobs], indent=2))
        return
    rows = []
    for job in jobs:
        fraction, stage = progress_of(job)
        detail = f"[{job.error_code}] {job.error}" if job.error else (f"{stage} {fraction:.0%}" if stage else "")
        created = job.created_at.strftime("%Y-%m-%d %H:%M:%S")
        rows.append((job.id, job.task, job.status, job.user_id or "-", job.backend, created, detail))
    print_rows(("ID", "TASK", "STATUS", "USER", "BACKEND", "CREATED (UTC)", "PROGRESS / ERROR"), rows)


JobIdArgument = Annotated[str, typer.Argument(help="A job id, or a unique start of one (as printed).")]


@jobs_app.command("show")
def jobs_show(job_id: JobIdArgument, output: OutputOption = None, as_json: JsonOption = False) -> None:
    """One job: status, outputs, error; --output saves its outputs."""
    with job_service() as service:
        job = service.resolve(job_id)
        print_job(job, as_json)
        if output is not None:
            save_outputs(job, output, quiet=as_json)


@jobs_app.command("wait")
def jobs_wait(
    job_id: JobIdArgument, timeout: TimeoutOption = None, output: OutputOption = None, as_json: JsonOption = False
) -> None:
    """Wait for a job to finish (resuming it if its runner is gone); --output saves its outputs."""
    with job_service() as service:
        job = wait_with_progress(service, service.resolve(job_id), timeout, quiet=as_json)
        print_job(job, as_json)
        if output is not None and job.status == JobStatus.completed.value:
            save_outputs(job, output, quiet=as_json)
    raise typer.Exit(exit_code(job))


@jobs_app.command("cancel")
def jobs_cancel(job_id: JobIdArgument, as_json: JsonOption = False) -> None:
    """Cancel a queued or running job (a finished job is left as it is)."""
    with job_service() as service:
        job = service.cancel(service.resolve(job_id).id)
    print_job(job, as_json)


add_operation_commands(app)

__all__ = ["app"]
