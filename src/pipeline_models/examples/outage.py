"""An outage mid-claim, as a program: the whole database goes away and comes back.

w2 has claimed the only job and stands before its commit, its writes in an open
transaction; w1 has a session and nothing to do. The database goes away (every session
lost, w2's transaction rolled back) and comes back. The reference loses nothing: w1
finds its session gone, reconnects and finds nothing due (w2's lease still runs), w2
finds its session gone, and once the lease has run out the job is taken over and ends as
the model predicts.

Under the catalog's ``orphans-rescued-by-lost-session`` (a worker is alive while its
session holds its advisory lock; one back from a lost connection requeues the jobs of
workers without theirs) w1, back first, takes the job from w2, which lost its session but
lives on with a live lease: the checker reports it. One dropped connection (w1's only,
``outage=False``) does not show it: w2 keeps its session and its lock.

Replay it, watching every step::

    pipeline-models repro --run src/pipeline_models/examples/outage.py

and, from a scratch copy with the bug planted (``pipeline-models mutants --only
orphans-rescued-by-lost-session`` runs the search instead), ``python -m
pipeline_models.examples.outage`` runs it with the outage and with one dropped connection,
and prints the invariants each failed.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys

from pipeline_models.database import Database
from pipeline_models.documents import markdown_document
from pipeline_models.invariants import InvariantViolation
from pipeline_models.machines import ALICE, PipelineMachine, use_database

MACHINE = PipelineMachine

DOCUMENT = markdown_document(
    "# An outage\n\n" + "The database goes away and comes back; nothing is lost. " * 6
)


def program(state: PipelineMachine, *, outage: bool = True) -> None:
    """w2 stands before its commit, w1 idles; the database goes away and comes back
    (``outage=False``: only w1's connection is dropped)."""
    state.upload_first_document(user=ALICE, document=DOCUMENT)
    state.database_agrees_with_the_model()
    state.run_worker_until(worker="w2", checkpoint="before_commit")
    state.database_agrees_with_the_model()
    state.step_worker(worker="w1")  # nothing due: the job is w2's
    state.database_agrees_with_the_model()
    if outage:
        state.whole_database_outage()
    else:
        state.drop_database_connection(worker="w1")
    state.database_agrees_with_the_model()
    state.step_worker(worker="w1")  # its session is gone
    state.database_agrees_with_the_model()
    state.step_worker(worker="w1")  # reconnects; w2's lease still runs
    state.database_agrees_with_the_model()
    state.step_worker(worker="w2")  # its session and its transaction are gone
    state.database_agrees_with_the_model()
    state.advance_clock(seconds=31)  # w2's lease runs out
    state.run_whole_steps(worker="w1", steps=3)
    state.database_agrees_with_the_model()


def failures(*, outage: bool = True) -> list[str]:
    """Run the program with its drain on a new machine; the invariants that failed."""
    state = MACHINE()
    failed: list[str] = []
    try:
        program(state, outage=outage)
    except InvariantViolation as violation:
        failed = [v.invariant for v in violation.violations]
        state.teardown()  # the failure is the report: no drain
    else:
        try:
            state.teardown()  # the drain, and liveness
        except InvariantViolation as violation:
            failed = [v.invariant for v in violation.violations]
    return list(dict.fromkeys(failed))


def main() -> int:
    """Run the program with the outage, then with one dropped connection instead; print
    the invariants each failed as JSON, and exit 1 if any did. The database is
    ``DATABASE_URL``'s (else an embedded one), in the schema ``PIPELINE_SCHEMA`` names."""
    schema = os.environ.get("PIPELINE_SCHEMA")
    if schema:
        database = Database.from_environment(schema=schema)
        asyncio.run(database.ensure_schema())
        use_database(database)
    found = {"outage": failures(outage=True), "dropped connection": failures(outage=False)}
    print(json.dumps(found))
    return 1 if any(found.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
