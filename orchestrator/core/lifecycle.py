"""``JobLifecycle``: moves jobs through the transition table (``models.TRANSITIONS``) as backends report.

Every change is one event applied by ``JobStore.transition`` (a compare-and-set on the row), so racing
pollers, webhook replays and late results are harmless. What differs between backends is asked of the
backend (``ownership``, ``claim_values``, ``cheap_status``), never decided from its kind here.

- ``submit``: claim the job (``attempts + 1``; one process wins) and hand it to its backend, sending the
  original payload (``JobView.payload``), never the masked copy callers see.
- ``refresh``: deadline first; a job whose runner is gone runs again (up to MAX_ATTEMPTS runs, then
  ``orchestrator_restarted``); a remote job whose submit was interrupted is never resent but left to its
  webhook or failed with ``submit_uncertain``; otherwise the backend's status is applied.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import timedelta
from typing import Any

from errors import error_body
from orchestrator.core.backends import (
    Backend,
    BackendError,
    Ownership,
    RemoteState,
    RemoteStatus,
    Submission,
    SubmitUncertain,
)
from orchestrator.core.config import OrchestratorSettings
from orchestrator.core.db import JobStore, utcnow
from orchestrator.core.models import SINGLE_RUN_TASKS, JobEvent, JobNotFound, JobStatus, JobView

log = logging.getLogger(__name__)

SUBMIT_GRACE_S = 300.0  # a claimed job with no remote id for this long was interrupted mid-submit
UNCLAIMED_PICKUP_S = 5.0  # a new job is left this long to the submit() that created it before a poller takes it
# RunPod's own TTL ends a minute after our deadline: the orchestrator decides (and cancels); the TTL
# only cleans up when no orchestrator is left to do it.
REMOTE_TTL_GRACE_S = 60.0
MAX_ERROR_CODE_CHARS = 64  # the jobs.error_code column
ENDINGS = {
    RemoteState.completed: JobEvent.complete,
    RemoteState.failed: JobEvent.fail,
    RemoteState.cancelled: JobEvent.cancel,
    RemoteState.timed_out: JobEvent.time_out,
    RemoteState.lost: JobEvent.fail,
}
DEFAULT_ERROR_CODES = {
    RemoteState.failed: "remote_failed",
    RemoteState.cancelled: "cancelled",
    RemoteState.timed_out: "timeout",
    RemoteState.lost: "remote_job_lost",
}


class JobLifecycle:
    """The state machine's driver for the jobs in ``store``; ``backend_of(job)`` names each job's backend."""

    def __init__(
        self,
        store: JobStore,
        settings: OrchestratorSettings,
        backend_of: Callable[[JobView], Backend],
        webhook_url: Callable[[str], str | None],
        notify: Callable[[str], None],
    ) -> None:
        self.store = store
        self.settings = settings
        self.backend_of = backend_of
        self.webhook_url = webhook_url
        self.notify = notify

    def get(self, job_id: str) -> JobView:
        job = self.store.get(job_id)
        if job is None:
            raise JobNotFound(job_id)
        return job

    def queued_limit_s(self, task: str) -> float:
        return self.settings.queue_timeout_s + self.settings.timeout_for(task)

    # ---- submit -----------------------------------------------------------------------------

    def submit(self, job: JobView) -> JobView:
        """Claim the job (one process wins) and hand its original payload to its backend."""
        backend = self.backend_of(job)
        claim = {"attempts": job.attempts + 1, **backend.claim_values(job)}
        if "remote_id" in claim:  # a run that starts over gets a fresh queue deadline
            claim["deadline_at"] = utcnow() + timedelta(seconds=self.queued_limit_s(job.task))
        if not self.store.transition(job.id, JobEvent.claim, claim, where={"attempts": job.attempts}):
            return self.get(job.id)
        try:
            submission = Submission(
                job.task,
                job.payload,
                job.id,
                timeout_s=self.settings.timeout_for(job.task),
                webhook_url=self.webhook_url(job.id),
                ttl_s=self.queued_limit_s(job.task) + REMOTE_TTL_GRACE_S,
            )
            remote_id = backend.submit(submission)
        except SubmitUncertain as exc:
            return self._submit_uncertain(job, exc.message)
        except BackendError as exc:
            return self.finish(job, JobEvent.fail, error=exc.message, error_code=exc.code)
        if remote_id != claim.get("remote_id"):
            self._record_remote_id(job, backend, remote_id)
        self.notify(job.id)
        return self.get(job.id)

    def _record_remote_id(self, job: JobView, backend: Backend, remote_id: str) -> None:
        if self.store.transition(job.id, JobEvent.submitted, {"remote_id": remote_id}, where={"remote_id": None}):
            return
        if self.get(job.id).remote_id != remote_id:  # (its webhook may have recorded it first: then all is well)
            log.info("job %s ended while it was being submitted; cancelling remote %s", job.id, remote_id)
            cancel_remote(backend, remote_id)

    def _submit_uncertain(self, job: JobView, message: str) -> JobView:
        if self.webhook_url(job.id):
            log.warning("job %s: submit outcome unknown; waiting for its webhook (%s)", job.id, message)
            note = error_body("submit_uncertain", f"{message} Not resent; waiting for its webhook.")
            self.store.transition(job.id, JobEvent.submitted, note)
            return self.get(job.id)
        error = f"{message} Not resent, to avoid running it twice."
        return self.finish(job, JobEvent.fail, error=error, error_code="submit_uncertain")

    # ---- state changes ----------------------------------------------------------------------

    def end(self, job: JobView, event: JobEvent, **values: Any) -> bool:
        """Move an active job to a final status; False when it had already finished."""
        values = {"finished_at": utcnow(), **values}
        if event is JobEvent.complete:
            values.update(error=None, error_code=None)
        if not self.store.transition(job.id, event, values):
            return False
        log.info("job %s: %s%s", job.id, event.value, f": {values.get('error')}" if values.get("error") else "")
        self.notify(job.id)
        return True

    def finish(self, job: JobView, event: JobEvent, **values: Any) -> JobView:
        self.end(job, event, **values)
        return self.get(job.id)

    def apply(self, job: JobView, remote: RemoteStatus) -> JobView:
        """Record what the backend reports about a job."""
        state = remote.state
        if state is RemoteState.completed:
            return self.finish(job, JobEvent.complete, output=remote.output, progress=remote.progress)
        if state in ENDINGS:
            error = remote.error or f"The job ended as {state.value} on {job.backend}."
            code = (remote.error_code or DEFAULT_ERROR_CODES[state])[:MAX_ERROR_CODE_CHARS]  # a worker's own code
            return self.finish(job, ENDINGS[state], error=error, error_code=code)
        changed = False
        if state is RemoteState.running and job.status == JobStatus.queued.value:
            now = utcnow()
            limit = timedelta(seconds=self.settings.timeout_for(job.task))
            values = {"started_at": now, "deadline_at": now + limit, "progress": remote.progress}
            changed = self.store.transition(job.id, JobEvent.start, values)
        elif remote.progress is not None and remote.progress != job.progress:
            changed = self.store.transition(job.id, JobEvent.progress, {"progress": remote.progress})
        if changed:
            self.notify(job.id)
        return self.get(job.id)

    def report(self, job_id: str, remote: RemoteStatus) -> JobView | None:
        """A backend's push about a job it runs (a local runner's start, progress or result), applied at once as
        a webhook's is; ignored once the job has finished or when it is no longer this backend's run."""
        job = self.store.get(job_id)
        if job is None or job.finished or self.backend_of(job).ownership(job) is not Ownership.here:
            return job
        return self.apply(job, remote)

    def time_out(self, job: JobView) -> JobView:
        limit = self.settings.timeout_for(job.task)
        if job.status == JobStatus.running.value:
            message = f"The job ran longer than its {limit:g} s limit and was stopped."
        else:
            message = f"The job did not finish within {self.queued_limit_s(job.task):g} s of being queued."
        if self.end(job, JobEvent.time_out, error=message, error_code="timeout"):
            self.cancel_remotely(job)
        return self.get(job.id)

    def cancel(self, job: JobView) -> JobView:
        if self.end(job, JobEvent.cancel, error="Cancelled by request.", error_code="cancelled"):
            self.cancel_remotely(job)
        return self.get(job.id)

    def cancel_remotely(self, job: JobView) -> None:
        backend = self.backend_of(job)
        if job.remote_id and backend.ownership(job) is Ownership.here:
            cancel_remote(backend, job.remote_id)

    # ---- refresh ----------------------------------------------------------------------------

    def refresh(self, job: JobView, *, adopted: bool = False) -> JobView:
        """Bring one job up to date with its backend now. ``adopted``: this process leased the job from no one
        or from a dead replica, so nobody else is submitting it: a never-claimed job is submitted at once, and
        one whose submit was interrupted is settled without waiting SUBMIT_GRACE_S for it."""
        if job.finished:
            return job
        if job.deadline_at and utcnow() >= job.deadline_at:
            return self.time_out(job)
        if job.attempts == 0:
            if not (adopted or _unclaimed_for_long(job)):
                return job
            return self._never_submitted(job) if job.task in SINGLE_RUN_TASKS else self.submit(job)
        backend = self.backend_of(job)
        ownership = backend.ownership(job)
        if ownership is Ownership.elsewhere:
            return job  # another live process runs it
        if ownership is Ownership.gone:
            return self._run_again(job)
        if job.remote_id is None:
            return self._advance_unsubmitted(job, adopted)
        try:
            remote = backend.status(job.remote_id)
        except BackendError as exc:
            log.warning("job %s: status unavailable (%s); will retry", job.id, exc.message)
            return job
        return self.apply(job, remote)

    def _never_submitted(self, job: JobView) -> JobView:
        message = f"The orchestrator that created this {job.task} job stopped before submitting it."
        return self.finish(job, JobEvent.fail, error=message, error_code="orchestrator_restarted")

    def _run_again(self, job: JobView) -> JobView:
        if job.task in SINGLE_RUN_TASKS:
            message = f"The process that ran this {job.task} job is gone; it is not run again."
            return self.finish(job, JobEvent.fail, error=message, error_code="worker_lost")
        if job.attempts >= self.settings.max_attempts:
            return self.finish(
                job,
                JobEvent.fail,
                error=f"The orchestrator restarted while running locally; gave up after {job.attempts} runs.",
                error_code="orchestrator_restarted",
            )
        log.warning("job %s: its local runner %s is gone; running it again", job.id, job.endpoint)
        return self.submit(job)

    def _advance_unsubmitted(self, job: JobView, adopted: bool) -> JobView:
        if job.error_code == "submit_uncertain":
            return job  # waiting for its webhook, or for its deadline
        if not adopted and (utcnow() - job.updated_at).total_seconds() < SUBMIT_GRACE_S:
            return job  # a submit may be in flight somewhere
        return self._submit_uncertain(job, "The orchestrator stopped while submitting this job.")


def _unclaimed_for_long(job: JobView) -> bool:
    """A job never claimed is normally submitted by the call that created it, within moments."""
    return (utcnow() - job.created_at).total_seconds() >= UNCLAIMED_PICKUP_S


def cancel_remote(backend: Backend, remote_id: str) -> None:
    try:
        backend.cancel(remote_id)
    except BackendError as exc:
        log.warning("cancelling %s on %s failed: %s", remote_id, backend.spec, exc.message)
