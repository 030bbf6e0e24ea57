"""The worked example of docs/drivers.md runs as written."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from hypothesis.stateful import run_state_machine_as_test

from pipeline_models.profiles import machine_settings

GUIDE = Path(__file__).parents[2] / "docs" / "drivers.md"


def _example() -> dict[str, Any]:
    code = re.search(r"```python\n(.*?)```", GUIDE.read_text(), re.S)
    assert code is not None, "the guide lost its example"
    namespace: dict[str, Any] = {"__name__": "guide_example"}
    exec(compile(code.group(1), str(GUIDE), "exec"), namespace)
    return namespace


def test_the_guides_driver_checks_a_modified_worker_and_it_passes() -> None:
    example = _example()
    run_state_machine_as_test(
        example["OurPipeline"], settings=machine_settings("ci", max_examples=10)
    )
