"""``avatarctl`` through typer's CliRunner: health, emotion on a generated image, jobs list/show/wait/cancel,
a local training video uploaded before its job, bad input, and recover-avatars against moto's S3."""

from __future__ import annotations

import json
import shlex
from pathlib import Path

import cv2
import pytest
from typer.testing import CliRunner

from handlers.schemas import Emotion
from handlers.settings import Settings
from orchestrator.cli.main import app
from orchestrator.core.config import OrchestratorSettings
from orchestrator.core.service import JobService
from storage import open_store
from storage.avatar.archive import pack_avatar
from storage.avatar.cache import AvatarCache
from storage.keys import avatar_key
from storage.local import path_from_file_uri
from tests.media import astronaut_bgr, coffee_bgr
from tests.storage.avatar_factory import make_avatar_dir

runner = CliRunner()


@pytest.fixture
def cli_env(tmp_path: Path, local_settings: Settings, monkeypatch: pytest.MonkeyPatch) -> Settings:
    """A fresh SQLite job database and the file:// store of ``local_settings``; every backend local."""
    monkeypatch.setenv("DATABASE_URL", f"sqlite:///{tmp_path / 'jobs.db'}")
    monkeypatch.delenv("API_TOKEN", raising=False)
    for task in ("PREPROCESS_AVATAR", "GENERATE_VIDEO", "RENDER_EMOTION", "HEALTH"):
        monkeypatch.delenv(f"BACKEND_{task}", raising=False)
    return local_settings


def invoke(*args: str):
    return runner.invoke(app, list(args), catch_exceptions=False)


