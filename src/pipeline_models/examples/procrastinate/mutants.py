"""Realistic bugs planted in a scratch copy of the installed procrastinate.

Each mutant is one small edit of procrastinate's own SQL (``sql/schema.sql``, applied by
its schema manager in every check process, or ``sql/queries.sql``) or Python, and names
the queue invariant closest to its cause: the one a kill should report first. Run them
with ``pipeline-models mutants --system procrastinate``: the unmodified copy first, on
the very same schedule (a kill counts only in a round it passed), then each mutant in a
process of its own, checked by the core through :mod:`.adapter` as procrastinate promises
(:class:`~.adapter.ProcrastinateAsPromised`: its unfenced late finish is its contract, and
the strict spec's real finding, so the control can pass).

>>> len(CATALOG) >= 6
True
>>> sorted({mutant.invariant for mutant in CATALOG})[:2]
['attempts', 'fencing']
"""

from __future__ import annotations

from pipeline_models.mutants import Edit, Mutant

ADAPTER = "pipeline_models.examples.procrastinate.adapter:ProcrastinateAsPromised"
_SCHEMA = "sql/schema.sql"
_QUERIES = "sql/queries.sql"


def _mutant(name: str, invariant: str, bug: str, seen: str, *edits: Edit) -> Mutant:
    return Mutant(name, invariant, bug, seen, edits, package="procrastinate", invariant=invariant)


UNMODIFIED = Mutant(
    "procrastinate",
    "control",
    "none: the installed procrastinate, copied and run exactly as every mutant is",
    "",
    edits=(),
    package="procrastinate",
)

CATALOG: tuple[Mutant, ...] = (
    _mutant(
        "fetch-takes-running-jobs",
        "mutual_exclusion",
        "the fetch takes 'doing' jobs as well as 'todo' ones: a second worker runs a job "
        "its first worker still runs",
        "queues whose claim filter was widened to pick up 'stuck' jobs",
        Edit(_SCHEMA, "AND jobs.status = 'todo'", "AND jobs.status IN ('todo', 'doing')"),
    ),
    _mutant(
        "fetch-ignores-scheduled-at",
        "transitions",
        "the fetch ignores scheduled_at: a retry waiting for its backoff runs at once",
        "retry storms against rate-limited APIs; scheduled jobs run early",
        Edit(_SCHEMA, "AND (jobs.scheduled_at IS NULL OR jobs.scheduled_at <= now())", ""),
    ),
    _mutant(
        "retry-does-not-count",
        "attempts",
        "retrying a job (a failure, or a stalled job put back) does not count the attempt: "
        "a job that kills its worker is retried for ever",
        "crash loops of poison jobs in queues that count attempts only on failure",
        Edit(
            _SCHEMA,
            "            attempts = attempts + 1,\n            scheduled_at = retry_at,\n"
            "            priority = COALESCE(new_priority, priority),\n"
            "            queue_name = COALESCE(new_queue_name, queue_name),\n"
            "            lock = COALESCE(new_lock, lock)\n"
            "        WHERE id = job_id AND status IN ('doing', 'failed')",
            "            scheduled_at = retry_at,\n"
            "            priority = COALESCE(new_priority, priority),\n"
            "            queue_name = COALESCE(new_queue_name, queue_name),\n"
            "            lock = COALESCE(new_lock, lock)\n"
            "        WHERE id = job_id AND status IN ('doing', 'failed')",
        ),
    ),
    _mutant(
        "retry-limit-off-by-one",
        "attempts",
        "the retry strategy compares attempts with > instead of >=: a job is tried once "
        "more than max_attempts allows",
        "off-by-one retry limits (max_retries vs max_attempts confusion)",
        Edit(
            "retry.py",
            "if self.max_attempts and job.attempts >= self.max_attempts:",
            "if self.max_attempts and job.attempts > self.max_attempts:",
        ),
    ),
    _mutant(
        "stalled-ignores-heartbeat",
        "fencing",
        "the stalled-jobs query forgets the heartbeat: every running job is 'stalled' and "
        "put back while its worker still beats and runs it",
        "stalled-job recovery that judges by status alone (double execution)",
        Edit(_QUERIES, "AND (job.worker_id IS NULL OR sw.id IS NOT NULL)", ""),
    ),
    _mutant(
        "prune-in-milliseconds",
        "fencing",
        "pruning stalled workers reads the timeout in milliseconds: a starting worker "
        "deletes the row of a worker that beat a second ago, orphaning its running job",
        "unit mix-ups in heartbeat timeouts",
        Edit(
            _SCHEMA,
            "(seconds_since_heartbeat || 'SECOND')::INTERVAL",
            "(seconds_since_heartbeat || 'MILLISECOND')::INTERVAL",
        ),
    ),
    _mutant(
        "fetch-forgets-its-worker",
        "fencing",
        "the fetch does not record the worker: the job looks stalled at once, is put back "
        "and run again while its worker runs it",
        "claims that mark a job taken without saying by whom",
        Edit(
            _SCHEMA,
            "SET status = 'doing', worker_id = p_worker_id",
            "SET status = 'doing'",
        ),
    ),
    _mutant(
        "stalled-ignores-orphans",
        "liveness",
        "the stalled-jobs query misses jobs whose worker row was pruned (worker_id NULL): "
        "they stay 'doing' for ever",
        "orphaned jobs after a worker registry cleanup",
        Edit(
            _QUERIES,
            "AND (job.worker_id IS NULL OR sw.id IS NOT NULL)",
            "AND sw.id IS NOT NULL",
        ),
    ),
)

BY_NAME: dict[str, Mutant] = {mutant.name: mutant for mutant in CATALOG}

__all__ = ["ADAPTER", "BY_NAME", "CATALOG", "UNMODIFIED"]
