"""Leases: which replica polls an open order and which one sends a queued message.

A lease is two columns of the row, `lease_owner` (a replica's id, random per process
start) and `lease_until` (epoch seconds). A replica takes a row with one guarded UPDATE:

    UPDATE ... SET lease_owner = :me, lease_until = :until
    WHERE ... AND (lease_until IS NULL OR lease_until < :now OR lease_owner = :me)
    RETURNING ...

so of two replicas racing for a row one gets it (PostgreSQL re-checks the WHERE on the
row the other just wrote; SQLite has one writer): never FOR UPDATE. A holder renews all
its leases in ONE statement per round (`WHERE lease_owner = :me`), and a row whose holder
died is free again `ttl` seconds after its last renewal. Same SQL on SQLite and
PostgreSQL.

Every transaction here that writes several rows first takes one shared row lock (the
`kv` row `lease-round`): on PostgreSQL two replicas' multi-row UPDATEs would otherwise lock
the same rows in different orders (a claim picks at random, a renewal in scan order) and
deadlock. Rounds are a few per second per replica, so waiting for each other costs
nothing; the single-row writes elsewhere (an order's transition, a row's removal) cannot
close a cycle with a round and do not take it. SQLite has one writer anyway.

Each replica also renews a heartbeat row (`replicas`) in the same transaction: the live
ones share the open orders out, each claiming up to its fair share (see `order_round`).

Times are the replicas' own clocks: they are assumed in step (NTP) to well within a
lease's `ttl` (a poll interval); a clock far ahead would take leases early, which costs
a poll twice, never a transition twice (those are guarded by state).
"""

from __future__ import annotations

import math
import os
import secrets
import socket
import time
from collections.abc import Collection
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from sqlalchemy import bindparam, text
from sqlalchemy.ext.asyncio import AsyncConnection

from storage import rows, sql
from storage.models import Order
from storage.outbox import COLUMNS as OUTBOX_COLUMNS
from storage.outbox import OutboxRow, row_of
from storage.rows import ORDER_COLUMNS

if TYPE_CHECKING:
    from storage.db import Database

STALE_REPLICAS = 3600.0  # seconds after which a dead replica's heartbeat row is deleted

_OPEN = "status IN ('waiting', 'received')"
_FREE = "(lease_until IS NULL OR lease_until < :now)"
_TAKEABLE = "(lease_until IS NULL OR lease_until < :now OR lease_owner = :me)"

_ROUND_LOCK = text(
    "INSERT INTO kv (key, value) VALUES ('lease-round', :me)"
    " ON CONFLICT (key) DO UPDATE SET value = excluded.value"
)
_HEARTBEAT = text(
    "INSERT INTO replicas (id, started_at, alive_until) VALUES (:me, :now, :until)"
    " ON CONFLICT (id) DO UPDATE SET alive_until = excluded.alive_until"
)
_FORGET_DEAD = text("DELETE FROM replicas WHERE alive_until < :stale")
_LEAVE = text("DELETE FROM replicas WHERE id = :me")
_LIVE = text("SELECT COUNT(*) FROM replicas WHERE alive_until >= :now")

_RENEW_ORDERS = text(
    f"UPDATE orders SET lease_until = :until WHERE lease_owner = :me AND {_OPEN}"
    " RETURNING id, status, want_more"
)
_COUNT_ORDERS = text(
    "SELECT (SELECT COUNT(*) FROM replicas WHERE alive_until >= :now),"
    f" COUNT(*), COUNT(*) FILTER (WHERE {_FREE}) FROM orders WHERE {_OPEN}"
)
# Random picks: two replicas claiming at once mostly pick different rows, so neither
# comes away empty because the other took the same few first.
_CLAIM_ORDERS = text(
    "UPDATE orders SET lease_owner = :me, lease_until = :until"
    f" WHERE id IN (SELECT id FROM orders WHERE {_OPEN} AND {_FREE} ORDER BY random()"
    f" LIMIT :n) AND {_OPEN} AND {_TAKEABLE} RETURNING {ORDER_COLUMNS}"
)
_RELEASE_ORDERS = text(
    "UPDATE orders SET lease_owner = NULL, lease_until = NULL"
    " WHERE lease_owner = :me AND id IN :ids"
).bindparams(bindparam("ids", expanding=True))
_RELEASE_ALL_ORDERS = text(
    "UPDATE orders SET lease_owner = NULL, lease_until = NULL WHERE lease_owner = :me"
)

