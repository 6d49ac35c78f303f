-- Import and repair (SPEC §7): corrections are audited events, payouts can
-- come from the old system and be reversed.

CREATE TABLE session_events_next (
    seq        INTEGER NOT NULL PRIMARY KEY AUTOINCREMENT,
    session_id TEXT    NOT NULL REFERENCES sessions (id),
    type       TEXT    NOT NULL CHECK (type IN ('created', 'joined', 'left', 'ended', 'corrected')),
    party      TEXT    CHECK (party IN ('customer', 'provider')),
    actor_role TEXT    NOT NULL,
    actor_id   TEXT    NOT NULL,
    at         INTEGER NOT NULL,
    data       TEXT
) STRICT;
INSERT INTO session_events_next (seq, session_id, type, party, actor_role, actor_id, at, data)
    SELECT seq, session_id, type, party, actor_role, actor_id, at, data FROM session_events;
DROP TABLE session_events;
ALTER TABLE session_events_next RENAME TO session_events;

CREATE INDEX session_events_by_session ON session_events (session_id, seq);
CREATE UNIQUE INDEX session_events_one_end ON session_events (session_id) WHERE type = 'ended';
CREATE TRIGGER session_events_append_only_update BEFORE UPDATE ON session_events
BEGIN
    SELECT RAISE(ABORT, 'session_events is append-only');
END;
CREATE TRIGGER session_events_append_only_delete BEFORE DELETE ON session_events
BEGIN
    SELECT RAISE(ABORT, 'session_events is append-only');
END;

-- Payouts recorded by the old system are kept as recorded (the check that
-- a payout belongs to a completed session applies to verdict's own).
ALTER TABLE payouts ADD COLUMN imported INTEGER NOT NULL DEFAULT 0;
ALTER TABLE payouts ADD COLUMN reversed_at INTEGER;

DROP TRIGGER payouts_only_for_completed_sessions;
CREATE TRIGGER payouts_only_for_completed_sessions BEFORE INSERT ON payouts
WHEN NEW.imported = 0 AND (SELECT status FROM sessions WHERE id = NEW.session_id) IS NOT 'completed'
BEGIN
    SELECT RAISE(ABORT, 'payouts_only_for_completed_sessions');
END;
