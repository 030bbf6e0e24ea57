"""The command line's options: each explains itself, truly, and takes what it says."""

from __future__ import annotations

from collections.abc import Iterator

import click
import pytest
from click.testing import CliRunner

from pipeline_models.cli import _MUTANT_SIDES, main
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
