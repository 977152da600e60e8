"""``avatarctl`` for a person at a terminal: job ids as printed (unique prefixes), ``--output`` saving results,
``preprocess --model``, help that fits 80 columns, and CLI jobs handed to a running replica's warm workers."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import click
import cv2
import pytest
import typer

from handlers.settings import Settings
from orchestrator.cli.main import app
from orchestrator.core.config import OrchestratorSettings
from orchestrator.core.models import JobStatus
from orchestrator.core.service import JobService
from storage.local import path_from_file_uri
from tests.entrypoints.conftest import REPO_ROOT, training_video  # noqa: F401  (a fixture)
from tests.media import astronaut_bgr
from tests.orchestrator import test_cli
from tests.orchestrator.test_cli import invoke

cli_env = test_cli.cli_env  # the fixture: a fresh SQLite job database, the file:// store, local backends


@pytest.fixture
def portrait(tmp_path: Path) -> Path:
    path = tmp_path / "portrait.png"
    cv2.imwrite(str(path), astronaut_bgr(256))
    return path


def test_job_ids_resolve_from_a_unique_prefix_and_ambiguity_lists_the_candidates(cli_env: Settings) -> None:
    service = JobService(OrchestratorSettings())
    try:
        for job_id in ("abc100" + "0" * 26, "abc200" + "0" * 26, "fed300" + "0" * 26):
            service.store.create(id=job_id, task="health", status="queued", backend="local", input={"task": "health"})
    finally:
        service.stop()
    shown = invoke("jobs", "show", "fed3", "--json")
    assert shown.exit_code == 0 and json.loads(shown.stdout)["id"] == "fed300" + "0" * 26
    assert json.loads(invoke("jobs", "show", "abc1", "--json").stdout)["id"].startswith("abc1")
    ambiguous = invoke("jobs", "show", "abc")
    assert ambiguous.exit_code == 2 and "ambiguous_job_id" in ambiguous.stderr
    assert "abc100" in ambiguous.stderr and "abc200" in ambiguous.stderr
    for missing in ("0123", "nope", "'; drop table jobs; --"):
        refused = invoke("jobs", "show", missing)
        assert refused.exit_code == 1 and "job_not_found" in refused.stderr, missing
    cancelled = invoke("jobs", "cancel", "fed", "--json")
    assert cancelled.exit_code == 0 and json.loads(cancelled.stdout)["status"] == JobStatus.cancelled.value


def test_output_saves_a_still_a_folder_of_stills_and_a_video(cli_env: Settings, portrait: Path, tmp_path: Path) -> None:
    still = tmp_path / "out" / "happy.png"
    one = invoke("emotion", "--image", str(portrait), "--emotion", "happy", "--output", str(still), "--json")
    assert one.exit_code == 0, one.output
    job = json.loads(one.stdout)
    assert still.read_bytes() == path_from_file_uri(job["output"]["renders"][0]["uri"]).read_bytes()

    folder = tmp_path / "stills"
    both = invoke("emotion", "--image", str(portrait), "--emotion", "sad", "--emotion", "angry", "-o", str(folder))
    assert both.exit_code == 0, both.output
    assert sorted(p.name for p in folder.iterdir()) == ["angry.png", "sad.png"]
    assert cv2.imread(str(folder / "sad.png")).shape == (256, 256, 3)

    video = tmp_path / "hello.mp4"
    made = invoke("generate", "--image", str(portrait), "--text", "Hello.", "--output", str(video), "--json")
    assert made.exit_code == 0, made.output
    assert video.read_bytes() == path_from_file_uri(json.loads(made.stdout)["output"]["video"]["uri"]).read_bytes()
    again = tmp_path / "again.mp4"
    shown = invoke("jobs", "show", json.loads(made.stdout)["id"][:8], "--output", str(again))
    assert shown.exit_code == 0 and again.read_bytes() == video.read_bytes()


def test_preprocess_saves_the_avatar_tar_and_takes_model(
    cli_env: Settings,
    training_video: Path,  # noqa: F811
    tmp_path: Path,
) -> None:
    tar = tmp_path / "avatar.tar"
    made = invoke("preprocess", "--video", str(training_video), "--avatar-id", "cli-a", "--output", str(tar))
    assert made.exit_code == 0, made.output
    with tarfile.open(tar) as archive:
        assert any(name.endswith("coords.pkl") for name in archive.getnames())
    video = str(training_video)
    stored = invoke(
        "preprocess", "--video", video, "--avatar-id", "cli-m", "--model", "musetalk", "--no-wait", "--json"
    )
    assert stored.exit_code == 0, stored.output
    assert json.loads(stored.stdout)["input"]["models"] == ["musetalk"]
    unknown = invoke("preprocess", "--video", str(training_video), "--avatar-id", "x", "--model", "sadtalker")
    assert unknown.exit_code == 2


def _commands(group: click.Group, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    found = [prefix]
    for name, command in group.commands.items():
        found += _commands(command, (*prefix, name)) if isinstance(command, click.Group) else [(*prefix, name)]
    return found


def test_every_help_page_fits_80_columns_without_truncating_an_option() -> None:
    root = typer.main.get_command(app)
    env = {**os.environ, "COLUMNS": "80", "PYTHONPATH": str(REPO_ROOT)}
    for path in _commands(root):
        command = root
        for name in path:
            command = command.commands[name]
        shown = subprocess.run(
            [sys.executable, "-c", "from orchestrator.cli.main import app; app()", *path, "--help"],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert shown.returncode == 0, (path, shown.stderr)
        lines = shown.stdout.splitlines()
        assert all(len(line) <= 80 for line in lines), (path, [line for line in lines if len(line) > 80])
        assert "…" not in shown.stdout, path
        for param in command.params:
            for option in param.opts:
                assert option.startswith("-") is False or option in shown.stdout, (path, option)


def test_a_cli_job_goes_to_the_running_replicas_warm_workers(cli_env: Settings, portrait: Path) -> None:
    replica = JobService(OrchestratorSettings(poll_interval_s=0.05))
    replica.start()
    try:
        runner = replica.backend_for_task("render_emotion").endpoint
        result = invoke("emotion", "--image", str(portrait), "--emotion", "happy", "--json")
        assert result.exit_code == 0, result.output
        job = json.loads(result.stdout)
        assert job["status"] == "completed" and job["endpoint"] == runner  # run by the replica, not this process
    finally:
        replica.stop()
    alone = invoke("emotion", "--image", str(portrait), "--emotion", "sad", "--json")
    assert alone.exit_code == 0 and json.loads(alone.stdout)["endpoint"] != runner  # no replica: runs here
