"""A spec is data, validated with errors that name the key and the fix."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipeline_models.core import Holder, Spec, SpecError, States
from pipeline_models.core.spec import Finished, HolderModel, Meaning

GUIDE_TOML = """
table = "guide.jobs"
finished = "kept"

[states]
claimable = ["queued"]
in_progress = ["running"]
succeeded = ["done"]
failed = ["failed"]

[holder]
model = "heartbeat"
column = "started_at"
timeout_seconds = 30

[attempts]
column = "attempts"
limit = 3
"""


def test_a_spec_reads_alike_from_its_own_file_and_from_a_pyproject_table(tmp_path: Path) -> None:
    own = tmp_path / "spec.toml"
    own.write_text(GUIDE_TOML)
    pyproject = tmp_path / "pyproject.toml"
    body = GUIDE_TOML.replace("[states]", "[tool.pipeline-models.states]")
    body = body.replace("[holder]", "[tool.pipeline-models.holder]")
    body = body.replace("[attempts]", "[tool.pipeline-models.attempts]")
    pyproject.write_text('[project]\nname = "team"\n\n[tool.pipeline-models]' + body)
    assert Spec.from_toml(own) == Spec.from_toml(pyproject)
    spec = Spec.from_toml(own)
    assert spec.holder.model is HolderModel.HEARTBEAT
    assert spec.meaning("done") is Meaning.SUCCEEDED
    assert spec.finished is Finished.KEPT
    assert spec.delivery_limit == 4


@pytest.mark.parametrize(
    ("change", "says"),
    [
        ({"colour": "blue"}, "unknown key(s) colour; the keys are attempts, due"),
        ({"finished": "shredded"}, "finished 'shredded' is not one of kept, deleted, moved"),
        ({"finished": "moved"}, "finished = 'moved' and finished_table go together"),
        ({"table": "guide.jobs; drop"}, "is not a plain SQL identifier"),
        ({"extra_moves": [["done", "gone"]]}, "'gone' is not a declared state"),
        ({"stage": "stage"}, "stage and stages go together"),
        (
            {"holder": {"model": "lease", "column": "until", "ends": "never"}},
            "holder.ends must be 'expiry' or 'takeover'",
        ),
        (
            {"attempts": {"column": "attempts", "limit": 3, "resets_on": "stage"}},
            "attempts.resets_on must be a list of columns",
        ),
        (
            {"attempts": {"column": "attempts", "limit": 3, "resets_on": ["cursor; drop"]}},
            "'cursor; drop' is not a plain SQL identifier",
        ),
        (
            {"attempts": {"column": "attempts", "limit": 3, "backs_off": True}},
            "attempts.backs_off needs the due column",
        ),
    ],
)
def test_a_malformed_spec_is_refused_naming_the_key(change: dict[str, object], says: str) -> None:
    values: dict[str, object] = {
        "table": "guide.jobs",
        "states": {"claimable": ["queued"], "in_progress": ["running"], "succeeded": ["done"]},
    }
    with pytest.raises(SpecError) as raised:
        Spec.from_mapping({**values, **change})
    assert says in str(raised.value)


def test_holder_models_ask_for_what_they_need() -> None:
    with pytest.raises(SpecError, match=r"'lease' needs holder\.column"):
        Holder("lease")
    with pytest.raises(SpecError, match=r"needs holder\.timeout_seconds > 0"):
        Holder("heartbeat", column="beat")
    with pytest.raises(SpecError, match=r"holder\.model 'token' is not one of lease, heartbeat"):
        Holder("token")


def test_a_heartbeat_on_the_workers_row_names_its_table_and_column() -> None:
    holder = Holder(
        "heartbeat", column="worker_id", timeout_seconds=30, beats_in="q.workers", beat="beat"
    )
    assert holder.time_column is None  # worker_id is a reference, not a time
    assert Holder("heartbeat", column="beat", timeout_seconds=30).time_column == "beat"
    with pytest.raises(SpecError, match=r"beats_in and holder\.beat go together"):
        Holder("heartbeat", column="worker_id", timeout_seconds=30, beats_in="q.workers")
    with pytest.raises(SpecError, match=r"for model 'heartbeat' only"):
        Holder("lease", column="until", beats_in="q.workers", beat="beat")
    with pytest.raises(SpecError, match="not a plain SQL identifier"):
        Holder("heartbeat", column="w", timeout_seconds=30, beats_in="q.w; drop", beat="b")


def test_every_state_value_has_one_meaning() -> None:
    with pytest.raises(SpecError, match="'queued' has two meanings"):
        Spec("jobs", States(claimable=["queued"], in_progress=["queued"]))
    with pytest.raises(SpecError, match="write \\['queued'\\]"):
        States(claimable="queued", in_progress=["running"])  # type: ignore[arg-type]


def test_a_missing_spec_file_or_table_is_named(tmp_path: Path) -> None:
    with pytest.raises(SpecError, match="no spec file at"):
        Spec.from_toml(tmp_path / "nope.toml")
    (tmp_path / "pyproject.toml").write_text('[project]\nname = "x"\n')
    with pytest.raises(SpecError, match=r"has no \[tool\.pipeline-models\] table"):
        Spec.from_toml(tmp_path / "pyproject.toml")
