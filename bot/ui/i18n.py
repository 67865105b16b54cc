"""aiogram's gettext I18n: catalogues in locales/, compiled by `make install`."""

from __future__ import annotations

from pathlib import Path

from aiogram.utils.i18n import I18n

LOCALES_DIR = Path(__file__).resolve().parents[2] / "locales"
DEFAULT_LOCALE = "en"
SUPPORTED_LOCALES = ("en", "ru")


def make_i18n() -> I18n:
    i18n = I18n(path=LOCALES_DIR, default_locale=DEFAULT_LOCALE, domain="messages")
    I18n.set_current(i18n)  # pushes from the poller run outside any update's context
    return i18n


def pick_locale(stored: str | None, language_code: str | None = None) -> str:
    """The stored choice (/language) wins; then Telegram's language_code; then English."""
    if stored in SUPPORTED_LOCALES:
        return stored
    if language_code and language_code.lower().split("-")[0] == "ru":
        return "ru"
    return DEFAULT_LOCALE
