-- Verification reads the presence events and ledger lines of a page of
-- sessions as one index range: the indexes carry the columns it reads, so
-- an index-only scan serves it.

DROP INDEX session_events_by_session;
CREATE INDEX session_events_by_session ON session_events (session_id, seq) INCLUDE (type, party, at);

DROP INDEX ledger_lines_by_posting;
CREATE INDEX ledger_lines_by_posting ON ledger_lines (posting_id) INCLUDE (amount_cents);
