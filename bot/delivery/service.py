"""The sender: one loop that owns every push the bot makes on its own.

Work comes in through the `Tell` API (bot/delivery/api.py) and, when durable, is a row in
the `outbox` table first. The loop keeps an index of what is owed, per chat in (priority,
id) order, and repeats: wait for a free in-flight slot and until fewer than TO_WIRE
pushes are still waiting for their unit of budget, then pick the best item whose chat is
free (nothing of that chat in flight, its one-a-second push budget there, no backoff), and
push it in its own task; the push takes its unit of budget right before its call goes on
the wire (bot/delivery/pacing.py, first come first served), so database reads before it
cannot bunch calls up. So:

- priorities hold across chats: an urgent push waits behind at most TO_WIRE - 1 others
  already chosen (~0.1 s at 25 a second), never behind the queue;
- within a chat nothing overtakes: one push in flight per chat, and an item that failed
  stays at the head of its chat until it goes out;
- a slow or hanging Telegram fills the in-flight slots and nothing else: the poller only
  writes rows and never waits here;
- a 429 pauses every counted send (delivery's and the handlers') for its retry_after.

Cards are rendered at push time from the database, so a queued refresh always shows the
latest state; a newer refresh of a card bumps its row (see storage/outbox.py), and a
countdown is kept in memory only, sent when nothing else is ready.

With a `replica` (the bot always has one), several replicas share the queue by leases
(storage/leases.py): a row is leased to the replica that queued it, and only the holder
pushes it. Every third of a lease one round renews them all (one statement) and takes
free rows, most urgent first, while fewer than CLAIM_BATCH are owed here: rows queued
without a lease (codes found at start, broadcasts) and those of a replica that died
(within about 1.3 poll intervals). A replica killed between Telegram taking a push and
the row's delete repeats that one push, as after a crash of a single process.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import heapq
import logging
import time
import weakref
from collections import Counter
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from enum import Enum
from typing import Any

from aiogram import Bot
from aiogram.utils.i18n import I18n

from bot import metrics
from bot.delivery.api import Priority
from bot.delivery.pacing import Pacer, Push, PushLost, current_push
from bot.delivery.render import CountryTitle, Renderer
from bot.leases_loop import keep_leases
from bot.locale import pick_locale
from bot.notify import Notifier, Outcome, Result
from storage.broadcasts import Broadcast
from storage.db import Database
from storage.leases import Leases, Replica
from storage.models import Code, Order, OrderStatus
from storage.outbox import OutboxRow

log = logging.getLogger(__name__)

MAX_IN_FLIGHT = 50  # pushes awaiting Telegram at once (aiogram's pool holds 100)
TO_WIRE = 3  # pushes chosen and still waiting for their unit of the overall budget
CALL_TIMEOUT = 30.0  # seconds one push may take before it is tried again
MAX_BACKOFF = 30.0
PROGRESS_EVERY = 2.0  # seconds between two edits of a broadcast's progress
IDLE_CHECK = 0.05  # seconds between looks while everything owed waits for its chat
CLAIM_BATCH = 200  # rows owed here below which a lease round takes free ones (~8 s of pushes)


class _Settled(Enum):
    DONE = "done"  # gone from the queue
    AGAIN = "again"  # a newer state came meanwhile: push it again at once
    RETRY = "retry"  # Telegram did not take it: back off
    LOST = "lost"  # another replica holds the row now: not ours to push


@dataclass(slots=True)
class _Item:
    id: int  # the outbox row; negative for what lives in memory only
    chat_id: int
    priority: int
    kind: str  # code, card, notice, broadcast; in memory: countdown, progress
    ref: int | None
    attempts: int = 0
    since: int = 0  # the lease round it was added in


class Delivery:
    def __init__(
        self,
        *,
        bot: Bot,
        db: Database,
        i18n: I18n,
        country_title: CountryTitle,
        pacer: Pacer,
        clock: Callable[[], float] = time.time,
        max_in_flight: int = MAX_IN_FLIGHT,
        call_timeout: float = CALL_TIMEOUT,
        progress_every: float = PROGRESS_EVERY,
        replica: Replica | None = None,
        claim_batch: int = CLAIM_BATCH,
    ) -> None:
        self._db = db
        self._replica = replica
        self._leases = Leases(db)
        self._claim_batch = claim_batch
        self._lease_round = 0
        self._lease_keeper: asyncio.Task[None] | None = None
        self._pacer = pacer
        self.clock = clock  # tests may swap it (the countdown)
        self._render = Renderer(i18n, country_title, lambda: self.clock())
        self._notifier = Notifier(bot, self._on_blocked, attempts=1, timeout=call_timeout)
        self._progress_every = progress_every
        self._items: dict[int, _Item] = {}
        self._chats: dict[int, list[tuple[int, int]]] = {}  # chat -> heap of (priority, id)
        self._heads: list[tuple[int, int, int]] = []  # (priority, id, chat), lazily cleaned
        self._busy: set[int] = set()  # chats with a push in flight
        self._backoff: dict[int, float] = {}  # chat -> monotonic time it may try again
        self._cards: dict[int, int] = {}  # order -> its queued card row
        self._countdowns: dict[int, int] = {}  # order -> its countdown item
        self._progress: dict[int, int] = {}  # broadcast -> its progress item
        self._broadcast_left: Counter[int] = Counter()  # broadcast -> recipients in memory
        self._broadcast_texts: dict[int, str] = {}
        self._dirty: set[int] = set()  # broadcasts whose progress changed
        self._next_ephemeral = -1
        self._to_wire: set[Push] = set()  # chosen, not yet given their unit of budget
        self._slots = asyncio.Semaphore(max_in_flight)
        self._wake = asyncio.Event()
        self._tasks: set[asyncio.Task[None]] = set()
        self._main: asyncio.Task[None] | None = None
        self._ticker: asyncio.Task[None] | None = None
        self._card_locks: weakref.WeakValueDictionary[int, asyncio.Lock] = (
            weakref.WeakValueDictionary()
        )
        self.sent: Counter[str] = Counter()  # pushes Telegram took, by kind (bench, tests)
        self.on_blocked: Callable[[int], Coroutine[Any, Any, None]] | None = None

    # -- the Tell API (bot/delivery/api.py) ----------------------------------------------

    async def code(self, code: Code) -> None:
        order = await self._db.orders.get(code.order_id)
        if order is None:  # pragma: no cover - codes reference orders
            return
        row = await self._db.outbox.enqueue(
            chat_id=order.chat_id,
            priority=Priority.CODE,
            kind="code",
            ref=code.id,
            payload={"order": order.id},
            dedupe=f"code:{code.id}",
            lease=self._lease(),
        )
        self._add_row(row)

    async def card(self, order: Order, *, priority: Priority = Priority.CARD) -> None:
        row = await self._db.outbox.enqueue(
            chat_id=order.chat_id,
            priority=priority,
            kind="card",
            ref=order.id,
            dedupe=f"card:{order.id}",
            lease=self._lease(),
        )
        if not self._add_row(row):
            return  # another replica holds the card's refresh: it renders the newest state
        self._cards[order.id] = row.id
        stale = self._countdowns.pop(order.id, None)
        if stale is not None:
            self._forget(stale)

    def countdown(self, order: Order) -> None:
        if order.message_id is None or order.id in self._cards or order.id in self._countdowns:
            return  # no card to edit, or a refresh is owed already (it shows the minutes)
        item = self._ephemeral(order.chat_id, Priority.COUNTDOWN, "countdown", order.id)
        self._countdowns[order.id] = item.id

    async def notice(self, chat_id: int, name: str, **args: Any) -> None:
        row = await self._db.outbox.enqueue(
            chat_id=chat_id,
            priority=Priority.CARD,
            kind="notice",
            payload={"name": name, **args},
            lease=self._lease(),
        )
        self._add_row(row)

    async def undelivered_codes(self, user_id: int) -> None:
        if await self._db.outbox.enqueue_undelivered_codes(Priority.CODE, user_id=user_id):
            await self._load()

    # -- answers to a user's own click (handlers) ----------------------------------------

    async def show_card(
        self, order_id: int, *, message_id: int | None = None, new: bool = False
    ) -> None:
        """Show the card now, as the answer to the user's tap: in `message_id` (the
        confirm screen becomes the card), as a new message at the bottom (`new`), or where
        it is. Inside the overall budget, not the per-chat one. If Telegram does not take
        it, it is queued."""
        async with _lock_for(self._card_locks, order_id):
            settled = await self._show_card(order_id, None, message_id=message_id, new=new)
        if settled is not _Settled.DONE:
            order = await self._db.orders.get(order_id)
            if order is not None:
                await self.card(order, priority=Priority.ANSWER)

    # -- broadcasts ----------------------------------------------------------------------

    async def broadcast(self, admin_chat_id: int, text: str, progress_message_id: int) -> Broadcast:
        """Queue `text` (HTML) for every user who has not blocked the bot."""
        started = await self._db.broadcasts.start(admin_chat_id, text, priority=Priority.BROADCAST)
        await self._db.broadcasts.set_progress_message(started.id, progress_message_id)
        self._broadcast_texts[started.id] = text
        if self._replica is None:
            for row in await self._db.outbox.of_broadcast(started.id):
                self._add_row(row)
        else:  # a batch now, the rest as this or another replica has room (lease rounds)
            await self._renew()
        log.info("broadcast %s: %d recipients", started.id, started.total)
        self._dirty.add(started.id)
        return started

    async def cancel_broadcasts(self) -> list[int]:
        cancelled = await self._db.broadcasts.cancel()
        for bid in cancelled:
            for item in [i for i in self._items.values() if i.kind == "broadcast" and i.ref == bid]:
                if item.chat_id not in self._busy:
                    self._forget(item.id)
            self._dirty.add(bid)
            log.info("broadcast %s cancelled", bid)
        return cancelled

    # -- lifecycle -----------------------------------------------------------------------

    async def start(self) -> None:
        """Queue codes stored but never queued (a crash in between), load what is owed."""
        await self._db.outbox.enqueue_undelivered_codes(Priority.CODE)
        await self._load()
        for bc in await self._db.broadcasts.running():
            self._broadcast_texts[bc.id] = bc.text
            self._dirty.add(bc.id)
        if self._items:
            log.info("delivery: %d pushes owed from before", len(self._items))
        self._main = asyncio.create_task(self._run(), name="delivery")
        self._ticker = asyncio.create_task(self._tick(), name="delivery progress")
        if self._replica is not None:
            self._lease_keeper = asyncio.create_task(self._keep_leases(), name="outbox leases")

    async def stop(self, grace: float = 5.0) -> None:
        """Stop pushing (the leases are kept: the app gives them up at the end)."""
        for task in (self._lease_keeper, self._ticker, self._main):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        self._main = self._ticker = self._lease_keeper = None
        if self._tasks:
            _done, pending = await asyncio.wait(set(self._tasks), timeout=grace)
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.wait(pending)

    async def drained(self, timeout: float = 10.0) -> None:
        """Wait until nothing durable is owed nor in flight (tests, bench)."""
        async with asyncio.timeout(timeout):
            # Polled: "drained" is a state of several structures, not one event.
            while any(i.id > 0 for i in self._items.values()) or self._busy:  # noqa: ASYNC110
                await asyncio.sleep(0.02)

    @property
    def owed(self) -> int:
        """Pushes not yet taken by Telegram (tests, bench)."""
        return len(self._items)

    # -- leases --------------------------------------------------------------------------

    def _lease(self) -> tuple[str, float] | None:
        return self._replica.lease() if self._replica is not None else None

    async def _load(self) -> None:
        """What is owed and free to push here: every row (alone), or free ones (leases)."""
        if self._replica is not None:
            await self._renew()
            return
        for row in await self._db.outbox.pending():
            if row.id not in self._items:
                self._add_row(row)

    async def _keep_leases(self) -> None:
        assert self._replica is not None
        await keep_leases(self._replica.renew_every, self._renew, "outbox", log)

    async def _renew(self) -> None:
        """One lease round: renew what is held, forget what was lost, take free rows."""
        assert self._replica is not None
        self._lease_round += 1
        started = self._lease_round
        owed = sum(1 for item_id in self._items if item_id > 0)
        held, claimed = await self._leases.outbox_round(
            self._replica, claim=self._claim_batch - owed
        )
        for item in [i for i in self._items.values() if i.id > 0 and i.id not in held]:
            if item.since < started and item.chat_id not in self._busy:
                self._forget(item.id)  # its lease ran out and another replica took it
        for row in claimed:
            self._add_row(row)
        for row_id in held - self._items.keys():  # held, but not known here (rare)
            found = await self._db.outbox.get(row_id)
            if found is not None:
                self._add_row(found)

    # -- the index -----------------------------------------------------------------------

    def _add_row(self, row: OutboxRow) -> bool:
        """Index the row to push; False if another replica holds it (theirs to push)."""
        if self._replica is not None and row.lease_owner != self._replica.id:
            return False
        known = self._items.get(row.id)
        if known is not None:
            if row.priority >= known.priority:
                return True
            known.priority = row.priority  # raised: a new heap entry; the old one goes stale
            item = known
        else:
            item = _Item(row.id, row.chat_id, row.priority, row.kind, row.ref)
            item.since = self._lease_round
            self._items[row.id] = item
            if row.kind == "broadcast" and row.ref is not None:
                self._broadcast_left[row.ref] += 1
            elif row.kind == "card" and row.ref is not None:
                self._cards[row.ref] = row.id
        self._index(item)
        return True

    def _ephemeral(self, chat_id: int, priority: int, kind: str, ref: int) -> _Item:
        item = _Item(self._next_ephemeral, chat_id, priority, kind, ref)
        self._next_ephemeral -= 1
        self._items[item.id] = item
        self._index(item)
        return item

    def _index(self, item: _Item) -> None:
        heapq.heappush(self._chats.setdefault(item.chat_id, []), (item.priority, item.id))
        self._push_head(item.chat_id)
        self._wake.set()

    def _forget(self, item_id: int) -> None:
        item = self._items.pop(item_id, None)
        if item is None:
            return
        if item.kind == "card" and self._cards.get(item.ref or 0) == item_id:
            del self._cards[item.ref or 0]
        elif item.kind == "countdown" and self._countdowns.get(item.ref or 0) == item_id:
            del self._countdowns[item.ref or 0]
        elif item.kind == "progress":
            self._progress.pop(item.ref or 0, None)
        elif item.kind == "broadcast" and item.ref is not None:
            self._broadcast_left[item.ref] -= 1
            self._dirty.add(item.ref)
        self._push_head(item.chat_id)

    def _head(self, chat_id: int) -> _Item | None:
        heap = self._chats.get(chat_id)
        while heap:
            priority, item_id = heap[0]
            item = self._items.get(item_id)
            if item is not None and item.priority == priority:
                return item
            heapq.heappop(heap)
        self._chats.pop(chat_id, None)
        return None

    def _push_head(self, chat_id: int) -> None:
        head = self._head(chat_id)
        if head is not None:
            heapq.heappush(self._heads, (head.priority, head.id, chat_id))

    def _ready(self, item: _Item, now: float) -> bool:
        chat = item.chat_id
        if chat in self._busy or self._backoff.get(chat, 0.0) > now:
            return False
        return item.priority == Priority.ANSWER or self._pacer.chat_ready(chat)

    def _pick(self) -> _Item | None:
        """The best item whose chat may be written to now (the index is left as it is)."""
        now = time.monotonic()
        waiting: list[tuple[int, int, int]] = []
        found = None
        while self._heads:
            entry = heapq.heappop(self._heads)
            priority, item_id, chat = entry
            head = self._head(chat)
            if head is None or head.id != item_id or head.priority != priority:
                continue  # stale: the chat's current head has an entry of its own
            waiting.append(entry)
            if self._ready(head, now):
                found = head
                break
        for entry in waiting:
            heapq.heappush(self._heads, entry)
        return found

    # -- the loop ------------------------------------------------------------------------

    async def _run(self) -> None:
        while True:
            try:
                await self._slots.acquire()
                try:
                    item = await self._next()
                    self._busy.add(item.chat_id)
                    wait = 0.0
                    if item.priority != Priority.ANSWER:
                        wait = await self._pacer.take_chat(item.chat_id)
                except BaseException:
                    self._slots.release()
                    raise
                if wait > 0:  # another replica pushed to the chat within its second
                    self._busy.discard(item.chat_id)
                    self._backoff[item.chat_id] = time.monotonic() + wait
                    self._slots.release()
                    continue
                push = Push(lambda: None)
                push.on_budget = functools.partial(self._past_budget, push)
                self._to_wire.add(push)
                task = asyncio.create_task(self._send(item, push), name=f"push {item.id}")
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)
            except asyncio.CancelledError:
                raise
            except Exception:  # the loop never dies
                log.exception("delivery loop failed; going on")
                await asyncio.sleep(1.0)

    async def _next(self) -> _Item:
        while True:
            self._wake.clear()
            timeout: float | None = None  # a push getting its budget wakes us
            if len(self._to_wire) < TO_WIRE:
                item = self._pick()
                if item is not None:
                    return item
                timeout = IDLE_CHECK if self._items else None
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout):
                    await self._wake.wait()

    async def _send(self, item: _Item, push: Push) -> None:
        token = current_push.set(push)
        settled = _Settled.RETRY
        retry_after: float | None = None
        try:
            settled, retry_after = await self._push(item)
        except PushLost:  # stalled past the lease: the replica that took the row pushes it
            settled = _Settled.LOST
        except Exception:
            log.exception("push %s (%s) to chat %s failed", item.id, item.kind, item.chat_id)
        finally:
            current_push.reset(token)
            self._past_budget(push)  # e.g. a card that already showed its latest state
            self._busy.discard(item.chat_id)
            self._slots.release()
        if settled is _Settled.DONE:
            self._backoff.pop(item.chat_id, None)
            self.sent[item.kind] += 1
            self._forget(item.id)
        elif settled is _Settled.LOST:
            self._forget(item.id)
        elif settled is _Settled.RETRY:
            item.attempts += 1
            if retry_after is not None:
                self._pacer.pause(retry_after)
            else:
                delay = min(0.5 * 2 ** min(item.attempts, 10), MAX_BACKOFF)
                self._backoff[item.chat_id] = time.monotonic() + delay
        self._push_head(item.chat_id)
        self._wake.set()

    def _past_budget(self, push: Push) -> None:
        if push in self._to_wire:
            self._to_wire.discard(push)
            self._wake.set()

    async def _tick(self) -> None:
        """Broadcast progress, edited into the admin's chat every `progress_every`."""
        while True:
            await asyncio.sleep(self._progress_every)
            try:
                for bid in list(self._dirty):
                    if bid not in self._progress:
                        self._dirty.discard(bid)
                        bc = await self._db.broadcasts.get(bid)
                        if bc is not None:
                            item = self._ephemeral(bc.admin_chat_id, Priority.CARD, "progress", bid)
                            self._progress[bid] = item.id
            except Exception:
                log.exception("broadcast progress failed; going on")

    # -- one push ------------------------------------------------------------------------

    async def _push(self, item: _Item) -> tuple[_Settled, float | None]:
        if item.kind in ("countdown", "progress"):
            row = None
        else:
            if self._replica is None:
                row = await self._db.outbox.get(item.id)
            else:
                kept = await self._leases.keep_outbox_row(self._replica, item.id)
                if kept is True:
                    return _Settled.LOST, None
                row = kept or None
                push = current_push.get()
                if row is not None and push is not None:  # checked again if the budget is slow
                    push.keep = functools.partial(self._keep_row, item.id)
                    push.kept_at = time.monotonic()
                    push.recheck_after = self._replica.renew_every
            if row is None:
                return _Settled.DONE, None  # cancelled, or done by someone else
        if item.kind == "code":
            assert row is not None
            return await self._push_code(row)
        if item.kind in ("card", "countdown"):
            async with _lock_for(self._card_locks, item.ref or 0):
                countdown = item.kind == "countdown"
                return await self._show_card(item.ref or 0, row, countdown=countdown), None
        if item.kind == "notice":
            assert row is not None
            return await self._push_notice(row)
        if item.kind == "broadcast":
            assert row is not None
            return await self._push_broadcast(row)
        if item.kind == "progress":
            return await self._push_progress(item.ref or 0)
        log.error("unknown push kind %s: dropped", item.kind)  # pragma: no cover
        if row is not None:
            await self._db.outbox.drop(row.id)
        return _Settled.DONE, None

    async def _keep_row(self, row_id: int) -> bool:
        assert self._replica is not None
        kept = await self._leases.keep_outbox_row(self._replica, row_id)
        return isinstance(kept, OutboxRow)

    async def _settle(self, row: OutboxRow | None, result: Result) -> tuple[_Settled, float | None]:
        """A push Telegram did not take: try again later, or give it up for good."""
        if result.outcome is Outcome.UNAVAILABLE:
            return _Settled.RETRY, result.retry_after
        if row is not None:  # blocked, or refused for good: retrying would not help
            await self._db.outbox.drop(row.id)
        return _Settled.DONE, None

    async def _locale(self, user_id: int) -> tuple[str, bool]:
        """The user's language, and whether they blocked the bot."""
        user = await self._db.users.get(user_id)
        return pick_locale(user.language if user else None), bool(user and user.blocked)

    async def _push_code(self, row: OutboxRow) -> tuple[_Settled, float | None]:
        order = await self._db.orders.get(int(row.payload.get("order", 0)))
        code = None
        if order is not None:
            codes = await self._db.orders.codes_of(order.id)
            code = next((c for c in codes if c.id == row.ref), None)
        if order is None or code is None or code.delivered_at is not None:
            await self._db.outbox.drop(row.id)
            return _Settled.DONE, None
        locale, blocked = await self._locale(order.user_id)
        if blocked:  # held back until the user returns (undelivered_codes)
            await self._db.outbox.drop(row.id)
            return _Settled.DONE, None
        result = await self._notifier.send(row.chat_id, self._render.code(order, code.code, locale))
        if result.outcome is Outcome.REJECTED:
            await self.card(order)  # the message was refused for good: the card shows it
        if not result.ok or result.message_id is None:
            return await self._settle(row, result)
        now = self.clock()
        if await self._db.outbox.code_sent(row, code.id, result.message_id, now):
            metrics.CODES_DELIVERED.inc()
            metrics.CODE_DELAY.observe(max(0.0, now - code.received_at))
        log.info("order %s user %s: code delivered", order.id, order.user_id)
        await self.card(order)
        return _Settled.DONE, None

    async def _show_card(
        self,
        order_id: int,
        row: OutboxRow | None,
        *,
        countdown: bool = False,
        message_id: int | None = None,
        new: bool = False,
    ) -> _Settled:
        """Edit the card if what it shows changed; send it anew if it is gone (a countdown
        only edits a waiting card that is there). `row`: the queued refresh, if any."""
        order = await self._db.orders.get(order_id)
        if order is None:
            return await self._drop(row)
        locale, blocked = await self._locale(order.user_id)
        if blocked or (countdown and order.status is not OrderStatus.WAITING):
            return await self._drop(row)
        codes = await self._db.orders.codes_of(order.id)
        text, signature, markup = self._render.card(order, codes, locale)
        target, shown = order.message_id, order.card_text
        if new:
            target = None
        elif message_id is not None and message_id != target:
            target, shown = message_id, None
        if target is not None and signature == shown:
            done = row is None or await self._db.outbox.done(row)
            return _Settled.DONE if done else _Settled.AGAIN
        if target is None and countdown:
            return _Settled.DONE
        result = None
        if target is not None:
            result = await self._notifier.edit(order.chat_id, target, text, markup)
            if result.outcome is Outcome.GONE and countdown:
                return _Settled.DONE
        if result is None or result.outcome is Outcome.GONE:
            result = await self._notifier.send(order.chat_id, text, markup)
            target = result.message_id
        if result.ok:
            done = await self._db.outbox.card_sent(row, order.id, target, signature)
            return _Settled.DONE if done else _Settled.AGAIN
        if result.retry_after is not None:
            self._pacer.pause(result.retry_after)
        settled, _after = await self._settle(row, result)
        return settled

    async def _drop(self, row: OutboxRow | None) -> _Settled:
        if row is not None:
            await self._db.outbox.drop(row.id)
        return _Settled.DONE

    async def _push_notice(self, row: OutboxRow) -> tuple[_Settled, float | None]:
        order_id = row.payload.get("order")
        order = await self._db.orders.get(int(order_id)) if order_id is not None else None
        locale, blocked = await self._locale(row.chat_id)
        if blocked:
            await self._db.outbox.drop(row.id)
            return _Settled.DONE, None
        name = str(row.payload.get("name"))
        try:
            text = self._render.notice(name, row.payload, order, locale)
        except (KeyError, ValueError):
            log.exception("notice %s cannot be rendered: dropped", name)
            await self._db.outbox.drop(row.id)
            return _Settled.DONE, None
        result = await self._notifier.send(row.chat_id, text)
        if not result.ok:
            return await self._settle(row, result)
        await self._db.outbox.done(row)
        return _Settled.DONE, None

    async def _push_broadcast(self, row: OutboxRow) -> tuple[_Settled, float | None]:
        bid = row.ref or 0
        text = self._broadcast_texts.get(bid)
        if text is None:
            bc = await self._db.broadcasts.get(bid)
            if bc is None or bc.status != "running":
                await self._db.outbox.drop(row.id)
                return _Settled.DONE, None
            text = self._broadcast_texts[bid] = bc.text
        result = await self._notifier.send(row.chat_id, text)
        if result.outcome is Outcome.UNAVAILABLE:
            return _Settled.RETRY, result.retry_after
        # Refused for good (the chat is gone): counted with those who blocked the bot.
        await self._db.broadcasts.delivered(bid, row.id, "sent" if result.ok else "blocked")
        return _Settled.DONE, None

    async def _push_progress(self, bid: int) -> tuple[_Settled, float | None]:
        bc = await self._db.broadcasts.get(bid)
        if bc is None:
            return _Settled.DONE, None
        if bc.status == "running" and bc.left == 0 and await self._db.broadcasts.finish(bid):
            log.info("broadcast %s done: %d sent, %d blocked", bid, bc.sent, bc.blocked)
            bc = await self._db.broadcasts.get(bid) or bc
        if bc.status != "running":
            self._broadcast_texts.pop(bid, None)
        locale, _blocked = await self._locale(bc.admin_chat_id)
        text = self._render.broadcast_progress(
            locale, sent=bc.sent, blocked=bc.blocked, left=bc.left, status=bc.status
        )
        if bc.progress_message_id is not None:
            result = await self._notifier.edit(bc.admin_chat_id, bc.progress_message_id, text)
        else:
            result = await self._notifier.send(bc.admin_chat_id, text)
            if result.ok and result.message_id is not None:
                await self._db.broadcasts.set_progress_message(bid, result.message_id)
        if result.outcome is Outcome.UNAVAILABLE:
            return _Settled.RETRY, result.retry_after
        return _Settled.DONE, None

    async def _on_blocked(self, chat_id: int) -> None:
        await self._db.users.set_blocked(chat_id, True)
        if self.on_blocked is not None:
            await self.on_blocked(chat_id)


def _lock_for(locks: weakref.WeakValueDictionary[int, asyncio.Lock], key: int) -> asyncio.Lock:
    lock = locks.get(key)
    if lock is None:
        lock = asyncio.Lock()
        locks[key] = lock
    return lock
