-- 0003: Telegram Stars top-ups. One row per payment, keyed by Telegram's charge id.
-- The money itself moves through the ledger (kinds credit/debit, keys stars:{charge_id},
-- stars-refund:{charge_id}:{n}, stars-restore:{charge_id}:{n}), in the same transaction
-- as each status move here, so the ledger schema does not change.

CREATE TABLE payments (
    id              INTEGER PRIMARY KEY,
    charge_id       TEXT    NOT NULL UNIQUE,         -- telegram_payment_charge_id
    user_id         INTEGER NOT NULL REFERENCES users (id),
    stars           INTEGER NOT NULL CHECK (stars > 0),
    amount          INTEGER NOT NULL CHECK (amount > 0),  -- credited, minor units
    currency        TEXT    NOT NULL,
    payload         TEXT    NOT NULL,
    source          TEXT    NOT NULL CHECK (source IN ('update', 'reconciled')),
    status          TEXT    NOT NULL CHECK (status IN ('credited', 'refunding', 'refunded')),
    refund_attempts INTEGER NOT NULL DEFAULT 0,
    created_at      REAL    NOT NULL,
    updated_at      REAL    NOT NULL,
    refund_seen_at  REAL                             -- Telegram reported the refund
);

CREATE INDEX payments_user ON payments (user_id, created_at);
CREATE INDEX payments_created ON payments (created_at);
CREATE INDEX payments_refunding ON payments (updated_at) WHERE status = 'refunding';
