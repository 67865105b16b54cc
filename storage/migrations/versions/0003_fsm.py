"""fsm: aiogram FSM state and data per conversation (when REDIS_URL is empty).

Revision ID: 0003
Revises: 0002
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "fsm",
        sa.Column("key", sa.Text(), nullable=False),
        sa.Column("state", sa.Text(), nullable=True),
        sa.Column("data", sa.Text(), nullable=False, server_default="{}"),
        sa.PrimaryKeyConstraint("key", name="pk_fsm"),
    )


def downgrade() -> None:
    op.drop_table("fsm")
