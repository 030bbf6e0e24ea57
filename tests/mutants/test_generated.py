"""Mechanical mutants: the pool, the sample, the operators, the rules and the score.

Pure: no database, no child process. The pool of the real pipeline is made once for the
module (a few seconds: every operator walks every file's parso tree).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pipeline_models.mutants import MutantError
from pipeline_models.mutants import generated as g
from pipeline_models.mutants.child import SideResult
from pipeline_models.mutants.runner import MutantReport


@pytest.fixture(scope="module")
def pool() -> g.Pool:
    return g.enumerate_pool()


# -- the pool and the sample ------------------------------------------------------------


def test_the_sample_is_the_same_for_a_seed_and_another_for_another_seed(pool: g.Pool) -> None:
    again = g.enumerate_pool()
    assert [c.id for c in again.candidates] == [c.id for c in pool.candidates]
    first = [c.id for c in g.sample(pool, 60, seed=16)]
    assert first == [c.id for c in g.sample(again, 60, seed=16)]
    assert len(first) == len(set(first)) == 60
    assert first != [c.id for c in g.sample(pool, 60, seed=17)]


def test_every_id_is_unique_and_no_equivalent_is_sampled(pool: g.Pool) -> None:
    ids = [c.id for c in pool.candidates]
    assert len(ids) == len(set(ids))
    chosen = g.sample(pool, len(pool.candidates), seed=1)
    assert len(chosen) == len(pool.eligible)
    assert not {c.id for c in chosen} & set(pool.equivalent)


def test_both_sources_are_in_the_pool_and_out_of_scope_files_are_not(pool: g.Pool) -> None:
    paths = {c.path for c in pool.candidates}
    assert "sql/queries.sql" in paths
    assert "pipeline/worker.py" in paths
    assert not paths & set(g.OUT_OF_SCOPE)
    assert {c.operator for c in pool.candidates} >= set(g.SQL_OPERATORS)


def test_sampled_mutants_differ_from_the_source_compile_and_say_what_changed(
    pool: g.Pool,
) -> None:
    for candidate in g.sample(pool, 12, seed=3):
        original = pool.sources[candidate.path]
        assert candidate.mutated_text(original) != original
        assert g.compiles(candidate, pool) is None
        before, after = candidate.describe(original)
        assert before != after
        mutant = g.to_mutant(candidate, pool)
        assert mutant.name == candidate.id
        assert mutant.seen == f"{candidate.path}:{candidate.line}"
        assert mutant.bug == f"{before} -> {after}"


def test_a_planted_mutant_changes_its_file_only(pool: g.Pool, tmp_path: Path) -> None:
    [candidate] = g.sample(pool, 1, seed=5)
    root = g.to_mutant(candidate, pool).plant(tmp_path) / "pipeline_models"
    package = g.PACKAGE_ROOT
    changed = [
        str(path.relative_to(root))
        for path in sorted(root.rglob("*"))
        if path.is_file() and path.read_bytes() != (package / path.relative_to(root)).read_bytes()
    ]
    assert changed == [candidate.path]


def test_a_mutant_of_a_changed_source_fails_loudly(pool: g.Pool, tmp_path: Path) -> None:
    [candidate] = g.sample(pool, 1, seed=5)
    stale = g.Pool(pool.candidates, pool.equivalent, dict(pool.sources))
    stale.sources[candidate.path] += "\n# changed since\n"
    with pytest.raises(MutantError, match="expected 1 occurrence"):
        g.to_mutant(candidate, stale).plant(tmp_path)


# -- the Python operators ---------------------------------------------------------------

SNIPPET = """\
from __future__ import annotations

import functools


@functools.cache
def f(a: int | None, b, *, c=1, **rest):
    x = a + b - c * 2 / 3 // 4 % 5 ** 2 | 1 & 3
    y = -a
    if a == b and b != c or a is None or b is not None:
        y = True
    if a < b or a <= b or a > b or a >= b:
        y = False
    if not a:
        g(y)
    for i in range(3):
        if i:
            break
        continue
    return x
