"""Alembic's environment: migrations run on the connection ``orchestrator.core.schema`` hands over (the one that
holds the migration lock), or on DATABASE_URL when run through the ``alembic`` command."""

from alembic import context

from orchestrator.core.config import OrchestratorSettings
from orchestrator.core.db import Base, make_engine


def run_migrations(connection) -> None:  # type: ignore[no-untyped-def]
    # Batch mode lets SQLite alter tables (it copies them); PostgreSQL alters in place.
    context.configure(connection=connection, target_metadata=Base.metadata, render_as_batch=True)
    with context.begin_transaction():
        context.run_migrations()


connection = context.config.attributes.get("connection")
if connection is not None:
    run_migrations(connection)
else:
    engine = make_engine(context.config.get_main_option("sqlalchemy.url") or OrchestratorSettings().database_url)
    with engine.begin() as conn:
        run_migrations(conn)
    engine.dispose()
