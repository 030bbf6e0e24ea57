-- The checker's own record of every change to a job row. The pipeline never reads or
-- writes it; the transition and fencing invariants read only this, never the pipeline's
-- event log. A rolled-back transaction leaves no audit row, so the record holds exactly
-- the changes that committed, in commit order within a row.
--
-- actor: the connection's application_name (each worker connects under its own name;
-- the API as "pipeline-models api"). at: the actor's clock, read from the row's
-- updated_at, which every pipeline write sets from the worker's Clock.


-- name: install_audit
CREATE TABLE IF NOT EXISTS checker_job_audit (
    audit_id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    operation text NOT NULL,
    actor text NOT NULL,
    job_id uuid NOT NULL,
    document_id uuid NOT NULL,
    at timestamptz,
    old_stage text, new_stage text,
    old_state text, new_state text,
    old_owner text, new_owner text,
    old_lease_expires_at timestamptz, new_lease_expires_at timestamptz,
    old_next_attempt_at timestamptz, new_next_attempt_at timestamptz,
    old_retry_count int, new_retry_count int,
    old_chunks_done int, new_chunks_done int,
    old_embeddings_done int, new_embeddings_done int,
    new_last_error text,
    old_held_for text, new_held_for text
);
-- The writing transaction: audit ids are drawn when a row is written, not when its
-- transaction commits, so a long transaction's rows can become visible after rows with
-- higher ids. Readers page by transaction instead (see audit_since).
ALTER TABLE checker_job_audit
    ADD COLUMN IF NOT EXISTS xid xid8 NOT NULL DEFAULT pg_current_xact_id();

CREATE OR REPLACE FUNCTION checker_audit_job() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'INSERT' THEN
        INSERT INTO checker_job_audit (operation, actor, job_id, document_id, at,
            new_stage, new_state, new_owner, new_lease_expires_at, new_next_attempt_at,
            new_retry_count, new_chunks_done, new_embeddings_done, new_last_error,
            new_held_for)
        VALUES (TG_OP, current_setting('application_name'), NEW.job_id, NEW.document_id,
            NEW.updated_at, NEW.stage, NEW.state, NEW.owner, NEW.lease_expires_at,
            NEW.next_attempt_at, NEW.retry_count, NEW.chunks_done, NEW.embeddings_done,
            NEW.last_error, NEW.held_for);
        RETURN NEW;
    ELSIF TG_OP = 'UPDATE' THEN
        INSERT INTO checker_job_audit (operation, actor, job_id, document_id, at,
            old_stage, new_stage, old_state, new_state, old_owner, new_owner,
            old_lease_expires_at, new_lease_expires_at, old_next_attempt_at,
            new_next_attempt_at, old_retry_count, new_retry_count, old_chunks_done,
            new_chunks_done, old_embeddings_done, new_embeddings_done, new_last_error,
            old_held_for, new_held_for)
        VALUES (TG_OP, current_setting('application_name'), NEW.job_id, NEW.document_id,
            NEW.updated_at, OLD.stage, NEW.stage, OLD.state, NEW.state, OLD.owner, NEW.owner,
            OLD.lease_expires_at, NEW.lease_expires_at, OLD.next_attempt_at,
            NEW.next_attempt_at, OLD.retry_count, NEW.retry_count, OLD.chunks_done,
            NEW.chunks_done, OLD.embeddings_done, NEW.embeddings_done, NEW.last_error,
            OLD.held_for, NEW.held_for);
        RETURN NEW;
    ELSE
        INSERT INTO checker_job_audit (operation, actor, job_id, document_id, at,
            old_stage, old_state, old_owner, old_lease_expires_at, old_next_attempt_at,
            old_retry_count, old_chunks_done, old_embeddings_done, old_held_for)
        VALUES (TG_OP, current_setting('application_name'), OLD.job_id, OLD.document_id,
            OLD.updated_at, OLD.stage, OLD.state, OLD.owner, OLD.lease_expires_at,
            OLD.next_attempt_at, OLD.retry_count, OLD.chunks_done, OLD.embeddings_done,
            OLD.held_for);
        RETURN OLD;
    END IF;
END;
$$;

DROP TRIGGER IF EXISTS checker_audit_job ON upload_jobs;
CREATE TRIGGER checker_audit_job
    AFTER INSERT OR UPDATE OR DELETE ON upload_jobs
    FOR EACH ROW EXECUTE FUNCTION checker_audit_job();


-- name: audit_since
-- The audit rows of transactions from $1 on, in id order, and the oldest transaction
-- still running now (the next call's $1). Every transaction older than that had ended
-- when these rows were read, so no row is missed whatever the commit order; the caller
-- drops the rows it has already seen.
-- $1 from_xid text (an xid8)
SELECT ARRAY(SELECT a FROM checker_job_audit AS a WHERE a.xid >= $1::text::xid8
             ORDER BY a.audit_id) AS audit,
       pg_snapshot_xmin(pg_current_snapshot())::text AS next_xid;
