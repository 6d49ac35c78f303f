-- Ids compare byte by byte, whatever the database's default collation, as
-- they do on SQLite and in the service's own code. Verification and the
-- review queue page through sessions by id: the service sorts each page
-- and takes the next cursor and the range of its related rows from the
-- last id. Under a linguistic collation (en_US, ICU) the database ordered
-- ids otherwise ('Z9' after 'z-1'), so a session could lose its events
-- from a page and be reported misclassified. Byte order is also the
-- cheaper comparison for every index on these columns.
ALTER TABLE sessions
    ALTER COLUMN id TYPE TEXT COLLATE "C",
    ALTER COLUMN request_id TYPE TEXT COLLATE "C";
ALTER TABLE session_events ALTER COLUMN session_id TYPE TEXT COLLATE "C";
ALTER TABLE notifications ALTER COLUMN session_id TYPE TEXT COLLATE "C";
ALTER TABLE outbox ALTER COLUMN session_id TYPE TEXT COLLATE "C";
ALTER TABLE ledger_postings ALTER COLUMN session_id TYPE TEXT COLLATE "C";
ALTER TABLE payouts
    ALTER COLUMN id TYPE TEXT COLLATE "C",
    ALTER COLUMN session_id TYPE TEXT COLLATE "C";
ALTER TABLE requests
    ALTER COLUMN id TYPE TEXT COLLATE "C",
    ALTER COLUMN session_id TYPE TEXT COLLATE "C";
ALTER TABLE assignments ALTER COLUMN request_id TYPE TEXT COLLATE "C";
ALTER TABLE presence_deliveries ALTER COLUMN session_id TYPE TEXT COLLATE "C";
