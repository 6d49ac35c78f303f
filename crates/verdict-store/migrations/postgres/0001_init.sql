-- verdict schema, PostgreSQL dialect. The same tables, columns and
-- constraints as the SQLite schema, so one set of statements (engine.rs)
-- serves both: instants are BIGINT milliseconds since the Unix epoch (UTC;
-- `to_timestamp(created_at / 1000.0)` reads one), money BIGINT cents, JSON
-- TEXT kept verbatim.

CREATE TABLE sessions (
    id                    TEXT   NOT NULL PRIMARY KEY,
    kind                  TEXT   NOT NULL CHECK (kind IN ('video', 'chat', 'diagnostic')),
    status                TEXT   NOT NULL CHECK (status IN ('waiting', 'live', 'completed', 'cancelled', 'expired')),
    reason                TEXT   CHECK (reason IN ('completed', 'too_short', 'no_show_customer', 'no_show_provider', 'no_show_both', 'never_overlapped')),
    customer_id           TEXT   NOT NULL,
    provider_id           TEXT   NOT NULL,
    provider_account      TEXT,
    request_id            TEXT,
    scheduled_start       BIGINT,
    created_at            BIGINT NOT NULL,
    started_at            BIGINT,
    ended_at              BIGINT,
    ended_by              TEXT,
    billable_seconds      BIGINT CHECK (billable_seconds >= 0),
    price_mode            TEXT   NOT NULL CHECK (price_mode IN ('flat', 'per_minute')),
    price_amount_cents    BIGINT NOT NULL CHECK (price_amount_cents >= 0),
    currency              TEXT   NOT NULL,
    charged_cents         BIGINT CHECK (charged_cents >= 0),
    metadata              TEXT,
    policy                TEXT,
    customer_last_seen_at BIGINT,
    provider_last_seen_at BIGINT,
    CONSTRAINT sessions_terminal_iff_ended
        CHECK ((status IN ('completed', 'cancelled', 'expired')) = (ended_at IS NOT NULL)),
    CONSTRAINT sessions_terminal_has_reason
        CHECK ((status IN ('completed', 'cancelled', 'expired')) = (reason IS NOT NULL))
);

CREATE INDEX sessions_by_customer ON sessions (customer_id);
CREATE INDEX sessions_by_provider ON sessions (provider_id);
CREATE INDEX sessions_by_status_ended ON sessions (status, ended_at);

CREATE TABLE session_events (
    seq        BIGINT NOT NULL GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    session_id TEXT   NOT NULL REFERENCES sessions (id),
    type       TEXT   NOT NULL CHECK (type IN ('created', 'joined', 'left', 'ended')),
    party      TEXT   CHECK (party IN ('customer', 'provider')),
    actor_role TEXT   NOT NULL,
    actor_id   TEXT   NOT NULL,
    at         BIGINT NOT NULL,
    data       TEXT
);

CREATE INDEX session_events_by_session ON session_events (session_id, seq);
CREATE UNIQUE INDEX session_events_one_end ON session_events (session_id) WHERE type = 'ended';

CREATE FUNCTION session_events_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'session_events is append-only';
END
$$;

CREATE TRIGGER session_events_append_only
    BEFORE UPDATE OR DELETE ON session_events
    FOR EACH ROW EXECUTE FUNCTION session_events_append_only();

CREATE TABLE notifications (
    id             BIGINT NOT NULL GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    recipient_role TEXT   NOT NULL CHECK (recipient_role IN ('customer', 'provider')),
    recipient_id   TEXT   NOT NULL,
    session_id     TEXT   NOT NULL REFERENCES sessions (id),
    kind           TEXT   NOT NULL,
    reason         TEXT,
    created_at     BIGINT NOT NULL
);

CREATE UNIQUE INDEX notifications_once ON notifications (session_id, recipient_role, kind);
CREATE INDEX notifications_by_recipient ON notifications (recipient_role, recipient_id, id);

CREATE TABLE outbox (
    id           BIGINT NOT NULL GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    session_id   TEXT   REFERENCES sessions (id),
    topic        TEXT   NOT NULL,
    dedupe_key   TEXT   NOT NULL UNIQUE,
    payload      TEXT   NOT NULL,
    state        TEXT   NOT NULL DEFAULT 'pending' CHECK (state IN ('pending', 'delivered', 'dead')),
    attempts     BIGINT NOT NULL DEFAULT 0,
    due_at       BIGINT NOT NULL,
    created_at   BIGINT NOT NULL,
    delivered_at BIGINT,
    last_error   TEXT
);

CREATE INDEX outbox_due ON outbox (state, due_at);
CREATE INDEX outbox_by_session ON outbox (session_id, id);
