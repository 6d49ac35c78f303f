-- Threshold alerts (issue 27): the state of each alert, keyed by its rule
-- and scope, so that workers evaluating at once announce each change once.
-- A change is a conditional update of its row (`raised` flipped, `changes`
-- counted); only the transaction whose update took queues the webhook,
-- whose dedupe key carries `changes`.
CREATE TABLE alert_states (
    -- `rule/scope_field/scope_value`.
    key         TEXT COLLATE "C" NOT NULL PRIMARY KEY,
    rule        TEXT   NOT NULL,
    scope_field TEXT   NOT NULL CHECK (scope_field = 'kind' OR scope_field = 'provider_id'),
    scope_value TEXT   NOT NULL,
    raised      BIGINT NOT NULL CHECK (raised = 0 OR raised = 1),
    -- The figures it was last raised with.
    value       DOUBLE PRECISION NOT NULL,
    threshold   DOUBLE PRECISION NOT NULL,
    sessions    BIGINT NOT NULL,
    changes     BIGINT NOT NULL,
    changed_at  BIGINT NOT NULL
);

CREATE INDEX alert_states_raised ON alert_states (key) WHERE raised = 1;
