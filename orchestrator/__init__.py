"""The orchestrator: a job store, backends (local, RunPod, Modal), the HTTP API and the ``avatarctl`` CLI.

The folders say what runs in production:

- ``core/``: the job store, the job lifecycle and its drivers, the backends, live sessions, the JobService;
- ``api/``: the HTTP API around the service (the /v1 routes, live-session routes, the seeds' routes);
- ``cli/``: ``avatarctl`` (serve, work, submit, db, ...), which starts the API or a replica;
- ``devtools/``: the demo and the RunPod emulator, for developers only (no image ships them).

It depends on the task contract (handlers.schemas), handlers.dispatch (local backend) and storage; it never
imports engines. Import submodules directly (``orchestrator.core.service``, ``orchestrator.devtools.emulator``).
"""
