"""Transactions run whole on the SQLite connection's own thread: one hop for many of them.

A repository transaction is `async def tx(conn)` that awaits nothing but its statements.
On SQLite, storage/group_commit.py and storage/reader.py hand a whole batch of them to the
connection's aiosqlite thread in one hop (`sqlite_driver.on_thread`); there each `tx` gets
an `InlineConnection`, whose statements execute synchronously, so its coroutine finishes in
ONE step (`finish`) instead of going back and forth to the event loop once per statement.

A transaction that awaits anything else (a sleep, an event, a lock, I/O) cannot run there:
it fails with `AwaitedInsideTransaction` naming it, and as any failing call, only its own
writes are undone. Nothing inside a SQLite transaction may wait for the rest of the program
anyway: it would hold the database's one write lock meanwhile.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, NoReturn, TypeVar

from sqlalchemy import CursorResult, Executable
from sqlalchemy.engine import Connection
from sqlalchemy.engine.interfaces import (
    CoreExecuteOptionsParameter,
    _CoreAnyExecuteParams,
    _DBAPIAnyExecuteParams,
)
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncTransaction
from sqlalchemy.pool import PoolProxiedConnection

T = TypeVar("T")


class AwaitedInsideTransaction(RuntimeError):
    """A SQLite transaction awaited something other than its statements."""


class InlineConnection(AsyncConnection):
    """The AsyncConnection a transaction sees on the connection's thread: each awaited
    statement has already run when the await returns (nothing is suspended)."""

    def __init__(self, conn: AsyncConnection) -> None:
        # Not registered as the sync connection's async proxy: `conn` stays that.
        self.engine = conn.engine
        self.sync_engine = conn.sync_engine
        self.sync_connection = conn.sync_connection

    @property
    def sync(self) -> Connection:
        return self._proxied

    async def execute(
        self,
        statement: Executable,
        parameters: _CoreAnyExecuteParams | None = None,
        *,
        execution_options: CoreExecuteOptionsParameter | None = None,
    ) -> CursorResult[Any]:
        return self._proxied.execute(statement, parameters, execution_options=execution_options)

    async def exec_driver_sql(
        self,
        statement: str,
        parameters: _DBAPIAnyExecuteParams | None = None,
        execution_options: CoreExecuteOptionsParameter | None = None,
    ) -> CursorResult[Any]:
        return self._proxied.exec_driver_sql(statement, parameters, execution_options)

    async def run_sync(self, fn: Callable[..., T], *arg: Any, **kw: Any) -> T:
        return fn(self._proxied, *arg, **kw)

    async def get_raw_connection(self) -> PoolProxiedConnection:
        return self._proxied.connection

    def begin(self) -> AsyncTransaction:
        return _InlineTransaction(self)

    async def commit(self) -> NoReturn:
        raise RuntimeError("a repository transaction is committed by its runner, not itself")

    async def rollback(self) -> NoReturn:
        raise RuntimeError("a repository transaction is rolled back by raising, not itself")


class _InlineTransaction(AsyncTransaction):
    """BEGIN (as SQLAlchemy's "begin" hook says) and COMMIT/ROLLBACK, called right here."""

    async def start(self, is_ctxmanager: bool = False) -> AsyncTransaction:
        self.sync_transaction = self.connection.sync_connection.begin()  # type: ignore[union-attr]
        if is_ctxmanager:
            self.sync_transaction.__enter__()
        return self

    async def __aexit__(self, type_: Any, value: Any, traceback: Any) -> None:
        self._proxied.__exit__(type_, value, traceback)

    async def commit(self) -> None:
        self._proxied.commit()

    async def rollback(self) -> None:
        self._proxied.rollback()


def finish(step: Awaitable[T], of: Callable[..., Any] | str) -> T:
    """Run `step` (awaiting only InlineConnection statements) to its end, now. `of`: the
    transaction function (or a name) to name in the error if it awaits anything else."""
    steps = step.__await__()
    try:
        waited_for = steps.send(None)
    except StopIteration as done:
        result: T = done.value
        return result
    except RuntimeError as error:
        if "event loop" in str(error):  # e.g. asyncio.sleep(0.1), a Lock, an Event
            error.add_note(_why(of))
        raise
    close = getattr(steps, "close", None)
    if close is not None:
        close()  # its `finally` blocks run; what it wrote is undone by the caller
    raise AwaitedInsideTransaction(f"{_why(of)} (it awaited {waited_for!r})")


def _why(of: Callable[..., Any] | str) -> str:
    if isinstance(of, str):
        name = of
    else:  # a partial or a callable object has no __qualname__
        name = f"{getattr(of, '__module__', '?')}.{getattr(of, '__qualname__', repr(of))}"
    return (
        f"the SQLite transaction {name} awaited something other than its statements;"
        " it runs on the database connection's thread, where nothing else can be awaited"
    )
