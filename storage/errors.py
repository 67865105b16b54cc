"""Business errors the repositories raise. Nothing here mentions SQL."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from storage.models import Order


class StorageError(Exception):
    """Base class of every error this package raises on purpose."""


class InsufficientFunds(StorageError):
    """The user's available balance is below the amount; nothing was changed."""

    def __init__(self, available: int) -> None:
        self.available = available
        super().__init__(f"insufficient funds: {available} available")


class TooManyActiveOrders(StorageError):
    """The user already has `limit` orders in purchasing/waiting."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        super().__init__(f"too many active orders (limit {limit})")


class TooManyRecentOrders(StorageError):
    """The user created `limit` orders in the last minute already."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        super().__init__(f"too many orders in a minute (limit {limit})")


class DuplicateOrder(StorageError):
    """An order with this idempotency key exists already: it is attached."""

    def __init__(self, order: Order) -> None:
        self.order = order
        super().__init__(f"duplicate order: {order.idempotency_key!r} is order {order.id}")


class UserBanned(StorageError):
    """The user is banned: no new orders."""


class InvalidAmount(StorageError, ValueError):
    """An amount or price that is not allowed (zero or negative where positive is needed)."""


class MigrationError(StorageError):
    """The migrations on disk are inconsistent, or the database is newer than this code."""


class DatabaseUnavailable(StorageError):
    """The database could not be reached or refused the connection (at start)."""
