"""Live sessions on the workers: the ``sessions`` table (state, control token hash, answer, heartbeat, end) and
``session_commands`` (what each session's worker is told to do and what it answered).

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-15
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "sessions",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("user_id", sa.String(64), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("job_id", sa.String(32)),
        sa.Column("backend", sa.String(16), nullable=False),
        sa.Column("token_hash", sa.String(64), nullable=False),
        sa.Column("answer", sa.Text()),
        sa.Column("engine", sa.JSON(none_as_null=True)),
        sa.Column("command_seq", sa.Integer(), nullable=False),
        sa.Column("stats", sa.JSON(none_as_null=True)),
        sa.Column("end_reason", sa.String(16)),
        sa.Column("error_code", sa.String(64)),
        sa.Column("error", sa.Text()),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("answered_at", sa.DateTime(timezone=True)),
        sa.Column("heartbeat_at", sa.DateTime(timezone=True)),
        sa.Column("ended_at", sa.DateTime(timezone=True)),
    )
    op.create_index("ix_sessions_status_user", "sessions", ["status", "user_id"])
    op.create_table(
        "session_commands",
        sa.Column("session_id", sa.String(32), primary_key=True),
        sa.Column("seq", sa.Integer(), primary_key=True),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("text", sa.Text()),
        sa.Column("voice", sa.JSON(none_as_null=True)),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("done_at", sa.DateTime(timezone=True)),
        sa.Column("duration_s", sa.Float()),
        sa.Column("error_code", sa.String(64)),
        sa.Column("error", sa.Text()),
    )


def downgrade() -> None:
    op.drop_table("session_commands")
    op.drop_index("ix_sessions_status_user", table_name="sessions")
    op.drop_table("sessions")
