"""SQLite single-statement reads on one dedicated connection, one after another.

A read through the pool costs a checkout, a connection wrapper, a transaction object, a
task and a shield around one SELECT of ~30 µs; here one long-lived task owns one autocommit
connection and runs the queued reads in turn, so a read costs a future and its statement.
SQLite runs them on the connection's one thread anyway, and they never wait for writers
(WAL). All the reads queued meanwhile go to that thread in ONE hop and run there inline
(storage/inline.py). A caller cancelled before its read started is skipped; one cancelled
later just does not see the answer (a SELECT in autocommit leaves nothing behind).
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Awaitable, Callable
from functools import partial
from typing import Any

from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from storage.inline import InlineConnection, finish
from storage.sqlite_driver import OneHopConnection, on_thread

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
        reads: list[tuple[Query, asyncio.Future[Any]]] = []
        try:
            async with self._engine.connect() as conn:
                answer_all = await _answerer(conn)
                while True:
                    while self._queue:
                        reads = list(self._queue)
                        self._queue.clear()
                        answers = await answer_all(reads)
                        for (_fn, future), (result, error) in zip(reads, answers, strict=True):
                            if future.done():  # cancelled: the caller is gone
                                continue
                            if error is not None:
                                future.set_exception(error)
                            else:
                                future.set_result(result)
                        reads = []
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
            for _fn, future in [*reads, *self._queue]:
                if not future.done():
                    future.set_exception(stopped)
            self._queue.clear()


_Answer = tuple[Any, Exception | None]
_SKIPPED: _Answer = (None, None)
_Reads = list[tuple[Query, asyncio.Future[Any]]]


async def _answerer(conn: AsyncConnection) -> Callable[[_Reads], Awaitable[list[_Answer]]]:
    """How a batch of reads is answered: in one hop to the connection's thread, or (with
    SQLAlchemy's own adapter) one awaited statement at a time."""
    raw = (await conn.get_raw_connection()).dbapi_connection
    if isinstance(raw, OneHopConnection):
        one_hop, inline = raw, InlineConnection(conn)

        async def in_one_hop(reads: _Reads) -> list[_Answer]:
            return await on_thread(one_hop, partial(_answer_inline, inline, reads))

        return in_one_hop

    async def one_by_one(reads: _Reads) -> list[_Answer]:
        return [await _answer(conn, fn, future) for fn, future in reads]

    return one_by_one


def _answer_inline(conn: InlineConnection, reads: _Reads) -> list[_Answer]:
    """On the connection's thread: every queued read, one after another. One SQLAlchemy
    transaction around them all is only bookkeeping (this connection never BEGINs: each
    SELECT is its own snapshot), so a read's failure leaves nothing for the next."""
    answers = []
    with conn.sync.begin():
        for fn, future in reads:
            if future.done():  # its caller was cancelled before it started
                answers.append(_SKIPPED)
                continue
            try:
                answers.append((finish(fn(conn), fn), None))
            except Exception as error:
                answers.append((None, error))
    return answers


async def _answer(conn: AsyncConnection, fn: Query, future: asyncio.Future[Any]) -> _Answer:
    if future.done():
        return _SKIPPED
    try:
        result = await fn(conn)
    except Exception as error:
        await conn.rollback()
        return None, error
    await conn.commit()
    return result, None
