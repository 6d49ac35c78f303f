-- CHECK constraints list their values with OR instead of IN. SQLite codes
-- an IN list of three or more constants as a temporary b-tree, and inside
-- a CHECK it builds that b-tree again for every row it checks: five of
-- them a session row, one an event row. That was over a quarter of
-- SQLite's own work in an import (bench/RESULTS.md, "Import: CHECK
-- lists, foreign keys and partial indexes"), and every end and every
-- event paid it too. The constraints accept and refuse exactly the same
-- values, and nothing on disk changes, so the definitions are edited in
-- place as SQLite documents for such changes (lang_altertable.html,
-- "Making Other Kinds Of Table Schema Changes"). `writable_schema = RESET`
-- makes this connection read the definitions again (a later migration
-- adding a column would otherwise work from the old text), and the index
-- changes below bump the schema version for every other connection.
PRAGMA writable_schema = ON;
UPDATE sqlite_master SET sql =
    replace(replace(replace(replace(replace(replace(replace(replace(replace(replace(sql,
    'kind IN (''video'', ''chat'', ''diagnostic'')',
    'kind = ''video'' OR kind = ''chat'' OR kind = ''diagnostic'''),
    'status IN (''waiting'', ''live'', ''completed'', ''cancelled'', ''expired'')',
    'status = ''waiting'' OR status = ''live'' OR status = ''completed'' OR status = ''cancelled'' OR status = ''expired'''),
    'reason IN (''completed'', ''too_short'', ''no_show_customer'', ''no_show_provider'', ''no_show_both'', ''never_overlapped'')',
    'reason = ''completed'' OR reason = ''too_short'' OR reason = ''no_show_customer'' OR reason = ''no_show_provider'' OR reason = ''no_show_both'' OR reason = ''never_overlapped'''),
    '(status IN (''completed'', ''cancelled'', ''expired''))',
    '(status = ''completed'' OR status = ''cancelled'' OR status = ''expired'')'),
    'type IN (''created'', ''joined'', ''left'', ''ended'', ''corrected'')',
    'type = ''created'' OR type = ''joined'' OR type = ''left'' OR type = ''ended'' OR type = ''corrected'''),
    'state IN (''pending'', ''paid'', ''failed'')',
    'state = ''pending'' OR state = ''paid'' OR state = ''failed'''),
    'state IN (''pending'', ''delivered'', ''dead'')',
    'state = ''pending'' OR state = ''delivered'' OR state = ''dead'''),
    'status IN (''pending'', ''matched'', ''completed'', ''cancelled'', ''expired'')',
    'status = ''pending'' OR status = ''matched'' OR status = ''completed'' OR status = ''cancelled'' OR status = ''expired'''),
    'source IN (''livekit'', ''daily'', ''twilio'')',
    'source = ''livekit'' OR source = ''daily'' OR source = ''twilio'''),
    'disposition IN (''recorded'', ''reconsidered'', ''late'', ''late_unchanged'')',
    'disposition = ''recorded'' OR disposition = ''reconsidered'' OR disposition = ''late'' OR disposition = ''late_unchanged''')
WHERE type = 'table' AND name IN
    ('sessions', 'session_events', 'payouts', 'outbox', 'requests', 'presence_deliveries');
PRAGMA writable_schema = RESET;

-- The sweeper and the finalizer read only open sessions and sessions whose
-- finalization window is set and not yet closed: their indexes hold only
-- those. A session leaves the sweep index when it ends (instead of moving
-- within it), and history imported as ended enters neither: after an
-- import of a million sessions they held a million entries each that no
-- query read.
DROP INDEX sessions_sweep;
CREATE INDEX sessions_sweep ON sessions (status, sweep_checked_at) WHERE status IN ('waiting', 'live');

DROP INDEX sessions_finalizing;
CREATE INDEX sessions_finalizing ON sessions (finalizes_at) WHERE finalized_at IS NULL AND finalizes_at IS NOT NULL;
