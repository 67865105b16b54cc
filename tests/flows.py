"""Chat steps the in-process end-to-end tests share: what a user does, by button label."""

from __future__ import annotations

from sandbox.telegram import FakeMessage, FakeUser


def labels(message: FakeMessage) -> list[str]:
    return [label for row in message.buttons for label, _data in row]


async def say(user: FakeUser, text: str, expect: str | None = None) -> FakeMessage:
    """Send `text` and return the bot's next new message (containing `expect`)."""
    await user.send(text)
    return await user.wait_for(expect, new_only=True)


async def reach_confirm(
    user: FakeUser, country: str = "Russia", service: str = "Telegram"
) -> FakeMessage:
    """/start -> Buy number -> country -> service: the confirm screen (one message, edited)."""
    menu = await say(user, "/start", "Hi")
    here = menu.message_id  # every step edits this message

    await user.click("Buy number", message_id=here)
    await user.wait_for(predicate=lambda m: m.message_id == here and country in str(labels(m)))
    await user.click(country, message_id=here)
    await user.wait_for(predicate=lambda m: m.message_id == here and service in str(labels(m)))
    await user.click(service, message_id=here)
    return await user.wait_for(
        predicate=lambda m: m.message_id == here and "Check your order" in m.text
    )


async def buy(user: FakeUser, country: str = "Russia", service: str = "Telegram") -> FakeMessage:
    """Through the menus to a bought number; returns its order card."""
    confirm = await reach_confirm(user, country, service)
    await user.click("Buy", message_id=confirm.message_id)
    return await user.wait_for(
        predicate=lambda m: m.message_id == confirm.message_id and "Number: +" in m.text
    )
