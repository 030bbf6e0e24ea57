-- The reference pipeline's queries, one named block each, run on asyncpg.
--
-- Every comparison with "now" takes the time as a parameter from the worker's Clock:
-- nothing here calls now(), so a test that owns the clock owns time.
-- Tables are unqualified; connections set search_path to the pipeline's schema.


-- name: claim_job
-- Lease one job, skipping rows other workers hold: a job whose lease expired first (so
-- a stuck job is never starved by a busy queue), else the job due longest.
-- Reclaiming an expired lease counts as a failed attempt; past the retry limit the job is
-- dead-lettered instead of claimed (so a job that kills its worker cannot loop forever).
-- Each branch walks its own partial index; the second runs only if the first is empty.
-- $1 owner text, $2 now timestamptz, $3 lease_expires_at timestamptz, $4 retry_limit int
WITH expired AS (
    SELECT job_id, state AS previous_state, owner AS previous_owner,
           retry_count >= $4::int AS exhausted
    FROM upload_jobs
    WHERE state = 'working' AND lease_expires_at <= $2::timestamptz
    ORDER BY lease_expires_at, job_seq
    LIMIT 1
    FOR UPDATE SKIP LOCKED
),
due AS (
    SELECT job_id, state AS previous_state, owner AS previous_owner, false AS exhausted
    FROM upload_jobs
    WHERE state IN ('queued', 'retryable') AND next_attempt_at <= $2::timestamptz
      AND held_for IS NULL
    ORDER BY next_attempt_at, job_seq
    LIMIT 1
    FOR UPDATE SKIP LOCKED
),
candidate AS (
    -- CTEs run on demand: "due" is read (and locks) only when nothing expired.
    SELECT * FROM expired
    UNION ALL
    SELECT * FROM due
    LIMIT 1
),
-- A reclaimed job's calls still in flight died with their worker: they may have been
-- billed, so they are settled at their estimates, and their reservations end here.
orphaned AS (
    UPDATE billed_calls AS call
    SET outcome = 'unconfirmed', cost_usd = call.estimated_usd, settled_at = $2
    FROM candidate
    WHERE call.job_id = candidate.job_id AND candidate.previous_state = 'working'
      AND call.outcome = 'in_flight'
    RETURNING call.budget_id, call.estimated_usd
),
orphans_settled AS (
    UPDATE spending_budget AS budget
    SET reserved_usd = budget.reserved_usd - orphans.amount,
        spent_usd = budget.spent_usd + orphans.amount, updated_at = $2
    FROM (SELECT budget_id, sum(estimated_usd) AS amount FROM orphaned GROUP BY budget_id)
        AS orphans
    WHERE budget.budget_id = orphans.budget_id
)
UPDATE upload_jobs AS job
SET state = CASE WHEN candidate.exhausted THEN 'deadletter' ELSE 'working' END,
    owner = CASE WHEN candidate.exhausted THEN NULL ELSE $1::text END,
    lease_expires_at = CASE WHEN candidate.exhausted THEN NULL ELSE $3::timestamptz END,
    retry_count = job.retry_count
        + CASE WHEN candidate.previous_state = 'working' AND NOT candidate.exhausted THEN 1 ELSE 0 END,
    last_error = CASE
        WHEN candidate.exhausted
            THEN 'lease of ' || candidate.previous_owner || ' expired with retries exhausted'
        WHEN candidate.previous_state = 'working'
            THEN 'lease of ' || candidate.previous_owner || ' expired'
        ELSE job.last_error END,
    last_error_kind = CASE
        WHEN candidate.exhausted THEN 'permanent'
        WHEN candidate.previous_state = 'working' THEN 'transient'
        ELSE job.last_error_kind END,
    updated_at = $2
FROM candidate, documents AS document
WHERE job.job_id = candidate.job_id AND document.document_id = job.document_id
RETURNING job.job_id, job.document_id, job.user_id, job.stage, job.state, job.owner,
          job.lease_expires_at, job.retry_count, job.parser_job_id, job.chunks_total,
          job.chunks_done, job.chunk_cursor, job.embeddings_done, job.correlation_id,
          job.last_error, candidate.previous_state, candidate.previous_owner,
          document.filename, document.declared_type, document.size_bytes,
          document.raw_blob_key, document.parsed_blob_key;


