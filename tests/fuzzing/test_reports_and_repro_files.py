"""The pieces of the fuzz tooling that need no fuzzing: the example database string, the
profiles with a database, repro files rendered from a program, and the report."""

from __future__ import annotations

import ast
import uuid
from collections import Counter
from pathlib import Path

import pytest
from hypothesis.database import DirectoryBasedExampleDatabase, ReadOnlyDatabase

from pipeline_models import documents, profiles
from pipeline_models.documents import markdown_document
from pipeline_models.examples_database import example_database, machine_database_key
from pipeline_models.invariants import InvariantViolation, Violation
from pipeline_models.machines import PipelineMachine, QueueMachine
from pipeline_models.report import Counts, load_counts, render_markdown, render_svg, save_counts
from pipeline_models.repro import program_lines, render_test_file


def test_a_redis_url_names_a_redis_database_with_its_key_prefix() -> None:
    pytest.importorskip("redis")
    from hypothesis.extra.redis import RedisExampleDatabase

    database = example_database("redis://127.0.0.1:6379/0?prefix=team-a:")
    assert isinstance(database, RedisExampleDatabase)
    assert database._prefix == b"team-a:"


def test_anything_else_is_a_directory_and_read_only_wraps_it(tmp_path: Path) -> None:
    database = example_database(str(tmp_path), read_only=True)
    assert isinstance(database, ReadOnlyDatabase)
    database.save(b"k", b"v")
    assert list(DirectoryBasedExampleDatabase(tmp_path).fetch(b"k")) == []


def test_a_machine_keeps_its_key_and_two_machines_differ() -> None:
    assert machine_database_key(QueueMachine) == machine_database_key(QueueMachine)
    assert machine_database_key(QueueMachine) != machine_database_key(PipelineMachine)


def test_with_an_example_database_the_ci_profile_gives_up_derandomize_for_it() -> None:
    database = DirectoryBasedExampleDatabase("/nonexistent/examples")
    assert profiles.machine_settings("ci").database is None
    profiles.use_example_database(database)
    try:
        chosen = profiles.machine_settings("ci")
    finally:
        profiles.use_example_database(None)
    assert chosen.database is database
    assert chosen.derandomize is False
    assert chosen.max_examples == profiles.PROFILES["ci"]["max_examples"]
    # A fuzz session's failure replays whole, however late in its program it fired.
    assert chosen.stateful_step_count == profiles.PROFILES["fuzz"]["stateful_step_count"]


def test_the_fuzz_profile_is_random_even_under_a_derandomized_default() -> None:
    # tests/conftest.py loads a derandomized default profile; fuzz must not inherit it.
    assert profiles.machine_settings("fuzz").derandomize is False


def _failure() -> InvariantViolation:
    error = InvariantViolation([Violation("buffers", "chunk 3 of d1 is not the planned one")])
    document = markdown_document("# Title\n\n" + "long text " * 20)
    limit = documents._REPR_DATA_LIMIT
    documents._REPR_DATA_LIMIT = 1 << 30
    try:
        user = f"UUID('{uuid.UUID(int=7)}')"
        upload = f"uploads_0 = state.upload_first_document(document={document!r}, user={user})"
    finally:
        documents._REPR_DATA_LIMIT = limit
    error.add_note(
        "\n".join(
            [
                "state = PipelineMachine()",
                upload,
                "w1 parked at claimed (queued)",
                "state.step_worker(worker='w1')",
                "state.upload_the_same_bytes_again(by_the_other_user=True, upload=uploads_0)",
                "state.teardown()",
            ]
        )
    )
    return error


def test_a_repro_file_is_valid_python_that_checks_after_every_rule() -> None:
    error = _failure()
    text = render_test_file(PipelineMachine, program_lines(error), error, label="a bug")
    tree = ast.parse(text)
    body = next(n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "program")
    calls = [ast.unparse(statement) for statement in body.body]
    assert calls[0] == "state.database_agrees_with_the_model()"
    rules = calls[1::2]
    assert all(call == "state.database_agrees_with_the_model()" for call in calls[::2])
    assert rules[0].startswith("uploads_0 = state.upload_first_document(document=Document(")
    assert rules[1:] == [
        "state.step_worker(worker='w1')",
        "state.upload_the_same_bytes_again(by_the_other_user=True, upload=uploads_0)",
    ]
    assert "# w1 parked at claimed (queued)" in text
    assert "#   InvariantViolation: [buffers] chunk 3 of d1 is not the planned one" in text
    assert "from uuid import UUID" in text
    assert "from pipeline_models.documents import Document, DocumentKind" in text
    assert "teardown()" not in ast.unparse(body)


def test_a_repro_files_document_rebuilds_the_same_bytes() -> None:
    error = _failure()
    text = render_test_file(PipelineMachine, program_lines(error), error, label="a bug")
    namespace: dict[str, object] = {}
    exec(compile(text, "repro.py", "exec"), namespace)
    source = next(line for line in text.splitlines() if "upload_first_document" in line)
    document = eval(source.split("document=", 1)[1].rsplit(", user=", 1)[0], namespace)
    assert document == markdown_document("# Title\n\n" + "long text " * 20)


def test_the_report_counts_edges_and_shows_forbidden_ones(tmp_path: Path) -> None:
    counts = Counts(
        sources=["a run"],
        examples=3,
        rules=30,
        transitions=Counter({"claim": 4, "advance": 2}),
        edges=Counter(
            {
                "queued/queued -> queued/working": 4,
                "queued/working -> job_validated/queued": 2,
            }
        ),
        forbidden=Counter({"parsed/queued -> queued/queued": 1}),
    )
    path = save_counts(counts, tmp_path / "transitions-x.json")
    loaded = load_counts([path, path])
    assert loaded.edges["queued/queued -> queued/working"] == 8
    assert loaded.examples == 6
    markdown = render_markdown(loaded)
    assert "| claim | 8 |" in markdown
    assert "| parsed/queued -> queued/queued | 2 | **no** |" in markdown
    svg = render_svg(loaded)
    assert svg.startswith("<svg")
    assert svg.rstrip().endswith("</svg>")
    assert ">8</text>" in svg  # the loop over queued: claims
    assert ">4</text>" in svg  # the arrow queued -> job_validated
    assert "forbidden parsed/queued -&gt; queued/queued: 2" in svg
