"""Mechanical mutants of the reference pipeline: no one chose them, so no one tuned for them.

``pipeline-models mutants --generated N --sample-seed S`` enumerates every mutant that a
fixed set of operators makes of the reference pipeline, sets aside those a written rule
proves equivalent, samples N of the rest (deterministically from S) and runs each like a
catalog mutant (:mod:`pipeline_models.mutants.runner`, beside the same control).

Two sources:

* **Python** (``pipeline/*.py``): the operator classes of cosmic-ray
  (:data:`PYTHON_OPERATORS`, applied through its ``mutate_code`` on parso trees), plus
  one of ours in its API, :class:`RemoveCallStatement` (a statement that is only a call,
  awaited or not, becomes ``pass``: a dropped ``await connection.execute(...)``);
* **the named SQL** (``sql/queries.sql``): :func:`sql_candidates` flips a comparison in
  a WHERE clause, drops one AND-ed term of a WHERE clause, or drops a locking clause
  (``FOR UPDATE``/``FOR SHARE``, or only its ``SKIP LOCKED``).

Every candidate has a stable id (``path:line:column:operator``) and a description
(``path:line: before -> after``). A candidate is marked equivalent only by a rule of
:data:`RULES`, each with its reason; never because it survived.

>>> pool = enumerate_pool()
>>> len(pool.candidates) > 500
True
>>> [c.id for c in sample(pool, 3, seed=1)] == [c.id for c in sample(pool, 3, seed=1)]
True
"""

from __future__ import annotations

import ast
import functools
import itertools
import random
import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pipeline_models.mutants import PACKAGE_ROOT, Edit, Mutant

Source = Literal["python", "sql"]

# Where the mutants come from, relative to the package; and what is left out, and why.
PYTHON_DIRECTORY = "pipeline"
SQL_FILES = ("sql/queries.sql",)
OUT_OF_SCOPE: dict[str, str] = {
    "pipeline/adapter.py": "the checker core's adapter of the reference (checker glue, not "
    "the pipeline; the pipeline layer that checks these mutants does not import it)",
    "pipeline/processes.py": "the long-lived processes of `pipeline-models serve` and "
    "`worker`; neither the checker nor the example suite starts them",
    "sql/checker.sql": "the checker's own reads, not the pipeline's",
    "sql/audit.sql": "the checker's own audit trigger, not the pipeline's",
    "sql/ratelimit.sql": "the rate limits' shared tables, not named queries of queries.py",
}

# cosmic-ray's operators, by the name its core provider gives them. Of its binary and
# comparison replacements (every operator to every other) only the ones a programmer
# could write by mistake: the neighbour (+ and -, * and /, < and <=), the negation
# (< and >=, == and !=, is and is not). The rest (+ to <<, == to >) mostly raise a
# TypeError at once and would fill a sample of 60 with crashes. Left out:
# ExceptionReplacer (its mutants name an exception that only cosmic-ray's own test
# runner defines), VariableReplacer and VariableInserter (random names, arguments).
PYTHON_OPERATORS: tuple[str, ...] = (
    "ReplaceBinaryOperator_Add_Sub",
    "ReplaceBinaryOperator_Sub_Add",
    "ReplaceBinaryOperator_Mul_Div",
    "ReplaceBinaryOperator_Div_Mul",
    "ReplaceBinaryOperator_FloorDiv_Div",
    "ReplaceBinaryOperator_Mod_FloorDiv",
    "ReplaceBinaryOperator_Pow_Mul",
    "ReplaceBinaryOperator_BitOr_BitAnd",
    "ReplaceBinaryOperator_BitAnd_BitOr",
    "ReplaceComparisonOperator_Eq_NotEq",
    "ReplaceComparisonOperator_NotEq_Eq",
    "ReplaceComparisonOperator_Lt_LtE",
    "ReplaceComparisonOperator_Lt_GtE",
    "ReplaceComparisonOperator_LtE_Lt",
    "ReplaceComparisonOperator_LtE_Gt",
    "ReplaceComparisonOperator_Gt_GtE",
    "ReplaceComparisonOperator_Gt_LtE",
    "ReplaceComparisonOperator_GtE_Gt",
    "ReplaceComparisonOperator_GtE_Lt",
    "ReplaceComparisonOperator_Is_IsNot",
    "ReplaceComparisonOperator_IsNot_Is",
    "ReplaceUnaryOperator_USub_UAdd",
    "ReplaceUnaryOperator_Delete_Not",
    "AddNot",
    "ReplaceTrueWithFalse",
    "ReplaceFalseWithTrue",
    "ReplaceAndWithOr",
    "ReplaceOrWithAnd",
    "ReplaceBreakWithContinue",
    "ReplaceContinueWithBreak",
    "NumberReplacer",
    "RemoveDecorator",
    "ZeroIterationForLoop",
    "RemoveCallStatement",  # ours, below, in cosmic-ray's Operator API
)

