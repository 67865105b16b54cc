-- 0002: orders.updated_at (backfilled), and the indexes the hot queries need.
-- The queries name these indexes (INDEXED BY): renaming one breaks them loudly.

ALTER TABLE orders ADD COLUMN updated_at REAL NOT NULL DEFAULT 0;
UPDATE orders SET updated_at = created_at;

-- The poller: waiting orders, and received ones that asked for another code, by due time.
-- The WHERE must stay word for word the one in storage/orders.py (list_due) to be used.
CREATE INDEX orders_due ON orders (next_poll_at)
    WHERE status = 'waiting' OR (status = 'received' AND want_more = 1);

-- The per-user active-order limit (and the held total of wallet.balance).
CREATE INDEX orders_active ON orders (user_id) WHERE status IN ('purchasing', 'waiting');

-- Open orders: restart recovery (list_open) and the user's "my orders" list.
CREATE INDEX orders_open ON orders (user_id) WHERE status IN ('purchasing', 'waiting', 'received');

-- Per-minute purchase limit and the user's history; replaces orders_user.
CREATE INDEX orders_user_created ON orders (user_id, created_at);
DROP INDEX orders_user;

-- Stats by creation time.
CREATE INDEX orders_created ON orders (created_at);

-- Codes not yet shown to the user (resent after a restart).
CREATE INDEX codes_undelivered ON codes (id) WHERE delivered_at IS NULL;

-- Stats over ledger rows by time (refunds, sales).
CREATE INDEX ledger_kind_created ON ledger (kind, created_at);
