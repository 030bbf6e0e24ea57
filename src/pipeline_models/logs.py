"""Structured logs: one line per event, with its action and correlation id.

The worker logs through the standard library with ``extra={"action": ..., ...}``;
:class:`JsonFormatter` turns each record into one JSON object per line for machines, and
the text format keeps the action and ids readable for people.
"""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime

# Attributes every LogRecord has; anything else came from ``extra``.
_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime"}


def _extras(record: logging.LogRecord) -> dict[str, object]:
    return {k: v for k, v in vars(record).items() if k not in _STANDARD and v is not None}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
            **_extras(record),
        }
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


class TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        extras = " ".join(f"{k}={v}" for k, v in sorted(_extras(record).items()))
        line = f"{record.levelname.lower():7} {record.name}: {record.getMessage()}"
        return f"{line} [{extras}]" if extras else line


def configure_logging(*, level: str = "warning", json_lines: bool = False) -> None:
    """Send the library's logs to stderr, as text or JSON lines."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if json_lines else TextFormatter())
    root = logging.getLogger("pipeline_models")
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    root.propagate = False


__all__ = ["JsonFormatter", "TextFormatter", "configure_logging"]
