"""SQLite write transactions, several per COMMIT (group commit), one thread hop per batch.

With `synchronous=FULL` every COMMIT waits for an fsync of the WAL, and SQLite runs one
writer at a time anyway. So one writer task, on one connection of its own, takes the write
calls queued meanwhile and runs them in ONE `BEGIN IMMEDIATE` transaction, each call after a
`SAVEPOINT` of its own:

- a call that raises is rolled back to its savepoint: only its own writes are undone, the
  calls before and after it in the batch are untouched;
- one COMMIT (one fsync) ends the batch, and only after it succeeded is any caller told its
  result: what a caller sees as done is on disk. If the COMMIT fails, nothing of the batch
  was written and every caller whose call had succeeded gets that error;
- a lone call runs as a plain transaction (no savepoint).

The whole batch, BEGIN to COMMIT, runs in one hop on the connection's aiosqlite thread, each
call's coroutine finishing there in one step (storage/inline.py): a call may await only its
statements. The calls of a batch run one after another, never interleaved, so each is still
one whole transaction as far as anyone else can tell. The caller awaits a future the writer
resolves after the COMMIT; a cancelled caller cannot cut its call in half (the writer runs
every queued call whole; the caller just does not see the outcome).
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any

from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from storage.engine import WRITE_BEGIN
from storage.inline import InlineConnection, finish
from storage.sqlite_driver import OneHopConnection, on_thread

Tx = Callable[[AsyncConnection], Awaitable[Any]]
Batch = list[tuple[Tx, asyncio.Future[Any]]]
Outcomes = list[tuple[asyncio.Future[Any], Any, BaseException | None]]
Runner = Callable[[Batch, Outcomes], Awaitable[None]]

_SAVEPOINT = "SAVEPOINT call"

# A bound on how long the first caller of a batch waits for the others' statements.
MAX_BATCH = 32


class GroupCommit:
    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine
        self._queue: deque[tuple[Tx, asyncio.Future[Any]]] = deque()
        self._writer: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._stopping = False

    def submit(self, fn: Tx) -> asyncio.Future[Any]:
        """Queue `fn`; the future resolves once its batch committed (or it failed). The
        call runs whole even if the future is cancelled meanwhile (its caller gave up)."""
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        future.add_done_callback(_retrieve)
        self._queue.append((fn, future))
        self._idle.clear()
        if self._writer is None:
            self._writer = asyncio.ensure_future(self._run())
        self._wake.set()
        return future

    @property
    def busy(self) -> bool:
        return not self._idle.is_set()

    async def drain(self) -> None:
        """Wait until every call queued so far has ended."""
        await self._idle.wait()

    async def close(self) -> None:
        """Run what is queued, then give the connection back."""
        self._stopping = True
        self._wake.set()
        if self._writer is not None:
            await asyncio.shield(self._writer)

    async def _run(self) -> None:
        """The writer: one task on one connection while there is work, asleep in between."""
        stopped: BaseException | None = None
        try:
            async with self._engine.connect() as conn:
                run = await _runner(conn)
                while True:
                    while self._queue:
                        size = min(MAX_BATCH, len(self._queue))
                        if not await _run_batch(run, [self._queue.popleft() for _ in range(size)]):
                            return  # BEGIN or COMMIT failed: the rest on a fresh connection
                    self._idle.set()
                    if self._stopping:
                        return
                    self._wake.clear()
                    await self._wake.wait()
        except BaseException as error:  # no connection, or the writer itself was cancelled
            stopped = error
            raise
        finally:
            self._writer = None
            if self._queue and stopped is None and not self._stopping:
                self._writer = asyncio.ensure_future(self._run())
            else:
                for _fn, future in self._queue:  # nobody will run them: they must not hang
                    _settle(future, error=stopped or RuntimeError("the database writer stopped"))
                self._queue.clear()
                self._idle.set()


async def _run_batch(run: Runner, batch: Batch) -> bool:
    """Run and settle one batch. False if it failed as a whole (BEGIN, COMMIT)."""
    outcomes: Outcomes = []
    try:
        await run(batch, outcomes)
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
        return len(batch) == 1 and len(outcomes) == 0  # a lone call's own error: all fine
    for future, result, own in outcomes:
        _settle(future, result=result, error=own)
    return True


async def _runner(conn: AsyncConnection) -> Runner:
    """How a batch runs on `conn`: in one hop to its thread, or (with SQLAlchemy's own
    aiosqlite adapter) one awaited statement at a time."""
    raw = (await conn.get_raw_connection()).dbapi_connection
    if isinstance(raw, OneHopConnection):
        one_hop, inline = raw, InlineConnection(conn)

        async def in_one_hop(batch: Batch, outcomes: Outcomes) -> None:
            def work() -> None:
                finish(_batch(inline, batch, outcomes, _in_one_step), "the write batch")

            await on_thread(one_hop, work)

        return in_one_hop

    async def awaited(batch: Batch, outcomes: Outcomes) -> None:
        await _batch(conn, batch, outcomes, _awaited)

    return awaited


Call = Callable[[Tx, AsyncConnection], Awaitable[Any]]


async def _awaited(fn: Tx, conn: AsyncConnection) -> Any:
    return await fn(conn)


async def _in_one_step(fn: Tx, conn: AsyncConnection) -> Any:
    return finish(fn(conn), fn)


async def _batch(conn: AsyncConnection, batch: Batch, outcomes: Outcomes, call: Call) -> None:
    """BEGIN IMMEDIATE, the calls (a SAVEPOINT each unless alone), COMMIT. A lone call's
    error, or the batch's, propagates; a call's own error in a batch goes to `outcomes`."""
    async with conn.begin():
        raw = (await conn.get_raw_connection()).dbapi_connection
        if isinstance(raw, OneHopConnection):
            raw.defer(WRITE_BEGIN)  # goes with the first statement (none: nothing to commit)
        else:
            await conn.exec_driver_sql(WRITE_BEGIN)
        if len(batch) == 1:
            fn, future = batch[0]
            outcomes.append((future, await call(fn, conn), None))
        else:
            for fn, future in batch:
                outcomes.append(await _in_savepoint(conn, fn, future, call))


async def _in_savepoint(
    conn: AsyncConnection, fn: Tx, future: asyncio.Future[Any], call: Call
) -> tuple[asyncio.Future[Any], Any, BaseException | None]:
    # One name for all: ROLLBACK TO goes to the newest savepoint of that name, which is
    # this call's; unreleased savepoints of earlier calls just end with the COMMIT.
    raw = (await conn.get_raw_connection()).dbapi_connection
    one_hop = raw if isinstance(raw, OneHopConnection) else None
    if one_hop is not None:
        one_hop.defer(_SAVEPOINT)  # goes with the call's first statement (if any)
    else:
        await conn.exec_driver_sql(_SAVEPOINT)
    try:
        result = await call(fn, conn)
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
    # A caller cancelled just as its answer came never looks at it: mark the error as seen.
    if not future.cancelled():
        future.exception()
