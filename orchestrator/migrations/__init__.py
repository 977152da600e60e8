"""Alembic migrations of the job database (``orchestrator.schema`` runs them; ``avatarctl db upgrade``)."""
