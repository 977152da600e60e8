"""The jobs table as the last release without migrations created it (``metadata.create_all``).

Revision ID: 0001
Revises:
Create Date: 2026-12-01
"""

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "jobs",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("task", sa.String(32), nullable=False),
        sa.Column("user_id", sa.String(64)),
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
    )
    op.create_index("ix_jobs_user_id", "jobs", ["user_id"])
    op.create_index("ix_jobs_status_created", "jobs", ["status", "created_at"])
    op.create_index("ix_jobs_task_created", "jobs", ["task", "created_at"])


def downgrade() -> None:
    op.drop_table("jobs")
