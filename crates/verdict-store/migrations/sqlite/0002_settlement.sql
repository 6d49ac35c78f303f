-- Settlement (SPEC §3): marketplace users, the double-entry ledger, payouts,
-- requests and the provider queue, and idempotency keys.

CREATE TABLE users (
    id             TEXT    NOT NULL PRIMARY KEY,
    email          TEXT,
    display_name   TEXT,
    stripe_account TEXT,
    updated_at     INTEGER NOT NULL
) STRICT;

-- One posting per settlement; corrections are new postings. Lines are signed
-- cents (debit positive, credit negative) and each posting sums to zero.
CREATE TABLE ledger_postings (
    id         INTEGER NOT NULL PRIMARY KEY AUTOINCREMENT,
    session_id TEXT    NOT NULL REFERENCES sessions (id),
    kind       TEXT    NOT NULL CHECK (kind IN ('settlement', 'reversal')),
    currency   TEXT    NOT NULL,
    created_at INTEGER NOT NULL
) STRICT;

CREATE UNIQUE INDEX ledger_one_settlement ON ledger_postings (session_id) WHERE kind = 'settlement';

CREATE TABLE ledger_lines (
    id           INTEGER NOT NULL PRIMARY KEY AUTOINCREMENT,
    posting_id   INTEGER NOT NULL REFERENCES ledger_postings (id),
    account      TEXT    NOT NULL,
    amount_cents INTEGER NOT NULL
) STRICT;

CREATE INDEX ledger_lines_by_posting ON ledger_lines (posting_id);
CREATE INDEX ledger_lines_by_account ON ledger_lines (account);

CREATE TRIGGER ledger_postings_append_only_update BEFORE UPDATE ON ledger_postings
BEGIN SELECT RAISE(ABORT, 'the ledger is append-only'); END;
CREATE TRIGGER ledger_postings_append_only_delete BEFORE DELETE ON ledger_postings
BEGIN SELECT RAISE(ABORT, 'the ledger is append-only'); END;
CREATE TRIGGER ledger_lines_append_only_update BEFORE UPDATE ON ledger_lines
BEGIN SELECT RAISE(ABORT, 'the ledger is append-only'); END;
CREATE TRIGGER ledger_lines_append_only_delete BEFORE DELETE ON ledger_lines
BEGIN SELECT RAISE(ABORT, 'the ledger is append-only'); END;

-- Exactly one payout per completed session: UNIQUE here, and the trigger
-- below refuses a payout for a session that is not completed.
CREATE TABLE payouts (
    id             TEXT    NOT NULL PRIMARY KEY,
    session_id     TEXT    NOT NULL UNIQUE REFERENCES sessions (id),
    provider_id    TEXT    NOT NULL,
    destination    TEXT,
    amount_cents   INTEGER NOT NULL CHECK (amount_cents >= 0),
    currency       TEXT    NOT NULL,
    state          TEXT    NOT NULL CHECK (state IN ('pending', 'paid', 'failed')),
    provider       TEXT    NOT NULL CHECK (provider IN ('stripe', 'manual')),
    transfer_id    TEXT,
    failure_reason TEXT,
    created_at     INTEGER NOT NULL,
    updated_at     INTEGER NOT NULL
) STRICT;

CREATE INDEX payouts_by_provider ON payouts (provider_id);

CREATE TRIGGER payouts_only_for_completed_sessions BEFORE INSERT ON payouts
WHEN (SELECT status FROM sessions WHERE id = NEW.session_id) IS NOT 'completed'
BEGIN
    SELECT RAISE(ABORT, 'payouts_only_for_completed_sessions');
END;

CREATE TABLE requests (
    id                     TEXT    NOT NULL PRIMARY KEY,
    customer_id            TEXT    NOT NULL,
    kind                   TEXT    NOT NULL CHECK (kind IN ('video', 'chat', 'diagnostic')),
    price_mode             TEXT    NOT NULL CHECK (price_mode IN ('flat', 'per_minute')),
    price_amount_cents     INTEGER NOT NULL CHECK (price_amount_cents >= 0),
    currency               TEXT    NOT NULL,
    -- JSON array of provider ids, fixed at creation.
    candidate_provider_ids TEXT    NOT NULL,
    status                 TEXT    NOT NULL CHECK (status IN ('pending', 'matched', 'completed', 'cancelled', 'expired')),
    session_id             TEXT    UNIQUE,
    created_at             INTEGER NOT NULL,
    updated_at             INTEGER NOT NULL
) STRICT;

-- The providers' queue: a row per open offer.
CREATE TABLE assignments (
    request_id  TEXT    NOT NULL REFERENCES requests (id),
    provider_id TEXT    NOT NULL,
    created_at  INTEGER NOT NULL,
    PRIMARY KEY (request_id, provider_id)
) STRICT;

CREATE INDEX assignments_by_provider ON assignments (provider_id, created_at);

CREATE TABLE idempotency_keys (
    scope       TEXT    NOT NULL,
    key         TEXT    NOT NULL,
    -- The canonical request body: same key + another body is refused.
    fingerprint TEXT    NOT NULL,
    resource_id TEXT    NOT NULL,
    created_at  INTEGER NOT NULL,
    PRIMARY KEY (scope, key)
) STRICT;
