"""Hypothesis settings profiles for the machines: ci, dev, fuzz and debug.

=======  ==================================================================
ci       fast and repeatable: derandomized, 25 examples of up to 50 rules
dev      the default of ``pipeline-models check``: 60 examples of up to 60 rules
fuzz     long sessions: 10,000 examples of up to 100 rules, random seeds
debug    a few examples, every rule printed as it runs
=======  ==================================================================

The pytest plugin registers them and selects one with ``--pipeline-profile`` (or the
``pipeline_profile`` ini key, or ``PIPELINE_MODELS_PROFILE``); machines take their
settings from :func:`machine_settings`.

>>> machine_settings("ci").derandomize
True
"""

from __future__ import annotations

import os
from typing import Any

from hypothesis import HealthCheck, Phase, Verbosity, settings
from hypothesis.database import ExampleDatabase

DEFAULT_PROFILE = "ci"
ENVIRONMENT_VARIABLE = "PIPELINE_MODELS_PROFILE"

_SLOW_IS_FINE = [HealthCheck.too_slow, HealthCheck.filter_too_much, HealthCheck.data_too_large]
# Hypothesis's explain phase replays the shrunk failure many more times to tell which
# lines only failing runs reach; with a database under every example that doubles the
# time to a report. The debug profile keeps it.
_NO_EXPLAIN = tuple(phase for phase in Phase if phase is not Phase.explain)

PROFILES: dict[str, dict[str, Any]] = {
    "ci": {
        "max_examples": 25,
        "stateful_step_count": 50,
        "derandomize": True,
        "phases": _NO_EXPLAIN,
        "deadline": None,
        "print_blob": True,
        "suppress_health_check": _SLOW_IS_FINE,
    },
    "dev": {
        "derandomize": False,
        "max_examples": 60,
        "stateful_step_count": 60,
        "phases": _NO_EXPLAIN,
        "deadline": None,
        "print_blob": True,
        "suppress_health_check": _SLOW_IS_FINE,
    },
    "fuzz": {
        "derandomize": False,
        "max_examples": 10_000,
        "stateful_step_count": 100,
        "deadline": None,
        "print_blob": True,
        "suppress_health_check": _SLOW_IS_FINE,
    },
    "debug": {
        "derandomize": False,
        "max_examples": 5,
        "stateful_step_count": 30,
        "deadline": None,
        "verbosity": Verbosity.verbose,
        "print_blob": True,
        "suppress_health_check": _SLOW_IS_FINE,
    },
}

_active: str | None = None
_example_database: ExampleDatabase | None = None


def register_profiles() -> None:
    """Register every profile with Hypothesis (under its plain name)."""
    for name, values in PROFILES.items():
        settings.register_profile(name, **values)


def select_profile(name: str | None) -> str:
    """Choose the profile machines use in this process; returns the name chosen."""
    global _active
    chosen = name or os.environ.get(ENVIRONMENT_VARIABLE) or DEFAULT_PROFILE
    if chosen not in PROFILES:
        raise ValueError(f"no profile {chosen!r}; the profiles are: {', '.join(PROFILES)}")
    _active = chosen
    return chosen


def active_profile() -> str:
    return _active or select_profile(None)


def use_example_database(database: ExampleDatabase | None) -> None:
    """Make every machine in this process read and write ``database`` (None: the default).

    Hypothesis refuses ``derandomize=True`` with a database (``derandomize=True implies
    database=None``), so with one a derandomized profile (ci) draws random examples after
    replaying the database's: a replaying run is a search, not a repeat. Its programs may
    be as long as the longest profile's (fuzz), so that every saved example replays whole.
    """
    global _example_database
    _example_database = database


def machine_settings(name: str | None = None, **overrides: Any) -> settings:
    """Hypothesis settings for a machine: the named (or active) profile, plus overrides."""
    chosen = name or active_profile()
    if chosen not in PROFILES:
        raise ValueError(f"no profile {chosen!r}; the profiles are: {', '.join(PROFILES)}")
    values = {**PROFILES[chosen], **overrides}
    if _example_database is not None and "database" not in overrides:
        values.update(database=_example_database, derandomize=False)
        # A saved example replays only as far as the step limit lets it: a failure a
        # fuzz session found at rule 80 must not be cut at the ci profile's 50.
        longest = max(profile["stateful_step_count"] for profile in PROFILES.values())
        values["stateful_step_count"] = max(int(values.get("stateful_step_count", 0)), longest)
    return settings(**values)


__all__ = [
    "DEFAULT_PROFILE",
    "ENVIRONMENT_VARIABLE",
    "PROFILES",
    "active_profile",
    "machine_settings",
    "register_profiles",
    "select_profile",
    "use_example_database",
]