-- name: renew_lease
-- Extend a live lease held by this owner. No row back: the lease is lost.
-- $1 job_id uuid, $2 owner text, $3 now timestamptz, $4 lease_expires_at timestamptz
UPDATE upload_jobs
SET lease_expires_at = $4, updated_at = $3
WHERE job_id = $1 AND owner = $2 AND state = 'working' AND lease_expires_at > $3
RETURNING lease_expires_at;


-- name: lock_owned_job
-- The fence: first statement of every committing transaction. Locks the job row only if
-- this owner still holds a live lease at this stage; no row back means the lease was lost
-- and the transaction must roll back.
-- The moves check the lease again, at their own time: the fence may have waited for the
-- row lock (another session held it) past the end of the lease it saw as live.
-- $1 job_id uuid, $2 owner text, $3 now timestamptz, $4 stage text
SELECT job_id
FROM upload_jobs
WHERE job_id = $1 AND owner = $2 AND state = 'working' AND lease_expires_at > $3
  AND stage = $4
FOR UPDATE;


-- name: advance_job
-- The stage is done: move to the next stage, queued and due now. Progress resets the
-- retry budget.
-- $1 job_id uuid, $2 owner text, $3 now timestamptz, $4 next_stage text
UPDATE upload_jobs
SET stage = $4, state = 'queued', owner = NULL, lease_expires_at = NULL,
    next_attempt_at = $3, retry_count = 0, updated_at = $3
WHERE job_id = $1 AND owner = $2 AND state = 'working' AND lease_expires_at > $3;


-- name: requeue_job
-- Same stage again later: a batch was written, the parser is still busy, a service
-- deferred us, or the worker is shutting down. $5 says whether progress was made (which
-- resets the retry budget).
-- $1 job_id uuid, $2 owner text, $3 now timestamptz, $4 next_attempt_at timestamptz,
-- $5 made_progress boolean
UPDATE upload_jobs
SET state = 'queued', owner = NULL, lease_expires_at = NULL, next_attempt_at = $4,
    retry_count = CASE WHEN $5 THEN 0 ELSE retry_count END, updated_at = $3
WHERE job_id = $1 AND owner = $2 AND state = 'working' AND lease_expires_at > $3;


-- name: fail_job_transient
-- A transient failure: wait for the backoff (and any Retry-After), then try again.
-- $1 job_id uuid, $2 owner text, $3 now timestamptz, $4 next_attempt_at timestamptz,
-- $5 last_error text
UPDATE upload_jobs
SET state = 'retryable', owner = NULL, lease_expires_at = NULL, next_attempt_at = $4,
    retry_count = retry_count + 1, last_error = $5, last_error_kind = 'transient',
    updated_at = $3
WHERE job_id = $1 AND owner = $2 AND state = 'working' AND lease_expires_at > $3;


-- name: fail_job_permanent
-- A permanent failure, or retries exhausted: dead-letter with the error.
-- $1 job_id uuid, $2 owner text, $3 now timestamptz, $4 last_error text
UPDATE upload_jobs
SET state = 'deadletter', owner = NULL, lease_expires_at = NULL, last_error = $4,
    last_error_kind = 'permanent', updated_at = $3
WHERE job_id = $1 AND owner = $2 AND state = 'working' AND lease_expires_at > $3;


-- name: mark_document_failed
-- $1 document_id uuid, $2 now timestamptz
UPDATE documents SET status = 'failed', updated_at = $2 WHERE document_id = $1;


-- name: set_detected_type
-- $1 document_id uuid, $2 detected_type text, $3 now timestamptz
UPDATE documents SET detected_type = $2, updated_at = $3 WHERE document_id = $1;


-- name: set_parser_job
-- $1 job_id uuid, $2 parser_job_id text, $3 now timestamptz
UPDATE upload_jobs SET parser_job_id = $2, updated_at = $3 WHERE job_id = $1;


