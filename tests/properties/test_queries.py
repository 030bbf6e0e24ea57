from __future__ import annotations

import re
from pathlib import Path

import pytest

from pipeline_models.core.observe import _TEMPLATES as CORE_QUERIES
from pipeline_models.history import AUDIT_QUERIES
from pipeline_models.pipeline.ratelimit import RATE_LIMIT_QUERIES
from pipeline_models.queries import QUERIES, Queries
from pipeline_models.snapshot import CHECKER_QUERIES

SOURCE = Path(__file__).parents[2] / "src" / "pipeline_models"


def test_every_query_the_code_names_exists_and_every_query_is_used() -> None:
    code = "\n".join(p.read_text() for p in SOURCE.rglob("*.py"))
    named = set(re.findall(r'queries\["([a-z_]+)"\]', code, flags=re.IGNORECASE))
    named |= set(re.findall(r'q\["([a-z_]+)"\]', code))
    named |= set(re.findall(r'\.move\(\s*\w+,\s*"([a-z_]+)"', code))
    named |= set(re.findall(r'\._query\(\s*"([a-z_]+)"', code))
    named |= set(re.findall(r'\.sql\["([a-z_]+)"\]', code))
    known = (
        set(QUERIES)
        | set(CHECKER_QUERIES)
        | set(AUDIT_QUERIES)
        | set(RATE_LIMIT_QUERIES)
        | set(CORE_QUERIES)
    )
    assert named - known == set()
    assert set(QUERIES) - named == set()
    assert set(RATE_LIMIT_QUERIES) - named == set()
    assert set(CORE_QUERIES) - named == set()


def test_every_query_documents_its_parameters() -> None:
    for name, query in QUERIES.items():
        used = set(re.findall(r"\$(\d+)", query.sql))
        documented = set(re.findall(r"\$(\d+)", query.doc))
        assert used == documented, f"{name}: uses ${sorted(used)}, documents ${sorted(documented)}"


def test_no_query_reads_the_database_clock() -> None:
    for name, query in QUERIES.items():
        assert not re.search(r"\bnow\(\)|current_timestamp|clock_timestamp", query.sql, re.I), name


def test_a_mutant_replaces_a_query_by_name_and_unknown_names_are_refused() -> None:
    mutant = QUERIES.replace(renew_lease="SELECT 1")
    assert mutant["renew_lease"].sql == "SELECT 1"
    assert QUERIES["renew_lease"].sql != "SELECT 1"
    with pytest.raises(KeyError, match="no such queries: renew_leases"):
        QUERIES.replace(renew_leases="SELECT 1")


def test_a_query_file_with_a_duplicate_name_is_refused() -> None:
    with pytest.raises(ValueError, match="defined twice"):
        Queries.parse("-- name: a\nSELECT 1;\n-- name: a\nSELECT 2;\n")
