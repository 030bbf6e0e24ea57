"""The pytest plugin: a wrong setting is one clear line and a usage error (exit 4),
before any test runs, not an error and a long traceback for every test."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import run_pytest

UNREACHABLE = "postgresql://nobody@127.0.0.1:1/none"

TESTS = """
def test_uses_the_database(pipeline_database):
    pass


def test_uses_it_emptied(clean_pipeline_database):
    pass


def test_points_the_machines_at_it(pipeline_machines):
    pass


def test_needs_no_database():
    pass
"""


def _pytest(
    directory: Path, *arguments: str, database_url: str | None, env: dict[str, str] | None = None
) -> tuple[int, str]:
    (directory / "test_with_the_plugin.py").write_text(TESTS)
    env = {**({"DATABASE_URL": database_url} if database_url else {}), **(env or {})}
    finished = run_pytest(
        directory, *arguments, leave_out=("PIPELINE_MODELS_", "DATABASE_URL"), env=env
    )
    return finished.returncode, finished.stdout + finished.stderr


def _assert_short(output: str) -> None:
    assert "Traceback" not in output, output
    assert "INTERNALERROR" not in output, output
    assert len(output.splitlines()) < 30, output


@pytest.mark.parametrize(
    "database_url", [UNREACHABLE, "mysql://nobody@127.0.0.1/none"], ids=["unreachable", "wrong"]
)
def test_a_database_the_tests_cannot_use_is_one_line_and_a_usage_error(
    tmp_path: Path, database_url: str
) -> None:
    code, output = _pytest(tmp_path, database_url=database_url)
    assert code == 4, output
    [line] = [line for line in output.splitlines() if line.startswith("ERROR: ")]
    assert line.startswith("ERROR: pipeline-models: "), line
    assert "test_uses_the_database" not in output  # no test ran to fail on it
    _assert_short(output)


def test_the_message_says_what_is_wrong_with_an_unreachable_database(tmp_path: Path) -> None:
    code, output = _pytest(tmp_path, database_url=UNREACHABLE)
    assert code == 4
    assert f"nothing accepts connections at '{UNREACHABLE}' (connection refused)" in output


def test_tests_that_need_no_database_do_not_try_it(tmp_path: Path) -> None:
    # The plugin loads in every pytest run of the environment: a DATABASE_URL meant for
    # something else must not fail tests that never use it.
    code, output = _pytest(tmp_path, "-k", "needs_no_database", database_url=UNREACHABLE)
    assert code == 0, output
    assert "1 passed" in output


def test_collecting_only_does_not_try_the_database(tmp_path: Path) -> None:
    code, output = _pytest(tmp_path, "--collect-only", "-q", database_url=UNREACHABLE)
    assert code == 0, output
    assert "4 tests collected" in output


@pytest.mark.parametrize(
    ("how", "source"),
    [
        ("flag", "--pipeline-profile"),
        # The other two ways share the flag's path after parsing: a pytest session each.
        pytest.param("ini", "the pipeline_profile ini key", marks=pytest.mark.slow),
        pytest.param("environment", "PIPELINE_MODELS_PROFILE", marks=pytest.mark.slow),
    ],
)
def test_a_profile_that_does_not_exist_is_one_line_and_a_usage_error(
    tmp_path: Path, how: str, source: str
) -> None:
    arguments = ["--pipeline-profile=nonsense"] if how == "flag" else []
    if how == "ini":
        (tmp_path / "pytest.ini").write_text("[pytest]\npipeline_profile = nonsense\n")
    env = {"PIPELINE_MODELS_PROFILE": "nonsense"} if how == "environment" else {}
    code, output = _pytest(tmp_path, *arguments, database_url=None, env=env)
    assert code == 4, output
    assert (
        "ERROR: pipeline-models: no profile 'nonsense'; the profiles are: ci, dev, fuzz, debug "
        f"(from {source})"
    ) in output
    _assert_short(output)
