"""``avatarctl db upgrade|current`` (schema migrations for deploy pipelines) and ``avatarctl work`` (a replica
without the HTTP API): registered on the main ``avatarctl`` app by ``add_replica_commands``."""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Annotated

import typer
from sqlalchemy.engine import Engine

from orchestrator.cli.console import err, handled_errors, out
from orchestrator.core.config import OrchestratorSettings
from orchestrator.core.db import make_engine, safe_url
from orchestrator.core.schema import current_revision, head_revision, upgrade_schema

log = logging.getLogger(__name__)

db_app = typer.Typer(help="The job database's schema (Alembic migrations).", no_args_is_help=True)


@contextmanager
def _database() -> Iterator[tuple[Engine, str]]:
    """An engine on DATABASE_URL and its URL without password; errors become one line and an exit code."""
    with handled_errors():
        settings = OrchestratorSettings()
        engine = make_engine(settings.database_url)
        try:
            yield engine, safe_url(settings.database_url)
        finally:
            engine.dispose()


@db_app.command("upgrade")
def db_upgrade() -> None:
    """Migrate DATABASE_URL to the newest schema revision (replicas also do this at start)."""
    with _database() as (engine, url):
        before = current_revision(engine)
        after = upgrade_schema(engine)
    moved = "already at" if before == after else f"upgraded from {before or 'an empty database'} to"
    out.print(f"{url}: {moved} revision {after} (head)", markup=False)


@db_app.command("current")
def db_current() -> None:
    """Print the database's schema revision and the newest one this version knows."""
    with _database() as (engine, url):
        revision = current_revision(engine)
    out.print(f"{url}: revision {revision or 'none'} (head {head_revision()})", markup=False)


def work(
    role: Annotated[str, typer.Option("--role", help="Name shown in /healthz and the replicas table.")] = "work",
) -> None:
    """Run as a replica without the HTTP API: submit, poll, time out and re-run jobs until SIGTERM or Ctrl-C."""
    from orchestrator.core.service import JobService

    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    with handled_errors():  # a second replica on a SQLite file is refused here (single_replica_database)
        settings = OrchestratorSettings()
        service = JobService(settings)
        service.replica.role = role
        service.start()
    err.print(f"replica {service.replica.id} working on {safe_url(settings.database_url)}", markup=False)
    try:
        stop.wait()
    finally:
        service.stop()


def add_replica_commands(app: typer.Typer) -> None:
    app.add_typer(db_app, name="db")
    app.command()(work)