SQL_OPERATORS: tuple[str, ...] = (
    "sql-flip-comparison",
    "sql-drop-where-term",
    "sql-drop-lock",
    "sql-drop-skip-locked",
)


@functools.cache
def _remove_call_statement() -> type[Any]:
    import parso
    from cosmic_ray.operators.operator import Example, Operator

    class RemoveCallStatement(Operator):  # type: ignore[misc]
        """A statement that is only a call (``await f(x)``, ``x.append(y)``) becomes
        ``pass``: the step the call did is skipped."""

        def mutation_positions(self, node: Any) -> Iterator[tuple[Any, Any]]:
            if (
                node.type == "atom_expr"
                and node.parent is not None
                and node.parent.type == "simple_stmt"
                and node.parent.children[0] is node
                and node.children[-1].type == "trailer"
                and node.children[-1].children[0].value == "("
            ):
                yield (node.start_pos, node.end_pos)

        def mutate(self, node: Any, index: int) -> Any:
            assert index == 0
            prefix = node.get_first_leaf().prefix
            return parso.python.tree.Keyword("pass", node.start_pos, prefix=prefix)

        @classmethod
        def examples(cls) -> tuple[Any, ...]:
            return (Example("async def f():\n    await g(1)\n", "async def f():\n    pass\n"),)

    return RemoveCallStatement


def python_operator(name: str) -> Any:
    """An instance of the operator called ``name`` (cosmic-ray's core, or ours)."""
    if name == "RemoveCallStatement":
        return _remove_call_statement()()
    from cosmic_ray.operators.provider import OperatorProvider

    return OperatorProvider()[name]()


@dataclass(frozen=True)
class Candidate:
    """One mechanical mutant: where, which operator, and how to make its text."""

    source: Source
    path: str  # relative to the package
    line: int  # 1-based
    column: int  # 0-based, in characters
    operator: str
    occurrence: int = 0  # python: the operator's occurrence in the file (cosmic-ray's)
    # sql: the span of the file replaced, and by what
    start: int = 0
    end: int = 0
    replacement: str = ""
    query: str | None = None  # sql: the named query the change is in
    variant: int = 0  # the operator's n-th mutation at this position (NumberReplacer: +1, -1)

    @property
    def id(self) -> str:
        if self.operator == "NumberReplacer":
            suffix = ("+1", "-1")[self.variant]
        else:
            suffix = f"#{self.variant + 1}" if self.variant else ""
        return f"{self.path}:{self.line}:{self.column}:{self.operator}{suffix}"

    def mutated_text(self, original: str) -> str:
        if self.source == "sql":
            return original[: self.start] + self.replacement + original[self.end :]
        from cosmic_ray.mutating import mutate_code

        mutated = mutate_code(original, python_operator(self.operator), self.occurrence)
        if mutated is None:
            raise ValueError(f"{self.id}: the operator made no change")
        return str(mutated)

    def describe(self, original: str) -> tuple[str, str]:
        """The changed line before and after (the first one that differs)."""
        mutated = self.mutated_text(original).splitlines()
        before = original.splitlines()
        for index, old in enumerate(before):
            new = mutated[index] if index < len(mutated) else ""
            if old != new:
                if before[index + 1 :] == mutated[index:]:
                    return old.strip(), "(line removed)"
                return old.strip(), new.strip()
        return "", ""


@dataclass(frozen=True)
class Rule:
    """A written reason why some mutants cannot change what any test can see."""

    name: str
    reason: str
    applies: Callable[[Candidate, _Context], bool]


