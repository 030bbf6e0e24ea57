"""The command line: the demo verifies every ending and says so in its exit code."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from pipeline_models.cli import main
from pipeline_models.database import Database


def test_the_demo_processes_every_document_and_exits_zero(pipeline_database: Database) -> None:
    result = CliRunner().invoke(
        main,
        ["demo", "--documents", "8", "--workers", "2", "--database-url", pipeline_database.url],
    )
    assert result.exit_code == 0, result.output
    assert "OK: every document ended as the model predicts" in result.output
    for stage in ("queued", "parsing", "embedding"):
        assert stage in result.output


def test_the_demo_under_a_cap_holds_the_surplus_and_finishes_it_once_the_cap_is_lifted(
    pipeline_database: Database,
) -> None:
    arguments = ["demo", "--documents", "8", "--workers", "2", "--max-cost", "0.01"]
    result = CliRunner().invoke(main, [*arguments, "--database-url", pipeline_database.url])
    assert result.exit_code == 0, result.output
    budget_line = next(line for line in result.output.splitlines() if line.startswith("budget:"))
    held = int(budget_line.split(" held for the budget")[0].rsplit(" ", 1)[-1])
    assert held > 0, budget_line
    assert "OK: every document ended as the model predicts" in result.output
    # The bill is exact: what the ledger records is what the fakes billed.
    cost = result.output.split(" at list prices")[0].rsplit("$", 1)[-1]
    assert f"bill: the fake services billed ${cost}" in result.output


def test_the_demo_refuses_a_cap_across_processes() -> None:
    result = CliRunner().invoke(main, ["demo", "--processes", "--max-cost", "1"])
    assert result.exit_code == 2
    assert "drop --processes" in result.output


def test_the_demo_refuses_a_wrong_database_url_with_a_clear_message() -> None:
    result = CliRunner().invoke(
        main, ["demo", "--database-url", "postgresql://u:hunter2@127.0.0.1:1/x"]
    )
    assert result.exit_code == 1
    assert "connection refused" in result.output
    assert "hunter2" not in result.output


@pytest.mark.parametrize("arguments", [["--help"], ["demo", "--help"], ["serve-fakes", "--help"]])
def test_every_command_explains_itself(arguments: list[str]) -> None:
    result = CliRunner().invoke(main, arguments)
    assert result.exit_code == 0
    assert "Usage:" in result.output
