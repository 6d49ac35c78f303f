-- Presence from the video platform (LiveKit, Daily, Twilio webhooks).

-- Where the session meets on the platform, and who is who there.
ALTER TABLE sessions ADD COLUMN room TEXT;
ALTER TABLE sessions ADD COLUMN customer_identity TEXT;
ALTER TABLE sessions ADD COLUMN provider_identity TEXT;
-- Until when late platform events may still change the outcome (NULL:
-- final at the end), and when the sweeper made it final: the ledger
-- posting, the payout and the receipts of such a session wait for that.
ALTER TABLE sessions ADD COLUMN finalizes_at BIGINT;
ALTER TABLE sessions ADD COLUMN finalized_at BIGINT;

CREATE UNIQUE INDEX sessions_by_room ON sessions (room) WHERE room IS NOT NULL;
CREATE INDEX sessions_finalizing ON sessions (finalizes_at) WHERE finalized_at IS NULL;

-- The platform connection a presence event belongs to (NULL: the party's
-- own calls).
ALTER TABLE session_events ADD COLUMN connection TEXT;

-- Every platform delivery once, by the platform's event id: a repeat is
-- recognised and changes nothing. `disposition` says what became of it
-- (`late`: after the finalization window, and it would have changed the
-- outcome: the review queue lists the session).
CREATE TABLE presence_deliveries (
    source      TEXT    NOT NULL CHECK (source IN ('livekit', 'daily', 'twilio')),
    event_id    TEXT    NOT NULL,
    session_id  TEXT    NOT NULL REFERENCES sessions (id),
    party       TEXT    NOT NULL CHECK (party IN ('customer', 'provider')),
    connection  TEXT    NOT NULL,
    kind        TEXT    NOT NULL CHECK (kind IN ('joined', 'left')),
    at          BIGINT NOT NULL,
    received_at BIGINT NOT NULL,
    disposition TEXT    NOT NULL CHECK (disposition IN ('recorded', 'reconsidered', 'late', 'late_unchanged')),
    PRIMARY KEY (source, event_id)
);

CREATE INDEX presence_deliveries_late ON presence_deliveries (session_id) WHERE disposition = 'late';
