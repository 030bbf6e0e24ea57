-- The checker's own record of a declared job table, generated from the spec: names in
-- braces are the spec's identifiers (checked to be plain SQL names, then quoted), never
-- values. The user's table gets one trigger, removed when the check ends; everything
-- else lives in the checker's schemas.
--
-- {checker}: the checker's schema; {clock}: the schema of the clock functions, first on
-- every worker session's search_path so that the worker's now() is the checker's time;
-- {table}: the job table; {id}: its id column, as a string literal; {audit_function}
-- and {trigger}: names derived from the table.


-- name: install_checker
-- The checker's schemas: the audit trail, the clock, and the functions that read it.
CREATE SCHEMA IF NOT EXISTS {checker};
CREATE SCHEMA IF NOT EXISTS {clock};
CREATE TABLE IF NOT EXISTS {checker}.audit (
    audit_id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    -- The writing transaction: ids are drawn when a row is written, not when its
    -- transaction commits, so readers page by transaction (see audit_since).
    xid xid8 NOT NULL DEFAULT pg_current_xact_id(),
    table_name text NOT NULL,
    -- The written table itself: a process may observe several tables in turn.
    table_oid oid NOT NULL,
    operation text NOT NULL,
    actor text NOT NULL,
    at timestamptz NOT NULL,
    job_id text NOT NULL,
    old jsonb,
    new jsonb
);
CREATE TABLE IF NOT EXISTS {checker}.clock (
    only_row boolean PRIMARY KEY DEFAULT true CHECK (only_row),
    at timestamptz NOT NULL
);
-- now() and transaction_timestamp(): the checker's time when the transaction first
-- asked, as Postgres's now() is fixed for a transaction; kept in a setting local to it.
CREATE OR REPLACE FUNCTION {clock}.now() RETURNS timestamptz
LANGUAGE plpgsql STABLE AS $$
DECLARE
    fixed text := current_setting('pipeline_models.transaction_now', true);
    moment timestamptz;
BEGIN
    IF fixed IS NOT NULL AND fixed <> '' THEN
        RETURN fixed::timestamptz;
    END IF;
    SELECT at INTO moment FROM {checker}.clock;
    moment := coalesce(moment, pg_catalog.now());
    PERFORM pg_catalog.set_config('pipeline_models.transaction_now', moment::text, true);
    RETURN moment;
END;
$$;
CREATE OR REPLACE FUNCTION {clock}.transaction_timestamp() RETURNS timestamptz
LANGUAGE sql STABLE AS $$ SELECT {clock}.now() $$;
-- statement_timestamp() and clock_timestamp(): the checker's time now.
CREATE OR REPLACE FUNCTION {clock}.statement_timestamp() RETURNS timestamptz
LANGUAGE sql STABLE AS $$
    SELECT coalesce((SELECT at FROM {checker}.clock), pg_catalog.statement_timestamp())
$$;
CREATE OR REPLACE FUNCTION {clock}.clock_timestamp() RETURNS timestamptz
LANGUAGE sql VOLATILE AS $$
    SELECT coalesce((SELECT at FROM {checker}.clock), pg_catalog.clock_timestamp())
$$;


-- name: install_trigger
-- The audit trigger on the job table: every row change, whole rows as jsonb, the actor
-- (the session's application_name) and the checker's time.
CREATE OR REPLACE FUNCTION {checker}.{audit_function}() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    old_row jsonb := CASE WHEN TG_OP = 'INSERT' THEN NULL ELSE to_jsonb(OLD) END;
    new_row jsonb := CASE WHEN TG_OP = 'DELETE' THEN NULL ELSE to_jsonb(NEW) END;
BEGIN
    INSERT INTO {checker}.audit (table_name, table_oid, operation, actor, at, job_id, old, new)
    VALUES (TG_TABLE_SCHEMA || '.' || TG_TABLE_NAME, TG_RELID, TG_OP,
            current_setting('application_name'), {clock}.clock_timestamp(),
            coalesce(new_row, old_row) ->> {id}, old_row, new_row);
    RETURN coalesce(NEW, OLD);
END;
$$;
DROP TRIGGER IF EXISTS {trigger} ON {table};
CREATE TRIGGER {trigger}
    AFTER INSERT OR UPDATE OR DELETE ON {table}
    FOR EACH ROW EXECUTE FUNCTION {checker}.{audit_function}();


-- name: remove_trigger
-- The end of a check: the user's table is left as it was found.
DROP TRIGGER IF EXISTS {trigger} ON {table};


-- name: table_columns
-- The columns of the job table, to check the spec against it.
-- $1 table text (as the spec names it; resolved on the search_path)
SELECT attname::text AS name
FROM pg_attribute
WHERE attrelid = to_regclass($1) AND attnum > 0 AND NOT attisdropped
ORDER BY attnum;


-- name: reset_trail
-- A new example: an empty trail (DELETE: cheaper than TRUNCATE for a few rows).
DELETE FROM {checker}.audit WHERE table_oid = to_regclass('{table_literal}');



-- name: set_clock
-- The checker's time, as every worker session's now() will read it.
-- $1 at timestamptz
INSERT INTO {checker}.clock (only_row, at) VALUES (true, $1)
ON CONFLICT (only_row) DO UPDATE SET at = excluded.at;


-- name: observe
-- The job table and the audit rows of transactions from $1 on, in one statement (so the
-- changes are exactly those behind the rows), and the oldest transaction still running
-- now (the next call's $1): every older one had ended, so no row is missed whatever the
-- commit order. The caller drops the rows it has already seen.
-- $1 from_xid text (an xid8)
SELECT ARRAY(SELECT to_jsonb(job) FROM {table} AS job) AS rows,
       ARRAY(SELECT a FROM {checker}.audit AS a
             WHERE a.xid >= $1::text::xid8 AND a.table_oid = to_regclass('{table_literal}')
             ORDER BY a.audit_id) AS audit,
       pg_snapshot_xmin(pg_current_snapshot())::text AS next_xid;
