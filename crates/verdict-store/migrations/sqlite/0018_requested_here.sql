-- metadata_consistency compares each session verdict ended itself with
-- its request, when it has one. On PostgreSQL a batch of the scan finds
-- those sessions here (an index range), not by reading every session row
-- of the batch. SQLite probes each session and does not read it: the index
-- is kept so that both backends have the same schema.
CREATE INDEX sessions_requested_here ON sessions (id)
    WHERE import_run IS NULL AND ended_at IS NOT NULL AND request_id IS NOT NULL;
