"""Typed SMS-Man errors. Messages never carry the API token."""

from __future__ import annotations


class SmsManError(Exception):
    """A business error SMS-Man answered, or one we could not classify."""

    def __init__(self, code: str | None, message: str) -> None:
        self.code = code
        self.message = message
        super().__init__(f"SMS-Man error {code or '?'}: {message}")


class WrongToken(SmsManError):
    """The API key is wrong or missing."""


class NoNumbers(SmsManError):
    """No stock, or SMS-Man's rate limiter: back off."""


class InsufficientBalance(SmsManError):
    """The operator's SMS-Man balance is below the price."""


class RequestGone(SmsManError):
    """SMS-Man says "Current request not exists": expired, cancelled or unknown request."""


class WrongStatus(SmsManError):
    """set-status transition refused (e.g. reject after a code came)."""


class ProviderUnavailable(SmsManError):
    """HTTP 5xx, HTML instead of JSON, malformed JSON, timeout or connection reset.

    For get-number and set-status the outcome is unknown: the call may have happened.
    """
