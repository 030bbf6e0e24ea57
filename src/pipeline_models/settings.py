"""Settings of the pipeline's processes (API, workers), from the environment.

Every process of one deployment reads the same variables, so a worker and the API agree
on the database, the blob store, the services and the secrets:

=========================  =================================================
``DATABASE_URL``           the shared Postgres
``PIPELINE_SCHEMA``        its schema (``upload_pipeline``)
``PIPELINE_STORAGE``       the blob store's directory
``PIPELINE_PARSER_URL``    the parser (``http://127.0.0.1:8001``)
``PIPELINE_EMBEDDINGS_URL`` the embeddings API (``http://127.0.0.1:8002/v1``)
``PIPELINE_PARSER_KEY``    the parser's API key
``PIPELINE_EMBEDDINGS_KEY`` the embeddings API key
``PIPELINE_TOKEN_SECRET``  signs the API's bearer tokens
``PIPELINE_WEBHOOK_SECRETS`` parser webhook secrets, "current,previous"
``PIPELINE_WEBHOOK_URL``   where the parser should send its webhook
``PIPELINE_LEASE_SECONDS`` a worker's lease (30)
``PIPELINE_MAX_COST``      the spending cap of a run, in USD (none)
``PIPELINE_OPERATORS``     user ids (UUIDs, comma-separated) that may set the budget
``PIPELINE_CONFIG``        a TOML config file (below)
=========================  =================================================

The config file (``--config pipeline.toml`` or ``PIPELINE_CONFIG``) holds the same
settings and what has no variable: rate limits and prices. The environment wins over
the file, and a command's flags over both::

    [parser]
    url = "https://api.cloud.llamaindex.ai"
    requests_per_minute = 60

    [embeddings]
    url = "https://api.openai.com/v1"
    requests_per_minute = 3000
    tokens_per_minute = 1000000

    [budget]
    max_cost_usd = "2.00"

    [prices]
    usd_per_page = "0.003"
    [prices.usd_per_million_tokens]
    "text-embedding-3-small" = "0.02"

Keys may be in the file (``key = "..."`` under a service) but belong in the environment
or a secret store. Secrets never appear in a repr.
"""

from __future__ import annotations

import os
import tomllib
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any

from pipeline_models.errors import PipelineModelsError
from pipeline_models.pipeline.costs import PriceTable
from pipeline_models.pipeline.ratelimit import ServiceRate
from pipeline_models.pipeline.reference import FAKE_API_KEY
from pipeline_models.pipeline.services import EMBEDDINGS, PARSER
from pipeline_models.schema import DEFAULT_SCHEMA

DEFAULT_PARSER_URL = "http://127.0.0.1:8001"
DEFAULT_EMBEDDINGS_URL = "http://127.0.0.1:8002/v1"
DEV_TOKEN_SECRET = "pipeline-models-development-token-secret"
DEV_WEBHOOK_SECRET = "pipeline-models-development-webhook-secret"