@dataclass
class _Context:
    """What the rules know of one Python file: the spans of its annotations, logging
    calls, ``__repr__`` bodies, ``TYPE_CHECKING`` blocks and checkpoint calls."""

    annotations: list[tuple[tuple[int, int], tuple[int, int]]] = field(default_factory=list)
    logging: list[tuple[tuple[int, int], tuple[int, int]]] = field(default_factory=list)
    reprs: list[tuple[tuple[int, int], tuple[int, int]]] = field(default_factory=list)
    type_checking: list[tuple[tuple[int, int], tuple[int, int]]] = field(default_factory=list)
    checkpoints: list[tuple[tuple[int, int], tuple[int, int]]] = field(default_factory=list)
    future_annotations: bool = False
    evaluates_annotations: bool = False


def _inside(spans: Sequence[tuple[tuple[int, int], tuple[int, int]]], c: Candidate) -> bool:
    return any(start <= (c.line, c.column) < end for start, end in spans)


RULES: tuple[Rule, ...] = (
    Rule(
        "annotation",
        "a change inside a type annotation, in a module with `from __future__ import "
        "annotations` that nothing evaluates at run time (FastAPI evaluates api.py's, so "
        "api.py is not covered): annotations stay strings, the code runs the same",
        lambda c, x: (
            x.future_annotations and not x.evaluates_annotations and _inside(x.annotations, c)
        ),
    ),
    Rule(
        "logging",
        "a change inside the arguments of a logging call: only a log line changes, and "
        "neither the pipeline nor any test reads the logs",
        lambda c, x: _inside(x.logging, c),
    ),
    Rule(
        "repr",
        "a change inside __repr__: text for a human reading a debugger or a log, which no "
        "stored value, answer or test reads",
        lambda c, x: _inside(x.reprs, c),
    ),
    Rule(
        "type-checking",
        "a change inside `if TYPE_CHECKING:`: the block never runs",
        lambda c, x: _inside(x.type_checking, c),
    ),
    Rule(
        "checkpoint",
        "the removal of a checkpoint call: in production a checkpoint is an await of a "
        "no-op (pipeline/checkpoints.py), so the pipeline does the same; only the checker "
        "loses a place to pause a worker",
        lambda c, x: c.operator == "RemoveCallStatement" and _inside(x.checkpoints, c),
    ),
)


def _char_column(lines: Sequence[bytes], line: int, byte_column: int) -> int:
    return len(lines[line - 1][:byte_column].decode("utf-8", "replace"))


def _context(text: str, path: str) -> _Context:
    tree = ast.parse(text)
    raw = text.encode().splitlines()
    context = _Context()
    context.evaluates_annotations = path == "pipeline/api.py"

    def span(node: ast.AST) -> tuple[tuple[int, int], tuple[int, int]]:
        start = (node.lineno, _char_column(raw, node.lineno, node.col_offset))  # type: ignore[attr-defined]
        end_line = node.end_lineno or node.lineno  # type: ignore[attr-defined]
        end = (end_line, _char_column(raw, end_line, node.end_col_offset or 0))  # type: ignore[attr-defined]
        return start, end

    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module == "__future__":
            context.future_annotations |= any(a.name == "annotations" for a in node.names)
        elif isinstance(node, ast.arg) and node.annotation is not None:
            context.annotations.append(span(node.annotation))
        elif isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            if node.returns is not None:
                context.annotations.append(span(node.returns))
            if node.name == "__repr__":
                context.reprs.append(span(node))
        elif isinstance(node, ast.AnnAssign):
            context.annotations.append(span(node.annotation))
        elif isinstance(node, ast.If):
            test = node.test
            if (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
                isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
            ):
                # the body only: `if not TYPE_CHECKING` is a mutant like any other
                context.type_checking.append((span(node.body[0])[0], span(node.body[-1])[1]))
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            owner = node.func.value
            owner_name = owner.id if isinstance(owner, ast.Name) else None
            if owner_name in {"logger", "log", "logging", "_log", "_logger"} and (
                node.func.attr in {"debug", "info", "warning", "error", "exception", "critical"}
            ):
                context.logging.append(span(node))
        if isinstance(node, ast.Expr):
            call = node.value.value if isinstance(node.value, ast.Await) else node.value
            if isinstance(call, ast.Call) and (
                (isinstance(call.func, ast.Attribute) and call.func.attr == "checkpoint")
                or (isinstance(call.func, ast.Name) and call.func.id == "checkpoint")
            ):
                context.checkpoints.append(span(node))
    return context


