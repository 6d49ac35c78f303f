-- Verification reads each presence event's connection too (platform
-- presence): the covering index carries it, so the events of a page stay
-- an index-only range.
DROP INDEX session_events_by_session;
CREATE INDEX session_events_by_session ON session_events (session_id, seq) INCLUDE (type, party, at, connection);
