"""SQLite single-statement reads on one dedicated connection, one after another.

A read through the pool costs a checkout, a connection wrapper, a transaction object, a
task and a shield around one SELECT of ~30 µs; here one long-lived task owns one autocommit
connection and runs the queued reads in turn, so a read costs a future and its statement.
SQLite runs them on the connection's one thread anyway, and they never wait for writers
(WAL). A caller cancelled before its read started is skipped; one cancelled later just does
not see the answer (a SELECT in autocommit leaves nothing behind).
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any

from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

Query = Callable[[AsyncConnection], Awaitable[Any]]


class SerialReader:
    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine
        self._queue: deque[tuple[Query, asyncio.Future[Any]]] = deque()
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._stopping = False

    def submit(self, fn: Query) -> asyncio.Future[Any]:
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._queue.append((fn, future))
        if self._task is None:
            self._task = asyncio.ensure_future(self._run())
        self._wake.set()
        return future

    async def close(self) -> None:
        """Answer what is queued, then give the connection back."""
        self._stopping = True
        self._wake.set()
        if self._task is not None:
            await asyncio.shield(self._task)

    async def _run(self) -> None:
        try:
            async with self._engine.connect() as conn:
                while True:
                    while self._queue:
                        fn, future = self._queue.popleft()
                        if future.done():  # its caller was cancelled before it started
                            continue
                        try:
                            result = await fn(conn)
                            await conn.commit()  # no statement: ends SQLAlchemy's autobegin
                        except Exception as error:
                            await conn.rollback()
                            if not future.done():
                                future.set_exception(error)
                        else:
                            if not future.done():
                                future.set_result(result)
                    if self._stopping:
                        return
                    self._wake.clear()
                    await self._wake.wait()
        except BaseException as error:  # no connection, or the task itself was cancelled
            stopped: BaseException = error
            raise
        else:
            stopped = RuntimeError("the database reader stopped")
        finally:
            self._task = None
            for _fn, future in self._queue:
                if not future.done():
                    future.set_exception(stopped)
            self._queue.clear()
