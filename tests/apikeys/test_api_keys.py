"""API keys over two real `agentctl serve` replicas sharing one PostgreSQL: created once, stored as a hash, acting
for their user within their scopes, revoked everywhere at once."""

from __future__ import annotations

import datetime
import hashlib
import time
import uuid

import pytest

from tests.apikeys.conftest import KeyHolder, new_key
from tests.support import ApiClient, fetch_rows

pytestmark = pytest.mark.usefixtures("simulator")


def test_a_key_is_shown_once_stored_as_a_hash_and_listed_by_prefix(
    replicas: tuple[ApiClient, ApiClient], migrated_database_url: str
) -> None:
    api, _other = replicas
    holder = new_key(api, scopes=["chat", "memories"])
    assert holder.key.startswith("agentctl_")
    assert len(holder.key) >= len("agentctl_") + 43

    listed = api.request("GET", "/auth/api-keys", token=holder.user_token).json()["items"]
    assert [item["id"] for item in listed] == [holder.key_id]
    item = listed[0]
    assert "key" not in item
    assert holder.key.startswith(item["prefix"])
    assert len(item["prefix"]) < 20
    assert item["scopes"] == ["chat", "memories"]
    assert item["expires_at"] is None
    assert item["last_used_at"] is None

    (row,) = fetch_rows(migrated_database_url, "SELECT * FROM api_keys WHERE id = $1", uuid.UUID(holder.key_id))
    assert row["secret_hash"] == hashlib.sha256(holder.key.encode()).hexdigest()
    assert holder.key not in " ".join(str(value) for value in row.values())


def test_a_key_acts_for_its_user_on_any_replica_and_dies_everywhere_at_once(
    replicas: tuple[ApiClient, ApiClient],
) -> None:
    first, second = replicas
    holder = new_key(first)
    on_second = KeyHolder(second, holder.user_token, holder.key, holder.key_id)

    assert on_second.openai("GET", "/models").status_code == 200
    listed = first.request("GET", "/auth/api-keys", token=holder.user_token).json()["items"]
    assert listed[0]["last_used_at"] is not None

    # Chat in one of the user's sessions, named by header, and in a new one when none is named.
    session = first.request("POST", "/auth/session", token=holder.user_token).json()
    answered = on_second.with_key(
        "POST",
        "/chatbot/chat",
        headers={"X-Agentctl-Session": session["session_id"]},
        json={"messages": [{"role": "user", "content": "hello from a script"}]},
    )
    assert answered.status_code == 200, answered.text
    assert answered.headers["x-agentctl-session"] == session["session_id"]
    history = first.request("GET", "/chatbot/messages", token=session["token"]["access_token"]).json()["messages"]
    assert next(message["content"] for message in history) == "hello from a script"

    started = on_second.with_key("POST", "/chatbot/chat", json={"messages": [{"role": "user", "content": "new"}]})
    assert started.status_code == 200, started.text
    new_session = started.headers["x-agentctl-session"]
    sessions = first.request("GET", "/auth/sessions", token=holder.user_token).json()["items"]
    assert new_session in {item["session_id"] for item in sessions}

    # A session token minted with the key dies with it.
    minted = on_second.with_key("POST", "/auth/session").json()["token"]["access_token"]
    assert second.request("GET", "/chatbot/messages", token=minted).status_code == 200

    assert first.request("DELETE", f"/auth/api-keys/{holder.key_id}", token=holder.user_token).status_code == 204
    refused = on_second.openai("GET", "/models")
    assert refused.status_code == 401
    assert refused.json()["error"]["code"] == "invalid_api_key"
    assert second.request("GET", "/chatbot/messages", token=minted).status_code == 401
    assert holder.with_key("GET", "/auth/sessions").status_code == 401
    assert first.request("GET", "/auth/api-keys", token=holder.user_token).json()["items"] == []


def test_scopes_bound_what_a_key_may_do(replicas: tuple[ApiClient, ApiClient]) -> None:
    api, _ = replicas
    memories_only = new_key(api, scopes=["memories"])
    refused = memories_only.with_key("POST", "/chatbot/chat", json={"messages": [{"role": "user", "content": "hi"}]})
    assert refused.status_code == 403
    assert refused.headers["content-type"].startswith("application/problem+json")
    assert "chat scope" in refused.json()["detail"]
    completion = memories_only.openai(
        "POST", "/chat/completions", json={"model": "Agent", "messages": [{"role": "user", "content": "hi"}]}
    )
    assert completion.status_code == 403
    assert completion.json()["error"]["type"] == "permission_error"
    assert memories_only.with_key("GET", "/memories").status_code == 200

    chat_only = new_key(api, scopes=["chat"])
    assert chat_only.with_key("GET", "/memories").status_code == 403


