"""No user can read or retry another user's job, whatever the users and documents."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path

import httpx
from fastapi import FastAPI
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pipeline_models.database import Database
from pipeline_models.documents import Document
from pipeline_models.pipeline.api import ApiSettings, create_api
from pipeline_models.pipeline.auth import TokenIssuer
from pipeline_models.pipeline.reference import ReferencePipeline
from pipeline_models.users import User
from strategies import distinct_users, documents
from tests.conftest import TEST_CONFIG

SECRET = "token-secret-for-the-isolation-tests-0123456789"

uploads = st.lists(
    st.tuples(st.integers(0, 3), documents(kinds=["markdown", "text"], max_size=300)),
    min_size=1,
    max_size=6,
)


async def check_isolation(
    database: Database, blobs: Path, users: list[User], plan: list[tuple[int, Document]]
) -> None:
    connection = await database.connect()
    await database.reset(connection)
    await connection.close()
    pipeline = ReferencePipeline.with_fakes(database, storage_root=blobs, config=TEST_CONFIG)
    app = create_api(pipeline, ApiSettings(token_secret=SECRET, webhook_secrets=("s",)))
    tokens = TokenIssuer(SECRET)

    def auth(user: User) -> dict[str, str]:
        return {"Authorization": f"Bearer {tokens.issue(user.user_id)}"}

    try:
        await _check(app, tokens, users, plan)
    finally:
        await app.state.runtime.close()
        await pipeline.aclose()


async def _check(
    app: FastAPI, tokens: TokenIssuer, users: list[User], plan: list[tuple[int, Document]]
) -> None:
    def auth(user: User) -> dict[str, str]:
        return {"Authorization": f"Bearer {tokens.issue(user.user_id)}"}

    owners: dict[str, uuid.UUID] = {}
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://a") as client:
        for index, document in plan:
            owner = users[index % len(users)]
            response = await client.post(
                "/upload",
                headers=auth(owner),
                files={"file": (document.filename, document.data, document.content_type)},
            )
            if response.status_code in (200, 201):
                owners[response.json()["job_id"]] = owner.user_id
        for job_id, owner_id in owners.items():
            nobody = str(uuid.uuid4())
            for user in users:
                seen = await client.get(f"/jobs/{job_id}", headers=auth(user))
                retried = await client.post(f"/jobs/{job_id}/retry", headers=auth(user))
                if user.user_id == owner_id:
                    assert seen.status_code == 200
                    assert retried.status_code == 409  # live, not dead-lettered
                    continue
                # Someone else's job answers exactly as a job that does not exist.
                absent = await client.get(f"/jobs/{nobody}", headers=auth(user))
                absent_retry = await client.post(f"/jobs/{nobody}/retry", headers=auth(user))
                for answer, missing in ((seen, absent), (retried, absent_retry)):
                    assert answer.status_code == missing.status_code == 404
                    assert answer.text.replace(job_id, "?") == missing.text.replace(nobody, "?")


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(users=distinct_users(min_size=2, max_size=4), plan=uploads)
def test_no_user_can_read_or_retry_another_users_job(
    pipeline_database: Database, tmp_path: Path, users: list[User], plan: list[tuple[int, Document]]
) -> None:
    asyncio.run(check_isolation(pipeline_database, tmp_path / "blobs", users, plan))
