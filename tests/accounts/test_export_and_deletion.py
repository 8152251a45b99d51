"""A user's data as a whole, over two real `agentctl serve` replicas: exported as one document with no secret in it,
deleted with the password again so that nothing of it is left in any table or in Mem0's history file, and every token
and key of it refused at once on every worker and replica."""

from __future__ import annotations

import hashlib
import threading
import time
import uuid

import httpx

from tests.accounts.conftest import (
    Replicas,
    UserWithData,
    history_rows_mentioning,
    openai_status,
    refused_everywhere,
    rows_mentioning,
    user_with_data,
    wait_until,
)


def _delete(replicas: Replicas, token: str, password: str) -> httpx.Response:
    return replicas.first.request("DELETE", "/auth/me", token=token, json={"password": password})


def test_the_export_holds_every_part_and_no_secret(replicas: Replicas) -> None:
    user = user_with_data(replicas)
    response = replicas.second.request("GET", "/auth/me/export", token=user.user_token)
    assert response.status_code == 200, response.text
    document = response.json()

    assert document["account"] == {
        "id": user.user_id,
        "email": user.email,
        "username": None,
        "created_at": document["account"]["created_at"],
    }
    sessions = {session["session_id"]: session for session in document["sessions"]}
    assert set(sessions) == set(user.session_ids)
    for conversation, fact in zip(user.conversations, user.facts[:2], strict=True):
        exported = sessions[conversation.session_id]["messages"]
        assert exported == conversation.history()  # as GET /chatbot/messages shows them
        assert [message["role"] for message in exported] == ["user", "assistant"]
        assert exported[0]["content"] == fact

    turns = document["turns"]
    assert {turn["surface"] for turn in turns} == {"chat", "chat.completions"}
    assert {turn["session_id"] for turn in turns} == {*user.session_ids, None}
    assert [(turn["status"], bool(turn["output"]), turn["model"]) for turn in turns] == [("done", True, "default")] * 3
    assert all(turn["input_tokens"] > 0 and turn["output_tokens"] > 0 for turn in turns)
    assert {"id", "input", "cost_usd", "tool_calls", "created_at", "finished_at", "cached_tokens"} <= set(turns[0])

    (score,) = document["scores"]  # the operator's evaluation of the first session, one metric
    judged = next(turn for turn in turns if turn["session_id"] == user.session_ids[0])
    assert (score["turn_id"], score["metric"], score["score"]) == (judged["id"], "relevancy", 0.8)
    assert score["reasoning"] == f"fine {user.marker}"

    assert sorted(memory["memory"] for memory in document["memories"]) == sorted(user.facts)
    assert {memory["session_id"] for memory in document["memories"]} == {*user.session_ids, None}
    (key,) = document["api_keys"]
    assert (key["id"], key["scopes"], key["last_used_at"] is not None) == (user.key_id, ["chat", "memories"], True)
    assert user.key.startswith(key["prefix"])
    (day,) = document["usage"]
    assert day["turns"] == len(turns)
    assert day["input_tokens"] == sum(turn["input_tokens"] for turn in turns)

    # Nothing secret: not the password nor its hash, not the key nor its hash, no token.
    text = response.text
    (account,) = replicas.rows("SELECT password_hash FROM users WHERE id = $1", uuid.UUID(user.user_id))
    (stored_key,) = replicas.rows("SELECT secret_hash FROM api_keys WHERE id = $1", uuid.UUID(user.key_id))
    assert stored_key["secret_hash"] == hashlib.sha256(user.key.encode()).hexdigest()
    for secret in (
        account["password_hash"],
        account["password_hash"].rsplit("$", 1)[-1],  # the hash proper, without argon2's parameters
        replicas.first.password,
        stored_key["secret_hash"],
        user.key,
        user.key[len(key["prefix"]) :],
        user.user_token,
        user.refresh_token,
        *(conversation.token for conversation in user.conversations),
    ):
        assert secret not in text
    assert not {name for name in _keys(document) if any(word in name for word in ("password", "secret", "hash"))}

    # The account's own routes take a user token only: an API key can neither export nor delete it.
    assert replicas.first.request("GET", "/auth/me/export", token=user.key).status_code == 403
    assert replicas.first.request("GET", "/auth/me/export", token=user.conversations[0].token).status_code == 401
    assert _delete(replicas, user.key, replicas.first.password).status_code == 403


def _keys(value: object) -> set[str]:
    """Every key of every object in a JSON document."""
    if isinstance(value, dict):
        return set(value).union(*(_keys(item) for item in value.values()))
    if isinstance(value, list):
        return set().union(*(_keys(item) for item in value))
    return set()


def _everything_of(replicas: Replicas, user: UserWithData) -> dict[str, int]:
    owner = uuid.UUID(user.user_id)
    (row,) = replicas.rows(
        "SELECT (SELECT count(*) FROM users WHERE id = $1) AS users, "
        "(SELECT count(*) FROM chat_sessions WHERE owner = $1) AS sessions, "
        "(SELECT count(*) FROM chat_turns WHERE owner = $1) AS turns, "
        "(SELECT count(*) FROM api_keys WHERE owner = $1) AS keys, "
        "(SELECT count(*) FROM memories WHERE payload->>'user_id' = $2) AS memories, "
        "(SELECT count(*) FROM checkpoints WHERE thread_id = ANY($3::text[])) AS checkpoints",
        owner,
        user.user_id,
        user.session_ids,
    )
    return dict(row)


