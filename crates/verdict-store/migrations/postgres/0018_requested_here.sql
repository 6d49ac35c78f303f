-- metadata_consistency compares each session verdict ended itself with
-- its request, when it has one. A batch of the scan finds those sessions
-- here (an index range), not by reading every session row of the batch
-- (a sixth of the receipts statement's time, with no request at all).
CREATE INDEX sessions_requested_here ON sessions (id)
    WHERE import_run IS NULL AND ended_at IS NOT NULL AND request_id IS NOT NULL;
