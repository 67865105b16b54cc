"""payments: Telegram Stars top-ups, one row per telegram_payment_charge_id.

The money moves through the ledger (kinds credit/debit, keys stars:{charge_id},
stars-refund:{charge_id}:{n}, stars-restore:{charge_id}:{n}) in the same transaction as each
status move here, so the ledger's schema does not change.

Revision ID: 0004
Revises: 0003
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

_REFUNDING = sa.text("status = 'refunding'")


def upgrade() -> None:
    op.create_table(
        "payments",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            sa.Identity(always=False),
            nullable=False,
        ),
        sa.Column("charge_id", sa.Text(), nullable=False),
        sa.Column("user_id", sa.BigInteger(), nullable=False),
        sa.Column("stars", sa.Integer(), nullable=False),
        sa.Column("amount", sa.BigInteger(), nullable=False),
        sa.Column("currency", sa.Text(), nullable=False),
        sa.Column("payload", sa.Text(), nullable=False),
        sa.Column("source", sa.Text(), nullable=False),
        sa.Column("status", sa.Text(), nullable=False),
        sa.Column("refund_attempts", sa.Integer(), nullable=False, server_default="0"),
        sa.Column("created_at", sa.Double(), nullable=False),
        sa.Column("updated_at", sa.Double(), nullable=False),
        sa.Column("refund_seen_at", sa.Double(), nullable=True),  # Telegram reported the refund
        sa.PrimaryKeyConstraint("id", name="pk_payments"),
        sa.UniqueConstraint("charge_id", name="uq_payments_charge_id"),
        sa.ForeignKeyConstraint(["user_id"], ["users.id"], name="fk_payments_user_id_users"),
        sa.CheckConstraint("stars > 0", name="ck_payments_stars"),
        sa.CheckConstraint("amount > 0", name="ck_payments_amount"),
        sa.CheckConstraint("source IN ('update', 'reconciled')", name="ck_payments_source"),
        sa.CheckConstraint(
            "status IN ('credited', 'refunding', 'refunded')", name="ck_payments_status"
        ),
    )
    op.create_index("payments_user", "payments", ["user_id", "created_at"])
    op.create_index("payments_created", "payments", ["created_at"])
    op.create_index(
        "payments_refunding",
        "payments",
        ["updated_at"],
        sqlite_where=_REFUNDING,
        postgresql_where=_REFUNDING,
    )


def downgrade() -> None:
    op.drop_table("payments")
