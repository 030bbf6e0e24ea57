CREATE SCHEMA IF NOT EXISTS guide;
CREATE TABLE IF NOT EXISTS guide.jobs (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    payload text NOT NULL,
    state text NOT NULL DEFAULT 'queued',
    attempts int NOT NULL DEFAULT 0,
    started_at timestamptz,
    finished_at timestamptz,
    result text,
    last_error text
);
