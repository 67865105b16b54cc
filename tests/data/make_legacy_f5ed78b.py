"""How tests/data/legacy_f5ed78b.sqlite3 was written: run with the tree of commit f5ed78b
first on sys.path (a temporary `git worktree add --detach DIR f5ed78b`), e.g.
`cd DIR && python -c "import sys; sys.path.insert(0, '.'); exec(open(SCRIPT).read())" OUT`.
"""
import asyncio, sys
from pathlib import Path
from storage import Database

async def main(path: Path) -> None:
    db = await Database.open(path)
    now = 1_790_000_000.0
    await db.users.upsert(11, "ru", now=now)
    await db.users.upsert(12, "en", now=now)
    await db.users.set_banned(13, True, now=now)
    await db.users.set_blocked(12, True)
    await db.wallet.credit(11, 10_000, note="cash", idempotency_key="pay-11", now=now)
    await db.wallet.credit(12, 5_000, note=None, idempotency_key="pay-12", now=now)
    await db.wallet.debit(12, 700, note="fix", idempotency_key="fix-12", now=now)
    def order(user: int, key: str, price: int, hold: bool = True, multiple: bool = False):
        return db.orders.create(user_id=user, chat_id=user, country_id=7, country_title="Russia",
            service_id=3, service_title="Telegram", price=price, cost=price // 2, currency="RUB",
            idempotency_key=key, multiple_sms=multiple, hold=hold, max_active=10, now=now)
    held = await order(11, "buy:11:1", 150)                       # purchasing, held
    waiting = await order(11, "buy:11:2", 200)
    await db.orders.mark_waiting(waiting.id, request_id=9001, number="+79990000001", expires_at=now + 1200, next_poll_at=now + 3, now=now)
    received = await order(11, "buy:11:3", 250, multiple=True)
    await db.orders.mark_waiting(received.id, request_id=9002, number="+79990000002", expires_at=now + 1200, next_poll_at=now + 3, now=now)
    code = await db.orders.add_code(received.id, "123456", now=now + 10)
    await db.codes.mark_delivered(code.id, 77, now=now + 11)
    await db.orders.add_code(received.id, "654321", now=now + 20)  # undelivered
    await db.orders.set_message(received.id, 55, "card\x00null")
    finished = await order(12, "buy:12:1", 300)
    await db.orders.mark_waiting(finished.id, request_id=9003, number="+15550000003", expires_at=now + 1200, next_poll_at=now, now=now)
    await db.orders.add_code(finished.id, "111111", now=now + 5)
    await db.orders.finish(finished.id, now=now + 6)
    cancelled = await order(12, "buy:12:2", 400)
    await db.orders.mark_waiting(cancelled.id, request_id=9004, number="+15550000004", expires_at=now + 1200, next_poll_at=now, now=now)
    await db.orders.cancel(cancelled.id, now=now + 7)
    failed = await order(12, "buy:12:3", 100)
    await db.orders.mark_failed(failed.id, now=now + 8)
    private = await order(11, "buy:11:4", 0, hold=False)
    await db.orders.mark_waiting(private.id, request_id=9005, number="+79990000005", expires_at=now + 1200, next_poll_at=now, now=now)
    await db.orders.expire(private.id, now=now + 9)
    await db.kv.set("markup", "12.5")
    await db.kv.set("currency", "RUB")
    assert await db.wallet.check_invariant() == []
    print(await db.wallet.balance(11), await db.wallet.balance(12))
    await db.close()

asyncio.run(main(Path(sys.argv[1])))