def test_a_wrong_password_deletes_nothing(replicas: Replicas) -> None:
    user = user_with_data(replicas)
    before = _everything_of(replicas, user)
    assert before["memories"] == 3
    assert before["checkpoints"] > 0

    response = _delete(replicas, user.user_token, "not the password")
    assert response.status_code == 401
    assert response.json()["type"].endswith(":wrong-password")
    assert _everything_of(replicas, user) == before
    assert replicas.second.request("GET", "/auth/me", token=user.user_token).status_code == 200
    assert set(openai_status(replicas, user.key)) == {200}
    # A body that is not the confirmation is refused like any other.
    assert replicas.first.request("DELETE", "/auth/me", token=user.user_token).status_code == 422
    extra = {"password": replicas.first.password, "force": True}
    assert replicas.first.request("DELETE", "/auth/me", token=user.user_token, json=extra).status_code == 422
    assert _everything_of(replicas, user) == before


def test_deletion_leaves_nothing_anywhere_and_every_credential_fails_at_once(replicas: Replicas) -> None:
    """The user is deleted while one of their turns is running: the run is stopped and writes nothing afterwards.
    Then every table of the database is scanned, row by row, for the user's id, email, words and sessions, and Mem0's
    history file for the user."""
    user = user_with_data(replicas)
    session_token = user.conversations[1].token
    assert (
        replicas.first.request("POST", "/auth/refresh", json={"refresh_token": user.refresh_token}).status_code == 200
    )
    refreshed = replicas.first.login(user.email)  # a second sign-in: a second family to revoke

    # The scan finds what there is: the user in their tables, their words in turns, memories and the judge's reasoning,
    # a session in its checkpoints (binary: found by thread id) and in the evaluation run that judged it, the user in
    # Mem0's history file.
    assert {"users", "chat_sessions", "chat_turns", "api_keys", "refresh_tokens", "memories", "user_usage"} <= set(
        rows_mentioning(replicas, user.user_id)
    )
    assert {"chat_turns", "memories", "eval_scores"} <= set(rows_mentioning(replicas, user.marker))
    assert {"checkpoints", "checkpoint_blobs", "checkpoint_writes", "eval_runs"} <= set(
        rows_mentioning(replicas, user.session_ids[0])
    )
    assert history_rows_mentioning(replicas.history_file, user.user_id, user.marker) > 0

    replicas.simulator.configure({"ttft_ms": 4000})
    streamed: list[str] = []

    def talk() -> None:
        with user.conversations[1].open_stream(f"Tell me about {user.marker} again.", timeout=30) as response:
            streamed.extend(response.iter_lines())

    talking = threading.Thread(target=talk)
    talking.start()
    running = "SELECT count(*) AS n FROM chat_turns WHERE owner = $1 AND status = 'running'"
    wait_until(lambda: replicas.rows(running, uuid.UUID(user.user_id))[0]["n"] == 1)

    started = time.monotonic()
    response = _delete(replicas, user.user_token, replicas.first.password)
    assert response.status_code == 204, response.text
    assert time.monotonic() - started < 3.5  # the running turn was stopped, not waited for
    talking.join(10)
    assert not talking.is_alive()
    replicas.simulator.configure({})

    # At once, everywhere: the access tokens of both sign-ins, the refresh token, a session token, the API key.
    for token in (user.user_token, refreshed["access_token"]):
        assert set(refused_everywhere(replicas, "GET", "/auth/me", token)) == {401}
    assert set(refused_everywhere(replicas, "GET", "/chatbot/messages", session_token)) == {401}
    assert set(openai_status(replicas, user.key)) == {401}
    for api in (replicas.first, replicas.second):
        again = api.request("POST", "/auth/refresh", json={"refresh_token": refreshed["refresh_token"]})
        assert again.status_code == 401
        signed_in = api.request("POST", "/auth/login", json={"email": user.email, "password": api.password})
        assert signed_in.status_code == 401

    time.sleep(1.5)  # anything late (a memory writer, a stopped run's events) would have written by now
    assert rows_mentioning(replicas, user.user_id) == {}
    assert rows_mentioning(replicas, user.email) == {}
    assert rows_mentioning(replicas, user.marker) == {}
    assert rows_mentioning(replicas, user.key_id) == {"revoked_tokens": 1}  # its minted tokens' revocation
    for session_id in user.session_ids:
        # The session's revocation is its id alone (kind 'session'): nothing says whose it was.
        assert rows_mentioning(replicas, session_id) == {"revoked_tokens": 1}
        (revocation,) = replicas.rows("SELECT kind FROM revoked_tokens WHERE id = $1", uuid.UUID(session_id))
        assert revocation["kind"] == "session"
    assert history_rows_mentioning(replicas.history_file, user.user_id, user.email, user.marker) == 0
