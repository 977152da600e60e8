"""The orchestrator: a job store, backends (local, RunPod, Modal) and the JobService the API and CLI use.

It depends on the task contract (handlers.schemas), handlers.dispatch (local backend) and storage; it
never imports engines. Import submodules directly (``orchestrator.service``, ``orchestrator.emulator``).
"""