_RENEW_OUTBOX = text("UPDATE outbox SET lease_until = :until WHERE lease_owner = :me RETURNING id")
# Codes first: the most urgent rows a dead replica left go out first.
_CLAIM_OUTBOX = text(
    "UPDATE outbox SET lease_owner = :me, lease_until = :until"
    f" WHERE id IN (SELECT id FROM outbox WHERE {_FREE} ORDER BY priority, id LIMIT :n)"
    f" AND {_TAKEABLE} RETURNING {OUTBOX_COLUMNS}"
)
# Right before a push: the row is still ours, and stays ours for a whole `ttl` more, so a
# replica stalled between its lease round and the push cannot send what another replica
# took meanwhile (only a stall longer than `ttl` after this statement can).
_KEEP_OUTBOX_ROW = text(
    "UPDATE outbox SET lease_until = :until WHERE id = :id AND lease_owner = :me"
    f" RETURNING {OUTBOX_COLUMNS}"
)
_OUTBOX_ROW_EXISTS = text("SELECT 1 FROM outbox WHERE id = :id")
_RELEASE_OUTBOX = text(
    "UPDATE outbox SET lease_owner = NULL, lease_until = NULL WHERE lease_owner = :me"
)


def new_replica_id() -> str:
    """Unique per process start (a restarted replica is a new one): host, pid, random."""
    host = socket.gethostname().split(".")[0][:24] or "host"
    return f"{host}-{os.getpid()}-{secrets.token_hex(4)}"


@dataclass(frozen=True, slots=True)
class Replica:
    """This process as a holder of leases. `ttl`: seconds a lease lasts unless renewed
    (the bot uses SMS_POLL_INTERVAL, and renews every third of it)."""

    id: str
    ttl: float

    @classmethod
    def new(cls, ttl: float) -> Replica:
        return cls(new_replica_id(), ttl)

    @property
    def renew_every(self) -> float:
        return self.ttl / 3

    def until(self, now: float | None = None) -> float:
        return (time.time() if now is None else now) + self.ttl

    def lease(self, now: float | None = None) -> tuple[str, float]:
        """(owner, until) of a lease taken now."""
        return self.id, self.until(now)


@dataclass(frozen=True, slots=True)
class OrderRound:
    """One renewal round of a replica's order leases."""

    held: dict[int, bool]  # renewed: order id -> wants polling again (received, want_more)
    claimed: list[Order]  # free orders taken this round (up to the fair share)
    replicas: int  # live replicas, this one included
    open_orders: int  # open orders (waiting, received) over every replica

    @property
    def share(self) -> int:
        """This replica's fair share of the open orders."""
        return math.ceil(self.open_orders / max(1, self.replicas))


