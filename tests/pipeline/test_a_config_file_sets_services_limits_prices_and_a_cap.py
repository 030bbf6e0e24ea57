"""The TOML config file, the environment over it, and the budget command."""

from __future__ import annotations

from datetime import date
from decimal import Decimal
from pathlib import Path

import pytest
from click.testing import CliRunner

from pipeline_models.cli import main
from pipeline_models.database import Database
from pipeline_models.pipeline.ratelimit import ServiceRate
from pipeline_models.settings import ConfigFileError, Settings

CONFIG = """
[parser]
url = "https://parser.example"
key = "llx-from-the-file"
requests_per_minute = 60

[embeddings]
url = "https://embeddings.example/v1"
requests_per_minute = 3000
tokens_per_minute = 1000000

[budget]
max_cost_usd = "2.50"

[prices]
as_of = 2026-01-31
usd_per_page = "0.01"
[prices.usd_per_million_tokens]
"text-embedding-3-small" = "0.05"
"""


@pytest.fixture
def config_file(tmp_path: Path) -> Path:
    path = tmp_path / "pipeline.toml"
    path.write_text(CONFIG)
    return path


def test_a_config_file_sets_services_limits_prices_and_a_cap(config_file: Path) -> None:
    settings = Settings.from_env({}, config_file=config_file)
    assert settings.parser_url == "https://parser.example"
    assert settings.parser_key == "llx-from-the-file"
    assert settings.embeddings_url == "https://embeddings.example/v1"
    assert settings.max_cost_usd == Decimal("2.50")
    assert settings.rates["parser"] == ServiceRate(requests=60, window_seconds=60)
    assert settings.rates["embeddings"].tokens == 1_000_000
    assert settings.prices.usd_per_page == Decimal("0.01")
    assert settings.prices.usd_per_million_tokens["text-embedding-3-small"] == Decimal("0.05")
    assert settings.prices.usd_per_million_tokens["text-embedding-3-large"] == Decimal("0.13")
    assert settings.prices.as_of == date(2026, 1, 31)
    assert "llx-from-the-file" not in repr(settings)


def test_the_environment_wins_over_the_file(config_file: Path) -> None:
    env = {
        "PIPELINE_CONFIG": str(config_file),
        "PIPELINE_PARSER_KEY": "llx-from-the-env",
        "PIPELINE_MAX_COST": "1",
        "PIPELINE_OPERATORS": "00000000-0000-0000-0000-000000000064",
    }
    settings = Settings.from_env(env)
    assert [u.int for u in settings.operators] == [100]
    assert Settings.from_env(settings.to_env()).operators == settings.operators
    assert settings.parser_key == "llx-from-the-env"
    assert settings.max_cost_usd == Decimal("1")
    assert settings.parser_url == "https://parser.example"  # the file still counts
    assert Settings.from_env(settings.to_env()).max_cost_usd == Decimal("1")


def test_without_a_file_or_variables_the_pipeline_talks_to_the_fakes() -> None:
    settings = Settings.from_env({})
    assert settings.parser_url.startswith("http://127.0.0.1")
    assert settings.max_cost_usd is None
    assert settings.rates == {}


@pytest.mark.parametrize(
    ("line", "says"),
    [
        ("usd_per_page = 0.01", "a float cannot hold a price exactly"),
        ('usd_per_page = "-1"', "must not be negative"),
    ],
)
def test_a_price_that_is_not_an_exact_amount_is_refused(
    tmp_path: Path, line: str, says: str
) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(f"[prices]\n{line}\n")
    with pytest.raises(ConfigFileError, match=says):
        Settings.from_env({}, config_file=path)


def test_a_bad_cap_or_limit_is_refused_naming_the_file(tmp_path: Path) -> None:
    path = tmp_path / "bad.toml"
    path.write_text('[budget]\nmax_cost_usd = "lots"\n')
    with pytest.raises(ConfigFileError, match=r"bad\.toml: budget\.max_cost_usd"):
        Settings.from_env({}, config_file=path)
    path.write_text("[embeddings]\ntokens_per_minute = 0\n")
    with pytest.raises(ConfigFileError, match="tokens must be at least 1"):
        Settings.from_env({}, config_file=path)


def test_the_budget_command_shows_and_raises_the_cap(
    clean_pipeline_database: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PIPELINE_SCHEMA", clean_pipeline_database.schema)
    url = ["--database-url", clean_pipeline_database.url]
    runner = CliRunner()
    shown = runner.invoke(main, ["budget", *url])
    assert shown.exit_code == 0, shown.output
    assert "no budget" in shown.output
    raised = runner.invoke(main, ["budget", *url, "--max-cost", "3.5"])
    assert raised.exit_code == 0, raised.output
    assert "limit $3.5" in raised.output
    assert "released 0 held jobs" in raised.output
    refused = runner.invoke(main, ["budget", *url, "--max-cost", "-1"])
    assert refused.exit_code == 2
    assert "must be 0 or more" in refused.output
