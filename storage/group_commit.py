"""SQLite write transactions, several per COMMIT (group commit).

With `synchronous=FULL` every COMMIT waits for an fsync of the WAL (~0.6-1.5 ms on the
project's disk), and SQLite runs one writer at a time anyway. So one writer task takes the
write calls queued meanwhile and runs them in ONE `BEGIN IMMEDIATE` transaction on its own
connection, each call after a `SAVEPOINT` of its own:

- a call that raises is rolled back to its savepoint: only its own writes are undone, the
  calls before and after it in the batch are untouched;
- one COMMIT (one fsync) ends the batch, and only after it succeeded is any caller told its
  result: what a caller sees as done is on disk. If the COMMIT fails, nothing of the batch
  was written and every caller whose call had succeeded gets that error;
- a lone call runs as a plain transaction (no savepoint), as before.

The calls of a batch run one after another on the writer task, never interleaved, so each
is still one whole transaction as far as anyone else can tell; the caller awaits a future
the writer resolves, so a cancelled caller cannot cut a call in half (the writer finishes it;
the caller just does not see the outcome).
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any

from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from storage.sqlite_driver import OneHopConnection

Tx = Callable[[AsyncConnection], Awaitable[Any]]

_SAVEPOINT = "SAVEPOINT call"

# A bound on how long the first caller of a batch waits for the others' statements.
MAX_BATCH = 32


class GroupCommit:
    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine
        self._queue: deque[tuple[Tx, asyncio.Future[Any]]] = deque()
        self._writer: asyncio.Task[None] | None = None

    def submit(self, fn: Tx) -> asyncio.Future[Any]:
        """Queue `fn`; the future resolves once its batch committed (or it failed)."""
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        future.add_done_callback(_retrieve)
        self._queue.append((fn, future))
        if self._writer is None:
            self._writer = asyncio.ensure_future(self._run())
        return future

    @property
    def busy(self) -> bool:
        return self._writer is not None

    async def drain(self) -> None:
        """Wait until every call queued so far has ended."""
        while self._writer is not None:
            await asyncio.shield(self._writer)

    async def _run(self) -> None:
        try:
            while self._queue:
                batch = [self._queue.popleft() for _ in range(min(MAX_BATCH, len(self._queue)))]
                await self._run_batch(batch)
        finally:
            self._writer = None
            if self._queue:  # the writer itself was cancelled: the rest must not hang
                for _fn, future in self._queue:
                    _settle(future, error=RuntimeError("the database writer stopped"))
                self._queue.clear()

    async def _run_batch(self, batch: list[tuple[Tx, asyncio.Future[Any]]]) -> None:
        outcomes: list[tuple[asyncio.Future[Any], Any, BaseException | None]] = []
        try:
            async with self._engine.begin() as conn:
                if len(batch) == 1:
                    fn, future = batch[0]
                    outcomes.append((future, await fn(conn), None))
                else:
                    for fn, future in batch:
                        outcomes.append(await _in_savepoint(conn, fn, future))
        except BaseException as error:  # the lone call's, or BEGIN/COMMIT/ROLLBACK TO failed
            # Nothing of the batch is written. A call that failed on its own says why; the
            # others (done, or never reached) get the batch's error.
            for future, _result, own in outcomes:
                if own is not None:
                    _settle(future, error=own)
            for _fn, future in batch:
                _settle(future, error=error)
            if not isinstance(error, Exception):
                raise
            return
        for future, result, own in outcomes:
            _settle(future, result=result, error=own)


async def _in_savepoint(
    conn: AsyncConnection, fn: Tx, future: asyncio.Future[Any]
) -> tuple[asyncio.Future[Any], Any, BaseException | None]:
    # One name for all: ROLLBACK TO goes to the newest savepoint of that name, which is
    # this call's; unreleased savepoints of earlier calls just end with the COMMIT.
    raw = (await conn.get_raw_connection()).dbapi_connection
    one_hop = raw if isinstance(raw, OneHopConnection) else None
    if one_hop is not None:
        one_hop.defer(_SAVEPOINT)  # goes with the call's first statement: one hop less
    else:
        await conn.exec_driver_sql(_SAVEPOINT)
    try:
        result = await fn(conn)
    except Exception as error:
        if one_hop is None or not one_hop.undefer(_SAVEPOINT):  # pending: nothing to undo
            await conn.exec_driver_sql("ROLLBACK TO call")
        return future, None, error
    return future, result, None


def _settle(future: asyncio.Future[Any], *, result: Any = None, error: Any = None) -> None:
    if future.done():
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(result)


def _retrieve(future: asyncio.Future[Any]) -> None:
    # A caller that was cancelled never looks at its future: mark the error as seen.
    if not future.cancelled():
        future.exception()
