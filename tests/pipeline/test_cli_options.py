"""The command line's options: each explains itself, truly, and takes what it says."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections.abc import Iterator

import click
import pytest
from click.testing import CliRunner

from pipeline_models.cli import _MUTANT_SIDES, main
from pipeline_models.database import Database
from pipeline_models.mutants.child import SIDES


def _commands(command: click.Command, path: str) -> Iterator[tuple[str, click.Command]]:
    yield path, command
    if isinstance(command, click.Group):
        for name, sub in command.commands.items():
            yield from _commands(sub, f"{path} {name}")


COMMANDS = dict(_commands(main, "pipeline-models"))


@pytest.mark.parametrize("path", list(COMMANDS))
def test_every_option_of_every_command_has_a_help_text(path: str) -> None:
    silent = [
        "/".join(param.opts)
        for param in COMMANDS[path].params
        if isinstance(param, click.Option) and not (param.help or "").strip()
    ]
    assert silent == [], f"{path}: options without a help text"


@pytest.mark.parametrize("command", ["worker", "budget"])
def test_commands_that_refuse_an_embedded_server_do_not_promise_one(command: str) -> None:
    result = CliRunner().invoke(main, [command, "--help"])
    assert result.exit_code == 0
    help_text = " ".join(result.output.split())
    assert "embedded throwaway server is started" not in help_text
    assert "required: an embedded server would be private to this process" in help_text


def test_budget_without_a_database_url_refuses_as_its_help_says() -> None:
    result = CliRunner().invoke(main, ["budget"], env={"DATABASE_URL": None})
    assert result.exit_code == 1
    assert "set DATABASE_URL" in result.output


@pytest.mark.parametrize(
    ("written", "sides"),
    [
        ("checker,coarse,examples", ("checker", "coarse", "examples")),
        (" examples , checker", ("examples", "checker")),
        ("checker,checker", ("checker",)),
    ],
)
def test_mutant_sides_are_a_comma_separated_choice(written: str, sides: tuple[str, ...]) -> None:
    context = main.commands["mutants"].make_context("mutants", ["--sides", written])
    assert context.params["sides"] == sides


def test_mutant_sides_default_to_all_three() -> None:
    context = main.commands["mutants"].make_context("mutants", [])
    assert context.params["sides"] == ("checker", "coarse", "examples")
    assert _MUTANT_SIDES == SIDES  # the CLI's spelling of the child's sides


@pytest.mark.parametrize("written", ["checker,bogus", "", " , "])
def test_an_unknown_or_missing_mutant_side_is_a_usage_error(written: str) -> None:
    result = CliRunner().invoke(main, ["mutants", "--sides", written])
    assert result.exit_code == 2, result.output
    assert "Invalid value for '--sides'" in result.output
    assert "choose from checker, coarse, examples" in result.output
    if "bogus" in written:
        assert "no 'bogus'" in result.output


def test_the_sides_choices_are_in_the_help() -> None:
    result = CliRunner().invoke(main, ["mutants", "--help"])
    assert "--sides [checker|coarse|examples],..." in result.output


SHRINKING = [
    path
    for path, command in COMMANDS.items()
    if any("--shrink-seconds" in param.opts for param in command.params)
]


def test_two_commands_take_shrink_seconds() -> None:
    assert SHRINKING == ["pipeline-models mutants", "pipeline-models repro"]


@pytest.mark.parametrize("path", SHRINKING)
def test_shrink_seconds_is_a_float_in_every_command(path: str) -> None:
    command = COMMANDS[path]
    context = command.make_context(path, ["--shrink-seconds", "2.5"])
    assert context.params["shrink_seconds"] == 2.5
    with pytest.raises(click.BadParameter):
        command.make_context(path, ["--shrink-seconds", "0"])


def test_check_refuses_a_schema_for_your_own_worker() -> None:
    result = CliRunner().invoke(
        main, ["check", "--adapter", "some.module:Adapter", "--schema", "mine"]
    )
    assert result.exit_code == 2
    assert "--schema is the reference pipeline's" in result.output


def _without_timings(output: str) -> list[str]:
    # The second line says how long it took: the only thing a seed does not fix.
    lines = output.splitlines()
    return [line for index, line in enumerate(lines) if index != 1]


def _schema_exists(database: Database, schema: str) -> bool:
    async def look() -> bool:
        connection = await database.connect()
        try:
            found = await connection.fetchval(
                "SELECT count(*) FROM pg_namespace WHERE nspname = $1", schema
            )
            return bool(found)
        finally:
            await connection.close()

    return asyncio.run(look())


def _check(*arguments: str) -> subprocess.CompletedProcess[str]:
    # A process per run, as a user runs it: the machines keep their event loop and
    # connections for the life of a process.
    return subprocess.run(
        [sys.executable, "-m", "pipeline_models.cli", "check", *arguments],
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )


def test_check_with_a_seed_runs_the_same_examples_again_in_its_own_schema(
    pipeline_database: Database,
) -> None:
    schema = f"pm_check_seed_{os.getpid()}"
    arguments = ["--seed", "7", "--max-examples", "3", "--schema", schema]
    arguments += ["--database-url", pipeline_database.url]
    try:
        first = _check(*arguments)
        assert first.returncode == 0, first.stdout + first.stderr
        assert _schema_exists(pipeline_database, schema)
        second = _check(*arguments)
        assert second.returncode == 0, second.stdout + second.stderr
    finally:
        asyncio.run(Database(pipeline_database.url, schema=schema).drop_schema())
    assert "profile dev, seed 7," in first.stdout
    assert "3 examples" in first.stdout
    assert _without_timings(first.stdout) == _without_timings(second.stdout)
