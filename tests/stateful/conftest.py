from __future__ import annotations

import pytest

from pipeline_models.lifecycle import TransitionKind
from pipeline_models.machines import STATISTICS
from pipeline_models.tables import format_table


@pytest.fixture(autouse=True, scope="session")
def _machines_use_the_session_database(pipeline_machines: object) -> None:
    """Every machine here runs against the session's database (embedded or DATABASE_URL)."""


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    # The coverage test judges the whole run: it goes last.
    items.sort(key=lambda item: "test_transition_coverage.py" in item.nodeid)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if not STATISTICS.examples:
        return
    rows = [[kind.value, STATISTICS.transitions[kind]] for kind in TransitionKind]
    covered = sum(1 for kind in TransitionKind if STATISTICS.transitions[kind])
    terminalreporter.section("pipeline-models: lifecycle transitions exercised")
    terminalreporter.write_line(
        f"{covered} of {len(TransitionKind)} allowed transitions, over "
        f"{STATISTICS.examples} examples and {STATISTICS.rules} rules"
    )
    terminalreporter.write_line(format_table(["transition", "seen"], rows))
