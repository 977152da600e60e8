"""LocalBackend.health() with a job queued but not started (issue 20): /healthz stays ok, the job is counted."""

from __future__ import annotations

from pathlib import Path

import httpx

from orchestrator.api import create_app
from orchestrator.core.backends.local import LocalBackend
from orchestrator.core.config import OrchestratorSettings
from orchestrator.core.service import JobService
from orchestrator.devtools.background_server import BackgroundServer
from tests.orchestrator.conftest import eventually
from tests.orchestrator.worker_tasks import BLOCK_USER, dispatch_or_crash


def test_a_queued_job_does_not_make_the_local_backend_degraded(local_settings, tmp_path: Path) -> None:  # noqa: ANN001
    """Class: health reading a field its run record lacks: one worker busy, one job waiting: /healthz is ok."""
    settings = OrchestratorSettings(database_url=f"sqlite:///{tmp_path / 'jobs.db'}", poll_interval_s=0.05)
    local = LocalBackend(workers=1, settings=local_settings, run_task=dispatch_or_crash)
    backends = {task: local for task in ("render_emotion", "health", "generate_video", "preprocess_avatar")}
    service = JobService(settings, backends=backends)
    release = tmp_path / "release"
    try:
        with BackgroundServer(create_app(service)) as server:
            busy = {"user_id": BLOCK_USER, "image": release.as_uri(), "emotion": "happy"}
            blocking = service.submit("render_emotion", busy)
            eventually(lambda: service.refresh(blocking.id).status == "running")
            service.submit("health", {})  # the only worker is busy: this one waits, not started
            assert local.health()["queued"] == 1 and local.health()["running"] == 1
            report = httpx.get(f"{server.url}/healthz", timeout=30).json()
            assert report["status"] == "ok" and report["ok"] is True, report
    finally:
        release.touch()
        service.stop()


def test_a_job_claimed_here_but_not_yet_handed_over_is_still_ours(local_settings, tmp_path: Path) -> None:  # noqa: ANN001
    """Class: a refresh racing a submit. The claim writes the job's row (this runner's endpoint) before the backend
    holds the run; a poll in between saw a job of this runner it did not hold and failed it as `worker_lost`
    (8 racing live-session creates lost one that way)."""
    from orchestrator.core.backends.base import Ownership
    from orchestrator.core.models import JobEvent

    settings = OrchestratorSettings(database_url=f"sqlite:///{tmp_path / 'jobs.db'}", poll_interval_s=0.05)
    local = LocalBackend(workers=1, settings=local_settings, run_task=dispatch_or_crash)
    service = JobService(settings, backends={"health": local})
    try:
        job = service.submit("health", {}, start=False)  # stored, not claimed
        claim = {"attempts": job.attempts + 1, **local.claim_values(job)}
        assert service.store.transition(job.id, JobEvent.claim, claim, where={"attempts": job.attempts})
        claimed = service.store.get(job.id)
        assert local.ownership(claimed) is Ownership.here
        assert service.lifecycle.refresh(claimed).status not in ("failed", "cancelled", "timed_out")
    finally:
        service.stop()
