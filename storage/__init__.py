"""Storage on SQLite or PostgreSQL (SQLAlchemy Core): the only place in the project with SQL.

Open with `db = await Database.open(settings.database_url)`, use the repositories
(`db.users`, `db.orders`, `db.codes`, `db.wallet`, `db.kv`, `db.stats`), `await db.close()`.
"""

from storage.db import Database
from storage.errors import (
    DuplicateOrder,
    InsufficientFunds,
    InvalidAmount,
    MigrationError,
    StorageError,
    TooManyActiveOrders,
    TooManyRecentOrders,
    UserBanned,
)
from storage.orders import TRANSITIONS
from storage.stats import Summary

__all__ = [
    "TRANSITIONS",
    "Database",
    "DuplicateOrder",
    "InsufficientFunds",
    "InvalidAmount",
    "MigrationError",
    "StorageError",
    "Summary",
    "TooManyActiveOrders",
    "TooManyRecentOrders",
    "UserBanned",
]