"""


@pytest.mark.parametrize("operator", g.PYTHON_OPERATORS)
def test_each_python_operator_applies_and_changes_the_code(operator: str) -> None:
    found = [c for c in g.python_candidates(SNIPPET, "x.py") if c.operator == operator]
    assert found, f"{operator} found nothing to mutate in the snippet"
    for candidate in found:
        mutated = candidate.mutated_text(SNIPPET)
        assert mutated != SNIPPET
        compile(mutated, "x.py", "exec")


def test_the_markers_of_keyword_only_parameters_and_unpacking_are_no_operators() -> None:
    found = g.python_candidates(SNIPPET, "x.py")
    signature = SNIPPET.splitlines().index("def f(a: int | None, b, *, c=1, **rest):") + 1
    on_signature = {c.operator for c in found if c.line == signature}
    assert "ReplaceBinaryOperator_Mul_Div" not in on_signature
    assert "ReplaceBinaryOperator_Pow_Mul" not in on_signature
    assert "ReplaceBinaryOperator_BitOr_BitAnd" in on_signature  # int | None: an operator


def test_removing_a_call_statement_leaves_pass() -> None:
    [candidate] = [
        c for c in g.python_candidates(SNIPPET, "x.py") if c.operator == "RemoveCallStatement"
    ]
    assert candidate.describe(SNIPPET) == ("g(y)", "pass")


# -- the SQL operators ------------------------------------------------------------------

SQL = """\
-- name: claim
-- a comment: WHERE a = b AND c < d
WITH due AS (
    SELECT job_id FROM jobs
    WHERE state IN ('queued', 'a = b') AND due_at <= $2
      AND held IS NULL AND (x = 1 AND y = 2)
    ORDER BY due_at
    LIMIT 1
    FOR UPDATE SKIP LOCKED
)
UPDATE jobs SET state = 'working', owner = $1
FROM due WHERE jobs.job_id = due.job_id
RETURNING jobs.job_id;


-- name: share
SELECT n FROM t WHERE n BETWEEN 1 AND 2 AND m > 0
FOR SHARE;
"""


def _sql(operator: str) -> list[str]:
    """Each mutant of ``operator``, as its changed lines."""
    out = []
    for candidate in g.sql_candidates(SQL, "q.sql"):
        if candidate.operator == operator:
            mutated = candidate.mutated_text(SQL)
            before, after = SQL.splitlines(), mutated.splitlines()
            out.append(
                " / ".join(line for line in after if line not in before)
                or f"(removed: {' / '.join(line for line in before if line not in after)})"
            )
    return out


def test_comparisons_are_flipped_in_where_clauses_only() -> None:
    assert _sql("sql-flip-comparison") == [
        "    WHERE state IN ('queued', 'a = b') AND due_at < $2",
        "      AND held IS NOT NULL AND (x = 1 AND y = 2)",
        "      AND held IS NULL AND (x <> 1 AND y = 2)",
        "      AND held IS NULL AND (x = 1 AND y <> 2)",
        "FROM due WHERE jobs.job_id <> due.job_id",
        "SELECT n FROM t WHERE n BETWEEN 1 AND 2 AND m >= 0",
    ]


def test_one_and_ed_term_of_a_where_clause_is_dropped_at_a_time() -> None:
    assert _sql("sql-drop-where-term") == [
        "    WHERE due_at <= $2",
        "    WHERE state IN ('queued', 'a = b') AND held IS NULL AND (x = 1 AND y = 2)",
        "      AND (x = 1 AND y = 2)",
        "      AND held IS NULL",
        "SELECT n FROM t WHERE m > 0",
        "SELECT n FROM t WHERE n BETWEEN 1 AND 2",
    ]


def test_locking_clauses_are_dropped_whole_or_their_skip_locked() -> None:
    assert _sql("sql-drop-lock") == [
        "(removed:     FOR UPDATE SKIP LOCKED)",
        "SELECT n FROM t WHERE n BETWEEN 1 AND 2 AND m > 0;",
    ]
    assert _sql("sql-drop-skip-locked") == ["    FOR UPDATE"]
    lock = next(c for c in g.sql_candidates(SQL, "q.sql") if c.operator == "sql-drop-lock")
    assert lock.describe(SQL) == ("FOR UPDATE SKIP LOCKED", "(line removed)")


def test_sql_mutants_name_their_query_and_line() -> None:
    candidates = g.sql_candidates(SQL, "q.sql")
    assert {c.query for c in candidates} == {"claim", "share"}
    lock = next(c for c in candidates if c.operator == "sql-drop-skip-locked")
    assert (lock.line, lock.query) == (9, "claim")
    assert lock.id == f"q.sql:9:{SQL.splitlines()[8].index(' SKIP')}:sql-drop-skip-locked"


# -- the rules --------------------------------------------------------------------------

MODULE = """\
from __future__ import annotations

import logging
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    X = 1 + 2

logger = logging.getLogger(__name__)


class Thing:
    size: int | None = None

    def __repr__(self) -> str:
        return f"Thing({self.size + 1})"

    async def run(self, a: int | None) -> int | None:
        logger.info("ran %s", a + 1)
        await self.checkpoint("x")
        return a + 1
