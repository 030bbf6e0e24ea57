"""Realistic bugs, each a small edit of the reference pipeline, that the checker must catch.

A :class:`Mutant` is a named, one-line bug with the edits that plant it in a scratch copy
of the package (text replacements in its Python or SQL files, each of which must match
exactly as often as it says, so a mutant that no longer applies fails loudly instead of
testing the unchanged pipeline). ``pipeline-models mutants`` runs the checker, and two
baselines, against each one in its own process (see :mod:`pipeline_models.mutants.runner`).

>>> from pipeline_models.mutants.catalog import CATALOG
>>> len(CATALOG) >= 24
True
>>> sorted({mutant.kind for mutant in CATALOG})[:3]
['atomicity', 'claims', 'cost']
"""

from __future__ import annotations

import importlib.util
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import pipeline_models

PACKAGE_ROOT = Path(pipeline_models.__file__).parent

Machine = Literal["queue", "pipeline"]


class MutantError(Exception):
    """A mutant's edit does not match the source it edits."""


@dataclass(frozen=True)
class Edit:
    """Replace ``old`` with ``new`` in ``path`` (relative to the package), ``count`` times."""

    path: str
    old: str
    new: str
    count: int = 1

    def apply(self, root: Path) -> None:
        target = root / self.path
        text = target.read_text()
        found = text.count(self.old)
        if found != self.count:
            raise MutantError(
                f"{self.path}: expected {self.count} occurrence(s) of {self.old[:60]!r}, "
                f"found {found}: the reference changed; update the mutant"
            )
        target.write_text(text.replace(self.old, self.new))


@dataclass(frozen=True)
class Mutant:
    """One realistic bug: what it is, where such bugs were seen, and how to plant it."""

    name: str
    kind: str  # claims, fencing, atomicity, idempotency, retries, silent failure, data, ...
    bug: str  # one line: what the buggy pipeline does
    seen: str  # where bugs of this kind were seen
    edits: Sequence[Edit]
    machine: Machine = "pipeline"  # the smallest machine whose rules can expose it
    # The installed package the edits apply to: this one (the reference pipeline), or a
    # third-party queue checked through an adapter (procrastinate).
    package: str = "pipeline_models"
    # The invariant closest to the bug's cause: the one a kill should report first, in
    # the words of the machine that checks it (its pipeline or queue layer) and in the
    # core's (None: the same name, or none of the core's fits).
    invariant: str | None = None
    core_invariant: str | None = None

    def closest(self, layer: str | None) -> str | None:
        """The invariant closest to the bug's cause on ``layer`` (None: its own)."""
        if layer == "core":
            return self.core_invariant or self.invariant
        return self.invariant

    def plant(self, destination: Path) -> Path:
        """A copy of the package under ``destination`` with the bug planted; returns the
        directory to put first on ``sys.path``."""
        copy = destination / self.package
        if copy.exists():
            shutil.rmtree(copy)
        shutil.copytree(
            package_root(self.package), copy, ignore=shutil.ignore_patterns("__pycache__")
        )
        for edit in self.edits:
            edit.apply(copy)
        return destination


def package_root(package: str) -> Path:
    """Where the installed ``package`` lives (its directory), to copy and edit.

    >>> package_root("pipeline_models") == PACKAGE_ROOT
    True
    """
    if package == "pipeline_models":
        return PACKAGE_ROOT
    found = importlib.util.find_spec(package)
    if found is None or not found.submodule_search_locations:
        raise MutantError(f"no installed package {package!r} to plant mutants in")
    return Path(next(iter(found.submodule_search_locations)))


UNMODIFIED = Mutant(
    "reference",
    "control",
    "none: the unmodified package, copied and run exactly as every mutant is",
    "",
    edits=(),
)
"""The control of every mutant run: no edits. Its rounds must pass for a kill to count."""

__all__ = [
    "PACKAGE_ROOT",
    "UNMODIFIED",
    "Edit",
    "Machine",
    "Mutant",
    "MutantError",
    "package_root",
]
