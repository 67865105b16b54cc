"""Drop orders_due: the poller schedules orders in memory, nothing reads next_poll_at.

Revision ID: 0002
Revises: 0001
"""

from __future__ import annotations

from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.drop_index("orders_due", table_name="orders")


def downgrade() -> None:
    op.create_index(
        "orders_due",
        "orders",
        ["next_poll_at"],
        sqlite_where="status = 'waiting' OR (status = 'received' AND want_more = 1)",
        postgresql_where="status = 'waiting' OR (status = 'received' AND want_more = 1)",
    )