-- name: set_parsed_blob
-- $1 document_id uuid, $2 parsed_blob_key text, $3 parsed_pages int, $4 now timestamptz
UPDATE documents
SET parsed_blob_key = $2, parsed_pages = $3, updated_at = $4
WHERE document_id = $1;


-- name: set_parsed_sha
-- $1 document_id uuid, $2 parsed_sha256 text, $3 now timestamptz
UPDATE documents SET parsed_sha256 = $2, updated_at = $3 WHERE document_id = $1;


-- name: set_chunk_plan
-- $1 job_id uuid, $2 chunks_total int, $3 now timestamptz
UPDATE upload_jobs
SET chunks_total = $2, chunks_done = 0, chunk_cursor = 0, embeddings_done = 0, updated_at = $3
WHERE job_id = $1;


-- name: insert_chunks
-- One batch of planned chunks; a retried batch writes the same ids and changes nothing.
-- $1 document_id uuid, $2 chunker_name text, $3 chunker_version text, $4 now timestamptz,
-- $5 chunk_ids uuid[], $6 ordinals int[], $7 texts text[], $8 shas text[],
-- $9 byte_starts bigint[], $10 byte_ends bigint[]
INSERT INTO document_chunk_buffer
    (chunk_id, document_id, chunker_name, chunker_version, chunk_ord, text, chunk_sha,
     byte_start, byte_end, created_at)
SELECT batch.chunk_id, $1, $2, $3, batch.chunk_ord, batch.text, batch.chunk_sha,
       batch.byte_start, batch.byte_end, $4
FROM unnest($5::uuid[], $6::int[], $7::text[], $8::text[], $9::bigint[], $10::bigint[])
    AS batch(chunk_id, chunk_ord, text, chunk_sha, byte_start, byte_end)
ON CONFLICT DO NOTHING;


-- name: set_chunk_progress
-- Counters equal the buffer: set from the batch just written, in its transaction.
-- $1 job_id uuid, $2 chunks_done int, $3 chunk_cursor bigint, $4 now timestamptz
UPDATE upload_jobs
SET chunks_done = $2, chunk_cursor = $3, updated_at = $4
WHERE job_id = $1;


-- name: count_buffered_chunks
-- $1 document_id uuid, $2 chunker_name text, $3 chunker_version text
SELECT count(*)
FROM document_chunk_buffer
WHERE document_id = $1 AND chunker_name = $2 AND chunker_version = $3;


-- name: chunks_to_embed
-- The next micro-batch: buffered chunks from ordinal $4 on, in order.
-- $1 document_id uuid, $2 chunker_name text, $3 chunker_version text, $4 from_ordinal int,
-- $5 batch_size int
SELECT chunk_id, chunk_ord, text
FROM document_chunk_buffer
WHERE document_id = $1 AND chunker_name = $2 AND chunker_version = $3 AND chunk_ord >= $4
ORDER BY chunk_ord
LIMIT $5;


-- name: insert_vector
-- $1 chunk_id uuid, $2 document_id uuid, $3 embed_model text, $4 embed_version text,
-- $5 vector real[], $6 vector_sha text, $7 now timestamptz
INSERT INTO document_vector_buffer
    (chunk_id, document_id, embed_model, embed_version, vector, vector_sha, created_at)
VALUES ($1, $2, $3, $4, $5, $6, $7)
ON CONFLICT DO NOTHING;


-- name: set_embedding_progress
-- $1 job_id uuid, $2 embeddings_done int, $3 now timestamptz
UPDATE upload_jobs SET embeddings_done = $2, updated_at = $3 WHERE job_id = $1;


-- name: promote_buffers
-- Finalize, step one: copy every buffered chunk with its vector into the final table.
-- The caller compares the row count with the plan before going on.
-- $1 document_id uuid, $2 chunker_name text, $3 chunker_version text,
-- $4 embed_model text, $5 embed_version text, $6 now timestamptz
INSERT INTO document_chunks
    (chunk_id, document_id, chunk_ord, text, chunk_sha, embed_model, embed_version, vector,
     vector_sha, created_at)
