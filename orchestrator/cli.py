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
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any

import typer
from pydantic import BaseModel, ValidationError
from sqlalchemy.exc import DBAPIError

import handlers
from handlers.errors import TaskError
from handlers.logs import configure_logging
from handlers.schemas import (
    DEFAULT_USER_ID,
    URI_SCHEMES,
    VOICE_PROVIDERS,
    Emotion,
    GenerateVideoRequest,
    ImageFormat,
    LipSyncEngineName,
    PreprocessAvatarRequest,
    RenderEmotionRequest,
    TaskName,
)
from orchestrator.cli_replica import add_replica_commands
from orchestrator.config import BackendKind, OrchestratorSettings
from orchestrator.console import err, follow_job, out, print_job, print_rows, progress_of, wait_with_progress
from orchestrator.db import safe_url
from orchestrator.models import JobStatus, JobView, OrchestratorError
from orchestrator.recover import RecoveryEvent, recover_avatars
from orchestrator.service import JobService
from orchestrator.uploads import UploadKind, upload_file
from storage import StorageError, open_store

log = logging.getLogger(__name__)

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_BAD_INPUT = 2
EXIT_STILL_RUNNING = 3
RULE = "=" * 50

app = typer.Typer(
    name="avatarctl",
    help="Talking-head jobs: avatars, lip-synced videos, emotion stills (local, RunPod, Modal).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
jobs_app = typer.Typer(help="List, show, wait for and cancel jobs.", no_args_is_help=True)
app.add_typer(jobs_app, name="jobs")
add_replica_commands(app)

JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON (for machines) instead of text.")]
WaitOption = Annotated[bool, typer.Option("--wait/--no-wait", help="Wait for the job with a progress bar.")]
TimeoutOption = Annotated[
    float | None, typer.Option("--timeout", help="Seconds to wait; default: the task's queue + execution limits.")
]
UserOption = Annotated[str, typer.Option("--user-id", help="Owner of the job and of its files in the store.")]
StoreOption = Annotated[
    str | None, typer.Option("--store", help="Store root URI (s3://, gs://, file://); default AVATAR_STORE_URI.")
]
LogLevelOption = Annotated[
    str, typer.Option("--log-level", help="uvicorn's log level: critical, error, warning, info, debug, trace.")
]


# ---- plumbing ------------------------------------------------------------------------------


@app.callback()
def main(verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Log at INFO level.")] = False) -> None:
    configure_logging(logging.INFO if verbose else logging.WARNING)


def contract_default(model: type[BaseModel], name: str) -> Any:
    """A task field's default, from the contract (handlers/schemas.py) where it is defined once."""
    return model.model_fields[name].default


def fail(code: str, message: str, exit_code: int = EXIT_BAD_INPUT) -> typer.Exit:
    err.print(f"error [{code}]: {message}", markup=False)
    return typer.Exit(exit_code)


@contextmanager
def handled_errors() -> Iterator[None]:
    """Refusals become a one-line message and an exit code instead of a traceback."""
    try:
        yield
    except (TaskError, OrchestratorError) as exc:
        raise fail(exc.code, exc.message) from None
    except StorageError as exc:
        raise fail(exc.code, exc.message, EXIT_FAILED) from None
    except ValidationError as exc:  # settings from the environment
        raise fail("invalid_settings", str(exc)) from None
    except DBAPIError:  # no server, refused, bad credentials: the URL (without its password) says which
        url = safe_url(OrchestratorSettings().database_url)
        raise fail("database_unreachable", f"database unreachable: {url}", EXIT_FAILED) from None


@contextmanager
def job_service() -> Iterator[JobService]:
    with handled_errors():
        service = JobService(OrchestratorSettings())
    try:
        with handled_errors():
            yield service
    finally:
        service.stop()


def exit_code(job: JobView) -> int:
    if job.status == JobStatus.completed.value:
        return EXIT_OK
    return EXIT_FAILED if job.finished else EXIT_STILL_RUNNING


def run_job(
    task: str, payload: dict[str, Any], *, wait: bool, timeout_s: float | None, as_json: bool, follow: bool = False
) -> None:
    """Submit a job, wait for it unless told not to (``follow``: printing its events), print it, exit with its code."""
    with job_service() as service:
        job = service.submit(task, payload)
        if follow:
            job = follow_job(service, job, as_json)
        elif wait and not job.finished:
            job = wait_with_progress(service, job, timeout_s, quiet=as_json)
        elif job.backend == BackendKind.local and not job.finished:
            err.print(
                "note: this job runs in this process on the local backend; it is resumed by the next"
                f" `avatarctl jobs wait {job.id}` or `avatarctl serve`.",
                markup=False,
            )
        print_job(job, as_json)
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
    store: StoreOption = None,
    wait: WaitOption = True,
    timeout: TimeoutOption = None,
    as_json: JsonOption = False,
) -> None:
    """Make an avatar from a training video (preprocess_avatar)."""
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
        store=store,
    )
    run_job(TaskName.preprocess_avatar.value, payload, wait=wait, timeout_s=timeout, as_json=as_json)


