"""The catalog and the holdout are well formed, and every mutant still plants in today's
source."""

from __future__ import annotations

import py_compile
from pathlib import Path

import pytest

from pipeline_models.core.invariants import ORDER
from pipeline_models.invariants import INVARIANTS
from pipeline_models.mutants import PACKAGE_ROOT, Edit, Mutant, MutantError
from pipeline_models.mutants.catalog import BY_NAME, CATALOG
from pipeline_models.mutants.holdout import HOLDOUT
from pipeline_models.pipeline.adapter import STEP_INVARIANTS

REQUIRED_KINDS = {
    "claims",
    "fencing",
    "atomicity",
    "idempotency",
    "retries",
    "silent failure",
    "data",
    "security",
}


def test_the_catalog_has_at_least_24_named_mutants_of_every_required_kind() -> None:
    assert len(CATALOG) >= 24
    assert len(BY_NAME) == len(CATALOG), "mutant names must be unique"
    assert {mutant.kind for mutant in CATALOG} >= REQUIRED_KINDS
    for mutant in CATALOG:
        assert mutant.bug, mutant.name
        assert "\n" not in mutant.bug, mutant.name
        assert mutant.seen, mutant.name
        assert "\n" not in mutant.seen, mutant.name
        assert mutant.edits, mutant.name


# What each layer reports: the pipeline layer's invariants, liveness at its drain and its
# API contract; the core's queue invariants, a failed action, and the reference
# adapter's own (pipeline_models.pipeline.adapter).
LAYER_INVARIANTS = {*INVARIANTS, "liveness", "api contract"}
CORE_INVARIANTS = {*ORDER, "actions", *STEP_INVARIANTS, "cost", "documents", "uploads", "api"}


def test_every_catalog_mutant_names_the_invariant_closest_to_its_cause_on_each_layer() -> None:
    """So that a report can say whether a kill sent its reader to the cause first."""
    for mutant in CATALOG:
        assert mutant.closest(mutant.machine) in LAYER_INVARIANTS, mutant.name
        assert mutant.closest("core") in CORE_INVARIANTS, mutant.name
    assert BY_NAME["lease-not-renewed"].closest("pipeline") == "leases_cover_calls"
    assert BY_NAME["lease-not-renewed"].closest("core") == "fencing"
    assert BY_NAME["claim-before-due"].closest("core") == "transitions"


def test_the_holdout_has_at_least_8_new_named_mutants_each_with_its_invariant() -> None:
    assert len(HOLDOUT) >= 8
    names = [mutant.name for mutant in HOLDOUT]
    assert len(set(names)) == len(names), "holdout names must be unique"
    assert not set(names) & set(BY_NAME), "a holdout mutant must not be a catalog one"
    catalog_edits = {(edit.path, edit.old, edit.new) for m in CATALOG for edit in m.edits}
    for mutant in HOLDOUT:
        assert mutant.package == "pipeline_models", mutant.name
        assert mutant.bug, mutant.name
        assert "\n" not in mutant.bug, mutant.name
        assert mutant.seen, mutant.name
        assert "\n" not in mutant.seen, mutant.name
        assert mutant.invariant, mutant.name
        assert mutant.edits, mutant.name
        for edit in mutant.edits:
            assert (edit.path, edit.old, edit.new) not in catalog_edits, mutant.name
            assert edit.path.startswith(("pipeline/", "sql/queries.sql")), (
                f"{mutant.name} edits {edit.path}: the holdout plants bugs in the reference "
                "pipeline, never in the checker"
            )


@pytest.mark.parametrize("mutant", CATALOG + HOLDOUT, ids=lambda mutant: mutant.name)
def test_every_mutant_plants_and_compiles(mutant: Mutant, tmp_path: Path) -> None:
    root = mutant.plant(tmp_path)
    copy = root / "pipeline_models"
    changed = [
        edit.path
        for edit in mutant.edits
        if (copy / edit.path).read_text() != (PACKAGE_ROOT / edit.path).read_text()
    ]
    assert changed, f"{mutant.name} changed nothing"
    for path in copy.rglob("*.py"):
        py_compile.compile(str(path), doraise=True)


def test_an_edit_that_no_longer_matches_fails_loudly(tmp_path: Path) -> None:
    stale = Mutant(
        "stale", "claims", "a bug", "somewhere", [Edit("sql/queries.sql", "NO SUCH TEXT", "x")]
    )
    with pytest.raises(MutantError, match="expected 1 occurrence"):
        stale.plant(tmp_path)
