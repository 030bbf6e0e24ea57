"""The core's queue machine: one seed, one sequence of programs, on either server and
with the database lagging (see tests/stateful/test_the_same_seed_draws_the_same_programs.py
for the reference machines, and tests/determinism.py for what is recorded).

The reference pipeline, checked through its adapter in a schema of this process's own,
is the worker: it blocks on row locks now and then, which is where a scheduler that
reads timing for facts parts two runs of one seed.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterator

import pytest

from pipeline_models.core import machine_for, use_server
from pipeline_models.core.machines import _Runtime
from pipeline_models.database import Database
from pipeline_models.pipeline import adapter
from tests.determinism import first_difference, lagging_backends, record_programs
from tests.stateful.test_the_same_seed_draws_the_same_programs import other_server

ReferenceAdapter = adapter.ReferenceAdapter.in_schema(f"pm_determinism_{os.getpid()}")
MACHINE = machine_for(ReferenceAdapter)
SEED, EXAMPLES, STEPS = 1, 6, 30

# Each runs one seed several times (two servers, a lagging database): two minutes
# together, so they run with the slow evidence (in CI, `pytest -m slow`).
pytestmark = pytest.mark.slow


def _drop_tables(url: str) -> None:
    # A loop of its own, never made current (the queue machines' runtime owns that).
    loop = asyncio.new_event_loop()
    try:
        loop.run_until_complete(Database(url, schema=ReferenceAdapter.schema).drop_schema())
    finally:
        loop.close()


@pytest.fixture(autouse=True, scope="module")
def _drop_the_tables_at_the_end(pipeline_database: Database) -> Iterator[None]:
    # The adapter applies its schema once per server URL, whatever the schema's name,
    # and the runtime's monitor keeps statements prepared against another module's
    # schema: after a module that checked the reference in a schema of its own, this one
    # would find no tables, then plans cached for the dropped ones.
    _Runtime.close()
    adapter._SCHEMAS_READY.clear()
    yield
    adapter._SCHEMAS_READY.clear()
    _Runtime.close()  # not left current for the next module's asyncio.run()
    _drop_tables(pipeline_database.url)


def test_one_seed_draws_the_same_core_programs_on_both_servers(
    pipeline_database: Database,
) -> None:
    here = record_programs(MACHINE, seed=SEED, max_examples=EXAMPLES, steps=STEPS)
    other = other_server(pipeline_database)
    _Runtime.close()
    adapter._SCHEMAS_READY.clear()
    try:
        use_server(other.url)
        there = record_programs(MACHINE, seed=SEED, max_examples=EXAMPLES, steps=STEPS)
    finally:
        _Runtime.close()
        use_server(pipeline_database.url)
        _drop_tables(other.url)
        other.close()
    assert len(here) >= EXAMPLES
    assert first_difference(here, there) is None, first_difference(here, there)


def test_one_seed_draws_the_same_core_programs_when_the_database_lags(
    pipeline_database: Database,
) -> None:
    plain = record_programs(MACHINE, seed=SEED, max_examples=EXAMPLES, steps=STEPS)
    with lagging_backends():
        lagging = record_programs(MACHINE, seed=SEED, max_examples=EXAMPLES, steps=STEPS)
    assert first_difference(plain, lagging) is None, first_difference(plain, lagging)