"""


def test_rules_set_aside_annotations_logging_repr_type_checking_and_checkpoints(
    tmp_path: Path,
) -> None:
    (tmp_path / "pipeline").mkdir()
    (tmp_path / "sql").mkdir()
    (tmp_path / "pipeline" / "thing.py").write_text(MODULE)
    (tmp_path / "sql" / "queries.sql").write_text("-- name: q\nSELECT 1;\n")
    pool = g.enumerate_pool(tmp_path)
    marked: dict[str, set[int]] = {}
    for candidate in pool.candidates:
        rule = pool.equivalent.get(candidate.id)
        marked.setdefault(rule or "-", set()).add(candidate.line)
    assert marked["annotation"] == {18}
    assert marked["type-checking"] == {7}
    assert marked["repr"] == {16}
    assert marked["logging"] == {19}
    assert marked["checkpoint"] == {20}
    assert 21 in marked["-"]  # return a + 1: a mutant like any other
    assert pool.by_rule() == {
        rule.name: sum(name == rule.name for name in pool.equivalent.values()) for rule in g.RULES
    }


def test_an_annotation_that_fastapi_evaluates_is_not_set_aside(tmp_path: Path) -> None:
    (tmp_path / "pipeline").mkdir()
    (tmp_path / "sql").mkdir()
    (tmp_path / "pipeline" / "api.py").write_text(MODULE)
    (tmp_path / "sql" / "queries.sql").write_text("-- name: q\nSELECT 1;\n")
    pool = g.enumerate_pool(tmp_path)
    assert "annotation" not in pool.equivalent.values()


# -- the score --------------------------------------------------------------------------


def _report(name: str, checker: bool, examples: bool, fired: str = "liveness") -> MutantReport:
    return MutantReport(
        name,
        "k",
        "bug",
        "seen",
        {
            "checker": SideResult("checker", checker, 1.0, fired=[fired] if checker else []),
            "examples": SideResult("examples", examples, 1.0, fired=["x"] if examples else []),
        },
    )


def _row(name: str, status: str = "ran") -> g.GeneratedRow:
    return g.GeneratedRow(name, "python", "op", "pipeline/x.py", 1, None, "a", "b", status)


def test_the_score_counts_kills_over_mutants_that_ran() -> None:
    rows = [
        g.settle(_row("both"), _report("both", True, True)),
        g.settle(_row("checker"), _report("checker", True, False)),
        g.settle(_row("checker2"), _report("checker2", True, False)),
        g.settle(_row("none"), _report("none", False, False)),
        g.settle(_row("syntax"), _report("syntax", True, True, "error: PostgresSyntaxError")),
        g.settle(_row("broken"), MutantReport("broken", "k", "b", "s", {}, error="exit 1")),
        _row("import", "does not import"),
    ]
    assert [r.status for r in rows] == [
        "ran",
        "ran",
        "ran",
        "ran",
        "does not compile",
        "did not run",
        "does not import",
    ]
    figures = g.score(rows, ["checker", "examples"])
    assert figures["sampled"] == 7
    assert figures["non_equivalent"] == 4
    assert figures["killed_checker"] == 3
    assert figures["killed_examples"] == 1
    assert figures["score_checker"] == 0.75
    assert figures["score_examples"] == 0.25
    assert figures["ratio_checker_to_examples"] == 3.0
    assert figures["not_counted"] == {
        "does not compile": 1,
        "does not import": 1,
        "did not run": 1,
    }
    assert not rows[4].killed_by("checker")  # a syntax error is no kill


def test_the_json_has_the_seed_the_score_and_a_row_per_mutant(pool: g.Pool) -> None:
    rows = [
        g.settle(_row("a"), _report("a", True, False)),
        g.settle(_row("b"), _report("b", False, False)),
    ]
    data = json.loads(g.generated_json(rows, ["checker", "examples"], pool, seed=16))
    assert data["sample_seed"] == 16
    assert data["score"]["killed_checker"] == 1
    assert data["score"]["non_equivalent"] == 2
    assert data["pool"]["eligible"] == len(pool.eligible)
    assert set(data["rules"]) == {rule.name for rule in g.RULES}
    [first, second] = data["mutants"]
    assert (first["id"], first["status"], first["before"], first["after"]) == ("a", "ran", "a", "b")
    assert first["report"]["sides"]["checker"]["killed"] is True
    assert second["report"]["sides"]["checker"]["killed"] is False
    again = g.rows_from_json(data)
    assert g.score(again, ["checker", "examples"]) == g.score(rows, ["checker", "examples"])
    assert again[0].report.sides["checker"].fired == ["liveness"]
    text = g.format_generated(again, ["checker", "examples"], pool, seed=16)
    assert "sample seed 16" in text
    assert "score (killed / non-equivalent): checker 1/2 (50%), example suite 0/2 (0%)" in text