def test_health_reports_db_store_and_backends(cli_env: Settings) -> None:
    result = invoke("health", "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["status"] == "ok" and report["db"]["ok"] and report["store"]["uri"] == cli_env.avatar_store_uri
    human = invoke("health")
    assert human.exit_code == 0 and "backend local" in human.stdout and "status: ok" in human.stdout


def test_emotion_on_a_generated_image_then_jobs_list_show_wait(cli_env: Settings, tmp_path: Path) -> None:
    portrait = tmp_path / "portrait.png"
    cv2.imwrite(str(portrait), astronaut_bgr(256))
    result = invoke(
        "emotion", "--image", str(portrait), "--emotion", "happy", "--emotion", "sad", "--user-id", "cli-u", "--json"
    )
    assert result.exit_code == 0, result.output
    job = json.loads(result.stdout)
    assert job["status"] == "completed" and job["input"]["image"].startswith(
        cli_env.avatar_store_uri + "/uploads/cli-u/"
    )
    paths = [path_from_file_uri(render["uri"]) for render in job["output"]["renders"]]
    assert [p.name for p in paths] == [f"{job['id']}_happy.png", f"{job['id']}_sad.png"]
    assert all(cv2.imread(str(p)).shape == (256, 256, 3) for p in paths)

    listed = invoke("jobs", "list", "--user-id", "cli-u", "--json")
    assert [j["id"] for j in json.loads(listed.stdout)] == [job["id"]]
    assert invoke("jobs", "list", "--user-id", "nobody", "--json").stdout.strip() == "[]"
    table = invoke("jobs", "list", "--status", "completed")
    assert job["id"] in table.stdout and "render_emotion" in table.stdout
    shown = invoke("jobs", "show", job["id"])
    assert shown.exit_code == 0 and "completed" in shown.stdout and str(paths[1]) in shown.stdout
    waited = invoke("jobs", "wait", job["id"], "--json")
    assert waited.exit_code == 0 and json.loads(waited.stdout)["status"] == "completed"
    missing = invoke("jobs", "show", "nope")
    assert missing.exit_code == 1 and "job_not_found" in missing.stderr


def test_failures_and_bad_input_set_the_exit_code(cli_env: Settings, tmp_path: Path) -> None:
    coffee = tmp_path / "coffee.png"
    cv2.imwrite(str(coffee), coffee_bgr())
    no_face = invoke("emotion", "--image", str(coffee), "--emotion", "happy")
    assert no_face.exit_code == 1 and "no_face" in no_face.stderr
    neither = invoke("generate", "--image", str(coffee))
    assert neither.exit_code == 2 and "give exactly one of `text` or `audio`" in neither.stderr
    missing_file = invoke("preprocess", "--video", str(tmp_path / "nope.mp4"), "--avatar-id", "a1")
    assert missing_file.exit_code == 2 and "neither a URI" in missing_file.stderr
    bad_emotion = runner.invoke(app, ["emotion", "--image", str(coffee), "--emotion", "joy"])
    assert bad_emotion.exit_code == 2


def test_preprocess_uploads_the_local_video_then_no_wait_and_cancel(
    cli_env: Settings, emulator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("BACKEND_PREPROCESS_AVATAR", f"runpod:{emulator.endpoint_id}")
    monkeypatch.setenv("RUNPOD_BASE_URL", emulator.base_url)
    emulator.emulator.faults.hold_queue = True  # the job stays IN_QUEUE until cancelled
    video = tmp_path / "clip.mp4"
    video.write_bytes(b"\x00\x00\x00\x18ftypisom" + bytes(500))
    result = invoke("preprocess", "--video", str(video), "--avatar-id", "a1", "--user-id", "u9", "--no-wait", "--json")
    assert result.exit_code == 0, result.output
    job = json.loads(result.stdout)
    assert job["status"] == "queued" and job["backend"] == "runpod" and job["remote_id"]
    uploaded = path_from_file_uri(job["input"]["video"])
    assert uploaded.parent == path_from_file_uri(cli_env.avatar_store_uri) / "training-videos" / "u9"
    assert uploaded.suffix == ".mp4" and uploaded.read_bytes() == video.read_bytes()

    cancelled = invoke("jobs", "cancel", job["id"], "--json")
    assert cancelled.exit_code == 0 and json.loads(cancelled.stdout)["status"] == "cancelled"
    assert emulator.emulator.jobs[job["remote_id"]].status == "CANCELLED"


def test_a_local_job_not_waited_for_is_left_to_a_replica(cli_env: Settings, tmp_path: Path) -> None:
    portrait = tmp_path / "face.png"
    cv2.imwrite(str(portrait), astronaut_bgr(256))
    result = invoke("emotion", "--image", str(portrait), "--emotion", "happy", "--no-wait", "--json")
    assert result.exit_code == 0, result.output
    job = json.loads(result.stdout)
    assert job["status"] == "queued" and job["attempts"] == 0 and job["remote_id"] is None
    assert "stored for a replica" in result.stderr
    replica = JobService(OrchestratorSettings(poll_interval_s=0.05))
    try:
        replica.start()
        done = replica.wait(job["id"], 60)
    finally:
        replica.stop()
    assert done.status == "completed" and done.attempts == 1


def test_recover_avatars_against_s3(cli_env: Settings, s3_bucket: str, tmp_path: Path) -> None:
    store = open_store(s3_bucket)
    for user_id, avatar_id in (("u1", "a1"), ("u2", "b1")):
        tar = tmp_path / f"{avatar_id}.tar"
        pack_avatar(make_avatar_dir(tmp_path / "src", avatar_id, frames=2), tar)
        store.put(tar, avatar_key(user_id, avatar_id))
    cache = tmp_path / "cache"

    listed = invoke("recover-avatars", "--list-only", "--store", s3_bucket, "--output-dir", str(cache))
    assert listed.exit_code == 0, listed.output
    assert "Found 2 avatar(s)" in listed.stdout and "avatars/u1/a1.tar" in listed.stdout
    assert "Total:      2" in listed.stdout and not cache.exists()

    only_u1 = invoke("recover-avatars", "--store", s3_bucket, "--output-dir", str(cache), "--user-id", "u1")
    assert "SUCCESS: a1 (2 frames)" in only_u1.stdout and "Downloaded: 1" in only_u1.stdout
    assert AvatarCache(cache).current_path(store.uri(avatar_key("u1", "a1"))) is not None  # installed, versioned
    again = invoke("recover-avatars", "--store", s3_bucket, "--output-dir", str(cache), "--json")
    summary = json.loads(again.stdout)
    assert (summary["downloaded"], summary["skipped"], summary["failed"], summary["total"]) == (1, 1, 0, 2)
    bad = invoke("recover-avatars", "--store", s3_bucket, "--user-id", "../x", "--output-dir", str(cache))
    assert bad.exit_code == 2 and "invalid_input" in bad.stderr


def test_recover_avatars_with_bad_settings_is_one_line_not_a_traceback(cli_env, monkeypatch) -> None:
    monkeypatch.setenv("MAX_VIDEO_BYTES", "lots")
    result = invoke("recover-avatars", "--list-only")
    assert result.exit_code == 2 and "invalid_settings" in result.stderr and "MAX_VIDEO_BYTES" in result.stderr


def test_demo_makes_an_avatar_a_video_and_seven_stills_then_its_commands_work(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AVATAR_STORE_URI", "s3://not-used-by-the-demo")
    home = tmp_path / "home"
    monkeypatch.setenv("AVATARCTL_HOME", str(home))
    result = invoke("demo")  # state in AVATARCTL_HOME
    assert result.exit_code == 0, result.output
    store = home / "store"
    assert (store / "avatars" / "demo" / "demo-astronaut.tar").is_file()
    videos = list((store / "generated-videos" / "demo").glob("*.mp4"))
    stills = sorted(p.name.rsplit("_", 1)[1] for p in (store / "emotions" / "demo").glob("*.png"))
    assert len(videos) == 1 and str(videos[0]) in result.stdout
    assert stills == sorted(f"{emotion.value}.png" for emotion in Emotion)
    assert "[5/5] the seven emotions" in result.stdout and "total" in result.stdout

    # the commands it prints go on from its state: AVATARCTL_HOME is the CLI's too, once the variable naming
    # another store is unset as the printed note says
    lines = result.stdout[result.stdout.index("Go on from here") :].splitlines()[1:]
    assert lines[0].strip().startswith(f"export AVATARCTL_HOME={home}; unset DATABASE_URL AVATAR_STORE_URI")
    monkeypatch.delenv("AVATAR_STORE_URI")
    commands = [shlex.split(line.split("#")[0])[1:] for line in lines[1:] if line.strip().startswith("avatarctl ")]
    monkeypatch.chdir(tmp_path)
    for command in commands:
        if command[0] == "serve":
            continue
        ran = invoke(*command)
        assert ran.exit_code == 0, (command, ran.output)
    assert (tmp_path / "hello.mp4").stat().st_size > 1000 and (tmp_path / "surprised.png").is_file()
    assert sorted(p.name for p in (tmp_path / "stills").iterdir()) == ["happy.png", "sad.png"]


def test_an_unreachable_database_is_one_line_without_its_password(cli_env, monkeypatch) -> None:
    monkeypatch.setenv("DATABASE_URL", "postgresql+psycopg://avatar:s3cr3t@127.0.0.1:9/jobs?connect_timeout=2")
    result = runner.invoke(app, ["jobs", "list"])
    assert result.exit_code == 1 and "Traceback" not in result.output and "s3cr3t" not in result.output
    lines = result.output.strip().splitlines()
    assert lines == [
        "error [database_unreachable]: database unreachable: postgresql+psycopg://avatar:***@127.0.0.1:9/jobs?connect_timeout=2"
    ]


@pytest.mark.parametrize(
    "url",
    [
        "postgresql+psycopg://avatar@127.0.0.1:9/jobs?password=s3cr3t&connect_timeout=2",
        "postgresql://avatar@127.0.0.1:9/jobs?PASSWORD=s3cr3t&connect_timeout=2",
        "postgresql+psycopg://avatar@127.0.0.1:9/jobs?sslpassword=s3cr3t&connect_timeout=2",
        "postgresql+psycopg://avatar:s3cr3t@127.0.0.1:9/jobs?connect_timeout=2&passfile=/s3cr3t",
        "postgresql+psycopg://avatar:s3%63r3t@127.0.0.1:9/jobs?connect_timeout=2",
        "postgresql+psycopg://avatar:s3cr3t@127.0.0.1:notaport/jobs",
    ],
)
def test_a_database_password_in_any_part_of_the_url_never_reaches_cli_errors(cli_env, monkeypatch, url) -> None:
    """Class: secrets in CLI errors: a password in the userinfo or as a query parameter (any case, encoded) is
    masked; a URL that does not parse is not echoed."""
    monkeypatch.setenv("DATABASE_URL", url)
    for args in (["jobs", "list"], ["db", "current"]):
        result = runner.invoke(app, args)
        assert result.exit_code == 1 and "Traceback" not in result.output, result.output
        assert "database_unreachable" in result.output
        assert "s3cr3t" not in result.output and "s3%63r3t" not in result.output, result.output