class Leases:
    def __init__(self, db: Database) -> None:
        self._db = db

    # -- orders --------------------------------------------------------------------------

    async def order_round(
        self, replica: Replica, *, claim: bool = True, now: float | None = None
    ) -> OrderRound:
        """One transaction: renew the heartbeat and every order lease held (one UPDATE),
        then, if `claim`, take free open orders (never held, released, or their holder's
        lease ran out) up to the fair share: open orders / live replicas, minus what is
        held. A fair share rather than "everything free": when a replica dies the
        survivors split its orders instead of the first to look taking them all; a
        replica holding more than its share (it started alone) gives some back
        (`release_orders`), so a new replica gets work. Nothing is waited on: a claim
        that loses a race to another replica takes fewer rows, and tries again next round.
        """
        ts = time.time() if now is None else now
        params = {"me": replica.id, "now": ts, "until": replica.until(ts)}

        async def tx(conn: AsyncConnection) -> OrderRound:
            await _round_lock(conn, params)
            await _heartbeat(conn, params)
            held = {
                int(oid): str(status) == "received" and bool(want_more)
                for oid, status, want_more in await sql.rows(conn, _RENEW_ORDERS, **params)
            }
            counted = await sql.first(conn, _COUNT_ORDERS, now=ts)
            assert counted is not None
            replicas, total, free = (int(value or 0) for value in counted)
            share = math.ceil(total / max(1, replicas))
            claimed: list[Order] = []
            wanted = min(free, share - len(held))
            if claim and wanted > 0:
                found = await sql.rows(conn, _CLAIM_ORDERS, n=wanted, **params)
                claimed = [rows.order(row) for row in found]
            return OrderRound(held, claimed, replicas, total)

        return await self._db.write(tx)

    async def release_orders(self, replica: Replica, order_ids: Collection[int]) -> int:
        """Give these orders' leases up (free for anyone at once); how many were held."""
        if not order_ids:
            return 0

        async def tx(conn: AsyncConnection) -> int:
            await _round_lock(conn, {"me": replica.id})
            result = await conn.execute(_RELEASE_ORDERS, {"me": replica.id, "ids": list(order_ids)})
            return int(result.rowcount)

        return await self._db.write(tx)

    # -- the outbox ----------------------------------------------------------------------

    async def outbox_round(
        self, replica: Replica, *, claim: int, now: float | None = None
    ) -> tuple[set[int], list[OutboxRow]]:
        """One transaction: renew every outbox lease held (one UPDATE), then take up to
        `claim` free rows (queued without a lease, or their holder died), most urgent
        first. Returns the ids held before the claim, and the rows claimed."""
        ts = time.time() if now is None else now
        params = {"me": replica.id, "now": ts, "until": replica.until(ts)}

        async def tx(conn: AsyncConnection) -> tuple[set[int], list[OutboxRow]]:
            await _round_lock(conn, params)
            held = {int(row[0]) for row in await sql.rows(conn, _RENEW_OUTBOX, **params)}
            claimed: list[OutboxRow] = []
            if claim > 0:
                found = await sql.rows(conn, _CLAIM_OUTBOX, n=claim, **params)
                claimed = [row_of(row) for row in found]
            return held, claimed

        return await self._db.write(tx)

    async def keep_outbox_row(
        self, replica: Replica, row_id: int, *, now: float | None = None
    ) -> OutboxRow | bool:
        """Just before pushing a row: the row with its lease extended by `ttl` if this
        replica still holds it; else True if another replica does, False if it is gone."""
        ts = time.time() if now is None else now

        async def tx(conn: AsyncConnection) -> OutboxRow | bool:
            kept = await sql.first(
                conn, _KEEP_OUTBOX_ROW, id=row_id, me=replica.id, until=replica.until(ts)
            )
            if kept is not None:
                return row_of(kept)
            return await sql.first(conn, _OUTBOX_ROW_EXISTS, id=row_id) is not None

        return await self._db.write(tx)

    # -- the replica ---------------------------------------------------------------------

    async def heartbeat(self, replica: Replica, *, now: float | None = None) -> int:
        """Say this replica is alive; how many are (this one included)."""
        ts = time.time() if now is None else now
        params = {"me": replica.id, "now": ts, "until": replica.until(ts)}

        async def tx(conn: AsyncConnection) -> int:
            await _round_lock(conn, params)
            await _heartbeat(conn, params)
            return int(await sql.scalar(conn, _LIVE, now=ts))

        return await self._db.write(tx)

    async def live_replicas(self, *, now: float | None = None) -> int:
        ts = time.time() if now is None else now

        async def q(conn: AsyncConnection) -> int:
            return int(await sql.scalar(conn, _LIVE, now=ts))

        return await self._db.read(q)

    async def leave(self, replica: Replica) -> None:
        """At a clean stop: every lease given up and the heartbeat gone, so the other
        replicas (or the next start) take the work over at once, not after `ttl`."""

        async def tx(conn: AsyncConnection) -> None:
            await _round_lock(conn, {"me": replica.id})
            await conn.execute(_RELEASE_ALL_ORDERS, {"me": replica.id})
            await conn.execute(_RELEASE_OUTBOX, {"me": replica.id})
            await conn.execute(_LEAVE, {"me": replica.id})

        await self._db.write(tx)


async def _round_lock(conn: AsyncConnection, params: dict[str, Any]) -> None:
    await conn.execute(_ROUND_LOCK, {"me": params["me"]})


async def _heartbeat(conn: AsyncConnection, params: dict[str, Any]) -> None:
    await conn.execute(_HEARTBEAT, params)
    await conn.execute(_FORGET_DEAD, {"stale": params["now"] - STALE_REPLICAS})