@app.command()
def generate(
    avatar_id: Annotated[str | None, typer.Option("--avatar-id", help="Avatar to animate.")] = None,
    image: Annotated[str | None, typer.Option("--image", help="Portrait (file or URI) instead of an avatar.")] = None,
    text: Annotated[str | None, typer.Option("--text", help="Sentence to speak.")] = None,
    audio: Annotated[str | None, typer.Option("--audio", help="Speech audio (file or URI) instead of text.")] = None,
    engine: Annotated[LipSyncEngineName, typer.Option("--engine")] = contract_default(GenerateVideoRequest, "engine"),
    voice_provider: Annotated[str | None, typer.Option("--voice-provider", help=", ".join(VOICE_PROVIDERS))] = None,
    voice: Annotated[str | None, typer.Option("--voice", help="Voice name (eSpeak: en-us).")] = None,
    user_id: UserOption = DEFAULT_USER_ID,
    video_id: Annotated[str | None, typer.Option("--video-id", help="Output id; the job id when absent.")] = None,
    store: StoreOption = None,
    wait: WaitOption = True,
    timeout: TimeoutOption = None,
    follow: Annotated[
        bool,
        typer.Option("--follow", help="Stream the video and print each segment as it is stored (waits to the end)."),
    ] = False,
    as_json: JsonOption = False,
) -> None:
    """Make a lip-synced video from an avatar or a portrait, and text or audio (generate_video)."""
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
        store=store,
        stream=follow or None,
    )
    run_job(TaskName.generate_video.value, payload, wait=wait, timeout_s=timeout, as_json=as_json, follow=follow)


@app.command()
def emotion(
    image: Annotated[str, typer.Option("--image", help="Portrait: a local file or a URI.")],
    emotions: Annotated[list[Emotion], typer.Option("--emotion", help="Emotion to render (repeat for several).")],
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
    store: StoreOption = None,
    wait: WaitOption = True,
    timeout: TimeoutOption = None,
    as_json: JsonOption = False,
) -> None:
    """Render emotion stills of a portrait (render_emotion)."""
    with handled_errors():
        image_uri = input_uri(image, "--image", "image", user_id, store)
    names = list(dict.fromkeys(e.value for e in emotions))
    payload = _payload(
        user_id=user_id,
        image=image_uri,
        emotion=names[0] if len(names) == 1 else None,
        emotions=names if len(names) > 1 else None,
        intensity=intensity,
        output_format=output_format.value,
        render_id=render_id,
        store=store,
    )
    run_job(TaskName.render_emotion.value, payload, wait=wait, timeout_s=timeout, as_json=as_json)


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


@jobs_app.command("show")
def jobs_show(job_id: str, as_json: JsonOption = False) -> None:
    """One job: status, outputs, error."""
    with job_service() as service:
        job = service.get(job_id)
        if job is None:
            raise fail("job_not_found", f"No job with id {job_id!r}.", EXIT_FAILED)
    print_job(job, as_json)


@jobs_app.command("wait")
def jobs_wait(job_id: str, timeout: TimeoutOption = None, as_json: JsonOption = False) -> None:
    """Wait for a job to finish (resuming it if its runner is gone)."""
    with job_service() as service:
        job = service.get(job_id)
        if job is None:
            raise fail("job_not_found", f"No job with id {job_id!r}.", EXIT_FAILED)
        job = wait_with_progress(service, job, timeout, quiet=as_json)
    print_job(job, as_json)
    raise typer.Exit(exit_code(job))


@jobs_app.command("cancel")
def jobs_cancel(job_id: str, as_json: JsonOption = False) -> None:
    """Cancel a queued or running job (a finished job is left as it is)."""
    with job_service() as service:
        job = service.cancel(job_id)
    print_job(job, as_json)


# ---- operations ----------------------------------------------------------------------------


@app.command()
def health(as_json: JsonOption = False) -> None:
    """Database, object store and each task's backend."""
    with job_service() as service:
        report = service.health()
    if as_json:
        typer.echo(json.dumps(report, indent=2, default=str))
    else:
        rows = [
            (name, str(part.get("ok")), str(part.get(detail, part.get("error"))))
            for name, part, detail in (("database", report["db"], "url"), ("store", report["store"], "uri"))
        ]
        for spec, part in report["backends"].items():
            details = ", ".join(part.get("tasks", [])) + (f" ({part['error']})" if part.get("error") else "")
            rows.append((f"backend {spec}", str(part.get("ok")), details))
        print_rows(("PART", "OK", "DETAILS"), rows)
        out.print(f"status: {report['status']}", markup=False)
    raise typer.Exit(EXIT_OK if report["status"] == "ok" else EXIT_FAILED)


