"""The reference pipeline checked by the core, like a worker nobody here wrote.

Its adapter (:mod:`pipeline_models.pipeline.adapter`) gives the core a spec and three
verbs; the core runs ``BaseWorker.run`` unchanged, without its checkpoint hook, and
pauses it at each statement, each COMMIT and around each call to the fake services. The
unmodified pipeline must pass; a catalog bug planted in its SQL must be found, and named
by the invariant of its cause.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
from collections.abc import Iterator
from decimal import Decimal
from importlib import resources
from typing import Any, ClassVar

import pytest

from pipeline_models.core import Holder, QueueViolation, machine_for
from pipeline_models.core.holders import Move
from pipeline_models.core.report import run
from pipeline_models.database import Database
from pipeline_models.examples.guide.adapter import GuideAdapter
from pipeline_models.fakes import FaultPlan
from pipeline_models.fakes.faults import Fault
from pipeline_models.mutants.catalog import BY_NAME
from pipeline_models.pipeline import adapter
from pipeline_models.queries import Queries

# This process's own tables: another run on the same server (a developer's check, a
# second suite) never shares them.
ReferenceAdapter = adapter.ReferenceAdapter.in_schema(f"pm_reference_{os.getpid()}")


@pytest.fixture(autouse=True, scope="module")
def _drop_the_tables_at_the_end(pipeline_database: Database) -> Iterator[None]:
    yield
    # A loop of its own, never made current: asyncio.run would leave the main thread
    # without the current loop the queue machines' runtime set.
    loop = asyncio.new_event_loop()
    try:
        tables = Database(pipeline_database.url, schema=ReferenceAdapter.schema)
        loop.run_until_complete(tables.drop_schema())
    finally:
        loop.close()


def planted(mutant: str) -> Queries:
    """The reference's SQL with the catalog mutant ``mutant``'s edits (SQL-only ones)."""
    text = (resources.files("pipeline_models") / "sql" / "queries.sql").read_text()
    for edit in BY_NAME[mutant].edits:
        assert edit.path == "sql/queries.sql", f"{mutant} changes {edit.path}, not the SQL"
        assert text.count(edit.old) == edit.count
        text = text.replace(edit.old, edit.new)
    return Queries.parse(text)


# A document of many chunks, each of its own text (batches of two: many batches).
LONG_DOCUMENT = adapter.markdown_document(
    "# Long\n\n" + "".join(f"Sentence {n} fills a part of the document. " for n in range(40)),
    filename="long.md",
)


class LocklessClaimAdapter(ReferenceAdapter):
    """claim-without-row-lock: the claim selects a due job without locking it."""

    queries: ClassVar[Queries] = planted("claim-without-row-lock")


@pytest.mark.parametrize("seed", [1, *(pytest.param(s, marks=pytest.mark.slow) for s in (2, 3))])
def test_the_unmodified_reference_passes_a_seeded_run_of_the_core(seed: int) -> None:
    report = run(machine_for(ReferenceAdapter), profile="dev", seed=seed, max_examples=30)
    assert report.ok, report.render()
    assert report.examples >= 30
    assert "then the adapter's own" in report.render()  # the document extension ran


def test_a_lockless_claim_is_found() -> None:
    """The claim is one statement, so the core (stepping one worker's round trip at a
    time) cannot run two claims inside each other; what it finds is the consequence: a
    claim that selected an expired lease without locking it waits behind the holder's
    last transaction, then, with the job advanced meanwhile, takes it as a take-over and
    counts an attempt nothing failed (or, in other programs, two holders at once, or
    a claim that waits on another session's row lock instead of passing it by)."""
    report = run(
        machine_for(LocklessClaimAdapter, actions=()),
        profile="dev",
        seed=1,
        max_examples=100,
        rounds=1,
        shrink_seconds=20,
    )
    assert not report.ok
    assert report.failures[0].invariant in (
        "claims_skip_locks",
        "mutual_exclusion",
        "attempts",
    ), report.render()


class WaitingClaimAdapter(ReferenceAdapter):
    """claim-without-skip-locked: the claim locks its row FOR UPDATE, without SKIP LOCKED."""

    queries: ClassVar[Queries] = planted("claim-without-skip-locked")


@pytest.mark.parametrize(
    ("adapter_class", "found"),
    [(ReferenceAdapter, []), (WaitingClaimAdapter, ["claims_skip_locks"])],
)
def test_a_claim_that_waits_on_another_sessions_row_lock_is_found(
    adapter_class: type[adapter.ReferenceAdapter], found: list[str]
) -> None:
    """The spec says claims skip locked rows: the lock holder locks the only job, and a
    worker runs until it waits. The reference's claim passes the job by (the worker idles);
    a claim without SKIP LOCKED waits behind the lock holder, and is reported. Released,
    the waiting claim goes on."""
    machine = machine_for(adapter_class, drain=False)()
    try:
        assert "claims_skip_locks" in machine.INVARIANTS
        machine.enqueue_job()
        machine.hold_a_row_lock(pick=0)
        assert machine.row_lock is not None
        try:
            machine.run_worker_until_it_waits(worker="w1")
            reported: list[str] = []
        except QueueViolation as violation:
            reported = [f"{f.invariant}: {f.observed}" for f in violation.findings]
        machine.reported.clear()
        machine.release_the_row_lock()
        assert machine.row_lock is None
        machine.run_worker_until_it_waits(worker="w1")  # the job is claimable again
        claimed = machine._run(
            machine.runtime.monitor.fetchval(
                f'SELECT count(*) FROM "{ReferenceAdapter.schema}".upload_jobs '
                "WHERE owner IS NOT NULL OR stage <> 'uploaded'"
            )
        )
    finally:
        machine.teardown()
    assert [said.split(":")[0] for said in reported] == found
    assert all("blocked in" in said for said in reported)
    assert claimed == 1


def test_a_spec_that_does_not_say_claims_skip_locks_draws_no_lock_holder() -> None:
    machine = machine_for(GuideAdapter)
    assert "claims_skip_locks" not in machine.INVARIANTS
    assert "hold_a_row_lock" not in vars(machine)
    assert "hold_a_row_lock" in vars(machine_for(ReferenceAdapter))


def test_a_worker_is_stopped_around_its_calls_only_where_the_spec_speaks_of_calls() -> None:
    """The guide's worker calls no service: its programs stop workers before writes and
    commits, as before the call points existed (its seeds draw what they drew); the
    reference renews before calls, so its programs may stop a worker around them too."""

    def points(adapter_class: type[Any]) -> str:
        rule = machine_for(adapter_class).run_worker_until.hypothesis_stateful_rule
        return repr(rule.arguments["before"])

    assert "'a call'" not in points(GuideAdapter)
    assert "'a call'" in points(ReferenceAdapter)


@pytest.mark.parametrize(
    ("before", "times", "stopped"),
    [
        ("a call", 1, "before POST /api/v1/parsing/upload"),
        ("a call", 2, "before GET /api/v1/parsing/job/"),
        ("a call's answer", 3, "after GET /api/v1/parsing/job/"),
        ("a write", 1, "before SELECT job_id FROM upload_jobs"),
    ],
)
def test_a_worker_runs_until_the_nth_point_of_a_kind(before: str, times: int, stopped: str) -> None:
    """run_worker_until passes ``times - 1`` points of the kind and stops at the next: the
    parse's submit, its poll, the answer of its result's fetch (after the renewals
    before each call) are each one rule away."""
    machine = machine_for(ReferenceAdapter, drain=False)()
    try:
        machine.enqueue_job()
        if before != "a write":  # the job's first stage makes no call
            machine.run_worker_until(worker="w1", before="a commit")
            machine.step_worker(worker="w1")
        machine.run_worker_until(worker="w1", before=before, times=times)
        where = machine.scheduler.report("w1")
    finally:
        machine.teardown()
    assert where.startswith(f"w1 {stopped}"), where
    if before == "a call's answer":
        assert where.endswith("/result/raw/markdown"), where


def test_the_workers_warnings_about_what_the_checker_does_are_held_back(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The machine cuts w1's connection mid-step on purpose: the worker's "database
    connection lost" is the plan, not news (quiet_loggers), and its logger is itself
    again once the machine is done."""
    worker_log = logging.getLogger("pipeline_models.worker")
    caplog.set_level(logging.WARNING)
    machine = machine_for(ReferenceAdapter, drain=False)()
    try:
        machine.enqueue_job()
        machine.run_worker_until(worker="w1", before="a write")
        machine.lose_the_connection(worker="w1")
        machine.run_worker_until_it_waits(worker="w1")
        assert worker_log.level == logging.ERROR
    finally:
        machine.teardown()
    assert worker_log.level == logging.NOTSET
    assert "pipeline_models.worker" not in {record.name for record in caplog.records}
    worker_log.warning("database connection lost")  # outside a check, it is news
    assert "pipeline_models.worker" in {record.name for record in caplog.records}


def test_two_schemas_of_the_reference_are_checked_in_one_process() -> None:
    """Two adapters on their own schemas, one after the other in one process (the
    checker's connections shared): each reads its own tables; a statement cached for
    one schema's rows is not run against the other's."""
    other = adapter.ReferenceAdapter.in_schema(f"pm_reference_{os.getpid()}_other")
    for adapter_class in (ReferenceAdapter, other, ReferenceAdapter):
        machine = machine_for(adapter_class, drain=False)()
        try:
            machine.enqueue_job()
            machine.run_worker(worker="w1", steps=3)
        finally:
            machine.teardown()


def test_a_worker_that_loses_its_connection_mid_step_reconnects_and_loses_nothing() -> None:
    """The server ends w1's sessions while it works a job (its open transaction rolls
    back); w1 lives on, reconnects, and the job ends as the model says (the drain judges
    liveness and the documents). A worker that does not say it reconnects is not cut."""
    assert "lose_the_connection" not in vars(machine_for(GuideAdapter))
    machine = machine_for(ReferenceAdapter)()
    try:
        machine.enqueue_job()
        machine.run_worker(worker="w1", steps=6)  # claimed, mid-step
        before = set(machine.scheduler.slots["w1"].pids)
        assert before
        machine.lose_the_connection(worker="w1")
        assert "w1" not in machine.crashed
        machine.run_worker_until_it_waits(worker="w1")
        assert machine.scheduler.slots["w1"].pids - before, "w1 never connected again"
    finally:
        machine.teardown()  # the drain: every job finished, as predicted


def test_the_document_extension_holds_a_finished_document_to_the_model() -> None:
    machine = machine_for(ReferenceAdapter, drain=False)()
    monitor = machine.runtime.monitor
    schema = ReferenceAdapter.schema
    try:
        machine.enqueue_job()
        machine._drain()  # every job finished, and judged: the document as predicted
        assert machine._run(machine.adapter.findings_at_end(monitor)) == []
        machine._run(
            monitor.execute(
                f'DELETE FROM "{schema}".document_chunks WHERE chunk_id = '
                f'(SELECT chunk_id FROM "{schema}".document_chunks ORDER BY chunk_id LIMIT 1)'
            )
        )
        findings = machine._run(machine.adapter.findings_at_end(monitor))
    finally:
        machine.teardown()
    assert findings, "a lost chunk of a finished document went unseen"
    assert {finding.invariant for finding in findings} == {"documents"}
    assert "chunk" in findings[0].message


@pytest.mark.parametrize(
    ("bad", "invariant"),
    [
        # A live job's counter ahead of its buffer (progress-counter-overcounts).
        ("UPDATE {s}.upload_jobs SET chunks_done = chunks_done + 2", "progress"),
        # A chunk row that is not the planned one (chunks-written-after-the-move).
        ("UPDATE {s}.document_chunk_buffer SET chunk_sha = repeat('0', 64)", "buffers"),
        # A budget that does not add up to its calls (reservation-ignores-the-limit).
        (
            "INSERT INTO {s}.spending_budget (budget_id, limit_usd, reserved_usd, updated_at) "
            "VALUES ('crafted', 1, 0.5, now())",
            "billing",
        ),
    ],
)
def test_the_document_extension_judges_every_step(bad: str, invariant: str) -> None:
    """Between any two steps the buffers, counters, final rows and ledger must add up: a
    bug the drain would hide (a counter overcounted, then corrected) is seen only here.
    A worker is stepped to a job with chunks buffered; the state is clean; then a crafted
    change of one table is reported under the invariant it breaks."""
    machine = machine_for(ReferenceAdapter, drain=False)()
    monitor = machine.runtime.monitor
    schema = f'"{ReferenceAdapter.schema}"'
    try:
        machine.upload_a_document(
            document=LONG_DOCUMENT,
            by_the_other_user=False,
        )
        for _ in range(200):  # to the first committed chunk batch
            buffered = machine._run(
                monitor.fetchval(f"SELECT count(*) FROM {schema}.document_chunk_buffer")
            )
            if buffered:
                break
            machine.step_worker(worker="w1")
        assert buffered, "the worker never buffered a chunk"
        clean = machine._run(machine.adapter.findings_after_each_step(monitor))
        machine._run(monitor.execute(bad.format(s=schema)))
        findings = machine._run(machine.adapter.findings_after_each_step(monitor))
        with pytest.raises(QueueViolation) as raised:  # the machine judges it after a rule
            machine.enqueue_job()
    finally:
        machine.teardown()
    assert raised.value.findings[0].invariant == invariant
    assert clean == []
    assert findings, f"a crafted {invariant} violation went unseen"
    assert findings[0].invariant == invariant, findings


def test_committed_vectors_sent_again_are_a_cost_finding() -> None:
    """A worker that lost its lease may send its one batch after the new holder committed
    it; the holder itself never sends a committed chunk again, and nobody sends more than
    a batch of them (re-embed-everything-after-a-retry). Crafted: the service is shown
    committed chunks of a document again, as sent by each."""
    machine = machine_for(ReferenceAdapter, drain=False)()
    monitor = machine.runtime.monitor
    schema = f'"{ReferenceAdapter.schema}"'
    try:
        machine.upload_a_document(
            document=LONG_DOCUMENT,
            by_the_other_user=False,
        )
        for _ in range(400):  # to two committed batches of vectors, the job held
            job = machine._run(
                monitor.fetchrow(f"SELECT embeddings_done, state, owner FROM {schema}.upload_jobs")
            )
            if job["embeddings_done"] >= 4 and job["state"] == "working":
                break
            machine.step_worker(worker="w1")
        assert job["embeddings_done"] >= 4, "the worker never committed two batches of vectors"
        assert job["owner"] == "w1"
        adapter_ = machine.adapter
        [(document_id, outcome)] = adapter_._expected.items()
        texts = [chunk.text for chunk in outcome.chunks]
        sent = adapter_._senders.sent
        sent.append(("w2", str(document_id), texts[:2]))  # a zombie's late batch
        tolerated = machine._run(adapter_.findings_after_each_step(monitor))
        sent.append(("w2", str(document_id), texts[:3]))  # more than a batch
        sent.append(("w1", str(document_id), texts[1:2]))  # the holder, one committed chunk
        findings = machine._run(adapter_.findings_after_each_step(monitor))
    finally:
        machine.teardown()
    assert tolerated == []
    assert [finding.invariant for finding in findings] == ["cost", "cost"]
    assert [finding.observed for finding in findings] == [
        "w2 sent ordinals [0, 1, 2] again",
        "w1 (holding the job) sent ordinals [1] again",
    ]


def test_the_drain_waits_out_a_crashed_holders_lease_beside_a_polling_worker() -> None:
    """w1 claims a job and crashes holding it; w2 polls every 0.5 s. The drain must move
    time to the lease's end (30 s), not creep by w2's sleeps, or it calls a job that
    would have been recovered stuck (the false liveness alarm this replays)."""
    machine = machine_for(ReferenceAdapter)()
    try:
        machine.enqueue_job()
        machine.run_worker_until_it_waits(worker="w1")
        machine.crash_worker(worker="w1")
    finally:
        machine.teardown()  # the drain: liveness and the document extension judged here


class DedupeOnTheWrongKeyAdapter(ReferenceAdapter):
    """upload-dedupe-on-the-wrong-key: the same bytes sent again hit a unique violation."""

    queries: ClassVar[Queries] = planted("upload-dedupe-on-the-wrong-key")


@pytest.mark.parametrize(
    ("adapter_class", "found"),
    [(ReferenceAdapter, []), (DedupeOnTheWrongKeyAdapter, ["actions"])],
)
def test_the_same_bytes_uploaded_again_are_the_same_document(
    adapter_class: type[adapter.ReferenceAdapter], found: list[str]
) -> None:
    document = adapter.markdown_document("# Twice\n\nSent twice by its owner.\n", filename="t.md")
    machine = machine_for(adapter_class, drain=False)()
    try:
        machine.upload_a_document(document=document, by_the_other_user=False)
        try:
            machine.upload_the_same_bytes_again(pick=0, by_the_other_user=False)
            reported: list[str] = []
        except QueueViolation as violation:
            reported = [f"{f.invariant}: {f.message}" for f in violation.findings]
        jobs = machine._run(
            machine.runtime.monitor.fetchval(
                f'SELECT count(*) FROM "{ReferenceAdapter.schema}".upload_jobs'
            )
        )
    finally:
        machine.teardown()
    assert [said.split(":")[0] for said in reported] == found
    assert all("UniqueViolationError" in said for said in reported)
    assert jobs == 1


@pytest.mark.parametrize("point", ["blob_stored", "document_inserted"])
def test_an_upload_cut_short_leaves_no_document_without_its_job(point: str) -> None:
    machine = machine_for(ReferenceAdapter, drain=False)()
    monitor = machine.runtime.monitor
    try:
        machine.upload_cut_short(point=point)
        documents = machine._run(
            monitor.fetchval(f'SELECT count(*) FROM "{ReferenceAdapter.schema}".documents')
        )
        findings = machine._run(machine.adapter.findings_at_end(monitor))
        # A document the cut left behind (as a planted non-atomic upload would) is found.
        machine._run(
            monitor.execute(
                f'INSERT INTO "{ReferenceAdapter.schema}".documents '
                "(document_id, user_id, filename, declared_type, file_sha256, size_bytes, "
                "raw_blob_key, status, created_at, updated_at) VALUES (gen_random_uuid(), "
                "gen_random_uuid(), 'x.md', 'text/markdown', repeat('a', 64), 1, 'raw/x', "
                "'processing', now(), now())"
            )
        )
        orphan = machine._run(machine.adapter.findings_at_end(monitor))
    finally:
        machine.teardown()
    assert (documents, findings) == (0, [])
    assert [finding.message for finding in orphan] == [
        "a document has no job: nothing will ever process it"
    ]


@pytest.mark.parametrize("renews", [True, False])
def test_a_worker_that_does_not_renew_its_lease_before_a_call_is_found(renews: bool) -> None:
    """lease-not-renewed: the spec says the lease is renewed before every call after the
    claim's first; the parse stage's poll and its download are two calls of one hold."""
    config = dataclasses.replace(ReferenceAdapter.config, renew_leases=renews)
    machine = machine_for(type("Renewing", (ReferenceAdapter,), {"config": config}), drain=False)()
    try:
        machine.enqueue_job()
        machine.run_worker_until_it_waits(worker="w1")
        found: list[str] = []
    except QueueViolation as violation:
        found = [f"{f.invariant}: {f.message}" for f in violation.findings]
    finally:
        machine.teardown()
    assert found == (
        [] if renews else ["fencing: w1 called a service again without renewing its hold"]
    )


def test_a_fault_script_left_over_plays_out_in_the_drain() -> None:
    """Faults the program set up for work it never ran meet the drain's requests (a
    batch committed, the next one failing: re-embed-everything-after-a-retry is found in
    two rules)."""
    machine = machine_for(ReferenceAdapter)()
    middling = adapter.markdown_document(
        "# Mid\n\n" + "".join(f"Sentence {n} fills a part. " for n in range(22)),
        filename="mid.md",
    )
    machine.upload_a_document(document=middling, by_the_other_user=False)
    plan = FaultPlan([None, Fault.server_error()])
    machine.put_faults_on_the_embeddings(plan=plan)
    machine.teardown()  # the drain: every job finished, as the model says
    assert plan.injected


def test_the_parsers_notices_come_again_signed_as_sent() -> None:
    """At-least-once delivery, modelled as a provider does it: a notice sent again (the
    program's duplicate, the drain's late announcements) is signed when it is sent, so
    the receiver judges it, rather than refusing the old bytes as stale (401) once more
    than its 300 s replay window has passed."""
    machine = machine_for(ReferenceAdapter)()
    parser = machine.adapter._fakes()  # type: ignore[attr-defined]
    machine.enqueue_job()
    machine.run_worker_until_it_waits(worker="w1")  # parsed by polling, done
    machine.deliver_parser_webhooks()
    machine.advance_clock(seconds=301)
    machine.deliver_a_webhook_twice()
    machine.advance_clock(seconds=301)
    sent = len(parser.parser.delivery_results)
    machine.teardown()  # the drain: every job done, then the notices arrive late
    late = parser.parser.delivery_results[sent:]
    statuses = [result.status_code for result in parser.parser.delivery_results]
    assert len(late) == len(parser.parser.jobs) == 1
    assert statuses[1:] == [200, 200], statuses  # the duplicate, the late one: judged


class OverspendingAdapter(ReferenceAdapter):
    """reservation-ignores-the-limit: a reservation is taken whatever the cap."""

    queries: ClassVar[Queries] = planted("reservation-ignores-the-limit")


@pytest.mark.parametrize(
    ("adapter_class", "found"), [(ReferenceAdapter, []), (OverspendingAdapter, ["billing"])]
)
def test_the_drain_runs_under_a_cap_left_in_place_until_no_job_moves(
    adapter_class: type[adapter.ReferenceAdapter], found: list[str]
) -> None:
    """The world heals (the cap lifted) only once the drain gets no further: a worker
    claims the job under the cap first, so a reservation past the cap is seen."""
    machine = machine_for(adapter_class)()
    claimed_before_healing: list[bool] = []
    act = machine._act

    def recording(name: str, drawn: dict[str, Any], **options: Any) -> None:
        if name == "heal":
            claimed_before_healing.append(Move.CLAIM in {e.move for e in machine.holders.events})
        act(name, drawn, **options)

    machine._act = recording  # type: ignore[method-assign]
    machine.cap_the_spending(limit=Decimal("0"))
    machine.enqueue_job()
    try:
        machine.teardown()  # the drain
        fired: list[str] = []
    except QueueViolation as violation:
        fired = [finding.invariant for finding in violation.findings][:1]
    assert fired == found
    assert claimed_before_healing == ([True] if not found else [])


def test_an_outage_ends_every_workers_sessions_and_each_reconnects() -> None:
    """lose_the_connection(worker='every worker'): both workers lose their sessions at
    once, mid-step with live leases (orphans-rescued-by-lost-session needs exactly this:
    the first back must not take the other's job); both reconnect, nothing is lost."""
    machine = machine_for(ReferenceAdapter)()
    try:
        machine.enqueue_job()
        machine.enqueue_job()
        machine.run_worker_until(worker="w1", before="a write")
        machine.run_worker_until(worker="w2", before="a write")
        before = {slot: set(machine.scheduler.slots[slot].pids) for slot in ("w1", "w2")}
        assert all(before.values())
        machine.lose_the_connection(worker="every worker")
        for slot in ("w1", "w2"):
            machine.run_worker_until_it_waits(worker=slot)
            assert machine.scheduler.slots[slot].pids - before[slot], f"{slot} never came back"
    finally:
        machine.teardown()  # the drain: every job finished, as predicted


class UnfencedCompletionAdapter(ReferenceAdapter):
    """completion-without-owner-check: the advance checks the job's state and stage, not
    its owner and lease."""

    queries: ClassVar[Queries] = planted("completion-without-owner-check")


class WebhookBesidePollerAdapter(ReferenceAdapter):
    """webhook-and-poller-both-advance: the webhook moves the stage and leaves the job
    with its worker, whose advance does not check the stage."""

    queries: ClassVar[Queries] = planted("webhook-and-poller-both-advance")


def _play(adapter_class: type[adapter.ReferenceAdapter], program: list[str]) -> list[str]:
    """Play ``program`` (rule calls on ``machine``) with no drain; the findings' names."""
    machine = machine_for(adapter_class, drain=False)()
    try:
        for line in program:
            eval(line, {"machine": machine})
        return []
    except QueueViolation as violation:
        return [finding.invariant for finding in violation.findings]
    finally:
        machine.teardown()


ANSWER = "machine.run_worker_until(worker='w1', before=\"a call's answer\")"


@pytest.mark.parametrize(
    ("adapter_class", "found"),
    [(ReferenceAdapter, []), (UnfencedCompletionAdapter, ["fencing"])],
)
def test_a_zombie_stopped_before_its_locking_read_commits_only_if_unfenced(
    adapter_class: type[adapter.ReferenceAdapter], found: list[str]
) -> None:
    """w1 has the parse's answer in hand and stops before it locks its row to write it;
    its lease runs out and w2 takes the job over; w1 goes on. Fenced by owner and lease,
    it gives up; unfenced, its write is a zombie's."""
    program = [
        "machine.enqueue_job()",
        ANSWER,
        ANSWER,
        ANSWER,
        "machine.run_worker_until(worker='w1', before='a write')",
        "machine.advance_clock(seconds=31)",
        "machine.run_worker_until(worker='w2', before='a write')",
        "machine.run_worker_until_it_waits(worker='w1')",
    ]
    assert _play(adapter_class, program) == found


@pytest.mark.parametrize(
    ("adapter_class", "found"),
    [(ReferenceAdapter, []), (UnfencedCompletionAdapter, ["fencing"])],
)
def test_a_worker_stalled_past_its_lease_writes_as_a_zombie_only_if_unfenced(
    adapter_class: type[adapter.ReferenceAdapter], found: list[str]
) -> None:
    """w1 claims the job and stalls before its locking read for longer than its lease;
    w2 takes the job over; w1 goes on (stall_worker: the zombie's window in one rule)."""
    program = [
        "machine.enqueue_job()",
        "machine.stall_worker(worker='w1', before='a write')",
        "machine.run_worker_until(worker='w2', before='a write')",
        "machine.run_worker_until_it_waits(worker='w1')",
    ]
    assert _play(adapter_class, program) == found


def test_only_machines_whose_holds_expire_stall_workers() -> None:
    """A hold kept by a row lock does not run out while its worker stalls: nothing to
    draw. Leases and heartbeats do."""

    class RowLocked(GuideAdapter):
        spec = dataclasses.replace(GuideAdapter.spec, holder=Holder("row_lock"))

    assert "stall_worker" not in vars(machine_for(RowLocked))
    assert "stall_worker" in vars(machine_for(GuideAdapter))  # a heartbeat
    assert "stall_worker" in vars(machine_for(ReferenceAdapter))  # a lease


@pytest.mark.parametrize(
    ("adapter_class", "found"),
    [(ReferenceAdapter, []), (WebhookBesidePollerAdapter, ["transitions"])],
)
def test_a_webhook_delivered_while_the_worker_polls(
    adapter_class: type[adapter.ReferenceAdapter], found: list[str]
) -> None:
    """The worker stops before its second call (the parse's poll, the job held at
    parsing) and the parser's webhook arrives: taken from its worker, the job moves on
    once; left with it, the stage moves under its holder."""
    until_a_call = "machine.run_worker_until(worker='w1', before='a call')"
    program = [
        "machine.enqueue_job()",
        until_a_call,
        until_a_call,
        "machine.deliver_parser_webhooks()",
        "machine.run_worker_until_it_waits(worker='w1')",
    ]
    assert _play(adapter_class, program) == found
