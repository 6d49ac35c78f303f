-- Outbox delivery (SPEC §4): rows are claimed with a lease, delivered in
-- order per session within each channel (webhook, email, payout).

ALTER TABLE outbox ADD COLUMN channel TEXT NOT NULL DEFAULT 'webhook';
ALTER TABLE outbox ADD COLUMN lease_owner TEXT;
ALTER TABLE outbox ADD COLUMN leased_until INTEGER;

UPDATE outbox SET channel = CASE
    WHEN topic LIKE 'email:%' THEN 'email'
    WHEN topic = 'payout' THEN 'payout'
    ELSE 'webhook' END;

CREATE INDEX outbox_order ON outbox (session_id, channel, state, id);
