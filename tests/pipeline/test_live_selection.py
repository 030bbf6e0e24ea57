"""Which environments run the live tests (offline: nothing here talks to a service)."""

from __future__ import annotations

from tests.conftest import live_services_missing

REAL = {
    "PIPELINE_PARSER_KEY": "llx-x",
    "PIPELINE_EMBEDDINGS_KEY": "sk-x",
    "PIPELINE_PARSER_URL": "https://api.cloud.llamaindex.ai",
    "PIPELINE_EMBEDDINGS_URL": "https://api.openai.com/v1",
    "PIPELINE_MAX_COST": "0.05",
}


def test_live_tests_run_with_keys_real_urls_and_a_cap() -> None:
    assert live_services_missing(REAL) is None


def test_live_tests_do_not_run_without_a_cap() -> None:
    reason = live_services_missing({**REAL, "PIPELINE_MAX_COST": ""})
    assert reason is not None
    assert "spending cap" in reason


def test_live_tests_do_not_run_against_the_fakes() -> None:
    reason = live_services_missing({**REAL, "PIPELINE_PARSER_URL": "http://127.0.0.1:8001"})
    assert reason is not None
    assert "points at a fake" in reason


def test_live_tests_do_not_run_without_keys() -> None:
    reason = live_services_missing({})
    assert reason is not None
    assert "API key" in reason
