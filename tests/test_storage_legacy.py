"""A database written by the sqlite3-era storage (commit f5ed78b) upgrades in place.

tests/data/legacy_f5ed78b.sqlite3 was written by that code's repositories (users, a wallet
with credits and a debit, one order in each status, delivered and undelivered codes, kv).
"""

from __future__ import annotations

import shutil
import sqlite3
from pathlib import Path

from storage import Database
from storage.migrate import head_revision
from storage.models import Money, OrderStatus

FIXTURE = Path(__file__).with_name("data") / "legacy_f5ed78b.sqlite3"
TABLES = ("users", "orders", "codes", "ledger", "kv")


def dump(path: Path, columns: dict[str, str] | None = None) -> dict[str, list[tuple[object, ...]]]:
    """Every row of TABLES: all columns, or those of `columns` (a table's columns before
    the upgrade: columns added since, such as the leases', are not the rows' data)."""
    conn = sqlite3.connect(path)
    try:
        return {
            table: conn.execute(
                f"SELECT {columns[table] if columns else '*'} FROM {table} ORDER BY 1"
            ).fetchall()
            for table in TABLES
        }
    finally:
        conn.close()


def columns_of(path: Path) -> dict[str, str]:
    conn = sqlite3.connect(path)
    try:
        return {
            table: ", ".join(row[1] for row in conn.execute(f"PRAGMA table_info({table})"))
            for table in TABLES
        }
    finally:
        conn.close()


async def test_legacy_file_upgrades_in_place_with_every_row_kept(tmp_path: Path) -> None:
    path = tmp_path / "bot.sqlite3"
    shutil.copy(FIXTURE, path)
    before = dump(path)
    columns = columns_of(path)
    assert all(before[table] for table in TABLES)

    async with await Database.open(f"sqlite:///{path}") as db:
        assert await db.schema_version() == head_revision()
        assert await db.wallet.check_invariant() == []
        assert await db.wallet.balance(11) == (9400, 350)
        assert await db.wallet.balance(12) == (4000, 0)
        user = await db.users.get(13)
        assert user is not None and user.banned
        statuses = sorted(o.status.value for o in await db.orders.list_for_user(11, limit=50))
        assert statuses == ["expired", "purchasing", "received", "waiting"]
        received = (await db.orders.list_for_user(11, open_only=True))[0]
        assert received.status is OrderStatus.RECEIVED and received.money is Money.CAPTURED
        assert received.card_text == "card\x00null"
        assert [c.code for c, _ in await db.codes.undelivered()] == ["654321", "111111"]
        assert await db.kv.get("markup") == "12.5"

    after = dump(path, columns)
    assert after == before  # opening changed no row

    # And it keeps working: the waiting order is cancelled and refunded once.
    async with await Database.open(path) as db:
        waiting = [o for o in await db.orders.list_open() if o.status is OrderStatus.WAITING]
        assert len(waiting) == 1
        assert await db.orders.cancel(waiting[0].id)
        assert not await db.orders.cancel(waiting[0].id)
        assert await db.wallet.balance(11) == (9600, 150)
        assert await db.wallet.check_invariant() == []