def test_a_key_cannot_manage_keys_or_the_account(replicas: tuple[ApiClient, ApiClient]) -> None:
    api, _ = replicas
    holder = new_key(api, scopes=["chat", "memories"])
    for method, path in (
        ("POST", "/auth/api-keys"),
        ("GET", "/auth/api-keys"),
        ("DELETE", f"/auth/api-keys/{holder.key_id}"),
        ("GET", "/auth/me"),
        ("POST", "/auth/logout"),
    ):
        response = holder.with_key(method, path, json={"name": "escalate"} if method == "POST" else None)
        assert response.status_code == 403, (method, path, response.text)
        assert "API key" in response.json()["detail"]
    assert len(api.request("GET", "/auth/api-keys", token=holder.user_token).json()["items"]) == 1


def test_an_expired_key_is_refused(replicas: tuple[ApiClient, ApiClient]) -> None:
    api, _ = replicas
    expires_at = datetime.datetime.now(tz=datetime.UTC) + datetime.timedelta(seconds=2)
    holder = new_key(api, expires_in_days=2 / 86400)
    minted = holder.with_key("POST", "/auth/session").json()["token"]
    # A session token minted with it never outlives it.
    assert datetime.datetime.fromisoformat(minted["expires_at"]) <= expires_at
    assert holder.with_key("GET", "/auth/sessions").status_code == 200
    time.sleep(max(0.0, (expires_at - datetime.datetime.now(tz=datetime.UTC)).total_seconds()) + 0.5)
    refused = holder.with_key("GET", "/auth/sessions")
    assert refused.status_code == 401
    assert refused.json()["detail"] == "the API key has expired"
    assert api.request("GET", "/chatbot/messages", token=minted["access_token"]).status_code == 401


def test_deleting_the_user_deletes_their_keys(
    replicas: tuple[ApiClient, ApiClient], migrated_database_url: str
) -> None:
    api, _ = replicas
    holder = new_key(api)
    user_id = api.request("GET", "/auth/me", token=holder.user_token).json()["id"]
    fetch_rows(migrated_database_url, "DELETE FROM users WHERE id = $1", uuid.UUID(user_id))
    assert fetch_rows(migrated_database_url, "SELECT id FROM api_keys WHERE owner = $1", uuid.UUID(user_id)) == []
    assert holder.with_key("GET", "/auth/sessions").status_code == 401


def test_bad_key_requests_are_clear_errors(replicas: tuple[ApiClient, ApiClient]) -> None:
    api, _ = replicas
    _email, token = api.new_user()
    for body, field in (
        ({"name": "   "}, "name"),
        ({"name": "x", "scopes": ["admin"]}, "scopes[0]"),
        ({"name": "x", "scopes": []}, "scopes"),
        ({"name": "\t \n"}, "name"),
        ({"name": "x", "expires_in_days": 0}, "expires_in_days"),
        ({"name": "x", "expires_in_days": -1}, "expires_in_days"),
        ({"name": "x", "expires_in_days": "soon"}, "expires_in_days"),
        ({"name": "x", "expires_at": "2030-01-01T00:00:00Z"}, "expires_at"),
        ({"name": "x", "owner": "someone"}, "owner"),
    ):
        response = api.request("POST", "/auth/api-keys", token=token, json=body)
        assert response.status_code == 422, (body, response.text)
        assert response.json()["errors"][0]["field"] == field, (body, response.json())
        assert response.json()["request_id"] == response.headers["x-request-id"]
    someone_else = new_key(api)
    assert api.request("DELETE", f"/auth/api-keys/{someone_else.key_id}", token=token).status_code == 404
    assert someone_else.with_key("GET", "/auth/sessions").status_code == 200  # untouched
    assert api.request("GET", "/auth/api-keys", token=token).json()["items"] == []
    unknown = api.request("GET", "/auth/sessions", token="agentctl_" + "A" * 43)
    assert unknown.status_code == 401
    assert unknown.headers["content-type"].startswith("application/problem+json")
