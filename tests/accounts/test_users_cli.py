"""`agentctl users` through Typer's CliRunner, on the database and Redis of two real `agentctl serve` replicas: what it
does takes effect on them at once (a disable, a deletion, a budget)."""

from __future__ import annotations

import json
import uuid

import pytest

from tests.accounts.conftest import (
    Replicas,
    history_rows_mentioning,
    openai_status,
    refused_everywhere,
    rows_mentioning,
    user_with_data,
)
from tests.apikeys.conftest import new_key
from tests.chat.conftest import Conversation


def _listed(replicas: Replicas, email: str) -> dict:
    result = replicas.cli("users", "list", "--json")
    assert result.exit_code == 0, result.output
    (found,) = [account for account in json.loads(result.stdout) if account["email"] == email]
    return found


def _shown(replicas: Replicas, account: str) -> dict:
    result = replicas.cli("users", "show", account, "--json")
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def test_list_and_show_tell_each_account(replicas: Replicas) -> None:
    api = replicas.first
    email, token = api.new_user()
    conversation = Conversation(api, user_token=token)
    assert conversation.send("Hello there, how are you?").status_code == 200
    holder = new_key(api, token)

    listed = _listed(replicas, email)
    assert (listed["sessions"], listed["turns"], listed["disabled_at"]) == (1, 1, None)
    assert listed["last_active"] >= listed["created_at"]
    table = replicas.cli("users", "list")
    assert table.exit_code == 0, table.output
    assert email in table.stdout
    assert "last active" in table.stdout

    shown = _shown(replicas, email)
    assert shown["id"] == listed["id"]
    assert shown["budget_overrides"] == dict.fromkeys(
        ("daily_tokens", "monthly_tokens", "daily_cost_usd", "monthly_cost_usd")
    )
    assert shown["usage"]["day"]["turns"] == 1
    assert shown["usage"]["day"]["tokens"] > 0
    assert shown["usage"]["day"]["limit_tokens"] is None
    (key,) = shown["api_keys"]
    assert key["id"] == holder.key_id
    assert holder.key.startswith(key["prefix"])
    assert holder.key not in json.dumps(shown)
    assert _shown(replicas, listed["id"]) == shown  # by id as well as by email
    text = replicas.cli("users", "show", email.upper())  # emails are case-insensitive
    assert text.exit_code == 0, text.output
    assert "today: 1 turns" in text.stdout
    assert "budget overrides: none (defaults)" in text.stdout


@pytest.mark.parametrize("command", ["show", "disable", "enable", "delete", "set-budget"])
def test_an_unknown_account_is_one_line_and_exit_1(replicas: Replicas, command: str) -> None:
    extra = ["--daily-tokens", "5"] if command == "set-budget" else ["--yes"] if command == "delete" else []
    for account in ("nobody@example.com", str(uuid.uuid4())):
        result = replicas.cli("users", command, account, *extra)
        assert result.exit_code == 1, result.output
        assert result.output == f"agentctl: no user with the email or id {account!r}\n"


def test_disable_refuses_every_token_and_key_at_once_and_enable_lets_the_user_sign_in_again(
    replicas: Replicas,
) -> None:
    api = replicas.first
    email = f"off-{uuid.uuid4().hex[:10]}@example.com"
    registered = api.register(email)
    token = registered["token"]["access_token"]
    conversation = Conversation(api, user_token=token)
    holder = new_key(api, token)
    assert set(openai_status(replicas, holder.key)) == {200}

    result = replicas.cli("users", "disable", email)
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith(f"disabled {email} ")

    assert set(refused_everywhere(replicas, "GET", "/auth/me", token)) == {401}
    assert set(refused_everywhere(replicas, "GET", "/chatbot/messages", conversation.token)) == {401}
    assert set(openai_status(replicas, holder.key)) == {401}
    for server in (replicas.first, replicas.second):
        refreshed = server.request("POST", "/auth/refresh", json={"refresh_token": registered["refresh_token"]})
        assert refreshed.status_code == 401
        signed_in = server.request("POST", "/auth/login", json={"email": email, "password": server.password})
        assert signed_in.status_code == 403
        assert signed_in.json()["type"] == "urn:agentctl:problem:account-disabled"
        wrong = server.request("POST", "/auth/login", json={"email": email, "password": "not it at all"})
        assert wrong.status_code == 401  # whoever lacks the password learns nothing of the account
    assert _listed(replicas, email)["disabled_at"] is not None

    result = replicas.cli("users", "enable", email)
    assert result.exit_code == 0, result.output
    fresh = api.login(email)["access_token"]
    assert replicas.second.request("GET", "/auth/me", token=fresh).status_code == 200
    assert set(refused_everywhere(replicas, "GET", "/auth/me", token)) == {401}  # tokens from before stay revoked
    assert set(openai_status(replicas, holder.key)) == {200}  # its keys work again
    assert _listed(replicas, email)["disabled_at"] is None


