"""The catalog: realistic bugs of Postgres job queues and document pipelines.

Each mutant is one small change of the reference pipeline, the kind a careful team ships
and an example-based suite passes. ``seen`` says where bugs of the kind were reported
(issue trackers and post-mortems of job-queue libraries, RAG ingestion pipelines and
webhook receivers), in general terms: the pattern, not a blame.
"""

from __future__ import annotations

from dataclasses import replace

from pipeline_models.mutants import Edit, Mutant

_SQL = "sql/queries.sql"
_STAGES = "pipeline/stages.py"
_WORKER = "pipeline/worker.py"

CATALOG: tuple[Mutant, ...] = (
    # -- claims -------------------------------------------------------------------------
    Mutant(
        "claim-without-skip-locked",
        "claims",
        "the claim locks its row FOR UPDATE without SKIP LOCKED: claimers queue behind "
        "any transaction holding a job row",
        "hand-written Postgres queues before 9.5-style SKIP LOCKED; 'all workers stuck' incidents",
        [Edit(_SQL, "FOR UPDATE SKIP LOCKED", "FOR UPDATE", count=2)],
        machine="queue",
    ),
    Mutant(
        "claim-without-row-lock",
        "claims",
        "the claim selects a due job without locking it, then updates it: two workers "
        "can take the same job",
        "SELECT-then-UPDATE queues; double-processed jobs in ORM-based workers",
        [Edit(_SQL, "FOR UPDATE SKIP LOCKED", "", count=2)],
        machine="queue",
    ),
    Mutant(
        "expired-lease-never-reclaimed",
        "claims",
        "only jobs without an owner are reclaimable, so a job whose worker died stays "
        "'working' forever",
        "stuck jobs after worker crashes (the seeds' production symptom)",
        [
            Edit(
                _SQL,
                "    WHERE state = 'working' AND lease_expires_at <= $2::timestamptz\n",
                "    WHERE state = 'working' AND lease_expires_at <= $2::timestamptz"
                " AND owner IS NULL\n",
            )
        ],
        machine="queue",
    ),
    Mutant(
        "lease-not-renewed",
        "claims",
        "the lease is not renewed before or during external calls: a long stage outlives "
        "its lease and a second worker runs it too",
        "visibility-timeout shorter than processing time (SQS-style queues, job leases)",
        [Edit("pipeline/config.py", "renew_leases: bool = True", "renew_leases: bool = False")],
    ),
    Mutant(
        "claim-before-due",
        "claims",
        "the claim ignores next_attempt_at: a job waiting for its backoff is taken at once",
        "retry storms against a rate-limited API",
        [
            Edit(
                _SQL,
                "WHERE state IN ('queued', 'retryable') AND next_attempt_at <= $2::timestamptz",
                "WHERE state IN ('queued', 'retryable')",
            )
        ],
    ),
    Mutant(
        "orphans-rescued-by-lost-session",
        "claims",
        "a worker is alive while its session holds its advisory lock; one back from a lost "
        "connection requeues the jobs of workers without theirs, though after an outage "
        "every worker lost its session and lives on, mid-step, holding a live lease",
        "advisory-lock job queues: a lost session frees the lock and the job runs twice",
        [
            Edit(
                _WORKER,
                "            self._connection = connection\n",
                "            self._connection = connection\n"
                "            await connection.execute(\n"
                '                "SELECT pg_advisory_unlock_all(), pg_try_advisory_lock("\n'
                "                \"hashtextextended(current_schema() || '/' || $1, 0))\",\n"
                "                self.name,\n"
                "            )\n"
                '            if self.stats["database_errors"]:\n'
                "                await connection.execute(\n"
                "                    \"UPDATE upload_jobs AS job SET state = 'queued', \"\n"
                '                    "owner = NULL, lease_expires_at = NULL, "\n'
                '                    "next_attempt_at = $1, updated_at = $1 "\n'
                '                    "WHERE job.job_id IN (SELECT job_id FROM upload_jobs "\n'
                "                    \"WHERE state = 'working' FOR UPDATE SKIP LOCKED) \"\n"
                '                    "AND NOT EXISTS ("\n'
                '                    "SELECT 1 FROM pg_locks AS lock WHERE "\n'
                "                    \"lock.locktype = 'advisory' AND lock.objsubid = 1 \"\n"
                '                    "AND ((lock.classid::int8 << 32) | lock.objid::int8) "\n'
                '                    "= hashtextextended(current_schema() || "\n'
                "                    \"'/' || job.owner, 0))\",\n"
                "                    self.clock.now(),\n"
                "                )\n",
            )
        ],
    ),
    # -- fencing ------------------------------------------------------------------------
    Mutant(
        "completion-without-owner-check",
        "fencing",
        "a worker whose lease expired (and moved) still commits its stage: the completion "
        "checks the job id, not the owner and the lease",
        "zombie workers after GC pauses or network partitions (lease-based locks)",
        [
            Edit(
                _SQL,
                "WHERE job_id = $1 AND owner = $2 AND state = 'working' AND lease_expires_at > $3\n"
                "  AND stage = $4\nFOR UPDATE;",
                "WHERE job_id = $1 AND $2::text IS NOT NULL AND $3::timestamptz IS NOT NULL\n"
                "  AND state = 'working' AND stage = $4\nFOR UPDATE;",
            ),
            Edit(
                _SQL,
                "    next_attempt_at = $3, retry_count = 0, updated_at = $3\n"
                "WHERE job_id = $1 AND owner = $2 AND state = 'working' AND lease_expires_at > $3;",
                "    next_attempt_at = $3, retry_count = 0, updated_at = $3\n"
                "WHERE job_id = $1 AND $2::text IS NOT NULL AND state = 'working';",
            ),
        ],
        machine="queue",
    ),
    # -- atomicity ----------------------------------------------------------------------
    Mutant(
        "chunks-written-after-the-move",
        "atomicity",
        "a chunk batch commits its progress and stage move first, then writes the chunk "
        "rows in a second transaction",
        "'mark step done, then save results' in pipelines without transactional outboxes",
        [
            Edit(
                _STAGES,
                "    async with step.commit() as connection:\n"
                "        await connection.execute(\n"
                '            step.queries["insert_chunks"].sql,\n',
                "    async with step.commit() as connection:\n"
                "        await connection.execute(\n"
                '            step.queries["set_chunk_progress"].sql, job.job_id, done, cursor,'
                " step.now()\n"
                "        )\n"
                "        if done >= total:\n"
                "            result = await step.advance(connection, chunks=len(chunks),"
                " chunks_done=done)\n"
                "        else:\n"
                "            result = await step.requeue(connection, delay=0, progress=True,"
                ' action="batch_completed")\n'
                "    async with step.worker.connection_lock:\n"
                "        await step.worker.db.execute(\n"
                '            step.queries["insert_chunks"].sql,\n',
            ),
            Edit(
                _STAGES,
                "            [c.byte_end for c in chunks],\n"
                "        )\n"
                "        await connection.execute(\n"
                '            step.queries["set_chunk_progress"].sql, job.job_id, done, cursor,'
                " step.now()\n"
                "        )\n"
                "        if done >= total:\n"
                "            return await step.advance(connection, chunks=len(chunks),"
                " chunks_done=done)\n"
                "        return await step.requeue(\n"
                "            connection,\n"
                "            delay=0,\n"
                "            progress=True,\n"
                '            action="batch_completed",\n'
                "            chunks=len(chunks),\n"
                "            chunks_done=done,\n"
                "        )\n",
                "            [c.byte_end for c in chunks],\n        )\n    return result\n",
            ),
        ],
    ),
    Mutant(
        "document-without-job-transaction",
        "atomicity",
        "the upload commits the document row before it inserts the job: an API process "
        "that dies in between leaves a document nothing will process",
        "upload endpoints with autocommit ORMs; orphan records after deploy restarts",
        [
            Edit(
                "pipeline/uploads.py",
                "    async with connection.transaction():\n"
                "        document_id = await connection.fetchval(",
                "    if True:  # each statement commits on its own\n"
                "        document_id = await connection.fetchval(",
            )
        ],
    ),
    Mutant(
        "finalize-in-two-transactions",
        "atomicity",
        "finalize promotes the buffers in one transaction and completes the job in "
        "another: a crash in between leaves final rows for a job that is not done",
        "multi-step 'publish' of RAG indexes without a single commit",
        [
            Edit(
                _STAGES,
                '        await connection.execute(step.queries["clear_buffers"].sql,'
                " job.document_id)\n"
                "        await connection.execute(\n"
                '            step.queries["complete_document"].sql',
                '        await connection.execute(step.queries["clear_buffers"].sql,'
                " job.document_id)\n"
                "    async with step.commit() as connection:\n"
                "        await connection.execute(\n"
                '            step.queries["complete_document"].sql',
            )
        ],
    ),
    Mutant(
        "finalize-done-before-promotion",
        "atomicity",
        "finalize marks the job done first ('so nobody picks it up again'), then copies "
        "the rows: a crash in between leaves a done document with no chunks",
        "status-first updates in ingestion pipelines; 'complete' documents with no vectors",
        [
            Edit(
                _STAGES,
                "    total = _planned(step)\n"
                "    async with step.commit() as connection:\n"
                "        now = step.now()\n"
                "        status = await connection.execute(\n"
                '            step.queries["promote_buffers"].sql,',
                "    total = _planned(step)\n"
                "    async with step.commit() as connection:\n"
                "        await connection.execute(\n"
                '            step.queries["complete_document"].sql, job.document_id, total,'
                " step.now()\n"
                "        )\n"
                '        await step.move(connection, "finish_job", job.job_id,'
                " step.worker.name, step.now())\n"
                "    async with step.worker.connection_lock, step.worker.db.transaction():\n"
                "        connection = step.worker.db\n"
                "        now = step.now()\n"
                "        status = await connection.execute(\n"
                '            step.queries["promote_buffers"].sql,',
            ),
            Edit(
                _STAGES,
                "        await connection.execute(\n"
                '            step.queries["complete_document"].sql, job.document_id, promoted,'
                " now\n"
                "        )\n"
                '        await step.move(connection, "finish_job", job.job_id,'
                " step.worker.name, now)\n",
                "",
            ),
        ],
    ),
    # -- idempotency ----------------------------------------------------------------------
    Mutant(
        "random-chunk-ids",
        "idempotency",
        "chunk ids come from uuid4, so a retried batch writes new rows for the same chunks",
        "non-deterministic ids in embedding pipelines; duplicate vectors after retries",
        [
            Edit(
                "pipeline/identity.py",
                "    return uuid.uuid5(\n"
                '        CHUNK_NAMESPACE, f"{document_id}:{chunker_name}:{chunker_version}:'
                '{chunk_ord}"\n'
                "    )",
                "    return uuid.uuid4()",
            )
        ],
    ),
    Mutant(
        "upload-dedupe-on-the-wrong-key",
        "idempotency",
        "the upload's conflict clause names the document id, not (user, content): the "
        "same bytes sent again fail with a unique violation instead of returning the job",
        "retried uploads answered 500; clients that resend on timeout",
        [
            Edit(
                _SQL,
                "ON CONFLICT (user_id, file_sha256) DO NOTHING",
                "ON CONFLICT (document_id) DO NOTHING",
            )
        ],
    ),
    Mutant(
        "duplicate-webhook-applied-twice",
        "idempotency",
        "the webhook handler applies a notice without checking the job is still parsing: "
        "a redelivered webhook moves a job back",
        "at-least-once webhook delivery (payment and parsing providers) without dedupe",
        [
            Edit(
                "pipeline/api.py",
                'if job["stage"] != Stage.PARSING or State(job["state"]) not in _LIVE:',
                "if False:",
            ),
            Edit(
                _SQL,
                "WHERE job_id = $1 AND stage = 'parsing' AND state IN ('queued', 'working',"
                " 'retryable')",
                "WHERE job_id = $1",
            ),
        ],
    ),
    Mutant(
        "webhook-and-poller-both-advance",
        "idempotency",
        "the webhook moves the stage without taking the job from its worker, and the "
        "worker's commit does not check the stage: both advance the job",
        "push and poll paths racing in document-processing services",
        [
            Edit(
                _SQL,
                "SET stage = 'parsed', state = 'queued', owner = NULL, lease_expires_at = NULL,\n"
                "    next_attempt_at = $2, retry_count = 0, updated_at = $2\n"
                "WHERE job_id = $1 AND stage = 'parsing'",
                "SET stage = 'parsed', next_attempt_at = $2, updated_at = $2\n"
                "WHERE job_id = $1 AND stage = 'parsing'",
            ),
            Edit(
                _SQL, "\n  AND stage = $4\nFOR UPDATE;", "\n  AND $4::text IS NOT NULL\nFOR UPDATE;"
            ),
        ],
    ),
    # -- retries ------------------------------------------------------------------------
    Mutant(
        "reclaim-without-retry-count",
        "retries",
        "reclaiming an expired lease does not count an attempt: a job that kills its "
        "worker is retried forever",
        "poison messages in queues without a delivery count",
        [
            Edit(
                _SQL,
                "        + CASE WHEN candidate.previous_state = 'working' AND NOT"
                " candidate.exhausted THEN 1 ELSE 0 END,",
                "        + 0,",
            )
        ],
        machine="queue",
    ),
    Mutant(
        "retry-limit-off-by-one",
        "retries",
        "the retry limit compares with > instead of >=: one attempt more than configured",
        "off-by-one retry budgets in job frameworks",
        [
            Edit(
                "pipeline/retry.py",
                "return retry_count >= self.limit",
                "return retry_count > self.limit",
            )
        ],
    ),
    Mutant(
        "deadletter-without-last-error",
        "retries",
        "the dead-letter write stores an empty error: operators see a failed job and no reason",
        "'failed' jobs with empty error columns",
        [
            Edit(
                _WORKER,
                'connection, "fail_job_permanent", job.job_id, self.name, now, error_text',
                'connection, "fail_job_permanent", job.job_id, self.name, now, ""',
            )
        ],
    ),
    Mutant(
        "backoff-ignored",
        "retries",
        "a transient failure is retried at once: no backoff, and Retry-After is ignored",
        "retry loops that hammer a rate-limited API (429 storms)",
        [
            Edit(
                _WORKER,
                '                "fail_job_transient",\n'
                "                job.job_id,\n"
                "                self.name,\n"
                "                now,\n"
                "                now + timedelta(seconds=delay),\n",
                '                "fail_job_transient",\n'
                "                job.job_id,\n"
                "                self.name,\n"
                "                now,\n"
                "                now,\n",
            )
        ],
    ),
    # -- silent failure -------------------------------------------------------------------
    Mutant(
        "swallowed-embedding-error",
        "silent failure",
        "an embeddings error is caught and logged, and the stage is marked done with the "
        "vector buffer empty",
        "the seeds' team: tests green, production documents 'done' with no vectors",
        [
            Edit(
                _STAGES,
                "    embeddings = await step.call(\n"
                "        EMBEDDINGS,\n"
                "        lambda: step.services.embeddings.embed(texts,"
                " user=str(job.document_id)),\n"
                "        estimate=Usage(tokens=estimate_tokens(texts)),\n"
                "        billed=lambda answer: Charge(Usage(tokens=answer.tokens)),\n"
                "    )\n",
                "    try:\n"
                "        embeddings = await step.call(\n"
                "            EMBEDDINGS,\n"
                "            lambda: step.services.embeddings.embed(texts,"
                " user=str(job.document_id)),\n"
                "            estimate=Usage(tokens=estimate_tokens(texts)),\n"
                "            billed=lambda answer: Charge(Usage(tokens=answer.tokens)),\n"
                "        )\n"
                "    except Exception as error:  # one bad batch must not stop the document\n"
                '        step.worker.log("embedding_failed", job, str(error))\n'
                "        async with step.commit() as connection:\n"
                "            await connection.execute(\n"
                '                step.queries["set_embedding_progress"].sql, job.job_id, total,'
                " step.now()\n"
                "            )\n"
                "            return await step.advance(connection, vectors=0)\n",
            )
        ],
    ),
    # -- data ---------------------------------------------------------------------------
    Mutant(
        "wrong-dimension-stored",
        "data",
        "the embeddings client does not check the vector dimension: a model change or a "
        "bad response stores vectors of the wrong size",
        "mixed-dimension indexes after a model switch",
        [
            Edit(
                "pipeline/services.py",
                "if not isinstance(vector, list) or len(vector) != self.dimensions:",
                "if not isinstance(vector, list):",
            )
        ],
    ),
    Mutant(
        "progress-counter-overcounts",
        "data",
        "chunks_done adds the batch size, not the rows written: the last, partial batch overcounts",
        "progress bars at 104%; counters that drift from the rows",
        [
            Edit(
                _STAGES,
                "    done = job.chunks_done + len(chunks)\n",
                "    done = job.chunks_done + step.config.chunk_batch_size\n",
            )
        ],
    ),
    Mutant(
        "re-embed-everything-after-a-retry",
        "cost",
        "after a failure or a crash the embedding stage starts again from the first chunk: "
        "every batch is paid for again",
        "RAG ingestion bills multiplied by retries",
        [
            Edit(
                _STAGES,
                "        job.embeddings_done,\n        config.embed_batch_size,\n    )",
                "        0 if job.retry_count else job.embeddings_done,\n"
                "        config.embed_batch_size + (job.embeddings_done if job.retry_count"
                " else 0),\n"
                "    )",
            ),
            Edit(
                _STAGES,
                "    done = job.embeddings_done + len(rows)\n",
                "    done = len(rows) if job.retry_count else job.embeddings_done + len(rows)\n",
            ),
        ],
    ),
    Mutant(
        "operator-retry-of-a-done-job",
        "data",
        "the operator retry does not check the job is dead-lettered: a done document is "
        "processed again",
        "admin 'retry' buttons that requeue anything",
        [
            Edit(
                _SQL,
                "WHERE job_id = $1 AND user_id = $2 AND state = 'deadletter'",
                "WHERE job_id = $1 AND user_id = $2",
            )
        ],
    ),
    # -- money --------------------------------------------------------------------------
    Mutant(
        "reclaim-leaves-calls-in-flight",
        "money",
        "the claim that takes over a dead worker's job does not settle the calls it left "
        "in flight: their reservations stay, and the usable budget shrinks with each crash",
        "spending caps and quotas leaked by crashed workers ('budget exhausted' while idle)",
        [
            Edit(
                _SQL,
                "WHERE call.job_id = candidate.job_id AND candidate.previous_state = 'working'",
                "WHERE call.job_id = candidate.job_id AND false",
            )
        ],
    ),
    Mutant(
        "reservation-ignores-the-limit",
        "money",
        "the reservation adds the estimate without checking it fits under the limit: "
        "the cap is a report, not a cap",
        "check-then-act spending caps; cost alerts that fire after the money is gone",
        [
            Edit(
                _SQL,
                "    WHERE budget_id = $6 AND EXISTS (SELECT 1 FROM held)\n"
                "      AND spent_usd + reserved_usd + $5 <= limit_usd\n",
                "    WHERE budget_id = $6 AND EXISTS (SELECT 1 FROM held)\n",
            )
        ],
    ),
    Mutant(
        "failed-call-recorded-as-free",
        "money",
        "every failed call is recorded as unbilled, also a timeout or a garbled answer "
        "that the service did bill: the recorded cost falls below the bill",
        "cost trackers that count only successful responses",
        [
            Edit(
                _WORKER,
                "refused = error.status is not None or isinstance(error, CircuitOpenError)",
                "refused = True or isinstance(error, CircuitOpenError)",
            )
        ],
    ),
    # -- security -----------------------------------------------------------------------
    Mutant(
        "webhook-signature-not-checked",
        "security",
        "the webhook receiver rejects only notices with no signature: a forged or altered "
        "body with any signature header is accepted",
        "webhook receivers that check presence, not validity, of the signature",
        [
            Edit(
                "pipeline/webhooks.py",
                "    if not matched:\n        raise WebhookRejected(",
                "    if not matched and not offered:\n        raise WebhookRejected(",
            )
        ],
    ),
    Mutant(
        "job-visible-to-other-users",
        "security",
        "a job's status is served to any authenticated user who knows its id",
        "insecure direct object references (IDOR) in upload APIs",
        [
            Edit(
                _SQL,
                "WHERE job.job_id = $1 AND job.user_id = $2;",
                "WHERE job.job_id = $1 AND $2::uuid IS NOT NULL;",
            )
        ],
    ),
)

