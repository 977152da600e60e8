"""Live-session commands that play a speech file (``audio``: its URI in the store) or are queued after the speech
playing instead of cutting it off (``queued``): LiveTalking's ``/humanaudio`` and ``/human`` without ``interrupt``.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-07
"""

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("session_commands") as batch:
        batch.add_column(sa.Column("audio", sa.Text()))
        batch.add_column(sa.Column("queued", sa.Boolean(), nullable=False, server_default=sa.false()))


def downgrade() -> None:
    with op.batch_alter_table("session_commands") as batch:
        batch.drop_column("queued")
        batch.drop_column("audio")
