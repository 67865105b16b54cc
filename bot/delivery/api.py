"""What the rest of the house hands delivery: "the user must see this". No rendering here,
so bot/services can depend on it without depending on bot/ui."""

from __future__ import annotations

from enum import IntEnum
from typing import Any, Protocol

from storage.models import Code, Order


class Priority(IntEnum):
    """Lower goes first. ANSWER is for answers to a user's own click that are queued at all
    (most go straight from the handler, inside the same overall budget)."""

    CODE = 0
    ANSWER = 1
    CARD = 2  # card refreshes and notices
    COUNTDOWN = 3
    BROADCAST = 4


class Tell(Protocol):
    """Delivery's enqueue side. Every call returns once the push is recorded (durable ones
    in the database), never after waiting on Telegram."""

    async def code(self, code: Code) -> None:
        """A stored code goes out as a new message, then it is marked delivered."""

    async def card(self, order: Order, *, priority: Priority = Priority.CARD) -> None:
        """The order's card shows its latest state (one pending refresh per card)."""

    def countdown(self, order: Order) -> None:
        """The card's minutes changed: edit it if budget is to spare (not durable)."""

    async def notice(self, chat_id: int, name: str, **args: Any) -> None:
        """A notice by name (see bot/delivery/render.py), rendered in the reader's language."""

    async def undelivered_codes(self, user_id: int) -> None:
        """A user came back: their codes held back meanwhile are queued again."""
