"""Tiny helpers over AsyncConnection.execute for `text()` statements with named parameters.

A plain `text()` statement that returns rows (a SELECT, or an INSERT/UPDATE ... RETURNING)
makes SQLAlchemy rebuild its result metadata from the cursor's description on every
execution (~50 µs for an order's 23 columns, most of a short statement's cost). The helpers
run each such statement as a TextualSelect (`text().columns()`) instead, built once from
the first result's column count, whose metadata SQLAlchemy caches with the compiled
statement. Rows are read by position.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import CursorResult, TextClause, TextualSelect, column
from sqlalchemy.ext.asyncio import AsyncConnection

_TYPED: dict[TextClause, TextualSelect] = {}


async def _execute(conn: AsyncConnection, stmt: TextClause, params: dict[str, Any]) -> Any:
    typed = _TYPED.get(stmt)
    if typed is not None:
        return await conn.execute(typed, params)
    result: CursorResult[Any] = await conn.execute(stmt, params)
    if result.returns_rows:
        names = [f"c{index}" for index in range(len(result.keys()))]  # rows are read by position
        _TYPED[stmt] = stmt.columns(*(column(name) for name in names))
    return result


async def rows(conn: AsyncConnection, stmt: TextClause, **params: Any) -> Sequence[Sequence[Any]]:
    return (await _execute(conn, stmt, params)).all()  # type: ignore[no-any-return]


async def first(conn: AsyncConnection, stmt: TextClause, **params: Any) -> Sequence[Any] | None:
    return (await _execute(conn, stmt, params)).first()  # type: ignore[no-any-return]


async def scalar(conn: AsyncConnection, stmt: TextClause, **params: Any) -> Any:
    return (await _execute(conn, stmt, params)).scalar()


async def count(conn: AsyncConnection, stmt: TextClause, **params: Any) -> int:
    """Rows an INSERT/UPDATE/DELETE touched."""
    result = await conn.execute(stmt, params)
    return int(result.rowcount)
