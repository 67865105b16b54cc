"""aiogram's gettext I18n: catalogues in locales/, compiled by `make install`."""

from __future__ import annotations

import logging
from pathlib import Path

from aiogram.utils.i18n import I18n

from bot.locale import DEFAULT_LOCALE, SUPPORTED_LOCALES, pick_locale

__all__ = ["DEFAULT_LOCALE", "SUPPORTED_LOCALES", "make_i18n", "pick_locale"]

log = logging.getLogger(__name__)

LOCALES_DIR = Path(__file__).resolve().parents[2] / "locales"
DOMAIN = "messages"


class CataloguesNotCompiled(RuntimeError):
    """A .po without its .mo: the install step (`make install`) was skipped."""


def check_compiled(path: Path = LOCALES_DIR, domain: str = DOMAIN) -> None:
    """Say plainly what aiogram would only call "not compiled"; warn of a stale .mo."""
    missing = []
    for po in sorted(path.glob(f"*/LC_MESSAGES/{domain}.po")):
        mo = po.with_suffix(".mo")
        if not mo.exists():
            missing.append(str(po))
        elif mo.stat().st_mtime < po.stat().st_mtime:
            log.warning("%s is older than its .po; run `make install` to recompile", mo)
    if missing:
        raise CataloguesNotCompiled(
            f"translations not compiled ({', '.join(missing)}): run `make install`"
        )


def make_i18n() -> I18n:
    check_compiled()
    i18n = I18n(path=LOCALES_DIR, default_locale=DEFAULT_LOCALE, domain=DOMAIN)
    I18n.set_current(i18n)  # pushes from the poller run outside any update's context
    return i18n
