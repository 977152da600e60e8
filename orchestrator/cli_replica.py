"""``avatarctl db upgrade|current`` (schema migrations for deploy pipelines) and ``avatarctl work`` (a replica
without the HTTP API): registered on the main ``avatarctl`` app by ``add_replica_commands``."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import typer
from pydantic import ValidationError
from sqlalchemy.engine import Engine
from sqlalchemy.exc import SQLAlchemyError

from orchestrator.config import OrchestratorSettings
from orchestrator.console import err, out
from orchestrator.db import make_engine, normalize_url
from orchestrator.schema import current_revision, head_revision, upgrade_schema

EXIT_FAILED = 1
EXIT_BAD_INPUT = 2

db_app = typer.Typer(help="The job database's schema (Alembic migrations).", no_args_is_help=True)


def _settings() -> OrchestratorSettings:
    try:
        return OrchestratorSettings()
    except ValidationError as exc:
        err.print(f"error [invalid_settings]: {exc}", markup=False)
        raise typer.Exit(EXIT_BAD_INPUT) from None


def _safe_url(settings: OrchestratorSettings) -> str:
    return normalize_url(settings.database_url).render_as_string(hide_password=True)


@contextmanager
def _database(settings: OrchestratorSettings) -> Iterator[Engine]:
    """An engine on DATABASE_URL; a database error becomes one line and exit code 1."""
    engine = make_engine(settings.database_url)
    try:
        yield engine
    except SQLAlchemyError as exc:
        err.print(f"error [database_unavailable]: {_safe_url(settings)}: {type(exc).__name__}: {exc}", markup=False)
        raise typer.Exit(EXIT_FAILED) from None
    finally:
        engine.dispose()


@db_app.command("upgrade")
def db_upgrade() -> None:
    """Migrate DATABASE_URL to the newest schema revision (replicas also do this at start)."""
    settings = _settings()
    with _database(settings) as engine:
        before = current_revision(engine)
        after = upgrade_schema(engine)
    moved = "already at" if before == after else f"upgraded from {before or 'an empty database'} to"
    out.print(f"{_safe_url(settings)}: {moved} revision {after} (head)", markup=False)


@db_app.command("current")
def db_current() -> None:
    """Print the database's schema revision and the newest one this version knows."""
    settings = _settings()
    with _database(settings) as engine:
        revision = current_revision(engine)
    out.print(f"{_safe_url(settings)}: revision {revision or 'none'} (head {head_revision()})", markup=False)


def add_replica_commands(app: typer.Typer) -> None:
    app.add_typer(db_app, name="db")