def python_candidates(text: str, path: str) -> list[Candidate]:
    """Every mutant the operators make of one Python file, in cosmic-ray's occurrence
    order (a pre-order walk of its parso tree)."""
    from cosmic_ray.ast import ast_nodes, get_ast

    tree = get_ast(text)
    operators = [(name, python_operator(name)) for name in PYTHON_OPERATORS]
    counts = dict.fromkeys(PYTHON_OPERATORS, 0)
    found = []
    for node in ast_nodes(tree):
        for name, operator in operators:
            for variant, (start, _end) in enumerate(operator.mutation_positions(node)):
                occurrence = counts[name]
                counts[name] += 1
                # cosmic-ray takes every `*` and `**` leaf for an operator, the markers
                # of keyword-only parameters and of unpacking included: not a mutant of
                # an arithmetic expression (its occurrence is still counted, as
                # cosmic-ray counts it).
                if name.startswith("ReplaceBinaryOperator_") and (
                    node.parent is None or node.parent.type not in _ARITHMETIC
                ):
                    continue
                found.append(
                    Candidate("python", path, start[0], start[1], name, occurrence, variant=variant)
                )
    return found


_ARITHMETIC = {"arith_expr", "term", "expr", "and_expr", "xor_expr", "shift_expr", "power"}


# -- SQL --------------------------------------------------------------------------------

_CLAUSE_END = re.compile(
    r"\b(ORDER\s+BY|GROUP\s+BY|LIMIT|FOR\s+UPDATE|FOR\s+SHARE|FOR\s+NO\s+KEY|RETURNING|UNION|"
    r"HAVING|WINDOW|OFFSET)\b",
    re.IGNORECASE,
)
_FLIPS = {"<=": "<", "<": "<=", ">=": ">", ">": ">=", "=": "<>", "<>": "=", "!=": "="}
_COMPARISON = re.compile(r"(?<![<>!=:-])(<=|>=|<>|!=|<|>|=)(?![<>=])")
_NULL_TEST = re.compile(r"\bIS\s+(NOT\s+)?NULL\b", re.IGNORECASE)
_LOCK = re.compile(
    r"[ \t]*\bFOR\s+(UPDATE|SHARE|NO\s+KEY\s+UPDATE|KEY\s+SHARE)(\s+SKIP\s+LOCKED|\s+NOWAIT)?\b",
    re.IGNORECASE,
)
_WHERE = re.compile(r"\bWHERE\b", re.IGNORECASE)
_AND = re.compile(r"\bAND\b", re.IGNORECASE)
_BETWEEN = re.compile(r"\bBETWEEN\b", re.IGNORECASE)


def _mask(text: str) -> str:
    """``text`` with comments and string literals blanked out (same length, newlines
    kept), so that the operators never touch them."""
    out = list(text)
    index = 0
    while index < len(text):
        if text.startswith("--", index):
            end = text.find("\n", index)
            end = len(text) if end < 0 else end
            for k in range(index, end):
                out[k] = " "
            index = end
        elif text[index] == "'":
            end = index + 1
            while end < len(text):
                if text[end] == "'" and text.startswith("''", end):
                    end += 2
                    continue
                if text[end] == "'":
                    break
                end += 1
            for k in range(index, min(end + 1, len(text))):
                if out[k] != "\n":
                    out[k] = "_" if index < k < end else "'"
            index = end + 1
        else:
            index += 1
    return "".join(out)


def _where_clauses(masked: str) -> list[tuple[int, int]]:
    """The spans of every WHERE clause's condition: from after ``WHERE`` to the first
    clause keyword, closing parenthesis or semicolon at its own depth."""
    spans = []
    for match in _WHERE.finditer(masked):
        depth = 0
        index = match.end()
        end = len(masked)
        while index < len(masked):
            char = masked[index]
            if char == "(":
                depth += 1
            elif char == ")":
                if depth == 0:
                    end = index
                    break
                depth -= 1
            elif char == ";" and depth == 0:
                end = index
                break
            elif depth == 0:
                found = _CLAUSE_END.match(masked, index)
                if found and (index == 0 or not masked[index - 1].isalnum()):
                    end = index
                    break
            index += 1
        # not the trailing blanks and newlines
        while end > match.end() and masked[end - 1].isspace():
            end -= 1
        spans.append((match.end(), end))
    return spans


