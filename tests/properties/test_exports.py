"""Every module's ``__all__`` is sorted, complete and importable, and imports stay cheap."""

from __future__ import annotations

import importlib
import pkgutil
import subprocess
import sys
from types import ModuleType

import pytest

import pipeline_models
import strategies


def _modules(package: ModuleType) -> list[ModuleType]:
    found = [package]
    for info in pkgutil.walk_packages(package.__path__, package.__name__ + "."):
        found.append(importlib.import_module(info.name))
    return found


def _isort_style(name: str) -> tuple[int, str]:
    # ruff's RUF022 order: CONSTANTS, then Classes, then functions and the rest.
    group = 0 if name.isupper() else 1 if name[:1].isupper() else 2
    return group, name


MODULES = [m for p in (pipeline_models, strategies) for m in _modules(p) if hasattr(m, "__all__")]


@pytest.mark.parametrize("module", MODULES, ids=lambda m: m.__name__)
def test_all_is_sorted_and_every_name_exists(module: ModuleType) -> None:
    names = list(module.__all__)
    assert names == sorted(names, key=_isort_style)
    for name in names:
        assert hasattr(module, name), f"{module.__name__}.__all__ names missing {name!r}"


def test_the_package_root_exports_what_its_docs_promise() -> None:
    assert pipeline_models.__all__ == sorted(pipeline_models.__all__, key=_isort_style)
    for name in pipeline_models.__all__:
        assert getattr(pipeline_models, name) is not None
    with pytest.raises(AttributeError, match="no attribute 'Nope'"):
        _ = pipeline_models.Nope  # type: ignore[attr-defined]


def test_importing_the_pytest_plugin_imports_no_database_driver() -> None:
    # The plugin loads in every pytest session of every project that installs us.
    code = (
        "import sys, pipeline_models.plugin; "
        "print(sorted(m for m in ('asyncpg', 'openai', 'sqlalchemy', 'httpx') if m in sys.modules))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "[]"