@app.command()
def serve(
    host: Annotated[str, typer.Option("--host")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port")] = 8000,
    log_level: LogLevelOption = "info",
) -> None:
    """Serve the HTTP API (and run the job poller) under uvicorn."""
    import uvicorn

    from orchestrator.api import create_app

    with handled_errors():
        api = create_app(settings=OrchestratorSettings())
    uvicorn.run(api, host=host, port=port, log_level=log_level)


@app.command("emulate-runpod")
def emulate_runpod(
    endpoint_ids: Annotated[list[str], typer.Option("--endpoint-id", help="Endpoint id to serve (repeatable).")],
    host: Annotated[str, typer.Option("--host")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port")] = 8090,
    workers: Annotated[int, typer.Option("--workers", min=1, max=64)] = 2,
    api_key: Annotated[str | None, typer.Option(envvar="EMULATOR_API_KEY", help="Require this key.")] = None,
    handler: Annotated[str | None, typer.Option(help="A RunPod handler to run: module:function.")] = None,
    return_aggregate_stream: Annotated[bool, typer.Option(help="A generator's output: all its items.")] = False,
    log_level: LogLevelOption = "info",
) -> None:
    """Serve a local RunPod API emulator that runs jobs with this checkout's handlers."""
    import uvicorn

    from orchestrator.emulator import create_emulator_app

    options = {"handler": handler, "return_aggregate_stream": return_aggregate_stream}
    emulator = create_emulator_app(endpoint_ids, workers=workers, api_key=api_key, **options)
    err.print(
        f"RunPod emulator: set RUNPOD_BASE_URL=http://{host}:{port}/v2 and e.g."
        f" BACKEND_RENDER_EMOTION=runpod:{endpoint_ids[0]}",
        markup=False,
    )
    uvicorn.run(emulator, host=host, port=port, log_level=log_level)


def _recovery_printer(as_json: bool) -> Callable[[RecoveryEvent], None]:
    def show(event: RecoveryEvent) -> None:
        if as_json:
            return
        entry = event.avatar
        if event.index == 1:
            out.print(f"Found {event.total} avatar(s) in the store\n", markup=False)
        head = f"[{event.index}/{event.total}] {entry.avatar_id}"
        lines = {
            "found": [f"{head}  user {entry.user_id}  {entry.key} ({entry.size} bytes)"],
            "downloading": [head, f"  Downloading: {entry.key}..."],
            "downloaded": [f"  {event.message}", f"  SUCCESS: {entry.avatar_id} ({event.num_frames} frames)"],
            "skipped": [head, f"  SKIP: {entry.avatar_id} ({event.message})"],
            "would_download": [head, f"  WOULD DOWNLOAD: {entry.key}"],
            "failed": [f"  FAILED: {entry.avatar_id} ({event.message})"],
        }
        for line in lines.get(event.action, []):
            out.print(line, markup=False)

    return show


@app.command("recover-avatars")
def recover_avatars_command(
    list_only: Annotated[bool, typer.Option("--list-only", help="Only list the avatars in the store.")] = False,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Show what would be downloaded.")] = False,
    user_id: Annotated[str | None, typer.Option("--user-id", help="Only this user's avatars.")] = None,
    avatar_id: Annotated[str | None, typer.Option("--avatar-id", help="Only this avatar.")] = None,
    output_dir: Annotated[
        Path | None, typer.Option("--output-dir", help="Avatar cache; default AVATAR_LOCAL_PATH.")
    ] = None,
    store: StoreOption = None,
    as_json: JsonOption = False,
) -> None:
    """Restore avatars from the store's avatars/{user_id}/{avatar_id}.tar into the local avatar cache."""
    with handled_errors():
        settings = handlers.Settings()
    store_uri = store or settings.avatar_store_uri
    output = output_dir or settings.avatar_local_path
    if not as_json:
        header = ["Avatar Recovery", RULE, f"Output directory: {output}", f"Store: {store_uri}", RULE, ""]
        out.print("\n".join([*header, "Scanning the store for avatar TAR files..."]), markup=False)
    with handled_errors():
        summary = recover_avatars(
            open_store(store_uri, settings.storage),
            output,
            list_only=list_only,
            dry_run=dry_run,
            user_id=user_id,
            avatar_id=avatar_id,
            on_event=_recovery_printer(as_json),
        )
    if as_json:
        fields = ("downloaded", "skipped", "failed", "would_download", "total", "failures")
        body = {name: getattr(summary, name) for name in fields}
        body["avatars"] = [vars(entry) for entry in summary.avatars]
        typer.echo(json.dumps(body, indent=2))
    else:
        if summary.total == 0:
            out.print("Found 0 avatar(s) in the store", markup=False)
        title = "Listing Complete" if list_only else ("Dry Run Complete" if dry_run else "Recovery Complete")
        out.print("\n".join(["", RULE, title, RULE, *summary.lines()]), markup=False)
    raise typer.Exit(EXIT_FAILED if summary.failed else EXIT_OK)


@app.command()
def demo(
    root: Annotated[Path, typer.Option("--root", help="Where the demo keeps its database, store and files.")] = Path(
        "var"
    ),
) -> None:
    """Make an avatar from a generated video, a talking video and seven emotion stills, all locally."""
    from orchestrator.demo import run_demo

    raise typer.Exit(run_demo(root, out))


__all__ = ["app"]
