"""The core's scheduler waits for a statement released from its lock wait, however slow.

The lock manager grants a waiting statement its lock the moment the holder lets go; the
waiter's ``pg_stat_activity.wait_event_type`` still reads 'Lock' until its backend runs
again. Read from there, a released statement on a loaded machine was taken for blocked,
the step reported BLOCKED, and the statement landed behind the checker's back: whether
the next check saw its write was a matter of timing. Here the worker's backend is stopped
(SIGSTOP) across the holder's rollback, for 0.3 s: the step must wait for the insert.
"""

from __future__ import annotations

from pipeline_models.core import machine_for
from pipeline_models.core.machines import _Runtime
from pipeline_models.core.scheduler import Outcome
from tests.core.test_clock_and_interposition import ProbeAdapter, seen
from tests.slow_backends import require_local_backend, stopped_for


def test_a_statement_released_while_its_backend_lags_is_waited_for() -> None:
    machine = machine_for(ProbeAdapter, drain=False)()
    locker = machine._run(machine.runtime.server.connect(application_name="locker"))
    try:
        machine._step("w1")  # parked before its insert
        machine._run(locker.execute("BEGIN; LOCK TABLE probe.seen IN ACCESS EXCLUSIVE MODE"))
        report = machine._step("w1")
        assert report is not None
        assert report.outcome is Outcome.BLOCKED
        [flight] = machine.scheduler.slots["w1"].in_flight
        assert flight.pid is not None
        require_local_backend(flight.pid)
        with stopped_for(flight.pid, 0.3, machine.runtime.loop):
            machine._run(locker.execute("ROLLBACK"))
            event = machine._run(
                locker.fetchval(
                    "SELECT wait_event_type FROM pg_stat_activity WHERE pid = $1", flight.pid
                )
            )
            assert event == "Lock", "the stopped worker no longer shows its old wait event"
            report = machine._step("w1")
        assert report is not None
        assert report.outcome is Outcome.IDLE, f"{report}: the released insert was not waited for"
        assert len(seen(machine)) == 1
    finally:
        machine._run(locker.close())
        machine.teardown()
        # Closed, not left current: a later asyncio.run() (another module's) would leave
        # the main thread without the loop this runtime set, and the next machine fails.
        _Runtime.close()
