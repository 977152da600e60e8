"""What runs in production: the job store and its schema, the job lifecycle and its drivers (poller, webhooks,
leases, replicas), the backends, live sessions, the JobService the API and CLI use, metrics and events.

Never imports ``orchestrator.api``, ``orchestrator.cli`` or ``orchestrator.devtools``.
"""
