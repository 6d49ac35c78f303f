-- Import and repair (SPEC §7): corrections are audited events, payouts can
-- come from the old system and be reversed.

ALTER TABLE session_events DROP CONSTRAINT session_events_type_check;
ALTER TABLE session_events ADD CONSTRAINT session_events_type_check
    CHECK (type IN ('created', 'joined', 'left', 'ended', 'corrected'));

ALTER TABLE payouts ADD COLUMN imported BIGINT NOT NULL DEFAULT 0;
ALTER TABLE payouts ADD COLUMN reversed_at BIGINT;

CREATE OR REPLACE FUNCTION payouts_only_for_completed_sessions() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.imported = 0
       AND (SELECT status FROM sessions WHERE id = NEW.session_id) IS DISTINCT FROM 'completed' THEN
        RAISE EXCEPTION 'payouts_only_for_completed_sessions';
    END IF;
    RETURN NEW;
END
$$;
