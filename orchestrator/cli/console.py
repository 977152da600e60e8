"""What the CLI and the demo print: jobs, their outputs, aligned tables, a progress bar while waiting; and the
CLI's plumbing (exit codes, shared options, refusals as one line instead of a traceback)."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated

import typer
from pydantic import ValidationError
from rich.console import Console
from rich.progress import BarColumn, Progress, SpinnerColumn, TaskProgressColumn, TextColumn, TimeElapsedColumn
from sqlalchemy.exc import ArgumentError, DBAPIError

import handlers
from handlers.errors import TaskError
from handlers.schemas import TaskName
from orchestrator.core.config import OrchestratorSettings
from orchestrator.core.db import safe_url
from orchestrator.core.models import JobNotFound, JobStatus, JobView, OrchestratorError
from orchestrator.core.service import JobService
from storage import StorageError, fetch
from storage.local import path_from_file_uri

out = Console(soft_wrap=True, highlight=False)
err = Console(stderr=True, soft_wrap=True, highlight=False)
WATCH_S = 0.1  # how often the CLI reads a job a running replica works on


def local_path(uri: str) -> str:
    """A file:// URI as the local path it names; any other URI unchanged."""
    if uri.startswith("file:"):
        try:
            return str(path_from_file_uri(uri))
        except StorageError:
            return uri
    return uri


def job_outputs(job: JobView) -> list[tuple[str, str]]:
    """(label, URI) of each file a completed job wrote."""
    output = job.output if isinstance(job.output, dict) else {}
    if job.task == TaskName.preprocess_avatar.value and "avatar" in output:
        return [("avatar", output["avatar"]["uri"])]
    if job.task == TaskName.generate_video.value and "video" in output:
        return [("video", output["video"]["uri"])]
    if job.task == TaskName.render_emotion.value:
        return [(render["emotion"], render["uri"]) for render in output.get("renders", [])]
    return []


def _elapsed(job: JobView) -> str:
    if job.finished_at is None:
        return ""
    seconds = (job.finished_at - (job.started_at or job.created_at)).total_seconds()
    return f" in {seconds:.1f} s"


def print_job(job: JobView, as_json: bool) -> None:
    if as_json:
        typer.echo(job.model_dump_json(indent=2))
        return
    out.print(f"job {job.id} {job.task} {job.status}{_elapsed(job)} ({job.backend})", markup=False)
    if job.error:
        err.print(f"  error [{job.error_code}]: {job.error}", markup=False)
    for label, uri in job_outputs(job):
        out.print(f"  {label}: {local_path(uri)}", markup=False)
    if job.status == JobStatus.completed.value and (details := _details(job)):
        out.print(f"  {details}", markup=False)


def _details(job: JobView) -> str | None:
    o = job.output
    if job.task == TaskName.generate_video.value:
        return f"{o['duration_s']:.2f} s, {o['num_frames']} frames, {o['width']}x{o['height']}"
    if job.task == TaskName.preprocess_avatar.value:
        return f"{o['num_frames']} frames at {o['fps']:g} fps, {o['img_size']} px faces"
    return None


def print_rows(headers: tuple[str, ...], rows: list[tuple[str, ...]], console: Console = out) -> None:
    """Aligned columns, one line per row (never wrapped, so pipes and grep see whole lines)."""
    widths = [max(len(str(row[i])) for row in (headers, *rows)) for i in range(len(headers) - 1)]
    for row in (headers, *rows):
        cells = [f"{str(cell):<{width}}" for cell, width in zip(row, widths, strict=False)]
        console.print("  ".join([*cells, str(row[-1])]).rstrip(), markup=False)


def progress_of(job: JobView) -> tuple[float, str]:
    progress = job.progress
    if isinstance(progress, dict):
        return float(progress.get("fraction") or 0.0), str(progress.get("stage") or "")
    return (float(progress), "") if isinstance(progress, (int, float)) else (0.0, "")


def wait_with_progress(service: JobService, job: JobView, timeout_s: float | None, quiet: bool) -> JobView:
    """Wait for the job, showing its status and progress on stderr (hidden when ``quiet``)."""
    timeout_s = timeout_s or service.settings.queue_timeout_s + service.settings.timeout_for(job.task)
    columns = (SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), TaskProgressColumn())
    with Progress(*columns, TimeElapsedColumn(), console=err, disable=quiet) as progress:
        bar = progress.add_task(f"{job.task} {job.id[:8]}", total=1.0)

        def show(current: JobView) -> None:
            fraction, stage = progress_of(current)
            label = f"{current.task} {current.id[:8]} {current.status}" + (f" · {stage}" if stage else "")
            progress.update(bar, completed=fraction, description=label)

        job = service.wait(job.id, timeout_s, on_progress=show)
        if job.status == JobStatus.completed.value:
            progress.update(bar, completed=1.0)
    return job


