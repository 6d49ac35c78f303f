-- Ids compare byte by byte: SQLite's BINARY collation already does, so
-- there is nothing to change here (PostgreSQL's 0011 makes its id columns
-- `COLLATE "C"`). Kept so both backends count the same schema versions.
SELECT 1;
