"""Logging: one line per event, tokens redacted from every record whatever logger wrote it."""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterable

from pydantic import SecretStr


class RedactTokens(logging.Filter):
    def __init__(self, secrets: Iterable[str]) -> None:
        super().__init__()
        self._secrets = [s for s in secrets if s]

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if any(secret in message for secret in self._secrets):
            for secret in self._secrets:
                message = message.replace(secret, "***")
            record.msg, record.args = message, None
        if record.exc_info and record.exc_info[1] is not None:
            text = logging.Formatter().formatException(record.exc_info)
            if any(secret in text for secret in self._secrets):
                for secret in self._secrets:
                    text = text.replace(secret, "***")
                record.exc_info, record.exc_text = None, text
        return True


def setup_logging(level: str, secrets: Iterable[SecretStr]) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    handler.addFilter(RedactTokens([s.get_secret_value() for s in secrets]))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
    # Alembic says "Context impl SQLiteImpl" on every start: noise next to an exit-2 line.
    logging.getLogger("alembic").setLevel(logging.WARNING)
