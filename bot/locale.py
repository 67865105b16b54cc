"""Which languages the bot speaks and how a user's is chosen (no rendering here: services
use it to check a choice, bot/ui and bot/delivery to render in it)."""

from __future__ import annotations

DEFAULT_LOCALE = "en"
SUPPORTED_LOCALES = ("en", "ru")


def pick_locale(stored: str | None, language_code: str | None = None) -> str:
    """The stored choice (/language) wins; then Telegram's language_code; then English."""
    if stored in SUPPORTED_LOCALES:
        return stored
    if language_code and language_code.lower().split("-")[0] == "ru":
        return "ru"
    return DEFAULT_LOCALE
