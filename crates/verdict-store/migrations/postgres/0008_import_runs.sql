-- Import runs: each imported session records the run that stored it, so a
-- run recognises an id repeated later in its own file without keeping every
-- id in memory.
ALTER TABLE sessions ADD COLUMN import_run TEXT;

-- Indexes no query reads cost every write (an import most of all).
DROP INDEX sessions_by_customer;
DROP INDEX sessions_by_provider;
DROP INDEX sessions_by_status_ended;
