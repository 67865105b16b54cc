"""The sandbox's own settings (environment, prefix SANDBOX_), checked to stay harmless:
loopback addresses only, and no token that looks like a real one."""

from __future__ import annotations

import ipaddress
import re
from decimal import Decimal

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

# A real bot token: the bot's numeric id, a colon and 35 url-safe characters.
REAL_BOT_TOKEN = re.compile(r"^\d{5,}:[A-Za-z0-9_-]{30,}$")
# A real SMS-Man key: a long run of letters and digits.
REAL_SMSMAN_TOKEN = re.compile(r"^[A-Za-z0-9]{20,}$")


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class SandboxSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="SANDBOX_", extra="ignore")

    host: str = "127.0.0.1"
    port: int = Field(default=8765, ge=0, le=65535)  # 0: any free port
    bot_token: str = "100000:sandbox-not-a-real-token"
    smsman_token: str = "sandbox-key"
    # seconds until a code arrives, "MIN-MAX"
    code_delay: str = "5-60"
    no_code_every: int = Field(default=6, ge=0)  # every Nth number never gets a code
    credit: Decimal = Field(default=Decimal(1000), gt=0, le=1_000_000)
    currency: str = "RUB"
    activation_timeout: int = Field(default=1200, ge=10, le=1200)
    sms_poll_interval: float = Field(default=2, gt=0, le=60)
    admin_id: int = 1001  # Alice; her Russian account is admin_id + 1
    user_id: int = 2001  # Bob; his Russian account is user_id + 1

    @field_validator("host")
    @classmethod
    def _loopback(cls, host: str) -> str:
        if not is_loopback(host):
            raise ValueError("the sandbox listens on loopback only (127.0.0.1, ::1, localhost)")
        return host

    @field_validator("bot_token")
    @classmethod
    def _fake_bot_token(cls, token: str) -> str:
        if REAL_BOT_TOKEN.match(token):
            raise ValueError("looks like a real bot token; the sandbox takes only made-up ones")
        if not re.match(r"^\d+:\S+$", token):
            raise ValueError("must look like 123:anything (a made-up token)")
        return token

    @field_validator("smsman_token")
    @classmethod
    def _fake_smsman_token(cls, token: str) -> str:
        if REAL_SMSMAN_TOKEN.match(token):
            raise ValueError("looks like a real SMS-Man key; the sandbox takes only made-up ones")
        return token

    @field_validator("code_delay")
    @classmethod
    def _delay(cls, value: str) -> str:
        cls.parse_delay(value)
        return value

    @staticmethod
    def parse_delay(value: str) -> tuple[float, float]:
        low, sep, high = value.partition("-")
        try:
            pair = (float(low), float(high if sep else low))
        except ValueError:
            raise ValueError("MIN-MAX seconds, e.g. 5-60") from None
        if not 0 <= pair[0] <= pair[1] <= 3600:
            raise ValueError("MIN-MAX seconds with 0 <= MIN <= MAX <= 3600")
        return pair

    @property
    def delay(self) -> tuple[float, float]:
        return self.parse_delay(self.code_delay)
