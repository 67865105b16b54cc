"""leases: which replica polls an open order and sends a queued message, and who is alive.

Revision ID: 0006
Revises: 0005
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

_OPEN = "status IN ('waiting', 'received')"


def upgrade() -> None:
    # A lease is (lease_owner, lease_until): a replica's id and the time (epoch seconds)
    # it lasts to unless renewed; NULL or past: anyone may take it (storage/leases.py).
    # Plain ADD COLUMNs (batch mode does not rebuild the tables for them on SQLite).
    with op.batch_alter_table("orders") as batch:
        batch.add_column(sa.Column("lease_owner", sa.Text(), nullable=True))
        batch.add_column(sa.Column("lease_until", sa.Float(), nullable=True))
    with op.batch_alter_table("outbox") as batch:
        batch.add_column(sa.Column("lease_owner", sa.Text(), nullable=True))
    # The renewal (one UPDATE per round, WHERE lease_owner = me) and the claim (the open
    # orders whose lease is free) both read the open orders only.
    op.create_index(
        "orders_lease",
        "orders",
        ["lease_owner"],
        sqlite_where=sa.text(_OPEN),
        postgresql_where=sa.text(_OPEN),
    )
    op.create_index("ix_outbox_lease_owner", "outbox", ["lease_owner"])
    # One row per running replica, its heartbeat renewed with its leases: the live ones
    # share the open orders out fairly.
    op.create_table(
        "replicas",
        sa.Column("id", sa.Text(), nullable=False),
        sa.Column("started_at", sa.Float(), nullable=False),
        sa.Column("alive_until", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_replicas"),
    )


def downgrade() -> None:
    op.drop_table("replicas")
    op.drop_index("ix_outbox_lease_owner", table_name="outbox")
    op.drop_index("orders_lease", table_name="orders")
    with op.batch_alter_table("outbox") as batch:
        batch.drop_column("lease_owner")
    with op.batch_alter_table("orders") as batch:
        batch.drop_column("lease_until")
        batch.drop_column("lease_owner")
