-- The checker's own reads. It reads tables directly and never trusts the pipeline's log.


-- name: snapshot_all
-- Every pipeline table in one statement: one round trip, one consistent snapshot. (Not
-- observe_all without its audit rows: a snapshot must work where no audit is installed.)
-- Every array in an order of the program's own (documents by user and content, jobs in
-- insertion order), never the heap's: a server may return rows in any order, and what
-- the checker does next (the drain's retries) must not depend on which.
SELECT ARRAY(SELECT d FROM documents AS d ORDER BY d.user_id, d.file_sha256) AS documents,
       ARRAY(SELECT j FROM upload_jobs AS j ORDER BY j.job_seq) AS jobs,
       ARRAY(SELECT c FROM document_chunk_buffer AS c ORDER BY c.document_id, c.chunk_ord)
           AS chunk_buffer,
       ARRAY(SELECT v FROM document_vector_buffer AS v ORDER BY v.document_id, v.chunk_id)
           AS vector_buffer,
       ARRAY(SELECT f FROM document_chunks AS f ORDER BY f.document_id, f.chunk_ord)
           AS final_chunks,
       ARRAY(SELECT b FROM billed_calls AS b ORDER BY b.call_id) AS billed_calls,
       ARRAY(SELECT s FROM spending_budget AS s ORDER BY s.budget_id) AS budgets;


-- name: observe_all
-- The tables and the audit rows of transactions from $1 on in one statement: one round
-- trip, and the changes are exactly those that led to the tables read. next_xid is the
-- oldest transaction still running (the next call's $1; see audit.sql, audit_since).
-- $1 from_xid text (an xid8)
SELECT ARRAY(SELECT d FROM documents AS d ORDER BY d.user_id, d.file_sha256) AS documents,
       ARRAY(SELECT j FROM upload_jobs AS j ORDER BY j.job_seq) AS jobs,
       ARRAY(SELECT c FROM document_chunk_buffer AS c ORDER BY c.document_id, c.chunk_ord)
           AS chunk_buffer,
       ARRAY(SELECT v FROM document_vector_buffer AS v ORDER BY v.document_id, v.chunk_id)
           AS vector_buffer,
       ARRAY(SELECT f FROM document_chunks AS f ORDER BY f.document_id, f.chunk_ord)
           AS final_chunks,
       ARRAY(SELECT b FROM billed_calls AS b ORDER BY b.call_id) AS billed_calls,
       ARRAY(SELECT s FROM spending_budget AS s ORDER BY s.budget_id) AS budgets,
       ARRAY(SELECT a FROM checker_job_audit AS a WHERE a.xid >= $1::text::xid8
             ORDER BY a.audit_id) AS audit,
       pg_snapshot_xmin(pg_current_snapshot())::text AS next_xid;


-- name: job_ids_in_order
-- Every job, in insertion order (a replayed program picks alike).
SELECT job_id FROM upload_jobs ORDER BY job_seq;


-- name: lock_job_if_free
-- Hold $1's row lock, as a claimer mid-transaction or an operator's query would; no row
-- if another session holds it.
-- $1 job_id uuid
SELECT job_id FROM upload_jobs WHERE job_id = $1 FOR UPDATE SKIP LOCKED;
