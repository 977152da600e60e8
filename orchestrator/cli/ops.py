"""``avatarctl`` operations: health, serve, emulate-runpod, recover-avatars, export-livetalking, demo (registered on
the main app by ``add_operation_commands``)."""

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Annotated

import typer

import handlers
from orchestrator.cli.console import (
    EXIT_FAILED,
    EXIT_OK,
    RULE,
    JsonOption,
    LogLevelOption,
    StoreOption,
    err,
    handled_errors,
    job_service,
    out,
    print_rows,
)
from orchestrator.cli.livetalking import export_livetalking_command
from orchestrator.core.config import OrchestratorSettings
from orchestrator.core.recover import RecoveryEvent, recover_avatars
from storage import open_store


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
        for warning in report.get("warnings", []):
            err.print(f"warning: {warning}", markup=False)
        out.print(f"status: {report['status']}", markup=False)
    raise typer.Exit(EXIT_OK if report["status"] == "ok" else EXIT_FAILED)


LOOPBACK_HOSTS = frozenset({"127.0.0.1", "localhost", "::1"})


def serve(
    host: Annotated[str, typer.Option("--host")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port")] = 8000,
    log_level: LogLevelOption = "info",
) -> None:
    """Serve the HTTP API (and run the job poller) under uvicorn."""
    import uvicorn

    from orchestrator.api import create_app

    if host in LOOPBACK_HOSTS:  # only this machine's browsers: their ICE candidates are loopback or private
        os.environ.setdefault("REALTIME_ALLOW_PRIVATE_CANDIDATES", "1")
    with handled_errors():
        api = create_app(settings=OrchestratorSettings())
        api.state.context.service.start()  # before serving: a second replica on SQLite is refused here
    uvicorn.run(api, host=host, port=port, log_level=log_level)


def emulate_runpod(
    endpoint_ids: Annotated[list[str], typer.Option("--endpoint-id", help="Endpoint id to serve (repeatable).")],
    host: Annotated[str, typer.Option("--host")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port")] = 8090,
    workers: Annotated[int, typer.Option("--workers", min=1, max=64)] = 2,
    api_key: Annotated[str | None, typer.Option(envvar="EMULATOR_API_KEY", help="Require this key.")] = None,
    handler: Annotated[str | None, typer.Option(help="A RunPod handler to run: module:function.")] = None,
    return_aggregate_stream: Annotated[bool, typer.Option(help="A generator's output: all its items.")] = False,
    allow_private_webhooks: Annotated[
        bool, typer.Option(help="Deliver webhooks to private and loopback addresses too (RunPod cannot).")
    ] = False,
    webhook_prefix: Annotated[
        list[str] | None, typer.Option("--webhook-prefix", help="Deliver webhooks to URLs under this (repeatable).")
    ] = None,
    concurrency: Annotated[
        int | None, typer.Option(min=1, max=64, help="Jobs per worker at once (default: the handler's declared).")
    ] = None,
    log_level: LogLevelOption = "info",
) -> None:
    """Serve a local RunPod API emulator that runs jobs with this checkout's handlers."""
    import uvicorn

    from orchestrator.devtools.emulator import create_emulator_app

    options = {
        "handler": handler,
        "return_aggregate_stream": return_aggregate_stream,
        "allow_private_webhooks": allow_private_webhooks,
        "webhook_prefixes": tuple(webhook_prefix or ()),
        "concurrency": concurrency,
    }
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


def demo(
    root: Annotated[
        Path | None,
        typer.Option("--root", help="Where the demo keeps its database, store and files; default AVATARCTL_HOME."),
    ] = None,
) -> None:
    """Make an avatar from a generated video, a talking video and seven emotion stills, all locally; then print
    the commands that go on from there."""
    from orchestrator.devtools.demo import run_demo

    with handled_errors():
        home = handlers.Settings().avatarctl_home
    raise typer.Exit(run_demo(root or home, out))


def add_operation_commands(app: typer.Typer) -> None:
    app.command()(health)
    app.command()(serve)
    app.command("emulate-runpod")(emulate_runpod)
    app.command("recover-avatars")(recover_avatars_command)
    app.command("export-livetalking")(export_livetalking_command)
    app.command()(demo)
