"""Tiny helpers over AsyncConnection.execute for `text()` statements with named parameters."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import TextClause
from sqlalchemy.ext.asyncio import AsyncConnection


async def rows(conn: AsyncConnection, stmt: TextClause, **params: Any) -> Sequence[Sequence[Any]]:
    return (await conn.execute(stmt, params)).all()


async def first(conn: AsyncConnection, stmt: TextClause, **params: Any) -> Sequence[Any] | None:
    return (await conn.execute(stmt, params)).first()


async def scalar(conn: AsyncConnection, stmt: TextClause, **params: Any) -> Any:
    return (await conn.execute(stmt, params)).scalar()


async def count(conn: AsyncConnection, stmt: TextClause, **params: Any) -> int:
    """Rows an INSERT/UPDATE/DELETE touched."""
    result = await conn.execute(stmt, params)
    return int(result.rowcount)
