"""The catalog is well formed, and every mutant still plants in today's source."""

from __future__ import annotations

import py_compile
from pathlib import Path

import pytest

from pipeline_models.mutants import PACKAGE_ROOT, Edit, Mutant, MutantError
from pipeline_models.mutants.catalog import BY_NAME, CATALOG

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


@pytest.mark.parametrize("mutant", CATALOG, ids=lambda mutant: mutant.name)
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