SELECT chunk.chunk_id, chunk.document_id, chunk.chunk_ord, chunk.text, chunk.chunk_sha,
       vector.embed_model, vector.embed_version, vector.vector, vector.vector_sha, $6
FROM document_chunk_buffer AS chunk
JOIN document_vector_buffer AS vector
  ON vector.chunk_id = chunk.chunk_id AND vector.embed_model = $4
 AND vector.embed_version = $5
WHERE chunk.document_id = $1 AND chunk.chunker_name = $2 AND chunk.chunker_version = $3;


-- name: clear_buffers
-- Finalize, step two: the buffers have been promoted (vectors go by cascade).
-- $1 document_id uuid
DELETE FROM document_chunk_buffer WHERE document_id = $1;


-- name: complete_document
-- $1 document_id uuid, $2 chunk_count int, $3 now timestamptz
UPDATE documents
SET status = 'complete', chunk_count = $2, updated_at = $3
WHERE document_id = $1;


-- name: finish_job
-- Finalize, step three: the job is done, in the same transaction as the promotion.
-- $1 job_id uuid, $2 owner text, $3 now timestamptz
UPDATE upload_jobs
SET state = 'done', owner = NULL, lease_expires_at = NULL, updated_at = $3
WHERE job_id = $1 AND owner = $2 AND state = 'working' AND stage = 'embedded'
  AND lease_expires_at > $3;


-- name: insert_event
-- The pipeline's own log (the checker never trusts it; people read it).
-- $1 job_id uuid, $2 document_id uuid, $3 correlation_id text, $4 action text,
-- $5 stage text, $6 state text, $7 worker text, $8 detail jsonb, $9 now timestamptz
INSERT INTO events
    (job_id, document_id, correlation_id, action, stage, state, worker, detail, created_at)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9);


-- name: insert_document
-- An upload: the same bytes from the same user are the same document. No row back means
-- it exists already (find_upload then returns it).
-- $1 document_id uuid, $2 user_id uuid, $3 filename text, $4 declared_type text,
-- $5 file_sha256 text, $6 size_bytes bigint, $7 raw_blob_key text, $8 now timestamptz
INSERT INTO documents
    (document_id, user_id, filename, declared_type, file_sha256, size_bytes, raw_blob_key,
     status, created_at, updated_at)
VALUES ($1, $2, $3, $4, $5, $6, $7, 'processing', $8, $8)
ON CONFLICT (user_id, file_sha256) DO NOTHING
RETURNING document_id;


-- name: insert_job
-- The document's job, in the same transaction as the document.
-- $1 job_id uuid, $2 document_id uuid, $3 user_id uuid, $4 correlation_id text,
-- $5 now timestamptz
INSERT INTO upload_jobs
    (job_id, document_id, user_id, stage, state, next_attempt_at, correlation_id,
     created_at, updated_at)
VALUES ($1, $2, $3, 'queued', 'queued', $5, $4, $5, $5);


-- name: find_upload
-- The document and newest job for a user's bytes.
-- $1 user_id uuid, $2 file_sha256 text
SELECT document.document_id, job.job_id
FROM documents AS document
JOIN upload_jobs AS job ON job.document_id = document.document_id
WHERE document.user_id = $1 AND document.file_sha256 = $2
ORDER BY job.created_at DESC
LIMIT 1;


-- name: count_live_jobs
-- Jobs that are not finished (queued, working or waiting for a retry), except those held
-- for the budget: they wait for an operator, not for a worker.
SELECT count(*) FROM upload_jobs
WHERE state IN ('queued', 'working', 'retryable') AND held_for IS NULL;


