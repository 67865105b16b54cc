"""Alembic environment: always given a connection by storage.migrate (in-package scripts).

New revisions: `alembic -c storage/migrations/alembic.ini revision -m "what"`; write them
in batch mode (`with op.batch_alter_table(...)`) so they run on SQLite too, and name every
constraint (NAMING_CONVENTION) so a later batch migration can drop it.
"""

from __future__ import annotations

from alembic import context
from sqlalchemy import MetaData

NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}
target_metadata = MetaData(naming_convention=NAMING_CONVENTION)

connection = context.config.attributes.get("connection")
if connection is None:
    raise RuntimeError("storage migrations run through storage.migrate (Database.open)")
context.configure(
    connection=connection,
    target_metadata=target_metadata,
    render_as_batch=True,
    transaction_per_migration=False,
)
with context.begin_transaction():
    context.run_migrations()