def test_set_budget_writes_the_overrides_the_servers_enforce(replicas: Replicas) -> None:
    api = replicas.first
    email, token = api.new_user()
    conversation = Conversation(api, user_token=token)

    result = replicas.cli("users", "set-budget", email, "--daily-tokens", "0", "--monthly-cost", "2.5")
    assert result.exit_code == 0, result.output
    assert result.stdout == (
        f"{email}: daily_tokens=0, monthly_tokens=default, daily_cost_usd=default, monthly_cost_usd=2.5\n"
    )
    refused = conversation.send("Hello there, how are you?")
    assert refused.status_code == 429
    assert refused.json()["type"] == "urn:agentctl:problem:budget-exceeded"
    overrides = _shown(replicas, email)["budget_overrides"]
    assert overrides == {"daily_tokens": 0, "monthly_tokens": None, "daily_cost_usd": None, "monthly_cost_usd": 2.5}

    assert replicas.cli("users", "set-budget", email, "--daily-tokens", "none").exit_code == 0
    assert conversation.send("Hello there, how are you?").status_code == 200
    assert _shown(replicas, email)["budget_overrides"]["monthly_cost_usd"] == 2.5
    assert replicas.cli("users", "set-budget", email, "--clear").exit_code == 0
    assert set(_shown(replicas, email)["budget_overrides"].values()) == {None}


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--daily-tokens", "-1"], "--daily-tokens: expected a whole number of tokens (0 or more) or none, not '-1'"),
        (["--monthly-tokens", "1.5"], "--monthly-tokens: expected a whole number of tokens (0 or more) or none"),
        (["--daily-cost", "abc"], "--daily-cost: expected an amount in USD (0 or more) or none, not 'abc'"),
        (["--monthly-cost", "-0.01"], "--monthly-cost: expected an amount in USD (0 or more) or none"),
        (["--daily-cost", "nan"], "--daily-cost: expected an amount in USD (0 or more) or none"),
        (["--daily-tokens", "5", "--clear"], "--clear removes every override: give it alone"),
        ([], "nothing to set: give --daily-tokens, --monthly-tokens, --daily-cost, --monthly-cost or --clear"),
        (["--weekly-tokens", "5"], "No such option: --weekly-tokens"),
    ],
)
def test_bad_budget_values_are_one_line_naming_the_field_and_exit_2(
    replicas: Replicas, args: list[str], message: str
) -> None:
    email, _token = replicas.first.new_user()
    result = replicas.cli("users", "set-budget", email, *args)
    assert result.exit_code == 2, result.output
    assert result.output.startswith(f"agentctl: {message}")
    assert result.output.count("\n") == 1
    assert set(_shown(replicas, email)["budget_overrides"].values()) == {None}  # nothing written


def test_delete_asks_first_then_leaves_nothing_and_every_credential_fails_at_once(replicas: Replicas) -> None:
    user = user_with_data(replicas)

    declined = replicas.cli("users", "delete", user.email, input="n\n")
    assert declined.exit_code == 1
    assert "cannot be undone" in declined.output
    assert declined.output.endswith("agentctl: nothing deleted\n")
    assert replicas.first.request("GET", "/auth/me", token=user.user_token).status_code == 200

    result = replicas.cli("users", "delete", user.user_id, input="y\n")
    assert result.exit_code == 0, result.output
    assert result.output.splitlines()[-1] == (
        f"deleted {user.email} ({user.user_id}): 2 sessions, 3 turns, 3 memories, 1 API keys"
    )
    assert set(refused_everywhere(replicas, "GET", "/auth/me", user.user_token)) == {401}
    assert set(refused_everywhere(replicas, "GET", "/chatbot/messages", user.conversations[0].token)) == {401}
    assert set(openai_status(replicas, user.key)) == {401}
    for needle in (user.user_id, user.email, user.marker):
        assert rows_mentioning(replicas, needle) == {}
    for session_id in user.session_ids:
        assert rows_mentioning(replicas, session_id) == {"revoked_tokens": 1}
    assert history_rows_mentioning(replicas.history_file, user.user_id, user.marker) == 0
    again = replicas.cli("users", "delete", user.email, "--yes")
    assert again.exit_code == 1
