"""The bot's Prometheus metrics: every family in one place, on a registry of its own.

Counters and histograms are updated where things happen (bot/smsman/client.py,
bot/flood.py, bot/poller.py, bot/services/orders.py); the gauges that describe state
(orders by state, the breaker) are read when /metrics is scraped (bot/http.py).
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

# The bot's own registry: the global one would also export whatever else a process
# (a test runner, another library) registered there.
REGISTRY = CollectorRegistry(auto_describe=True)

ORDERS = Gauge(
    "bot_orders",
    "Orders in the database by state.",
    ["state"],
    registry=REGISTRY,
)
CODES_DELIVERED = Counter(
    "bot_codes_delivered",
    "Codes whose message Telegram accepted.",
    registry=REGISTRY,
)
CODE_DELAY = Histogram(
    "bot_code_delivery_delay_seconds",
    "From the code being available (stored) to its message being accepted by Telegram.",
    buckets=(0.1, 0.25, 0.5, 1, 2, 3, 4, 5, 7.5, 10, 20, 30, 60, 120, 300),
    registry=REGISTRY,
)
SMSMAN_CALLS = Counter(
    "bot_smsman_calls",
    "SMS-Man API calls by method and outcome (ok, or the error's kind).",
    ["method", "outcome"],
    registry=REGISTRY,
)
TELEGRAM_REQUESTS = Counter(
    "bot_telegram_requests",
    "Bot API calls (getUpdates aside) by method and outcome (ok, or the error's kind).",
    ["method", "outcome"],
    registry=REGISTRY,
)
TELEGRAM_429 = Counter(
    "bot_telegram_flood_waits",
    "Bot API answers 429 (flood control) by method.",
    ["method"],
    registry=REGISTRY,
)
POLL_LAG = Histogram(
    "bot_poller_lag_seconds",
    "How late a get-sms poll starts after it was due.",
    buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30),
    registry=REGISTRY,
)
BREAKER = Gauge(
    "bot_smsman_breaker",
    "The SMS-Man circuit breaker: 1 for its current state, 0 for the others.",
    ["state"],
    registry=REGISTRY,
)
