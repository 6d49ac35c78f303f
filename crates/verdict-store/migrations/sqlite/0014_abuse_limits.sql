-- Abuse limits (docs/limits.md).
--
-- Pending requests by customer (at most max_open_requests_per_customer
-- open) and by age (the sweeper expires them after request_ttl_seconds):
-- partial, so that matched and ended requests, the bulk, are not indexed.
CREATE INDEX requests_pending_by_customer ON requests (customer_id) WHERE status = 'pending';
CREATE INDEX requests_pending_by_age ON requests (created_at) WHERE status = 'pending';

-- One row per customer who ever opened a request: creating a request locks
-- it first, so that two concurrent creations by one customer count each
-- other (on PostgreSQL; SQLite's single writer serialises them anyway).
CREATE TABLE request_customers (
    customer_id TEXT NOT NULL PRIMARY KEY
) STRICT;

-- Whose presence counts for a session with a room (policy presence_source):
-- 'platform' or 'any'; NULL (rooms from before it, sessions without one)
-- reads as 'any', the union they had.
ALTER TABLE sessions ADD COLUMN presence_source TEXT
    CHECK (presence_source = 'platform' OR presence_source = 'any');

-- The providers' queue in page order, for GET /v1/assignments of everyone.
CREATE INDEX assignments_in_order ON assignments (created_at, request_id, provider_id);
