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
