"""The machine's API rules: each misuse is refused with its status, an owner reads its own
job, and the dashboard's endpoints answer (issue 16: branches no rule used to reach).

The rules assert the statuses themselves; these programs run each once and check that
the request went out (its event was counted), so a rule that quietly sent nothing fails.
"""

from __future__ import annotations

import pytest

from pipeline_models.documents import markdown_document
from pipeline_models.machines import ALICE, API_MISUSES, STATISTICS, PipelineMachine


@pytest.mark.parametrize("misuse", sorted(API_MISUSES))
def test_each_misuse_is_refused_with_its_status(misuse: str) -> None:
    machine = PipelineMachine()
    try:
        machine.upload_document(user=ALICE, document=markdown_document("# Mine\n\n" + "w " * 40))
        machine.database_agrees_with_the_model()
        before = STATISTICS.events.copy()
        machine.misuse_the_api(misuse=misuse, pick=0)  # asserts the expected status
        machine.database_agrees_with_the_model()
        assert (STATISTICS.events - before)[f"api misuse {misuse}"] == 1
    finally:
        machine.teardown()


def test_an_owner_reads_its_job_and_the_dashboard_answers() -> None:
    machine = PipelineMachine()
    try:
        machine.upload_document(user=ALICE, document=markdown_document("# Mine\n\n" + "w " * 40))
        machine.look_at_a_job_as_its_owner(pick=0)  # asserts 200
        before = STATISTICS.events.copy()
        machine.look_at_the_health_and_the_metrics(path="/health")
        machine.look_at_the_health_and_the_metrics(path="/metrics")
        seen = STATISTICS.events - before
        assert seen["/health 200"] == 1
        assert seen["/metrics 200"] == 1
        machine.database_agrees_with_the_model()
    finally:
        machine.teardown()
