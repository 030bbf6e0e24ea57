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
=========================  =================================================

Secrets never appear in a repr.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from pipeline_models.pipeline.reference import FAKE_API_KEY
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

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
        """Settings from ``environ`` (default ``os.environ``); ``overrides`` win when not None."""
        env = os.environ if environ is None else environ
        values: dict[str, Any] = {}
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
        return env

    def with_(self, **changes: Any) -> Settings:
        return replace(self, **changes)


__all__ = [
    "DEFAULT_EMBEDDINGS_URL",
    "DEFAULT_PARSER_URL",
    "Settings",
]