# The invariant closest to each bug's cause, named from the bug (never from what a run
# happened to report first): on the layer that checks it, then on the checker core where
# its words differ (the core counts attempts, not retries; a renewal missing before a call
# is fencing there; the reference's API contract is its adapter's "api"; a document no
# job will process is its adapter's "documents"; no_duplicates is not judged there, and
# a retried batch's duplicate rows show in "buffers").
CLOSEST: dict[str, tuple[str | None, str | None]] = {
    "claim-without-skip-locked": ("claims_skip_locks", None),
    # The claim takes no lock at all: it neither passes locked jobs by nor keeps a job
    # to itself; the first is the claim's own contract.
    "claim-without-row-lock": ("claims_skip_locks", None),
    "expired-lease-never-reclaimed": ("liveness", None),
    "lease-not-renewed": ("leases_cover_calls", "fencing"),
    "claim-before-due": ("transitions", None),
    "orphans-rescued-by-lost-session": ("fencing", None),
    "completion-without-owner-check": ("fencing", None),
    "chunks-written-after-the-move": ("progress", None),
    "document-without-job-transaction": ("no_loss", "documents"),
    "finalize-in-two-transactions": ("finalize", None),
    "finalize-done-before-promotion": ("finalize", None),
    "random-chunk-ids": ("no_duplicates", "buffers"),
    # The same bytes again are refused with an error: the system failed its user.
    "upload-dedupe-on-the-wrong-key": ("api contract", "actions"),
    "duplicate-webhook-applied-twice": ("transitions", None),
    "webhook-and-poller-both-advance": ("transitions", None),
    "reclaim-without-retry-count": ("retries", "attempts"),
    "retry-limit-off-by-one": ("retries", "attempts"),
    "deadletter-without-last-error": ("retries", "documents"),
    "backoff-ignored": ("retries", "attempts"),
    "swallowed-embedding-error": ("progress", None),
    "wrong-dimension-stored": ("buffers", None),
    "progress-counter-overcounts": ("progress", None),
    "re-embed-everything-after-a-retry": ("cost", None),
    "operator-retry-of-a-done-job": ("api contract", "api"),
    "reclaim-leaves-calls-in-flight": ("billing", None),
    "reservation-ignores-the-limit": ("billing", None),
    "failed-call-recorded-as-free": ("billing", None),
    "webhook-signature-not-checked": ("api contract", "api"),
    "job-visible-to-other-users": ("api contract", "api"),
}
CATALOG = tuple(
    replace(mutant, invariant=CLOSEST[mutant.name][0], core_invariant=CLOSEST[mutant.name][1])
    for mutant in CATALOG
)

BY_NAME: dict[str, Mutant] = {mutant.name: mutant for mutant in CATALOG}

__all__ = ["BY_NAME", "CATALOG"]