def _conjuncts(masked: str, start: int, end: int) -> list[tuple[int, int]]:
    """The top-level AND-ed terms of the condition at ``start:end`` (an AND inside
    parentheses, or of a BETWEEN, does not split)."""
    cuts = [start]
    depth = 0
    between = False
    index = start
    while index < end:
        char = masked[index]
        if char == "(":
            depth += 1
        elif char == ")":
            depth -= 1
        elif depth == 0 and _BETWEEN.match(masked, index) and not masked[index - 1].isalnum():
            between = True
        elif depth == 0 and _AND.match(masked, index) and not masked[index - 1].isalnum():
            if between:
                between = False
            else:
                cuts.append(index)
                index += 3
                continue
        index += 1
    cuts.append(end)
    terms = []
    for left, right in itertools.pairwise(cuts):
        if masked[left : left + 3].upper() == "AND":
            left += 3
        terms.append((left, right))
    return terms


def _strip(masked: str, left: int, right: int) -> tuple[int, int]:
    while left < right and masked[left].isspace():
        left += 1
    while right > left and masked[right - 1].isspace():
        right -= 1
    return left, right


def _query_names(text: str) -> list[tuple[int, str]]:
    return [(m.start(), m.group(1)) for m in re.finditer(r"^-- name: (\S+)", text, re.MULTILINE)]


def sql_candidates(text: str, path: str) -> list[Candidate]:
    """Every mutant the SQL operators make of one file of named queries.

    >>> sql = "-- name: q\\nSELECT 1 FROM t WHERE a = $1 AND b <= $2\\nFOR UPDATE SKIP LOCKED;\\n"
    >>> for c in sql_candidates(sql, "x.sql"):
    ...     print(c.operator, "|", c.mutated_text(sql).splitlines()[1:3])
    sql-drop-where-term | ['SELECT 1 FROM t WHERE b <= $2', 'FOR UPDATE SKIP LOCKED;']
    sql-flip-comparison | ['SELECT 1 FROM t WHERE a <> $1 AND b <= $2', 'FOR UPDATE SKIP LOCKED;']
    sql-drop-where-term | ['SELECT 1 FROM t WHERE a = $1', 'FOR UPDATE SKIP LOCKED;']
    sql-flip-comparison | ['SELECT 1 FROM t WHERE a = $1 AND b < $2', 'FOR UPDATE SKIP LOCKED;']
    sql-drop-lock | ['SELECT 1 FROM t WHERE a = $1 AND b <= $2;']
    sql-drop-skip-locked | ['SELECT 1 FROM t WHERE a = $1 AND b <= $2', 'FOR UPDATE;']
    """
    masked = _mask(text)
    names = _query_names(text)
    found: list[Candidate] = []

    def add(start: int, end: int, replacement: str, operator: str) -> None:
        line = text.count("\n", 0, start) + 1
        column = start - (text.rfind("\n", 0, start) + 1)
        query = next((name for at, name in reversed(names) if at <= start), None)
        found.append(
            Candidate("sql", path, line, column, operator, 0, start, end, replacement, query)
        )

    for start, end in _where_clauses(masked):
        condition = masked[start:end]
        for match in _COMPARISON.finditer(condition):
            add(
                start + match.start(),
                start + match.end(),
                _FLIPS[match.group(1)],
                "sql-flip-comparison",
            )
        for match in _NULL_TEST.finditer(condition):
            flipped = "IS NULL" if match.group(1) else "IS NOT NULL"
            add(start + match.start(), start + match.end(), flipped, "sql-flip-comparison")
        terms = [_strip(masked, left, right) for left, right in _conjuncts(masked, start, end)]
        for index, (left, right) in enumerate(terms):
            if len(terms) < 2:
                break
            if index + 1 < len(terms):  # the term, and the AND after it
                add(left, terms[index + 1][0], "", "sql-drop-where-term")
            else:  # the last term, and the AND before it
                add(terms[index - 1][1], right, "", "sql-drop-where-term")
    for match in _LOCK.finditer(masked):
        line_start = text.rfind("\n", 0, match.start()) + 1
        alone = not masked[line_start : match.start()].strip()
        start = line_start - 1 if alone and line_start else match.start()  # the line, whole
        add(start, match.end(), "", "sql-drop-lock")
        if match.group(2) and "SKIP" in match.group(2).upper():
            add(match.start(2), match.end(2), "", "sql-drop-skip-locked")
    found.sort(key=lambda c: (c.start, SQL_OPERATORS.index(c.operator)))
    return found


