"""The holdout: realistic bugs of the reference pipeline the checker was never tuned against.

The catalog (:mod:`pipeline_models.mutants.catalog`) measured the checker on bugs that
shaped it: several of its invariants and rules were added or changed until each of those
28 was killed. These were written afterwards (issue 17), from the pipeline's code, by
someone who had not changed the checker for them, and were run once against the checker
as it stood; ``docs/mutants.md`` ("Holdout") records those first-run figures as they
came. Do not tune the checker against them and re-run without saying so: a holdout
measured after tuning is a second catalog.

Each is one small change, shaped like the catalog's (``seen`` says where bugs of the kind
are reported, in general terms), with the invariant the author believed closest to its
cause (``api contract`` is the machine's own check of the API's answers, not an
invariant of :mod:`pipeline_models.invariants`).

>>> len(HOLDOUT) >= 8
True
>>> from pipeline_models.mutants.catalog import BY_NAME
>>> any(mutant.name in BY_NAME for mutant in HOLDOUT)
False
"""

from __future__ import annotations

from pipeline_models.mutants import Edit, Mutant

_SQL = "sql/queries.sql"
_STAGES = "pipeline/stages.py"
_WORKER = "pipeline/worker.py"

HOLDOUT: tuple[Mutant, ...] = (
    # -- claims -------------------------------------------------------------------------
    Mutant(
        "reclaim-compares-with-the-new-lease",
        "claims",
        "the reclaim compares lease_expires_at with the new lease's end ($3), not with now "
        "($2): every live lease counts as expired and workers take each other's jobs",
        "positional-parameter mix-ups in hand-written SQL ($2 for $3) in lease-based queues",
        [
            Edit(
                _SQL,
                "    WHERE state = 'working' AND lease_expires_at <= $2::timestamptz\n",
                "    WHERE state = 'working' AND lease_expires_at <= $3::timestamptz\n",
            )
        ],
        invariant="transitions",
    ),
    Mutant(
        "held-job-claimed-anyway",
        "claims",
        "the claim of due jobs does not skip jobs held for the budget: a held job is "
        "claimed again as soon as it is due",
        "a 'paused' or 'on hold' flag added to a job table and forgotten in the claim query",
        [
            Edit(
                _SQL,
                "next_attempt_at <= $2::timestamptz\n      AND held_for IS NULL\n",
                "next_attempt_at <= $2::timestamptz\n",
            )
        ],
        invariant="transitions",
    ),
    # -- fencing ------------------------------------------------------------------------
    Mutant(
        "renewal-result-ignored",
        "fencing",
        "the lease renewal before an external call ignores its answer: a worker whose "
        "lease is gone still makes the call",
        "fire-and-forget heartbeats; lock-renewal results never checked (lease-based locks)",
        [
            Edit(
                _WORKER,
                "        if not await self._renew():\n"
                "            raise LeaseLostError(\n"
                '                f"{self.worker.name} lost job {self.job.job_id} before'
                ' calling a service"\n'
                "            )\n",
                "        await self._renew()\n",
            )
        ],
        invariant="leases_cover_calls",
    ),
    # -- retries ------------------------------------------------------------------------
    Mutant(
        "transient-failure-not-counted",
        "retries",
        "a transient failure schedules its retry without counting it: a job that keeps "
        "failing is retried forever",
        "attempt counters incremented in memory and never written back; endless retry loops",
        [
            Edit(
                _SQL,
                "retry_count = retry_count + 1, last_error = $5",
                "last_error = $5",
            )
        ],
        invariant="transitions",
    ),
    Mutant(
        "deferral-resets-the-retry-budget",
        "retries",
        "a deferral (circuit open) is requeued as progress, which resets the retry count: "
        "failures between deferrals never reach the limit",
        "'reset attempts on success' applied to every requeue; poison jobs that never dead-letter",
        [
            Edit(
                _WORKER,
                '                    progress=False,\n                    action="deferred",\n',
                '                    progress=True,\n                    action="deferred",\n',
            )
        ],
        invariant="transitions",
    ),
    # -- rate limit and circuit ---------------------------------------------------------
    Mutant(
        "retry-after-ignored",
        "rate limit",
        "the retry waits for its own backoff only: a service's longer Retry-After is ignored",
        "clients that honour their backoff but not the server's Retry-After (429 storms)",
        [
            Edit(
                "pipeline/retry.py",
                "return max(self.backoff_seconds(retry_count), retry_after or 0.0)",
                "return self.backoff_seconds(retry_count)",
            )
        ],
        invariant="transitions",
    ),
    Mutant(
        "circuit-open-burns-retries",
        "circuit",
        "a call refused by an open circuit is classified as a transient failure: during an "
        "outage every job spends its retries without a request being sent, and dead-letters",
        "circuit breakers whose fast-fail error is retried like any other; outage-wide "
        "dead letters",
        [
            Edit(
                "pipeline/retry.py",
                "    if isinstance(error, CircuitOpenError):\n"
                "        return Failure(FailureKind.DEFERRED, message, error.retry_after)\n",
                "",
            )
        ],
        invariant="liveness",
    ),
    # -- idempotency --------------------------------------------------------------------
    Mutant(
        "upsert-returns-the-existing-document",
        "idempotency",
        "the upload's insert does DO UPDATE to get the id back, and the code takes any "
        "returned id as a new document: the same bytes again get a second job",
        "INSERT ... ON CONFLICT DO UPDATE ... RETURNING used to fetch the existing row",
        [
            Edit(
                _SQL,
                "ON CONFLICT (user_id, file_sha256) DO NOTHING\n",
                "ON CONFLICT (user_id, file_sha256)"
                " DO UPDATE SET updated_at = excluded.updated_at\n",
            )
        ],
        invariant="no_duplicates",
    ),
    # -- cost ---------------------------------------------------------------------------
    Mutant(
        "embeddings-billed-at-the-estimate",
        "cost",
        "an embeddings call is recorded at the client's token estimate, not at the usage "
        "the service's answer reports",
        "cost trackers that count tokens client-side instead of reading the response's usage",
        [
            Edit(
                _STAGES,
                "billed=lambda answer: Charge(Usage(tokens=answer.tokens)),",
                "billed=lambda answer: Charge(Usage(tokens=estimate_tokens(texts))),",
            )
        ],
        invariant="billing",
    ),
    # -- chunking boundaries --------------------------------------------------------------
    Mutant(
        "byte-offsets-count-characters",
        "chunking",
        "the streaming chunker advances its byte offset by characters: for non-ASCII text "
        "the resume cursor points before the next chunk, or inside a character",
        "character counts used as byte offsets (UTF-8 resume and range bugs)",
        [
            Edit(
                "pipeline/chunking.py",
                'size = len(piece) if piece.isascii() else len(piece.encode("utf-8"))',
                "size = len(piece)",
            )
        ],
        invariant="buffers",
    ),
    Mutant(
        "embed-resume-skips-a-chunk",
        "data",
        "the next embedding batch starts after ordinal embeddings_done, not at it: each "
        "batch skips one chunk",
        "off-by-one keyset pagination (> where >= was meant) in batch jobs",
        [Edit(_SQL, "AND chunk_ord >= $4", "AND chunk_ord > $4")],
        invariant="buffers",
    ),
    # -- security -----------------------------------------------------------------------
    Mutant(
        "webhook-replay-window-in-milliseconds",
        "security",
        "the API passes its replay window in milliseconds to a check that counts seconds: "
        "a webhook signed days ago is still accepted",
        "unit mix-ups in webhook timestamp tolerances; replayed webhooks accepted",
        [
            Edit(
                "pipeline/api.py",
                "tolerance_seconds=settings.webhook_tolerance_seconds,",
                "tolerance_seconds=settings.webhook_tolerance_seconds * 1000,",
            )
        ],
        invariant="api contract",
    ),
    Mutant(
        "dedupe-lookup-ignores-the-user",
        "security",
        "a repeated upload is answered with the newest document of those bytes, whoever "
        "uploaded it: a user can be handed another user's job",
        "content-hash deduplication across tenants (cross-user leaks in upload dedupe)",
        [
            Edit(
                _SQL,
                "WHERE document.user_id = $1 AND document.file_sha256 = $2",
                "WHERE $1::uuid IS NOT NULL AND document.file_sha256 = $2",
            )
        ],
        invariant="api contract",
    ),
)

BY_NAME: dict[str, Mutant] = {mutant.name: mutant for mutant in HOLDOUT}

__all__ = ["BY_NAME", "HOLDOUT"]
