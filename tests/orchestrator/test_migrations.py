"""Alembic migrations: new databases, databases the last release made without migrations, concurrent
replicas, and ``avatarctl db upgrade``."""

from __future__ import annotations

import threading
from datetime import datetime, timezone

import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from typer.testing import CliRunner

from orchestrator.cli.main import app
from orchestrator.core.db import Base, JobStore, make_engine
from orchestrator.core.schema import current_revision, head_revision


def pre_migration_metadata() -> sa.MetaData:
    """The jobs table exactly as the last release's ``Base.metadata.create_all`` made it."""
    metadata = sa.MetaData()
    sa.Table(
        "jobs",
        metadata,
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("task", sa.String(32), nullable=False),
        sa.Column("user_id", sa.String(64), index=True),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("backend", sa.String(16), nullable=False),
        sa.Column("endpoint", sa.String(255)),
        sa.Column("remote_id", sa.String(128)),
        sa.Column("input", sa.JSON(none_as_null=True), nullable=False),
        sa.Column("output", sa.JSON(none_as_null=True)),
        sa.Column("error", sa.Text()),
        sa.Column("error_code", sa.String(64)),
        sa.Column("progress", sa.JSON(none_as_null=True)),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("idempotency_key", sa.String(255), unique=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True)),
        sa.Column("finished_at", sa.DateTime(timezone=True)),
        sa.Column("deadline_at", sa.DateTime(timezone=True)),
        sa.Index("ix_jobs_status_created", "status", "created_at"),
        sa.Index("ix_jobs_task_created", "task", "created_at"),
    )
    return metadata


def schema_differences(engine: sa.Engine) -> list:
    with engine.connect() as conn:
        return compare_metadata(MigrationContext.configure(conn), Base.metadata)


def test_a_new_database_is_migrated_to_head_and_matches_the_models(db_url):
    store = JobStore(db_url)
    try:
        assert current_revision(store.engine) == head_revision()
        assert schema_differences(store.engine) == []
    finally:
        store.close()


def test_a_database_made_before_migrations_is_upgraded_and_keeps_its_jobs(db_url):
    engine = make_engine(db_url)
    pre_migration_metadata().create_all(engine)
    naive = db_url.startswith("sqlite")
    created = datetime(2026, 11, 30, 12, 0, tzinfo=timezone.utc)
    with engine.begin() as conn:
        conn.execute(
            sa.text(
                "INSERT INTO jobs (id, task, status, backend, input, attempts, idempotency_key, created_at, updated_at)"
                " VALUES ('j1', 'health', 'completed', 'local', '{\"task\": \"health\"}', 1, 'k1', :at, :at)"
            ),
            {"at": created.replace(tzinfo=None) if naive else created},
        )
    assert current_revision(engine) is None

    store = JobStore(db_url)
    try:
        assert current_revision(store.engine) == head_revision()
        assert schema_differences(store.engine) == []
        job = store.get_by_idempotency_key("k1")
        assert job is not None and job.id == "j1" and job.status == "completed" and job.created_at == created
    finally:
        store.close()
        engine.dispose()


def test_replicas_starting_together_migrate_once(db_url):
    errors: list[BaseException] = []
    stores: list[JobStore] = []

    def start() -> None:
        try:
            stores.append(JobStore(db_url))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=start) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    try:
        assert errors == [] and len(stores) == 4
        assert current_revision(stores[0].engine) == head_revision()
    finally:
        for store in stores:
            store.close()


def test_avatarctl_db_upgrade_migrates_and_reports_the_revision(db_url, monkeypatch):
    monkeypatch.setenv("DATABASE_URL", db_url)
    runner = CliRunner()
    first = runner.invoke(app, ["db", "upgrade"])
    assert first.exit_code == 0, first.output
    assert f"upgraded from an empty database to revision {head_revision()}" in first.output
    again = runner.invoke(app, ["db", "upgrade"])
    assert again.exit_code == 0 and f"already at revision {head_revision()}" in again.output
    current = runner.invoke(app, ["db", "current"])
    assert current.exit_code == 0 and f"revision {head_revision()} (head {head_revision()})" in current.output


def test_avatarctl_db_upgrade_names_an_unreachable_database(monkeypatch):
    monkeypatch.setenv("DATABASE_URL", "postgresql+psycopg://u:secret@127.0.0.1:9/none?connect_timeout=2")
    result = CliRunner().invoke(app, ["db", "upgrade"])
    assert result.exit_code == 1
    assert "database_unreachable" in result.output and "secret" not in result.output