# -- the pool and the sample ------------------------------------------------------------


@dataclass
class Pool:
    """Every candidate, the ones set aside as equivalent (with their rule), the sources."""

    candidates: list[Candidate]
    equivalent: dict[str, str]  # candidate id -> rule name
    sources: dict[str, str]  # path -> original text

    @property
    def eligible(self) -> list[Candidate]:
        return [c for c in self.candidates if c.id not in self.equivalent]

    def by_rule(self) -> dict[str, int]:
        counts = {rule.name: 0 for rule in RULES}
        for name in self.equivalent.values():
            counts[name] += 1
        return counts


def enumerate_pool(root: Path = PACKAGE_ROOT) -> Pool:
    """Every mechanical mutant of the package at ``root``, in a stable order."""
    sources: dict[str, str] = {}
    candidates: list[Candidate] = []
    equivalent: dict[str, str] = {}
    for file in sorted((root / PYTHON_DIRECTORY).glob("*.py")):
        path = f"{PYTHON_DIRECTORY}/{file.name}"
        if path in OUT_OF_SCOPE:
            continue
        text = file.read_text()
        sources[path] = text
        context = _context(text, path)
        for candidate in python_candidates(text, path):
            candidates.append(candidate)
            for rule in RULES:
                if rule.applies(candidate, context):
                    equivalent[candidate.id] = rule.name
                    break
    for path in SQL_FILES:
        text = (root / path).read_text()
        sources[path] = text
        candidates.extend(sql_candidates(text, path))
    return Pool(candidates, equivalent, sources)


def sample(pool: Pool, n: int, *, seed: int) -> list[Candidate]:
    """``n`` of the pool's eligible candidates, the same for the same seed and sources;
    in the pool's order."""
    eligible = sorted(pool.eligible, key=lambda c: c.id)
    chosen = random.Random(seed).sample(eligible, min(n, len(eligible)))
    order = {c.id: i for i, c in enumerate(pool.candidates)}
    return sorted(chosen, key=lambda c: order[c.id])


def kind(candidate: Candidate) -> str:
    """A short family name of the operator, for the table.

    >>> kind(Candidate("python", "p.py", 1, 0, "ReplaceComparisonOperator_Lt_LtE"))
    'py: Lt -> LtE'
    """
    if candidate.source == "sql":
        return candidate.operator
    name = candidate.operator
    for prefix in ("ReplaceBinaryOperator_", "ReplaceComparisonOperator_", "ReplaceUnaryOperator_"):
        if name.startswith(prefix):
            old, new = name[len(prefix) :].split("_")
            return f"py: {old} -> {new}"
    return f"py: {name}"


def to_mutant(candidate: Candidate, pool: Pool) -> Mutant:
    """The candidate as a catalog-style mutant: one whole-file edit of the scratch copy
    (it fails loudly if the source changed since the pool was made)."""
    original = pool.sources[candidate.path]
    before, after = candidate.describe(original)
    return Mutant(
        name=candidate.id,
        kind=kind(candidate),
        bug=f"{before} -> {after}",
        seen=f"{candidate.path}:{candidate.line}",
        edits=(Edit(candidate.path, original, candidate.mutated_text(original)),),
    )


def compiles(candidate: Candidate, pool: Pool) -> str | None:
    """None if the mutated Python compiles (SQL: always None here); else why not."""
    if candidate.source != "python":
        return None
    try:
        compile(candidate.mutated_text(pool.sources[candidate.path]), candidate.path, "exec")
    except SyntaxError as error:
        return f"does not compile: {error.msg} (line {error.lineno})"
    return None


