"""Idempotency keys scoped per user: stored as ``{user_id}/{key}``, so the column holds a user id, a slash and
a 255-character key.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-06
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.alter_column("idempotency_key", type_=sa.String(330), existing_type=sa.String(255))


def downgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.alter_column("idempotency_key", type_=sa.String(255), existing_type=sa.String(330))
