"""Schema migrations (Alembic, ``orchestrator/core/migrations``): every JobStore upgrades its database at start.

Replicas starting together on PostgreSQL take a transaction-scoped advisory lock first, so exactly one of
them migrates and the others find the schema current; SQLite (one replica) upgrades plainly. A database
made by the last release without migrations (tables, no ``alembic_version``) is stamped with the first
revision, which is that schema, and upgraded from there. Deploy pipelines run ``avatarctl db upgrade``.
"""

from __future__ import annotations

import fcntl
import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from functools import cache
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, inspect, text
from sqlalchemy.engine import Engine

log = logging.getLogger(__name__)

MIGRATIONS_DIR = Path(__file__).parent / "migrations"
FIRST_REVISION = "0001"  # the schema of the last release made with metadata.create_all
MIGRATION_LOCK_KEY = 0x61766174_6172_6374  # 'avatarct': one advisory lock id for every replica
# Alembic's migration context is process-global: one migration at a time in this process.
_ALEMBIC_LOCK = threading.Lock()


def _config(connection: Connection | None = None) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.attributes["connection"] = connection
    return config


@cache
def head_revision() -> str:
    head = ScriptDirectory.from_config(_config()).get_current_head()
    assert head is not None, "orchestrator/core/migrations has no revision"
    return head


def current_revision(engine: Engine) -> str | None:
    """The database's revision (None: no alembic_version, a new or pre-migration database)."""
    with engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


def upgrade_schema(engine: Engine) -> str:
    """Bring the database to the newest revision (a no-op when it is there); returns that revision."""
    head = head_revision()
    if current_revision(engine) == head:
        return head
    with _ALEMBIC_LOCK, _sqlite_file_lock(engine), engine.begin() as conn:
        if conn.dialect.name == "postgresql":  # held until this transaction ends: one replica migrates
            conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": MIGRATION_LOCK_KEY})
        before = MigrationContext.configure(conn).get_current_revision()
        if before is None and inspect(conn).has_table("jobs"):
            log.info("job database made before migrations: stamping revision %s", FIRST_REVISION)
            command.stamp(_config(conn), FIRST_REVISION)
            before = FIRST_REVISION
        if before != head:
            log.info("migrating the job database from %s to %s", before or "an empty database", head)
            command.upgrade(_config(conn), "head")
    return head


@contextmanager
def _sqlite_file_lock(engine: Engine) -> Iterator[None]:
    """Processes migrating one SQLite file take turns (an flock on ``<file>.migrate.lock``)."""
    path = engine.url.database if engine.dialect.name == "sqlite" else None
    if not path or path == ":memory:":
        yield
        return
    with open(f"{path}.migrate.lock", "a+b") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
