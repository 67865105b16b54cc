"""The poller's side of the order leases (storage/leases.py): one round at a time."""

from __future__ import annotations

from collections.abc import Collection

from storage.db import Database
from storage.leases import Leases, OrderRound, Replica


class OrderLeases:
    def __init__(self, db: Database, replica: Replica) -> None:
        self._leases = Leases(db)
        self.replica = replica

    @property
    def renew_every(self) -> float:
        return self.replica.renew_every

    async def alone(self) -> bool:
        """Say this replica is alive; True if no other one is (then, at start, purchases
        left `purchasing` were cut short by a crash: nobody is still buying them)."""
        return await self._leases.heartbeat(self.replica) <= 1

    async def round(self, *, claim: bool = True) -> OrderRound:
        return await self._leases.order_round(self.replica, claim=claim)

    async def release(self, order_ids: Collection[int]) -> int:
        return await self._leases.release_orders(self.replica, order_ids)
