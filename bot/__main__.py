"""`python -m bot`: read settings, build the app, poll until SIGTERM or SIGINT."""

from __future__ import annotations

from bot import collector

collector.pause()  # before the heavy imports below (bot/collector.py)

import asyncio  # noqa: E402
import logging  # noqa: E402
import sys  # noqa: E402

from pydantic import ValidationError  # noqa: E402

from bot.logs import setup_logging  # noqa: E402
from bot.services.currency import CurrencyChanged  # noqa: E402
from bot.settings import Settings, describe_errors  # noqa: E402
from bot.ui.i18n import CataloguesNotCompiled, check_compiled  # noqa: E402
from storage.errors import DatabaseUnavailable, MigrationError  # noqa: E402


def load_settings() -> Settings | None:
    try:
        return Settings()  # type: ignore[call-arg]
    except ValidationError as exc:
        for line in describe_errors(exc):
            print(line, file=sys.stderr)
        return None


async def serve(settings: Settings) -> str | None:
    """Run until a signal; returns why it stopped on its own (another poller), if so."""
    from bot.app import build_app

    app = await build_app(settings)
    # Everything made so far lives as long as the process: frozen, never walked again.
    collector.settle()
    try:
        if settings.webhook_mode:
            await app.run_webhook()
        else:
            await app.run_polling()
    finally:
        await app.close()
    return app.exit_reason


def main() -> int:
    settings = load_settings()
    if settings is None:
        return 2
    try:
        check_compiled()
    except CataloguesNotCompiled as exc:
        print(exc, file=sys.stderr)
        return 2
    setup_logging(
        settings.log_level,
        secrets=[settings.bot_token, settings.smsman_token, settings.webhook_secret],
    )
    reason = None
    try:
        reason = asyncio.run(serve(settings))
    except KeyboardInterrupt:
        pass
    except (CurrencyChanged, MigrationError, DatabaseUnavailable) as exc:
        # A refusal to start (money held in another currency, a database newer than this
        # code or out of reach): one line for the operator, no traceback.
        print(exc, file=sys.stderr)
        return 2
    if reason is not None:
        print(reason, file=sys.stderr)
        return 2
    logging.getLogger("bot").info("stopped cleanly")
    return 0


if __name__ == "__main__":
    sys.exit(main())
