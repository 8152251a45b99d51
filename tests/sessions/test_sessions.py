"""Chat sessions of a signed-in user: created, listed, renamed, given fresh tokens, deleted; someone else's session
does not exist. Through the app in process, on the test PostgreSQL."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import pytest
from litestar.testing import AsyncTestClient

from agentctl.config import Settings
from server.app import create_app
from tests.support import NO_MODEL_SETTINGS, ApiClient, unique_email


@pytest.fixture
async def client(migrated_database_url: str) -> AsyncIterator[AsyncTestClient]:
    settings = Settings(
        env="test",
        database={"url": migrated_database_url},
        llm=NO_MODEL_SETTINGS,
        memory={"enabled": False},
        ratelimit={"enabled": False},
    )
    async with AsyncTestClient(create_app(settings)) as test_client:
        yield test_client


async def new_user(client: AsyncTestClient) -> str:
    """A fresh account's access token."""
    registered = await client.post(
        "/api/v1/auth/register", json={"email": unique_email(), "password": ApiClient.password}
    )
    assert registered.status_code == 201, registered.text
    return registered.json()["token"]["access_token"]


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def test_another_users_session_is_a_404(client: AsyncTestClient) -> None:
    owner, intruder = await new_user(client), await new_user(client)
    session_id = (await client.post("/api/v1/auth/session", headers=bearer(owner))).json()["session_id"]
    attempts = [
        await client.patch(f"/api/v1/auth/session/{session_id}/name", headers=bearer(intruder), json={"name": "x"}),
        await client.delete(f"/api/v1/auth/session/{session_id}", headers=bearer(intruder)),
        await client.post(f"/api/v1/auth/session/{session_id}/token", headers=bearer(intruder)),
    ]
    for response in attempts:
        assert response.status_code == 404
        assert response.json()["detail"] == "no such session"
    missing = await client.delete(f"/api/v1/auth/session/{uuid.uuid4()}", headers=bearer(intruder))
    assert missing.json()["detail"] == "no such session"  # the same answer as for someone else's session
    owned = (await client.get("/api/v1/auth/sessions", headers=bearer(owner))).json()
    assert [item["session_id"] for item in owned["items"]] == [session_id]
    assert owned["items"][0]["name"] == ""


async def test_sessions_are_listed_newest_activity_first_and_paginated(client: AsyncTestClient) -> None:
    token = await new_user(client)
    ids = [(await client.post("/api/v1/auth/session", headers=bearer(token))).json()["session_id"] for _ in range(3)]
    renamed = await client.patch(
        f"/api/v1/auth/session/{ids[0]}/name", headers=bearer(token), json={"name": " Trip\u0007 plans "}
    )
    assert renamed.json()["name"] == "Trip plans"
    page = (await client.get("/api/v1/auth/sessions", headers=bearer(token), params={"limit": 2})).json()
    assert page["total"] == 3
    assert [item["session_id"] for item in page["items"]] == [ids[0], ids[2]]
    rest = (await client.get("/api/v1/auth/sessions", headers=bearer(token), params={"limit": 2, "offset": 2})).json()
    assert [item["session_id"] for item in rest["items"]] == [ids[1]]
    fresh = await client.post(f"/api/v1/auth/session/{ids[1]}/token", headers=bearer(token))
    assert fresh.status_code == 200
    assert fresh.json()["session_id"] == ids[1]
    assert (await client.get("/api/v1/auth/sessions", headers=bearer(token), params={"limit": 0})).status_code == 422


async def test_a_deleted_session_takes_its_tokens_and_conversation_with_it(client: AsyncTestClient) -> None:
    token = await new_user(client)
    created = (await client.post("/api/v1/auth/session", headers=bearer(token))).json()
    session_token = created["token"]["access_token"]
    assert (await client.get("/api/v1/chatbot/messages", headers=bearer(session_token))).status_code == 200
    assert (
        await client.delete(f"/api/v1/auth/session/{created['session_id']}", headers=bearer(token))
    ).status_code == 204
    after = await client.get("/api/v1/chatbot/messages", headers=bearer(session_token))
    assert after.status_code == 401
    assert "revoked" in after.json()["detail"]
    assert (await client.get("/api/v1/auth/sessions", headers=bearer(token))).json()["total"] == 0
