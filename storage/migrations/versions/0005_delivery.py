"""delivery: the outgoing queue, broadcasts, and the update_ids already handled.

Revision ID: 0005
Revises: 0004
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # One row per message or edit the bot still owes a chat. `dedupe` is what coalesces:
    # `card:{order}` (only the latest state is rendered, at send time), `code:{code}`,
    # `bc:{broadcast}:{chat}`. `lease_until` is for several replicas later: a sender
    # claims a row with a guarded UPDATE ... WHERE lease_until IS NULL OR < now RETURNING.
    op.create_table(
        "outbox",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("chat_id", sa.BigInteger(), nullable=False),
        sa.Column("priority", sa.Integer(), nullable=False),
        sa.Column("kind", sa.Text(), nullable=False),
        sa.Column("ref", sa.BigInteger(), nullable=True),
        sa.Column("payload", sa.Text(), nullable=False, server_default="{}"),
        sa.Column("dedupe", sa.Text(), nullable=True),
        sa.Column("version", sa.Integer(), nullable=False, server_default="0"),
        sa.Column("created_at", sa.Float(), nullable=False),
        sa.Column("lease_until", sa.Float(), nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_outbox"),
        sa.UniqueConstraint("dedupe", name="uq_outbox_dedupe"),
        sqlite_autoincrement=True,  # ids never reused: the sender keys its index by them
    )
    op.create_index("ix_outbox_priority_id", "outbox", ["priority", "id"])
    op.create_table(
        "broadcasts",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("admin_chat_id", sa.BigInteger(), nullable=False),
        sa.Column("progress_message_id", sa.BigInteger(), nullable=True),
        sa.Column("text", sa.Text(), nullable=False),
        sa.Column("status", sa.Text(), nullable=False, server_default="running"),
        sa.Column("total", sa.Integer(), nullable=False, server_default="0"),
        sa.Column("sent", sa.Integer(), nullable=False, server_default="0"),
        sa.Column("blocked", sa.Integer(), nullable=False, server_default="0"),
        sa.Column("created_at", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_broadcasts"),
        sa.CheckConstraint(
            "status IN ('running', 'cancelled', 'done')", name="ck_broadcasts_status"
        ),
        sqlite_autoincrement=True,
    )
    op.create_table(
        "handled_updates",
        sa.Column("update_id", sa.BigInteger(), nullable=False),
        sa.Column("handled_at", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("update_id", name="pk_handled_updates"),
    )


def downgrade() -> None:
    op.drop_table("handled_updates")
    op.drop_table("broadcasts")
    op.drop_index("ix_outbox_priority_id", table_name="outbox")
    op.drop_table("outbox")
