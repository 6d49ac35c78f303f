-- Issue 27: the metadata_consistency section and the review queue's total.

-- The sessions verdict ended itself (imported history has no receipts of
-- its own): metadata_consistency reads them alone, so a database of
-- imported history costs verification nothing more.
CREATE INDEX sessions_settled_here ON sessions (id, ended_at)
    WHERE import_run IS NULL AND ended_at IS NOT NULL;

-- Sessions needing review, per kind and reason ('*': any reason), as the
-- most recent full pass (verify, or the server's background pass) counted
-- them at as_of: the review queue's total, never counted per request.
CREATE TABLE review_counts (
    kind     TEXT    NOT NULL,
    reason   TEXT    NOT NULL,
    sessions BIGINT NOT NULL CHECK (sessions >= 0),
    as_of    BIGINT NOT NULL,
    PRIMARY KEY (kind, reason)
);

-- metadata_consistency looks up each session's `session.ended` message: a
-- lookup in this index alone, not a row read per outbox row of the session
-- (4 s of 5.5 s on 500,000 sessions on SQLite without it). Partial: only
-- those messages are indexed (one a session, and its fan-out copies).
CREATE INDEX outbox_session_ended ON outbox (session_id, topic)
    WHERE topic = 'webhook:session.ended';
