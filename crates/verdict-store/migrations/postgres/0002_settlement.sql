-- Settlement (SPEC §3): marketplace users, the double-entry ledger, payouts,
-- requests and the provider queue, and idempotency keys.

CREATE TABLE users (
    id             TEXT   NOT NULL PRIMARY KEY,
    email          TEXT,
    display_name   TEXT,
    stripe_account TEXT,
    updated_at     BIGINT NOT NULL
);

CREATE TABLE ledger_postings (
    id         BIGINT NOT NULL GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    session_id TEXT   NOT NULL REFERENCES sessions (id),
    kind       TEXT   NOT NULL CHECK (kind IN ('settlement', 'reversal')),
    currency   TEXT   NOT NULL,
    created_at BIGINT NOT NULL
);

CREATE UNIQUE INDEX ledger_one_settlement ON ledger_postings (session_id) WHERE kind = 'settlement';

CREATE TABLE ledger_lines (
    id           BIGINT NOT NULL GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    posting_id   BIGINT NOT NULL REFERENCES ledger_postings (id),
    account      TEXT   NOT NULL,
    amount_cents BIGINT NOT NULL
);

CREATE INDEX ledger_lines_by_posting ON ledger_lines (posting_id);
CREATE INDEX ledger_lines_by_account ON ledger_lines (account);

CREATE FUNCTION ledger_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'the ledger is append-only';
END
$$;

CREATE TRIGGER ledger_postings_append_only BEFORE UPDATE OR DELETE ON ledger_postings
    FOR EACH ROW EXECUTE FUNCTION ledger_append_only();
CREATE TRIGGER ledger_lines_append_only BEFORE UPDATE OR DELETE ON ledger_lines
    FOR EACH ROW EXECUTE FUNCTION ledger_append_only();

CREATE TABLE payouts (
    id             TEXT   NOT NULL PRIMARY KEY,
    session_id     TEXT   NOT NULL UNIQUE REFERENCES sessions (id),
    provider_id    TEXT   NOT NULL,
    destination    TEXT,
    amount_cents   BIGINT NOT NULL CHECK (amount_cents >= 0),
    currency       TEXT   NOT NULL,
    state          TEXT   NOT NULL CHECK (state IN ('pending', 'paid', 'failed')),
    provider       TEXT   NOT NULL CHECK (provider IN ('stripe', 'manual')),
    transfer_id    TEXT,
    failure_reason TEXT,
    created_at     BIGINT NOT NULL,
    updated_at     BIGINT NOT NULL
);

CREATE INDEX payouts_by_provider ON payouts (provider_id);

CREATE FUNCTION payouts_only_for_completed_sessions() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF (SELECT status FROM sessions WHERE id = NEW.session_id) IS DISTINCT FROM 'completed' THEN
        RAISE EXCEPTION 'payouts_only_for_completed_sessions';
    END IF;
    RETURN NEW;
END
$$;

CREATE TRIGGER payouts_only_for_completed_sessions BEFORE INSERT ON payouts
    FOR EACH ROW EXECUTE FUNCTION payouts_only_for_completed_sessions();

CREATE TABLE requests (
    id                     TEXT   NOT NULL PRIMARY KEY,
    customer_id            TEXT   NOT NULL,
    kind                   TEXT   NOT NULL CHECK (kind IN ('video', 'chat', 'diagnostic')),
    price_mode             TEXT   NOT NULL CHECK (price_mode IN ('flat', 'per_minute')),
    price_amount_cents     BIGINT NOT NULL CHECK (price_amount_cents >= 0),
    currency               TEXT   NOT NULL,
    candidate_provider_ids TEXT   NOT NULL,
    status                 TEXT   NOT NULL CHECK (status IN ('pending', 'matched', 'completed', 'cancelled', 'expired')),
    session_id             TEXT   UNIQUE,
    created_at             BIGINT NOT NULL,
    updated_at             BIGINT NOT NULL
);

CREATE TABLE assignments (
    request_id  TEXT   NOT NULL REFERENCES requests (id),
    provider_id TEXT   NOT NULL,
    created_at  BIGINT NOT NULL,
    PRIMARY KEY (request_id, provider_id)
);

CREATE INDEX assignments_by_provider ON assignments (provider_id, created_at);

CREATE TABLE idempotency_keys (
    scope       TEXT   NOT NULL,
    key         TEXT   NOT NULL,
    fingerprint TEXT   NOT NULL,
    resource_id TEXT   NOT NULL,
    created_at  BIGINT NOT NULL,
    PRIMARY KEY (scope, key)
);
