-- Indexes for verification and health scans at scale: sessions by end
-- instant, open sessions, and ledger postings by session.

CREATE INDEX sessions_by_ended ON sessions (ended_at, id);
CREATE INDEX sessions_open ON sessions (id) WHERE ended_at IS NULL;
CREATE INDEX ledger_postings_by_session ON ledger_postings (session_id);
