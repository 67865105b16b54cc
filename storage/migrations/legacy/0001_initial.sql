-- 0001: the tables. Money is integer minor units; times are Unix seconds (REAL).

CREATE TABLE users (
    id          INTEGER PRIMARY KEY,                 -- Telegram user id
    language    TEXT,
    first_seen  REAL    NOT NULL,
    blocked     INTEGER NOT NULL DEFAULT 0 CHECK (blocked IN (0, 1)),
    banned      INTEGER NOT NULL DEFAULT 0 CHECK (banned IN (0, 1)),
    balance     INTEGER NOT NULL DEFAULT 0           -- available (holds already taken off)
);

CREATE TABLE orders (
    id              INTEGER PRIMARY KEY,
    user_id         INTEGER NOT NULL REFERENCES users (id),
    chat_id         INTEGER NOT NULL,
    request_id      INTEGER UNIQUE,                  -- SMS-Man request id, once bought
    country_id      INTEGER NOT NULL,
    country_title   TEXT    NOT NULL,
    service_id      INTEGER NOT NULL,
    service_title   TEXT    NOT NULL,
    number          TEXT,
    price           INTEGER NOT NULL CHECK (price >= 0),
    cost            INTEGER NOT NULL CHECK (cost >= 0),
    currency        TEXT    NOT NULL,
    status          TEXT    NOT NULL CHECK (status IN (
                        'purchasing', 'waiting', 'received', 'finished',
                        'cancelled', 'expired', 'failed')),
    money           TEXT    NOT NULL CHECK (money IN ('none', 'held', 'captured', 'released')),
    created_at      REAL    NOT NULL,
    expires_at      REAL,
    next_poll_at    REAL,
    message_id      INTEGER,
    card_text       TEXT,
    multiple_sms    INTEGER NOT NULL DEFAULT 0 CHECK (multiple_sms IN (0, 1)),
    want_more       INTEGER NOT NULL DEFAULT 0 CHECK (want_more IN (0, 1)),
    poll_failures   INTEGER NOT NULL DEFAULT 0,
    idempotency_key TEXT    NOT NULL UNIQUE
);

CREATE INDEX orders_user ON orders (user_id);

CREATE TABLE codes (
    id           INTEGER PRIMARY KEY,
    order_id     INTEGER NOT NULL REFERENCES orders (id),
    code         TEXT    NOT NULL,
    received_at  REAL    NOT NULL,
    delivered_at REAL,
    message_id   INTEGER,
    UNIQUE (order_id, code)
);

CREATE TABLE ledger (
    id              INTEGER PRIMARY KEY,
    user_id         INTEGER NOT NULL REFERENCES users (id),
    amount          INTEGER NOT NULL,                -- signed: credit +x, debit -x, hold -price,
                                                     -- capture 0, release +price
    kind            TEXT    NOT NULL CHECK (kind IN ('credit', 'debit', 'hold', 'capture', 'release')),
    order_id        INTEGER REFERENCES orders (id),
    note            TEXT,
    created_at      REAL    NOT NULL,
    idempotency_key TEXT    NOT NULL UNIQUE
);

CREATE INDEX ledger_user ON ledger (user_id);
CREATE INDEX ledger_order ON ledger (order_id) WHERE order_id IS NOT NULL;

CREATE TABLE kv (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
) WITHOUT ROWID;
