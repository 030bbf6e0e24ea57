CREATE SCHEMA IF NOT EXISTS beats;
CREATE TABLE IF NOT EXISTS beats.jobs (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    payload text NOT NULL,
    state text NOT NULL DEFAULT 'queued',
    attempts int NOT NULL DEFAULT 0,
    claim_token uuid,
    heartbeat_at timestamptz,
    last_error text
);