# -- the run ---------------------------------------------------------------------------

# What a sampled mutant came to. Only "ran" mutants are counted (killed / non-equivalent).
Status = Literal["ran", "does not compile", "does not import", "did not run"]

# Errors that say the mutated code is not a program, not that a test caught it.
_NOT_A_PROGRAM = ("error: PostgresSyntaxError", "error: SyntaxError")

# Every module of the pipeline: a mutant that breaks any one's import is not a program.
_IMPORT_CHECK = (
    "import importlib, pkgutil, pipeline_models.pipeline as p\n"
    "for m in pkgutil.iter_modules(p.__path__):\n"
    "    importlib.import_module('pipeline_models.pipeline.' + m.name)\n"
    "import pipeline_models.queries\n"
)


@dataclass
class GeneratedRow:
    """One sampled mutant and what came of it (``report``: the runner's, if it ran)."""

    id: str
    source: str
    operator: str
    path: str
    line: int
    query: str | None
    before: str
    after: str
    status: str
    why: str | None = None  # not compiling, not importing, not running: the first line
    report: Any = None  # MutantReport

    def killed_by(self, side: str) -> bool:
        return self.status == "ran" and self.report is not None and self.report.killed_by(side)


def import_error(mutant: Mutant) -> str | None:
    """None if every pipeline module of the planted ``mutant`` imports; else the error's
    last line."""
    import os
    import subprocess
    import sys
    import tempfile

    with tempfile.TemporaryDirectory(prefix="pm-import-") as scratch:
        root = mutant.plant(Path(scratch))
        environment = dict(os.environ)
        environment["PYTHONPATH"] = os.pathsep.join(
            [str(root), *filter(None, [environment.get("PYTHONPATH")])]
        )
        finished = subprocess.run(
            [sys.executable, "-c", _IMPORT_CHECK],
            env=environment,
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
    if finished.returncode == 0:
        return None
    return (finished.stderr.strip().splitlines() or ["no output"])[-1]


def row(
    candidate: Candidate, pool: Pool, status: str = "ran", why: str | None = None
) -> GeneratedRow:
    before, after = candidate.describe(pool.sources[candidate.path])
    return GeneratedRow(
        candidate.id,
        candidate.source,
        candidate.operator,
        candidate.path,
        candidate.line,
        candidate.query,
        before,
        after,
        status,
        why,
    )


def settle(generated: GeneratedRow, report: Any) -> GeneratedRow:
    """The row once its run is back: a child that failed did not run; a mutant whose
    SQL (or Python) the server or interpreter refused to parse is no program."""
    generated.report = report
    if report.error:
        generated.status, generated.why = "did not run", report.error
        return generated
    for result in report.sides.values():
        if result.killed and any(fired in _NOT_A_PROGRAM for fired in result.fired):
            generated.status, generated.why = "does not compile", result.detail
            return generated
    return generated


def score(rows: Sequence[GeneratedRow], sides: Sequence[str]) -> dict[str, Any]:
    """Killed / non-equivalent for each side (only mutants that ran count), and the
    checker's kills over the example suite's.

    A mutant that did not compile, import or run is neither: it is listed apart.
    """
    counted = [r for r in rows if r.status == "ran"]
    figures: dict[str, Any] = {
        "sampled": len(rows),
        "non_equivalent": len(counted),
        "not_counted": {
            status: sum(r.status == status for r in rows)
            for status in ("does not compile", "does not import", "did not run")
        },
    }
    for side in sides:
        killed = sum(r.killed_by(side) for r in counted)
        figures[f"killed_{side}"] = killed
        figures[f"score_{side}"] = killed / len(counted) if counted else None
    if "checker" in sides and "examples" in sides:
        examples = figures["killed_examples"]
        figures["ratio_checker_to_examples"] = (
            figures["killed_checker"] / examples if examples else None
        )
    return figures


def _percent(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.0f}%"


def format_generated(
    rows: Sequence[GeneratedRow], sides: Sequence[str], pool: Pool, *, seed: int
) -> str:
    """The table, the score, the rules and what was set aside, as text."""
    from pipeline_models.mutants.runner import SIDE_TITLES, _cell
    from pipeline_models.tables import format_table

    headers = ["mutant", *(SIDE_TITLES[side] for side in sides), "fired", "before -> after"]
    table = []
    for r in rows:
        cells = []
        for side in sides:
            if r.status != "ran":
                cells.append(r.status)
            else:
                cells.append(_cell(r.report.sides.get(side)))
        checker = r.report.sides.get("checker") if r.report is not None else None
        fired = ", ".join(checker.fired) if checker is not None and checker.killed else ""
        table.append([r.id, *cells, fired, f"{r.before} -> {r.after}"])
    figures = score(rows, sides)
    lines = [
        f"sample seed {seed}: {len(rows)} of {len(pool.eligible)} eligible mechanical "
        f"mutants ({len(pool.candidates)} made, {len(pool.equivalent)} equivalent by rule)",
        "",
        format_table(headers, table),
        "",
    ]
    counts = ", ".join(
        f"{SIDE_TITLES[side]} {figures[f'killed_{side}']}/{figures['non_equivalent']} "
        f"({_percent(figures[f'score_{side}'])})"
        for side in sides
    )
    lines.append(f"score (killed / non-equivalent): {counts}")
    if "ratio_checker_to_examples" in figures:
        ratio = figures["ratio_checker_to_examples"]
        lines.append("checker / example suite: " + ("-" if ratio is None else f"{ratio:.2f}x"))
    apart = [f"{n} {status}" for status, n in figures["not_counted"].items() if n]
    if apart:
        lines.append("not counted: " + ", ".join(apart))
        for r in rows:
            if r.status != "ran":
                lines.append(f"  {r.id}: {r.status}: {r.why}")
    lines.append("equivalent by rule (set aside before sampling):")
    for rule in RULES:
        lines.append(f"  {rule.name}: {pool.by_rule()[rule.name]}: {rule.reason}")
    return "\n".join(lines)


def generated_json(
    rows: Sequence[GeneratedRow],
    sides: Sequence[str],
    pool: Pool,
    *,
    seed: int,
    control: Sequence[Any] = (),
    options: Any = None,
) -> str:
    import json
    from dataclasses import asdict

    from pipeline_models.mutants.runner import control_failures, describe_schedule

    return json.dumps(
        {
            "schedule": describe_schedule(options) if options is not None else None,
            "sample_seed": seed,
            "pool": {
                "made": len(pool.candidates),
                "equivalent_by_rule": pool.by_rule(),
                "eligible": len(pool.eligible),
                "python_operators": list(PYTHON_OPERATORS),
                "sql_operators": list(SQL_OPERATORS),
                "out_of_scope": OUT_OF_SCOPE,
            },
            "rules": {rule.name: rule.reason for rule in RULES},
            "control": [asdict(report) for report in control],
            "control_failures": control_failures(control),
            "score": score(rows, sides),
            "mutants": [
                {
                    **{k: v for k, v in asdict(r).items() if k != "report"},
                    "report": asdict(r.report) if r.report is not None else None,
                }
                for r in rows
            ],
        },
        indent=2,
    )


def rows_from_json(data: dict[str, Any]) -> list[GeneratedRow]:
    """The rows of a ``--generated --json`` run, read back (to render or re-score)."""
    from pipeline_models.mutants.child import SideResult
    from pipeline_models.mutants.runner import MutantReport

    rows = []
    for item in data["mutants"]:
        fields = dict(item)
        report = fields.pop("report")
        if report is not None:
            sides = {side: SideResult(**result) for side, result in report["sides"].items()}
            report = MutantReport(**{**report, "sides": sides})
        rows.append(GeneratedRow(**fields, report=report))
    return rows


__all__ = [
    "OUT_OF_SCOPE",
    "PYTHON_OPERATORS",
    "RULES",
    "SQL_OPERATORS",
    "Candidate",
    "GeneratedRow",
    "Pool",
    "Rule",
    "compiles",
    "enumerate_pool",
    "format_generated",
    "generated_json",
    "import_error",
    "kind",
    "python_candidates",
    "python_operator",
    "row",
    "rows_from_json",
    "sample",
    "score",
    "settle",
    "sql_candidates",
    "to_mutant",
]
