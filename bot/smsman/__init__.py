"""SMS-Man control API: the client, its typed results and its typed errors."""

from .client import SmsManClient
from .errors import (
    InsufficientBalance,
    NoNumbers,
    ProviderUnavailable,
    RequestGone,
    SmsManError,
    WrongStatus,
    WrongToken,
)
from .types import Application, Balance, Country, Limit, Number, Price, Sms, Status

__all__ = [
    "Application",
    "Balance",
    "Country",
    "InsufficientBalance",
    "Limit",
    "NoNumbers",
    "Number",
    "Price",
    "ProviderUnavailable",
    "RequestGone",
    "Sms",
    "SmsManClient",
    "SmsManError",
    "Status",
    "WrongStatus",
    "WrongToken",
]
