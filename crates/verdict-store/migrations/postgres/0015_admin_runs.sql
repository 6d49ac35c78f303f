-- Long admin runs (issue 24): each import and repair through the API is
-- kept with the summary its caller got, so a caller that went away (or
-- anyone later) can read it: GET /v1/admin/imports/{id}, /repairs/{id}.
-- A run still `running` after its process stopped stays so: it was cut by
-- the stop, not by the caller.
CREATE TABLE admin_runs (
    id          TEXT COLLATE "C" NOT NULL PRIMARY KEY,
    kind        TEXT   NOT NULL CHECK (kind = 'import' OR kind = 'repair'),
    state       TEXT   NOT NULL
                CHECK (state = 'running' OR state = 'finished' OR state = 'failed'),
    actor       TEXT   NOT NULL,
    started_at  BIGINT NOT NULL,
    finished_at BIGINT,
    -- The answer, as JSON, once finished.
    summary     TEXT,
    error       TEXT,
    CHECK ((state = 'running') = (finished_at IS NULL))
);

CREATE INDEX admin_runs_latest ON admin_runs (kind, started_at, id);