def watch_with_progress(service: JobService, job: JobView, timeout_s: float | None, quiet: bool) -> JobView:
    """Wait for a job a running replica takes (reading the database every WATCH_S, showing progress); when no
    replica has claimed it within LEASE_S (it stopped meanwhile), wait as ``wait_with_progress`` does, which
    runs it here."""
    timeout_s = timeout_s or service.settings.queue_timeout_s + service.settings.timeout_for(job.task)
    give_up = time.monotonic() + timeout_s
    unclaimed_until = time.monotonic() + service.settings.lease_s
    columns = (SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), TaskProgressColumn())
    with Progress(*columns, TimeElapsedColumn(), console=err, disable=quiet) as progress:
        bar = progress.add_task(f"{job.task} {job.id[:8]} sent to the running replica", total=1.0)
        while not job.finished and time.monotonic() < give_up:
            if job.attempts == 0 and time.monotonic() > unclaimed_until:
                progress.stop()
                return wait_with_progress(service, job, give_up - time.monotonic(), quiet)
            time.sleep(WATCH_S)
            job = service.get(job.id) or job
            fraction, stage = progress_of(job)
            label = f"{job.task} {job.id[:8]} {job.status}" + (f" · {stage}" if stage else "")
            progress.update(bar, completed=1.0 if job.finished else fraction, description=label)
    return job


def save_outputs(job: JobView, dest: Path, quiet: bool = False) -> list[Path]:
    """Copy a completed job's files (video, stills, avatar TAR) from the store to ``dest``: the file itself for
    one output, else a folder with one file per output named after it (``happy.png``)."""
    outputs = job_outputs(job)
    if not outputs:
        raise fail("no_output", f"Job {job.id} ({job.task}, {job.status}) has no file to save.", EXIT_FAILED)
    settings = handlers.Settings()
    if len(outputs) == 1 and not dest.is_dir():
        targets = [dest]
    else:
        dest.mkdir(parents=True, exist_ok=True)
        targets = [dest / f"{label}{Path(uri).suffix}" for label, uri in outputs]
    with handled_errors():
        for (_, uri), target in zip(outputs, targets, strict=True):
            target = target / Path(local_path(uri)).name if target.is_dir() else target
            fetch(uri, target.absolute(), settings.storage)
            target.chmod(0o666 & ~_umask())  # a file for the user, not the store's private temp-file mode
            if not quiet:
                err.print(f"saved {target}", markup=False)
    return targets


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def follow_job(service: JobService, job: JobView, as_json: bool) -> JobView:
    """Print a job's segments on stdout as they are stored (JSON lines with ``as_json``) and its stages on
    stderr, until it ends; returns the finished job."""
    from orchestrator.core.events import job_events  # cv2 and the codecs: only for --follow (a still starts faster)

    stage = None
    for event in job_events(service, job.id):
        if event is None:
            continue
        if event.name == "segment" and as_json:
            typer.echo(json.dumps(event.data))
        elif event.name == "segment":
            segment = event.data
            out.print(
                f"segment {segment['index']} {segment['duration_s']:.2f} s {local_path(segment['uri'])}", markup=False
            )
        elif event.name == "progress" and event.data["stage"] != stage and not as_json:
            stage = event.data["stage"]
            err.print(
                f"{job.task} {job.id[:8]} {event.data['status']}" + (f" · {stage}" if stage else ""), markup=False
            )
    return service.get(job.id) or job


# ---- the CLI's plumbing: exit codes, shared options, one-line errors ----------------------

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_BAD_INPUT = 2
EXIT_STILL_RUNNING = 3
RULE = "=" * 50  # recover-avatars' banner lines


JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON (for machines) instead of text.")]
WaitOption = Annotated[bool, typer.Option("--wait/--no-wait", help="Wait for the job with a progress bar.")]
TimeoutOption = Annotated[
    float | None, typer.Option("--timeout", help="Seconds to wait; default: the task's queue + execution limits.")
]
UserOption = Annotated[
    str, typer.Option("--user-id", envvar="AVATARCTL_USER", help="Owner of the job and of its files in the store.")
]
FaceIndexOption = Annotated[
    int | None,
    typer.Option("--face-index", min=0, help="A photo with several faces: 0 = the largest (default), 1 = next."),
]
OutputOption = Annotated[
    Path | None, typer.Option("--output", "-o", help="Save the result here (several files: into this folder).")
]
StoreOption = Annotated[
    str | None, typer.Option("--store", help="Store root URI (s3://, gs://, file://); default AVATAR_STORE_URI.")
]
LogLevelOption = Annotated[
    str, typer.Option("--log-level", help="uvicorn's log level: critical, error, warning, info, debug, trace.")
]


def fail(code: str, message: str, exit_code: int = EXIT_BAD_INPUT) -> typer.Exit:
    err.print(f"error [{code}]: {message}", markup=False)
    return typer.Exit(exit_code)


@contextmanager
def handled_errors() -> Iterator[None]:
    """Refusals become a one-line message and an exit code instead of a traceback."""
    try:
        yield
    except JobNotFound as exc:
        raise fail(exc.code, exc.message, EXIT_FAILED) from None
    except (TaskError, OrchestratorError) as exc:
        raise fail(exc.code, exc.message) from None
    except StorageError as exc:
        raise fail(exc.code, exc.message, EXIT_FAILED) from None
    except ValidationError as exc:  # settings from the environment
        raise fail("invalid_settings", str(exc)) from None
    except (DBAPIError, ArgumentError):  # no server, refused, bad credentials, not a URL: say which, no password
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