-- name: next_due_at
-- When the next live, unheld job becomes claimable (its due time, or its lease's expiry).
SELECT min(CASE WHEN state = 'working' THEN lease_expires_at ELSE next_attempt_at END)
FROM upload_jobs
WHERE state IN ('queued', 'working', 'retryable') AND held_for IS NULL;


-- name: count_held_jobs
-- Jobs held for the budget, by stage.
SELECT stage, count(*) AS jobs FROM upload_jobs WHERE held_for IS NOT NULL GROUP BY stage;


-- name: job_counts
-- Jobs by stage and state, for health and the demo's table.
SELECT stage, state, count(*) AS jobs FROM upload_jobs GROUP BY stage, state;


-- name: stage_timings
-- Steps and seconds per stage (claim to commit), from the pipeline's own log.
SELECT stage, count(*) AS steps, sum((detail ->> 'seconds')::float8) AS seconds,
       max((detail ->> 'seconds')::float8) AS slowest
FROM events
GROUP BY stage;


-- name: job_for_user
-- A job as its owner sees it; no row for anyone else (so ids do not leak).
-- $1 job_id uuid, $2 user_id uuid
SELECT job.job_id, job.document_id, document.filename, job.stage, job.state,
       job.held_for, job.retry_count, job.last_error, job.chunks_total, job.chunks_done,
       job.embeddings_done, usage.pages_billed, usage.tokens_billed, usage.cost_usd,
       usage.cost_unconfirmed_usd, job.created_at, job.updated_at
FROM upload_jobs AS job
JOIN documents AS document ON document.document_id = job.document_id
CROSS JOIN LATERAL (
    SELECT coalesce(sum(pages), 0)::int AS pages_billed,
           coalesce(sum(tokens), 0)::bigint AS tokens_billed,
           coalesce(sum(coalesce(cost_usd, estimated_usd)), 0)::numeric AS cost_usd,
           coalesce(sum(coalesce(cost_usd, estimated_usd))
               FILTER (WHERE outcome IN ('in_flight', 'counting', 'unconfirmed')), 0)::numeric
               AS cost_unconfirmed_usd
    FROM billed_calls WHERE billed_calls.job_id = job.job_id
) AS usage
WHERE job.job_id = $1 AND job.user_id = $2;


-- name: operator_retry
-- An operator's retry of a dead-lettered job: queued again at the same stage, due now,
-- with a fresh retry budget. last_error stays as the record of what happened.
-- $1 job_id uuid, $2 user_id uuid, $3 now timestamptz
UPDATE upload_jobs
SET state = 'queued', retry_count = 0, next_attempt_at = $3, owner = NULL,
    lease_expires_at = NULL, updated_at = $3
WHERE job_id = $1 AND user_id = $2 AND state = 'deadletter'
RETURNING job_id, document_id, stage, state, correlation_id;


-- name: mark_document_processing
-- $1 document_id uuid, $2 now timestamptz
UPDATE documents SET status = 'processing', updated_at = $2 WHERE document_id = $1;


-- name: job_by_parser_job
-- The job a parser webhook is about.
-- $1 parser_job_id text
SELECT job.job_id, job.document_id, job.stage, job.state, job.correlation_id,
       document.size_bytes
FROM upload_jobs AS job
JOIN documents AS document ON document.document_id = job.document_id
WHERE job.parser_job_id = $1
ORDER BY job.created_at DESC
LIMIT 1;


-- name: webhook_advance
-- A verified parser webhook: parsing -> parsed, whoever holds the job, exactly once.
-- A worker polling the same job meanwhile loses its fence and commits nothing; a
-- duplicate delivery finds the job past parsing and changes nothing.
-- $1 job_id uuid, $2 now timestamptz
UPDATE upload_jobs
SET stage = 'parsed', state = 'queued', owner = NULL, lease_expires_at = NULL,
    next_attempt_at = $2, retry_count = 0, updated_at = $2
WHERE job_id = $1 AND stage = 'parsing' AND state IN ('queued', 'working', 'retryable')
RETURNING job_id;


-- name: release_job
-- A stopping worker gives back a job it still holds: same stage, due now, nothing
-- counted. An expired lease is left for a reclaim, which counts the attempt. A call the
-- stop cut short may have been billed: it is settled at its estimate, as a reclaim does.
-- $1 job_id uuid, $2 owner text, $3 now timestamptz
WITH released AS (
    UPDATE upload_jobs
    SET state = 'queued', owner = NULL, lease_expires_at = NULL, next_attempt_at = $3,
        updated_at = $3
    WHERE job_id = $1 AND owner = $2 AND state = 'working' AND lease_expires_at > $3
    RETURNING job_id
),
orphaned AS (
    UPDATE billed_calls AS call
    SET outcome = 'unconfirmed', cost_usd = call.estimated_usd, settled_at = $3
    FROM released
    WHERE call.job_id = released.job_id AND call.outcome = 'in_flight'
    RETURNING call.budget_id, call.estimated_usd
)
UPDATE spending_budget AS budget
SET reserved_usd = budget.reserved_usd - orphans.amount,
    spent_usd = budget.spent_usd + orphans.amount, updated_at = $3
FROM (SELECT budget_id, sum(estimated_usd) AS amount FROM orphaned GROUP BY budget_id)
    AS orphans
WHERE budget.budget_id = orphans.budget_id;


-- name: hold_job
-- The budget cannot cover this job's next billed call: give it back, queued at the same
-- stage and held, so no claim takes it until an operator raises the budget. Nothing is
-- counted: the job did not fail.
-- $1 job_id uuid, $2 owner text, $3 now timestamptz, $4 held_for text
UPDATE upload_jobs
SET state = 'queued', owner = NULL, lease_expires_at = NULL, next_attempt_at = $3,
    held_for = $4, updated_at = $3
WHERE job_id = $1 AND owner = $2 AND state = 'working' AND lease_expires_at > $3;


-- name: budget_still_short
-- In the transaction that holds a job: does the budget still lack room for its call?
-- FOR SHARE waits for a raise in progress and then reads the raised row, so a hold and
-- a raise cannot miss each other: the raise commits first and the job is not held, or
-- the hold commits first and the raise's release_held_jobs sees it. No row: no budget.
-- $1 budget_id text, $2 estimated_usd numeric
SELECT spent_usd + reserved_usd + $2 > limit_usd AS short
FROM spending_budget WHERE budget_id = $1
FOR SHARE;


-- name: release_held_jobs
-- The budget was raised: every held job is claimable again, due now.
-- $1 held_for text, $2 now timestamptz
UPDATE upload_jobs
SET held_for = NULL, next_attempt_at = $2, updated_at = $2
WHERE held_for = $1 AND state = 'queued';


-- name: run_usage
-- What every billed call cost, summed: estimates stand in for calls not yet answered or
-- never confirmed, and are also given on their own.
SELECT coalesce(sum(pages), 0)::bigint AS pages,
       coalesce(sum(tokens), 0)::bigint AS tokens,
       coalesce(sum(coalesce(cost_usd, estimated_usd)), 0)::numeric AS cost_usd,
       coalesce(sum(coalesce(cost_usd, estimated_usd))
           FILTER (WHERE outcome IN ('in_flight', 'counting', 'unconfirmed')), 0)::numeric
           AS cost_unconfirmed_usd
FROM billed_calls;


-- name: create_budget
-- The budget with this limit, unless it exists already (then it keeps its limit: a
-- restarted worker must not undo an operator's raise).
-- $1 budget_id text, $2 limit_usd numeric, $3 now timestamptz
INSERT INTO spending_budget (budget_id, limit_usd, updated_at)
VALUES ($1, $2, $3)
ON CONFLICT (budget_id) DO NOTHING;


-- name: set_budget_limit
-- Create the budget or change its limit (spent and reserved stay).
-- $1 budget_id text, $2 limit_usd numeric, $3 now timestamptz
INSERT INTO spending_budget (budget_id, limit_usd, updated_at)
VALUES ($1, $2, $3)
ON CONFLICT (budget_id) DO UPDATE SET limit_usd = excluded.limit_usd, updated_at = $3
RETURNING limit_usd, spent_usd, reserved_usd;


-- name: open_call
-- Before a billed call: record it, and reserve its estimate from the budget in the same
-- statement. The call is recorded only if this worker holds the job with a live lease
-- (FOR SHARE: a reclaim cannot slip between this check and the insert), and, when the
-- budget exists, only if the estimate fits under its limit. A budget that does not exist
-- caps nothing. owned false: the lease is lost; call_id NULL with owned true: the budget
-- cannot cover the call. Either way nothing was reserved and the call must not be made.
-- $1 job_id uuid, $2 caller text, $3 now timestamptz, $4 service text,
-- $5 estimated_usd numeric, $6 budget_id text (NULL: no cap configured)
WITH held AS (
    SELECT job_id FROM upload_jobs
    WHERE job_id = $1 AND owner = $2 AND state = 'working' AND lease_expires_at > $3
    FOR SHARE
),
reserved AS (
    UPDATE spending_budget
    SET reserved_usd = reserved_usd + $5, updated_at = $3
    WHERE budget_id = $6 AND EXISTS (SELECT 1 FROM held)
      AND spent_usd + reserved_usd + $5 <= limit_usd
    RETURNING budget_id
),
capped AS (
    SELECT EXISTS (SELECT 1 FROM spending_budget WHERE budget_id = $6) AS capped
),
opened AS (
    INSERT INTO billed_calls (job_id, service, caller, budget_id, estimated_usd, started_at)
    SELECT $1, $4, $2, (SELECT budget_id FROM reserved), $5, $3
    FROM held, capped
    WHERE NOT capped.capped OR EXISTS (SELECT 1 FROM reserved)
    RETURNING call_id
)
SELECT EXISTS (SELECT 1 FROM held) AS owned, (SELECT call_id FROM opened) AS call_id;


-- name: settle_call
-- A call's answer (or its loss) is known: record what it cost, end its reservation, and
-- move the budget's spend by the difference. A call a reclaim already settled at its
-- estimate ('unconfirmed') is corrected by its late answer. No row back: the call was
-- settled for good already, and nothing changes.
-- $1 call_id bigint, $2 outcome text, $3 pages int, $4 tokens bigint, $5 cost_usd numeric,
-- $6 now timestamptz, $7 reference text (NULL: keep)
WITH previous AS (
    SELECT call_id, budget_id, outcome, estimated_usd, coalesce(cost_usd, 0) AS cost_before
    FROM billed_calls
    WHERE call_id = $1 AND outcome IN ('in_flight', 'unconfirmed')
    FOR UPDATE
),
settled AS (
    UPDATE billed_calls AS call
    SET outcome = $2, pages = $3, tokens = $4, cost_usd = $5, settled_at = $6,
        reference = coalesce($7, call.reference)
    FROM previous
    WHERE call.call_id = previous.call_id
    RETURNING call.call_id
),
budget AS (
    UPDATE spending_budget AS budget
    SET reserved_usd = budget.reserved_usd
            - CASE WHEN previous.outcome = 'in_flight' THEN previous.estimated_usd ELSE 0 END,
        spent_usd = budget.spent_usd + $5 - previous.cost_before, updated_at = $6
    FROM previous
    WHERE budget.budget_id = previous.budget_id
)
SELECT call_id FROM settled;


-- name: count_parse
-- The parser has counted the pages of its job $2: its call is billed at those pages now
-- (the budget's spend moves from the estimate to the real cost). Written when the pages
-- are learned, not with the step: the parser billed them whether or not the step commits.
-- No row back: no call of this job awaits a count for that parser job.
-- $1 job_id uuid, $2 reference text (the parser job id), $3 pages int, $4 cost_usd numeric,
-- $5 now timestamptz
WITH previous AS (
    SELECT call_id, budget_id, cost_usd AS cost_before
    FROM billed_calls
    WHERE job_id = $1 AND service = 'parser' AND reference = $2 AND outcome = 'counting'
    FOR UPDATE
),
counted AS (
    UPDATE billed_calls AS call
    SET outcome = 'billed', pages = $3, cost_usd = $4, settled_at = $5
    FROM previous
    WHERE call.call_id = previous.call_id
    RETURNING call.call_id
),
budget AS (
    UPDATE spending_budget AS budget
    SET spent_usd = budget.spent_usd + $4 - previous.cost_before, updated_at = $5
    FROM previous
    WHERE budget.budget_id = previous.budget_id
)
SELECT call_id FROM counted;


-- name: read_budget
-- $1 budget_id text
SELECT limit_usd, spent_usd, reserved_usd FROM spending_budget WHERE budget_id = $1;
