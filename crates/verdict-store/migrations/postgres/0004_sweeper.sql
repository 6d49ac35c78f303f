-- Presence for the sweeper (SPEC §2): the last presence activity of a
-- session, and when the sweeper last looked at it.

ALTER TABLE sessions ADD COLUMN last_presence_at BIGINT;
ALTER TABLE sessions ADD COLUMN sweep_checked_at BIGINT;

CREATE INDEX sessions_sweep ON sessions (status, sweep_checked_at);
