"""Alembic migrations of the job database (``orchestrator.core.schema`` runs them; ``avatarctl db upgrade``)."""
