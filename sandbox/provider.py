"""The sandbox SMS-Man: the strict fake with the realistic catalogue and codes that come
by themselves, after a random delay, or never.
"""

from __future__ import annotations

import random
import time
from decimal import Decimal
from typing import Any

from sandbox import catalogue
from sandbox.smsman import FakeSmsMan


class SandboxSmsMan(FakeSmsMan):
    """Every `no_code_every`-th number never gets a code (0: all get one); the others get
    one after a random `code_delay` (min, max) seconds."""

    def __init__(
        self,
        token: str,
        *,
        code_delay: tuple[float, float] = (5.0, 60.0),
        no_code_every: int = 6,
        seed: int = 17,
    ) -> None:
        super().__init__(token, seed=seed)
        self.code_delay = code_delay
        self.no_code_every = no_code_every
        self.numbers_given = 0
        self.balance = Decimal("100000.00")
        self._delays = random.Random(seed + 1)
        catalogue.fill(self, seed=seed)

    def _m_get_number(self, params: dict[str, str]) -> dict[str, Any]:
        body = super()._m_get_number(params)
        request = self.requests.get(body.get("request_id", -1))
        if request is None:  # an error answer
            return body
        self.numbers_given += 1
        if self.no_code_every and self.numbers_given % self.no_code_every == 0:
            return body
        low, high = self.code_delay
        request.code_due = time.monotonic() + self._delays.uniform(low, high)
        return body

    def _m_set_status(self, params: dict[str, str]) -> dict[str, Any]:
        body = super()._m_set_status(params)
        request = self._request(params)
        # another SMS on the same number (MULTIPLE_SMS) comes after a delay too
        if request is not None and body.get("success") and request.statuses[-1:] == ["retrysms"]:
            low, high = self.code_delay
            request.code_due = time.monotonic() + self._delays.uniform(low, high)
        return body
