"""The bot's settings: exactly the names and defaults of CONTRACT.md."""

from __future__ import annotations

import contextlib
import ipaddress
import re
from decimal import Decimal
from enum import StrEnum
from typing import Annotated, Any
from urllib.parse import urlsplit

from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict
from yarl import URL

from storage.engine import normalize_url

_WEBHOOK_SECRET_RE = re.compile(r"[A-Za-z0-9_-]{1,256}")

DEFAULT_POPULAR_COUNTRIES = ("RU", "UA", "KZ", "US", "GB", "ID", "PH", "IN", "BR", "VN")
DEFAULT_TOPUP_STARS = (50, 100, 250, 500, 1000)
MAX_INVOICE_STARS = 10_000  # Telegram's limit for one Stars invoice
# What @BotFather hands out: the bot's numeric id, a colon, then letters, digits, _ and -.
_BOT_TOKEN = re.compile(r"[0-9]{1,20}:[A-Za-z0-9_-]{1,100}")


class AccessMode(StrEnum):
    PRIVATE = "private"
    SHOP = "shop"


def _split_ids(value: Any) -> Any:
    """Accept `1,2, 3`, a single int, or an empty string for a list of ids."""
    if isinstance(value, int):
        return [value]
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    return value


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_file=".env", env_file_encoding="utf-8", extra="ignore", case_sensitive=False
    )

    bot_token: SecretStr
    smsman_token: SecretStr
    telegram_api_url: str = "https://api.telegram.org"
    smsman_api_url: str = "https://api.sms-man.com/control"
    database_url: str = "sqlite:///data/bot.sqlite3"
    admin_ids: Annotated[list[int], NoDecode] = Field(default_factory=list)
    allowed_user_ids: Annotated[list[int], NoDecode] = Field(default_factory=list)
    access_mode: AccessMode = AccessMode.PRIVATE
    currency: str = "RUB"
    markup_percent: Decimal = Field(default=Decimal(0), ge=0, le=1000)
    price_step: Decimal = Field(default=Decimal("0.01"), gt=0, le=1000)
    max_active_orders: int = Field(default=5, ge=1, le=100)
    sms_poll_interval: float = Field(default=3, gt=0, le=60)
    activation_timeout: int = Field(default=1200, ge=1, le=1200)
    smsman_max_concurrency: int = Field(default=10, ge=1, le=200)
    smsman_max_rps: float = Field(default=20, gt=0, le=1000)
    smsman_timeout: float = Field(default=15, gt=0, le=300)
    telegram_max_rps: float = Field(default=25, gt=0, le=1000)
    low_balance_alert: Decimal = Field(default=Decimal(0), ge=0)
    log_level: str = "INFO"
    popular_countries: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: list(DEFAULT_POPULAR_COUNTRIES)
    )
    purchases_per_minute: int = Field(default=5, ge=1, le=1000)
    multiple_sms: bool = False
    stars_rate: Decimal | None = Field(default=None, gt=0, le=1_000_000)
    topup_stars: Annotated[list[int], NoDecode] = Field(
        default_factory=lambda: list(DEFAULT_TOPUP_STARS)
    )
    redis_url: str = ""
    webhook_url: str = ""
    webhook_secret: SecretStr = SecretStr("")
    http_host: str = "127.0.0.1"
    http_port: int | None = Field(default=None, ge=1, le=65535)

    @field_validator("http_port", mode="before")
    @classmethod
    def _empty_port(cls, value: Any) -> Any:
        return None if isinstance(value, str) and not value.strip() else value

    @field_validator("redis_url")
    @classmethod
    def _redis(cls, value: str) -> str:
        value = value.strip()
        if value and not value.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError("must look like redis://host:port/db (or be empty)")
        return value

    @field_validator("webhook_url")
    @classmethod
    def _webhook(cls, value: str) -> str:
        value = value.strip()
        if not value:
            return value
        parts = urlsplit(value)
        # http:// only to a loopback host: a local Bot API server (or the tests' fake).
        loopback = parts.scheme == "http" and _is_loopback(value)
        if not parts.hostname or not (parts.scheme == "https" or loopback):
            raise ValueError("must be an https:// URL (Telegram posts only to HTTPS)")
        return value

    @field_validator("webhook_secret")
    @classmethod
    def _secret(cls, value: SecretStr) -> SecretStr:
        secret = value.get_secret_value()
        if secret and not _WEBHOOK_SECRET_RE.fullmatch(secret):
            raise ValueError("must be 1-256 characters of A-Z a-z 0-9 _ -")
        return value

    @model_validator(mode="after")
    def _webhook_needs(self) -> Settings:
        if self.webhook_url:
            problems = []
            if not self.webhook_secret.get_secret_value():
                problems.append("WEBHOOK_SECRET is not set: it is required with WEBHOOK_URL")
            if self.http_port is None:
                problems.append("HTTP_PORT is not set: it is required with WEBHOOK_URL")
            if problems:
                raise ValueError("\n".join(problems))
        return self

    @field_validator("admin_ids", "allowed_user_ids", "popular_countries", mode="before")
    @classmethod
    def _split(cls, value: Any) -> Any:
        return _split_ids(value)

    @field_validator("stars_rate", mode="before")
    @classmethod
    def _empty_rate(cls, value: Any) -> Any:
        return None if isinstance(value, str) and not value.strip() else value

    @field_validator("topup_stars", mode="before")
    @classmethod
    def _split_stars(cls, value: Any) -> Any:
        return _split_ids(value)

    @field_validator("topup_stars")
    @classmethod
    def _stars(cls, value: list[int]) -> list[int]:
        if not value:
            raise ValueError("needs at least one amount of Stars")
        if any(not 1 <= stars <= MAX_INVOICE_STARS for stars in value):
            raise ValueError(f"each amount must be 1..{MAX_INVOICE_STARS} Stars")
        return sorted(set(value))

    @field_validator("popular_countries")
    @classmethod
    def _upper(cls, value: list[str]) -> list[str]:
        return [code.upper() for code in value]

    @field_validator("currency")
    @classmethod
    def _currency(cls, value: str) -> str:
        value = value.strip().upper()
        if value not in {"RUB", "USD", "EUR"}:
            raise ValueError("must be RUB, USD or EUR")
        return value

    @field_validator("log_level")
    @classmethod
    def _level(cls, value: str) -> str:
        value = value.strip().upper()
        if value not in {"DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"}:
            raise ValueError("must be DEBUG, INFO, WARNING, ERROR or CRITICAL")
        return value

    @field_validator("bot_token")
    @classmethod
    def _bot_token(cls, value: SecretStr) -> SecretStr:
        # Checked here, not left to Bot(), which fails with a traceback. The message never
        # quotes the value: it is a secret.
        if not _BOT_TOKEN.fullmatch(value.get_secret_value().strip()):
            raise ValueError("must look like 123456789:AAE... (the token from @BotFather)")
        return SecretStr(value.get_secret_value().strip())

    @field_validator("telegram_api_url", "smsman_api_url")
    @classmethod
    def _url(cls, value: str) -> str:
        value = value.strip().rstrip("/")
        if not value.startswith(("http://", "https://")):
            raise ValueError("must start with http:// or https://")
        if value.startswith("http://") and not _is_loopback(value):
            # Both URLs carry a token (in the path or the query): never in clear over a network.
            raise ValueError("must use https:// (http:// only for 127.0.0.1, ::1 or localhost)")
        return value

    @field_validator("database_url")
    @classmethod
    def _database(cls, value: str) -> str:
        try:
            normalize_url(value)
        except ValueError:
            raise ValueError(
                "must look like sqlite:///path/to/file.sqlite3 or postgresql://user@host/db"
            ) from None
        return value

    @property
    def webhook_mode(self) -> bool:
        return bool(self.webhook_url)

    @property
    def is_shop(self) -> bool:
        return self.access_mode is AccessMode.SHOP

    @property
    def stars_enabled(self) -> bool:
        """Wallets may be topped up with Telegram Stars (shop mode with STARS_RATE)."""
        return self.is_shop and self.stars_rate is not None


def _is_loopback(url: str) -> bool:
    """Is the URL's host this machine (127.0.0.0/8, ::1, localhost)?"""
    with contextlib.suppress(ValueError):
        host = URL(url).host or ""
        return host.lower() == "localhost" or ipaddress.ip_address(host.strip("[]")).is_loopback
    return False


def describe_errors(error: ValidationError) -> list[str]:
    """One clear line per problem, naming the environment variable, never its value."""
    lines = []
    for item in error.errors():
        name = str(item["loc"][0]).upper() if item["loc"] else "settings"
        if not item["loc"] and item["type"] == "value_error":
            # A rule over several settings: its message names them, one line each.
            lines.extend(str(item["ctx"]["error"]).splitlines())
        elif item["type"] == "missing":
            lines.append(f"{name} is not set: copy .env.example to .env and fill it in")
        else:
            lines.append(f"{name} is invalid: {item['msg']}")
    return lines
