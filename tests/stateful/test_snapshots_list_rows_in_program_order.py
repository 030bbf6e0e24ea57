"""The checker reads rows in an order of the program's own, never in the heap's.

A sequential scan returns rows in the order of the pages that hold them (an UPDATE's
new version usually after rows inserted later): without ORDER BY, the snapshot's jobs came
in whatever order the server's pages held them, and what the checker did in that order (the
drain's operator retries) depended on the server and its history, not on the program.
"""

from __future__ import annotations

import asyncio
import uuid

from pipeline_models.database import Database
from pipeline_models.documents import markdown_document
from pipeline_models.drivers import CHECK_CONFIG, ReferenceDriver
from pipeline_models.snapshot import take_snapshot


async def _jobs_after_the_first_is_updated(database: Database) -> tuple[list[uuid.UUID], ...]:
    driver = ReferenceDriver(database, config=CHECK_CONFIG)
    await driver.setup()
    try:
        uploaded = []
        for index in range(3):
            outcome = await driver.upload(
                uuid.UUID(int=1), markdown_document(f"# Order {index}\n\nSome text.")
            )
            assert outcome.job_id is not None
            uploaded.append(outcome.job_id)
        # Rewrite the heap in the reverse of the upload order. An UPDATE's new version
        # usually lands after rows inserted later, but on pages that earlier tests left
        # with free slots it takes the lowest one, before them (seen in CI even after 20
        # updates); CLUSTER on a descending index orders the heap whatever the history.
        await driver.monitor.execute(
            "CREATE INDEX pm_reverse_upload_order ON upload_jobs (job_seq DESC)"
        )
        try:
            await driver.monitor.execute("CLUSTER upload_jobs USING pm_reverse_upload_order")
        finally:
            await driver.monitor.execute("DROP INDEX pm_reverse_upload_order")
        heap = [
            row["job_id"] for row in await driver.monitor.fetch("SELECT job_id FROM upload_jobs")
        ]
        snapshot = await take_snapshot(driver.monitor)
        observed = (await driver.observe()).snapshot
        return uploaded, heap, list(snapshot.jobs), list(observed.jobs)
    finally:
        await driver.teardown()


def test_the_snapshot_lists_jobs_in_upload_order_whatever_the_heap_order(
    pipeline_database: Database,
) -> None:
    uploaded, heap, snapshot, observed = asyncio.run(
        _jobs_after_the_first_is_updated(pipeline_database)
    )
    assert heap == uploaded[::-1], "CLUSTER did not reorder the heap: the test shows nothing"
    assert snapshot == uploaded
    assert observed == uploaded
