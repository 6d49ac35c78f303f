-- The sweeper and the finalizer read only open sessions and sessions whose
-- finalization window is set and not yet closed: their indexes hold only
-- those. A session leaves the sweep index when it ends (instead of moving
-- within it), and history imported as ended enters neither: after an
-- import of a million sessions they held a million entries each that no
-- query read. (SQLite's 0012 also rewrites its CHECK lists; PostgreSQL
-- checks an IN list as a plain array comparison, and keeps them.)
DROP INDEX sessions_sweep;
CREATE INDEX sessions_sweep ON sessions (status, sweep_checked_at) WHERE status IN ('waiting', 'live');

DROP INDEX sessions_finalizing;
CREATE INDEX sessions_finalizing ON sessions (finalizes_at) WHERE finalized_at IS NULL AND finalizes_at IS NOT NULL;
