-- verdict schema, SQLite dialect. Instants are INTEGER milliseconds since the
-- Unix epoch (UTC); money is INTEGER cents; JSON is TEXT.

CREATE TABLE sessions (
    id                    TEXT    NOT NULL PRIMARY KEY,
    kind                  TEXT    NOT NULL CHECK (kind IN ('video', 'chat', 'diagnostic')),
    status                TEXT    NOT NULL CHECK (status IN ('waiting', 'live', 'completed', 'cancelled', 'expired')),
    reason                TEXT    CHECK (reason IN ('completed', 'too_short', 'no_show_customer', 'no_show_provider', 'no_show_both', 'never_overlapped')),
    customer_id           TEXT    NOT NULL,
    provider_id           TEXT    NOT NULL,
    provider_account      TEXT,
    request_id            TEXT,
    scheduled_start       INTEGER,
    created_at            INTEGER NOT NULL,
    started_at            INTEGER,
    ended_at              INTEGER,
    ended_by              TEXT,
    billable_seconds      INTEGER CHECK (billable_seconds >= 0),
    price_mode            TEXT    NOT NULL CHECK (price_mode IN ('flat', 'per_minute')),
    price_amount_cents    INTEGER NOT NULL CHECK (price_amount_cents >= 0),
    currency              TEXT    NOT NULL,
    charged_cents         INTEGER CHECK (charged_cents >= 0),
    metadata              TEXT,
    -- The policy values the session was decided with (JSON), set at the end.
    policy                TEXT,
    customer_last_seen_at INTEGER,
    provider_last_seen_at INTEGER,
    CONSTRAINT sessions_terminal_iff_ended
        CHECK ((status IN ('completed', 'cancelled', 'expired')) = (ended_at IS NOT NULL)),
    CONSTRAINT sessions_terminal_has_reason
        CHECK ((status IN ('completed', 'cancelled', 'expired')) = (reason IS NOT NULL))
) STRICT;

CREATE INDEX sessions_by_customer ON sessions (customer_id);
CREATE INDEX sessions_by_provider ON sessions (provider_id);
CREATE INDEX sessions_by_status_ended ON sessions (status, ended_at);

-- The audit trail: presence and state changes, append-only.
CREATE TABLE session_events (
    seq        INTEGER NOT NULL PRIMARY KEY AUTOINCREMENT,
    session_id TEXT    NOT NULL REFERENCES sessions (id),
    type       TEXT    NOT NULL CHECK (type IN ('created', 'joined', 'left', 'ended')),
    party      TEXT    CHECK (party IN ('customer', 'provider')),
    actor_role TEXT    NOT NULL,
    actor_id   TEXT    NOT NULL,
    at         INTEGER NOT NULL,
    data       TEXT
) STRICT;

CREATE INDEX session_events_by_session ON session_events (session_id, seq);
-- One transition per session, whatever the code does.
CREATE UNIQUE INDEX session_events_one_end ON session_events (session_id) WHERE type = 'ended';

CREATE TRIGGER session_events_append_only_update BEFORE UPDATE ON session_events
BEGIN
    SELECT RAISE(ABORT, 'session_events is append-only');
END;

CREATE TRIGGER session_events_append_only_delete BEFORE DELETE ON session_events
BEGIN
    SELECT RAISE(ABORT, 'session_events is append-only');
END;

CREATE TABLE notifications (
    id             INTEGER NOT NULL PRIMARY KEY AUTOINCREMENT,
    recipient_role TEXT    NOT NULL CHECK (recipient_role IN ('customer', 'provider')),
    recipient_id   TEXT    NOT NULL,
    session_id     TEXT    NOT NULL REFERENCES sessions (id),
    kind           TEXT    NOT NULL,
    reason         TEXT,
    created_at     INTEGER NOT NULL
) STRICT;

CREATE UNIQUE INDEX notifications_once ON notifications (session_id, recipient_role, kind);
CREATE INDEX notifications_by_recipient ON notifications (recipient_role, recipient_id, id);

-- Side effects waiting to leave the service (SPEC §4), written in the same
-- transaction as the change that causes them.
CREATE TABLE outbox (
    id           INTEGER NOT NULL PRIMARY KEY AUTOINCREMENT,
    session_id   TEXT    REFERENCES sessions (id),
    topic        TEXT    NOT NULL,
    -- Deduplicates: one row per (session, effect), whatever retries happen.
    dedupe_key   TEXT    NOT NULL UNIQUE,
    payload      TEXT    NOT NULL,
    state        TEXT    NOT NULL DEFAULT 'pending' CHECK (state IN ('pending', 'delivered', 'dead')),
    attempts     INTEGER NOT NULL DEFAULT 0,
    due_at       INTEGER NOT NULL,
    created_at   INTEGER NOT NULL,
    delivered_at INTEGER,
    last_error   TEXT
) STRICT;

CREATE INDEX outbox_due ON outbox (state, due_at);
CREATE INDEX outbox_by_session ON outbox (session_id, id);