@dataclass(frozen=True)
class Settings:
    database_url: str | None = None
    schema: str = DEFAULT_SCHEMA
    storage_root: Path = Path("blobs")
    parser_url: str = DEFAULT_PARSER_URL
    embeddings_url: str = DEFAULT_EMBEDDINGS_URL
    parser_key: str | None = field(default=FAKE_API_KEY, repr=False)
    embeddings_key: str = field(default=FAKE_API_KEY, repr=False)
    token_secret: str = field(default=DEV_TOKEN_SECRET, repr=False)
    webhook_secrets: tuple[str, ...] = field(default=(DEV_WEBHOOK_SECRET,), repr=False)
    webhook_url: str | None = None
    lease_seconds: float = 30.0
    max_cost_usd: Decimal | None = None
    prices: PriceTable = field(default_factory=PriceTable.default)
    rates: Mapping[str, ServiceRate] = field(default_factory=dict)
    config_file: Path | None = None
    operators: frozenset[uuid.UUID] = frozenset()

    @classmethod
    def from_env(
        cls,
        environ: Mapping[str, str] | None = None,
        *,
        config_file: str | os.PathLike[str] | None = None,
        **overrides: Any,
    ) -> Settings:
        """Settings from the config file (``config_file``, else ``PIPELINE_CONFIG``), then
        ``environ`` (default ``os.environ``); ``overrides`` win when not None."""
        env = os.environ if environ is None else environ
        path = config_file or env.get("PIPELINE_CONFIG") or None
        values: dict[str, Any] = read_config(Path(path)) if path else {}
        simple = {
            "database_url": "DATABASE_URL",
            "schema": "PIPELINE_SCHEMA",
            "parser_url": "PIPELINE_PARSER_URL",
            "embeddings_url": "PIPELINE_EMBEDDINGS_URL",
            "parser_key": "PIPELINE_PARSER_KEY",
            "embeddings_key": "PIPELINE_EMBEDDINGS_KEY",
            "token_secret": "PIPELINE_TOKEN_SECRET",
            "webhook_url": "PIPELINE_WEBHOOK_URL",
        }
        for name, variable in simple.items():
            if env.get(variable):
                values[name] = env[variable]
        if env.get("PIPELINE_STORAGE"):
            values["storage_root"] = Path(env["PIPELINE_STORAGE"])
        if env.get("PIPELINE_WEBHOOK_SECRETS"):
            values["webhook_secrets"] = tuple(
                s.strip() for s in env["PIPELINE_WEBHOOK_SECRETS"].split(",") if s.strip()
            )
        if env.get("PIPELINE_LEASE_SECONDS"):
            values["lease_seconds"] = float(env["PIPELINE_LEASE_SECONDS"])
        if env.get("PIPELINE_OPERATORS"):
            values["operators"] = frozenset(
                uuid.UUID(s.strip()) for s in env["PIPELINE_OPERATORS"].split(",") if s.strip()
            )
        if env.get("PIPELINE_MAX_COST"):
            values["max_cost_usd"] = _usd(env["PIPELINE_MAX_COST"], "PIPELINE_MAX_COST")
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)

    def to_env(self) -> dict[str, str]:
        """The variables that give another process these settings."""
        env = {
            "PIPELINE_SCHEMA": self.schema,
            "PIPELINE_STORAGE": str(self.storage_root),
            "PIPELINE_PARSER_URL": self.parser_url,
            "PIPELINE_EMBEDDINGS_URL": self.embeddings_url,
            "PIPELINE_EMBEDDINGS_KEY": self.embeddings_key,
            "PIPELINE_TOKEN_SECRET": self.token_secret,
            "PIPELINE_WEBHOOK_SECRETS": ",".join(self.webhook_secrets),
            "PIPELINE_LEASE_SECONDS": str(self.lease_seconds),
        }
        if self.database_url:
            env["DATABASE_URL"] = self.database_url
        if self.parser_key:
            env["PIPELINE_PARSER_KEY"] = self.parser_key
        if self.webhook_url:
            env["PIPELINE_WEBHOOK_URL"] = self.webhook_url
        if self.max_cost_usd is not None:
            env["PIPELINE_MAX_COST"] = str(self.max_cost_usd)
        if self.config_file is not None:
            env["PIPELINE_CONFIG"] = str(self.config_file)
        if self.operators:
            env["PIPELINE_OPERATORS"] = ",".join(sorted(str(u) for u in self.operators))
        return env

    def with_(self, **changes: Any) -> Settings:
        return replace(self, **changes)


class ConfigFileError(PipelineModelsError):
    """The config file cannot be read, or a value in it is not what the setting needs."""


def _usd(value: object, where: str) -> Decimal:
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise ConfigFileError(f'{where} must be a string like "2.50" (USD), got {value!r}')
    try:
        amount = Decimal(value)
    except InvalidOperation:
        raise ConfigFileError(f'{where} must be an amount like "2.50", got {value!r}') from None
    if not amount.is_finite() or amount < 0:
        raise ConfigFileError(f"{where} must be 0 or more, got {value!r}")
    return amount


def read_config(path: Path) -> dict[str, Any]:
    """The settings a TOML config file gives, as ``Settings`` field values."""
    try:
        data = tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError) as error:
        raise ConfigFileError(f"cannot read the config file {str(path)!r}: {error}") from None
    values: dict[str, Any] = {"config_file": path}
    rates: dict[str, ServiceRate] = {}
    for service, prefix in ((PARSER, "parser"), (EMBEDDINGS, "embeddings")):
        table = data.get(service, {})
        if "url" in table:
            values[f"{prefix}_url"] = str(table["url"])
        if "key" in table:
            values[f"{prefix}_key"] = str(table["key"])
        requests, tokens = table.get("requests_per_minute"), table.get("tokens_per_minute")
        if requests is not None or tokens is not None:
            try:
                rates[service] = ServiceRate(requests=requests, tokens=tokens, window_seconds=60)
            except ValueError as error:
                raise ConfigFileError(f"{path}: [{service}] {error}") from None
    values["rates"] = rates
    budget = data.get("budget", {})
    if "max_cost_usd" in budget:
        values["max_cost_usd"] = _usd(budget["max_cost_usd"], f"{path}: budget.max_cost_usd")
    if "prices" in data:
        try:
            values["prices"] = PriceTable.from_mapping(data["prices"])
        except ValueError as error:
            raise ConfigFileError(f"{path}: {error}") from None
    return values


__all__ = [
    "DEFAULT_EMBEDDINGS_URL",
    "DEFAULT_PARSER_URL",
    "ConfigFileError",
    "Settings",
    "read_config",
]
